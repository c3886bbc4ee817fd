"""``sandbox-admin redteam`` and ``sandbox-admin eval`` mark their runs as exercises by default, which needs an
admin key (or a development-mode server: tests/deploy/test_fresh_server_tools.py); with a tenant key they stop
at once saying what to do, and ``--no-exercise`` runs them as the tenant's ordinary traffic. Through a real
server that requires keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sandbox_client.admin_cli import app
from sandbox_server.stores.base import AuditRecord
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

CASE = "bypass-py-pickle-system"  # one shipped red-team case, refused by static validation: quick
SUITE = "cases:\n  - id: hello\n    code: print('hi')\n    expected_stdout: \"hi\\n\"\n"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[RunningServer, dict[str, str]]]:
    """A server requiring keys (the seeded default policy), with a tenant key and an admin key of ``default``."""
    settings = private_settings(auth="api-keys")
    stores = open_stores(settings.data_dir)
    try:
        keys = {role: stores.keys.create("default", role, "exercise test")[1] for role in ("tenant", "admin")}
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        yield srv, keys


def _sandbox_admin(srv: RunningServer, key: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["--target", srv.target, "--api-key", key, *args])


def _new_records(srv: RunningServer, seen: set[str]) -> list[AuditRecord]:
    stores = srv.app.stores
    assert stores is not None
    return [r for r in stores.audit.list(limit=1000) if r.execution_id not in seen]


def _seen(srv: RunningServer) -> set[str]:
    return {r.execution_id for r in _new_records(srv, set())}


def test_a_tenant_key_is_told_to_use_an_admin_key_or_no_exercise(
    keyed_server: tuple[RunningServer, dict[str, str]], tmp_path: Path
) -> None:
    srv, keys = keyed_server
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    seen = _seen(srv)
    for command in (["redteam", "--case", CASE], ["eval", str(suite)]):
        result = _sandbox_admin(srv, keys["tenant"], *command)
        assert result.exit_code == 1, result.output
        message = " ".join(result.stderr.split())
        assert "may not mark runs as exercises" in message
        assert "--no-exercise" in message
    assert _new_records(srv, seen) == []  # nothing ran


def test_an_admin_key_runs_exercises_and_no_exercise_runs_ordinary_traffic(
    keyed_server: tuple[RunningServer, dict[str, str]], tmp_path: Path
) -> None:
    srv, keys = keyed_server
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    seen = _seen(srv)
    for command in (["redteam", "--case", CASE], ["eval", str(suite)]):
        result = _sandbox_admin(srv, keys["admin"], *command)
        assert result.exit_code == 0, result.output
    drills = _new_records(srv, seen)
    assert drills  # the red-team case is refused before it runs; the suite's case ran
    assert all(r.exercise for r in drills)

    seen |= {r.execution_id for r in drills}
    for command in (["redteam", "--no-exercise", "--case", CASE], ["eval", "--no-exercise", str(suite)]):
        result = _sandbox_admin(srv, keys["tenant"], *command)
        assert result.exit_code == 0, result.output
    plain = _new_records(srv, seen)
    assert plain
    assert not any(r.exercise for r in plain)
