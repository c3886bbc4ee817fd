"""Generate the Python stubs for proto/ into client/sandbox_client/_proto.

Usage: python scripts/gen_proto.py [--out DIR]

grpcio-tools writes imports relative to the proto root (``from sandbox.v1 import ...``); the stubs live inside
the ``sandbox_client._proto`` package, so those imports are rewritten. tests/test_proto_drift.py runs this into a
temporary directory and fails when the result differs from the committed stubs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "client" / "sandbox_client" / "_proto"
PACKAGE = "sandbox_client._proto"
_IMPORT_RE = re.compile(r"^from (sandbox\.v\d+) import", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """Write the stubs for every .proto under proto/ into ``out``; return the files written."""
    from grpc_tools import protoc  # only needed by developers, not at run time

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written: list[Path] = []
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT_RE.sub(rf"from {PACKAGE}.\1 import", src.read_text())
            dst.write_text(text)
            written.append(dst)
        for directory in {p.parent for p in written} | {out}:
            d = directory
            while d != out.parent and d.is_relative_to(out):
                (d / "__init__.py").touch()
                d = d.parent
        return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ns = parser.parse_args()
    if ns.out == DEFAULT_OUT and DEFAULT_OUT.exists():
        shutil.rmtree(DEFAULT_OUT)
    for path in generate(ns.out):
        print(path.relative_to(ns.out))
    sys.exit(0)


if __name__ == "__main__":
    main()
