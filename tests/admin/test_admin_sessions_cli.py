"""``sandbox-admin sessions list | show | close`` against a real server with real sessions, through typer's
CliRunner. One server for the module; every test closes the sessions it opens (checked at the module's end)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import pytest
from test_admin_ops import OpsServer, serve_ops
from test_admin_ops_cli import cli, parsed
from test_admin_sessions import NEVER_EXISTED, acme_session
from typer.testing import CliRunner

from sandbox_client import SessionNotFoundError, Status
from sandbox_client.admin_cli import EXIT_FAILURE, EXIT_USAGE, app


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsServer]:
    with serve_ops(tmp_path_factory.mktemp("admin-sessions-cli")) as server:
        yield server
        with server.admin() as admin:
            assert admin.list_sessions() == (), "a test left a session open"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_sessions_list_and_show(runner: CliRunner, ops: OpsServer) -> None:
    assert cli(runner, ops, "sessions", "list").stdout.strip() == "No live sessions."
    assert parsed(cli(runner, ops, "sessions", "list", "--json")) == []

    with acme_session(ops, job="nightly") as acme, ops.sandbox("globex") as g, g.session() as globex:
        acme.files.upload("data.csv", b"a,b\n1,2\n")
        assert acme.run("x = 1").status is Status.OK

        table = cli(runner, ops, "sessions", "list")
        assert table.exit_code == 0, table.stderr
        for text in (acme.id, globex.id, "acme", "globex", "READY", "Last used / closed (UTC)", "MiB"):
            assert text in table.stdout

        [listed] = parsed(cli(runner, ops, "sessions", "list", "--tenant", "acme", "--json"))
        assert sorted(listed) == ["events", "key_id", "session", "tenant"]
        assert (listed["tenant"], listed["events"]) == ("acme", [])
        session = listed["session"]
        assert session["id"] == acme.id
        assert (session["state"], session["close_reason"], session["closed_at"]) == ("READY", "", None)
        assert datetime.fromisoformat(session["last_used_at"]) >= datetime.fromisoformat(session["created_at"])
        assert session["labels"] == {"job": "nightly"}
        assert session["usage"]["calls"] == 1
        assert session["limits"]["memory_bytes"] == acme.info.limits.memory_bytes
        datetime.fromisoformat(session["created_at"])  # times are ISO 8601
        # The global --json works as well as the command's own.
        first = parsed(cli(runner, ops, "--json", "sessions", "list", "--limit", "1"))
        assert [s["session"]["id"] for s in first] == [acme.id]

        human = cli(runner, ops, "sessions", "show", acme.id)
        assert human.exit_code == 0, human.stderr
        for text in (f"Session {acme.id} (READY)", "tenant", "expires", "labels.job", "nightly",
                     "limits.memory_bytes", "Lifecycle events", "created", "uploaded", "path=data.csv"):
            assert text in human.stdout
        shown = parsed(cli(runner, ops, "sessions", "show", acme.id, "--json"))
        assert [e["event"] for e in shown["events"]] == ["created", "uploaded"]
        assert shown["events"][1]["detail"] == {"path": "data.csv", "size": "8"}
        assert shown["session"]["id"] == acme.id


def test_sessions_close(runner: CliRunner, ops: OpsServer) -> None:
    with acme_session(ops) as acme:
        assert acme.run("x = 1").status is Status.OK
        closed = cli(runner, ops, "sessions", "close", acme.id)
        assert closed.exit_code == 0, closed.stderr
        assert f"Session {acme.id} of tenant acme is closed (admin) after 1 call;" in closed.stdout
        with pytest.raises(SessionNotFoundError) as gone:
            acme.run("x")
        assert gone.value.close_reason == "admin"

        again = cli(runner, ops, "sessions", "close", acme.id)
        assert again.exit_code == EXIT_FAILURE
        assert "(NOT_FOUND)" in again.stderr
        assert f"no live session '{acme.id}'" in again.stderr
        machine = cli(runner, ops, "sessions", "close", acme.id, "--json")
        assert machine.exit_code == EXIT_FAILURE
        assert json.loads(machine.stderr)["error"]["code"] == "NOT_FOUND"

    assert cli(runner, ops, "sessions", "list", "--tenant", "acme").stdout.strip() == "No live sessions."
    listed = parsed(cli(runner, ops, "sessions", "list", "--tenant", "acme", "--all", "--json"))
    [mine] = [s for s in listed if s["session"]["id"] == acme.id]
    assert (mine["session"]["state"], mine["session"]["close_reason"]) == ("CLOSED", "admin")
    assert mine["session"]["last_used_at"] >= mine["session"]["created_at"]  # kept in the record at its close
    table = cli(runner, ops, "sessions", "list", "--all")
    for text in (acme.id, "CLOSED", "admin"):
        assert text in table.stdout

    human = cli(runner, ops, "sessions", "show", acme.id)
    assert human.exit_code == 0, human.stderr
    for text in (f"Session {acme.id} (CLOSED)", "close reason", "closed", "reason=admin"):
        assert text in human.stdout
    assert "1970" not in human.stdout  # a closed session's record keeps no last-use time: left out, not the epoch

    with acme_session(ops) as other:
        as_json = parsed(cli(runner, ops, "sessions", "close", other.id, "--json"))
    assert (as_json["tenant"], as_json["session"]["id"]) == ("acme", other.id)
    assert (as_json["session"]["state"], as_json["session"]["close_reason"]) == ("CLOSED", "admin")


def test_unknown_ids_and_bad_options(runner: CliRunner, ops: OpsServer) -> None:
    for args in (("sessions", "show", NEVER_EXISTED), ("sessions", "close", NEVER_EXISTED)):
        human = cli(runner, ops, *args)
        assert human.exit_code == EXIT_FAILURE, args
        assert "(NOT_FOUND)" in human.stderr
        assert NEVER_EXISTED in human.stderr
        machine = cli(runner, ops, "--json", *args)
        assert json.loads(machine.stderr)["error"]["code"] == "NOT_FOUND"
    usage_errors: list[tuple[str, ...]] = [
        ("sessions", "list", "--limit", "0"),
        ("sessions", "list", "--limit", "1001"),
        ("sessions", "show"),  # no id
    ]
    for bad in usage_errors:
        assert cli(runner, ops, *bad).exit_code == EXIT_USAGE, bad


def test_a_tenant_key_is_refused(runner: CliRunner, ops: OpsServer) -> None:
    refused = runner.invoke(app, ["--target", ops.target, "--api-key", ops.keys["acme"], "sessions", "list"])
    assert refused.exit_code == EXIT_FAILURE
    assert "(PERMISSION_DENIED)" in refused.stderr
