"""The runnable examples of client/README.md's agent-tool section run, each in a fresh interpreter, against a real
server (the SDK examples, which need a provider's package and key, name a host of their own and are left out)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_server.testing import RunningServer

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
HEADING = "## Giving an agent the sandbox as a tool"
EXAMPLE_TARGET = "127.0.0.1:50051"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(HEADING)
    following = re.search(r"^## ", text[start + len(HEADING):], flags=re.MULTILINE)
    return text[start:] if following is None else text[start:start + len(HEADING) + following.start()]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.DOTALL)


RUNNABLE = [block for block in _blocks("python") if EXAMPLE_TARGET in block]


def test_the_section_has_its_examples() -> None:
    assert len(_blocks("python")) >= 4
    assert len(RUNNABLE) >= 2
    for block in _blocks("python"):
        compile(block, "README.md", "exec")  # the SDK examples at least parse
    (config,) = _blocks("json")
    assert json.loads(config)["mcpServers"]["sandbox"]["command"] == "sandbox-mcp"


@pytest.mark.parametrize("example", RUNNABLE, ids=[f"example{i}" for i in range(len(RUNNABLE))])
def test_the_example_runs(example: str, adapter_server: RunningServer) -> None:
    code = example.replace(EXAMPLE_TARGET, adapter_server.target)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Status: succeeded" in done.stdout
    assert "<stdout>\n42\n</stdout>" in done.stdout
