"""The examples in client/README.md run: each against the fake server, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_sandbox import FakeSandbox, FakeServer

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
EXAMPLE_TARGET = "127.0.0.1:50051"
# Blocks that talk to EXAMPLE_TARGET are the runnable ones (the TLS block names a host of its own).
EXAMPLES = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    if EXAMPLE_TARGET in block
]


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(example: str, fake_server: FakeServer, fake: FakeSandbox) -> None:
    code = example.replace(EXAMPLE_TARGET, fake_server.target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the example printed nothing"
    assert fake.calls, "the example never reached the server"
