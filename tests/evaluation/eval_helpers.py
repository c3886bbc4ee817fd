"""Helpers for the evaluation tests: ``sandbox-admin eval`` driven through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from sandbox_client.admin_cli import app
from sandbox_server.testing import RunningServer

PRICE_PER_EXECUTION = 0.01
EVAL_POLICY = f"""\
version: 1
tenants:
  default:
    description: the evaluation tests' tenant (the default rules, and a price per execution)
    pricing: {{per_execution: {PRICE_PER_EXECUTION}}}
"""


def run_eval(runner: CliRunner, srv: RunningServer | None, *args: str) -> Result:
    """``sandbox-admin --target <srv> eval ARGS`` in process (a closed port when there is no server)."""
    target = srv.target if srv is not None else "127.0.0.1:1"
    return runner.invoke(app, ["--target", target, "eval", *args])


def report_of(result: Result) -> dict[str, Any]:
    """The JSON report of a ``--json`` run."""
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
