#!/usr/bin/env bash
# Set up (idempotent), lint and type-check, then run the test suite. Arguments go to pytest:
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh tests/backends -x
#
# Exits with pytest's code, except that "no tests collected" (pytest's 5) is a failure (1): CI must never
# pass on zero tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

echo "test: ruff check ."
.venv/bin/ruff check .

echo "test: mypy --strict (scripts/typecheck.sh)"
bash scripts/typecheck.sh

# Two workers (pytest-xdist): the suite mostly waits on sandboxes, so two pytest processes use both cores of
# a 2-core host. TEST_WORKERS=0 runs it in one process. tests/conftest.py keeps every dockerd test on one worker.
workers="${TEST_WORKERS:-2}"
echo "test: pytest -q -n $workers $*"
rc=0
.venv/bin/pytest -q -n "$workers" "$@" || rc=$?
if ((rc == 5)); then
    echo "test: error: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$rc"
