"""Fixtures for the evaluation tests: one real server (nsjail backend) for the directory, whose default tenant
keeps the default policy's rules and prices each execution, and ``sandbox-admin`` driven through typer's
CliRunner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eval_helpers import EVAL_POLICY
from typer.testing import CliRunner

from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="session")
def eval_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    policies = tmp_path_factory.mktemp("eval-policies")
    (policies / "default.yaml").write_text(EVAL_POLICY)
    with server_in_thread(max_running=4, max_queued=64, policies_dir=policies) as srv:
        yield srv


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
