#!/usr/bin/env bash
# mypy --strict (configured in pyproject.toml) over the packages, the tests and the benchmarks. The test
# directories each have a conftest.py and import their helpers by bare name (pytest's rootdir-relative
# sys.path), so each is checked on its own with those directories on MYPYPATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MYPY=.venv/bin/mypy

$MYPY sandbox_server client/sandbox_client scripts/gen_proto.py
MYPYPATH=tests $MYPY tests/*.py bench
for dir in tests/*/; do
    [[ $dir == */__pycache__/ ]] && continue
    MYPYPATH="tests:tests/production:${dir%/}" $MYPY "${dir%/}"
done
