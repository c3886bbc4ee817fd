"""``sandbox-admin incidents | costs | executions | quarantine`` against a real server with real traffic: in
process (typer's CliRunner) and once as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_admin_ops import (
    OpsServer,
    poll,
    serve_ops,
    sleeping_execution,
    trip_escape_attempts,
    trip_repeated_timeouts,
)
from typer.testing import CliRunner, Result

from sandbox_client import Status
from sandbox_client.admin_cli import EXIT_FAILURE, EXIT_USAGE, app

SANDBOX_ADMIN = Path(sys.executable).with_name("sandbox-admin")


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OpsServer]:
    with serve_ops(tmp_path) as server:
        yield server


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def cli(runner: CliRunner, ops: OpsServer, *args: str) -> Result:
    return runner.invoke(app, ["--target", ops.target, "--api-key", ops.keys["admin"], *args])


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def first_open(runner: CliRunner, ops: OpsServer, rule: str) -> dict[str, Any]:
    """The open incident ``rule`` opened, as ``incidents list --open --json`` shows it (once recorded)."""

    def probe() -> dict[str, Any] | None:
        listed = parsed(cli(runner, ops, "incidents", "list", "--open", "--json"))
        return next((i for i in listed if i["rule"] == rule), None)

    return poll(f"a {rule} incident", probe)


# --- executions ------------------------------------------------------------------------------------------------


def test_executions_list_and_show(runner: CliRunner, ops: OpsServer) -> None:
    with ops.sandbox("acme") as acme, ops.sandbox("globex") as globex:
        ok = acme.execute("print(1)", session_id="s1")
        failed = globex.execute("raise SystemExit(2)", session_id="s9")

    listed = parsed(cli(runner, ops, "executions", "list", "--json"))
    assert [e["execution_id"] for e in listed] == [failed.execution_id, ok.execution_id]
    assert sorted(listed[0]) == sorted(
        ["execution_id", "tenant", "key_id", "session_id", "language", "code_sha256", "limits", "outcome",
         "exit_code", "wall_time_s", "cpu_time_s", "peak_memory_bytes", "cost", "trace_id", "started_at",
         "ended_at", "exercise"]
    )
    assert (listed[0]["outcome"], listed[0]["exit_code"], listed[0]["tenant"]) == ("NONZERO_EXIT", 2, "globex")
    datetime.fromisoformat(listed[0]["ended_at"])  # times are ISO 8601
    # The global --json works as well as the command's own.
    same = parsed(cli(runner, ops, "--json", "executions", "list", "--tenant", "acme", "--session", "s1"))
    assert [e["execution_id"] for e in same] == [ok.execution_id]
    assert parsed(cli(runner, ops, "executions", "list", "--limit", "1", "--json"))[0]["execution_id"] == (
        failed.execution_id
    )

    shown = parsed(cli(runner, ops, "executions", "show", ok.execution_id, "--json"))
    assert shown == next(e for e in listed if e["execution_id"] == ok.execution_id)
    assert shown["cost"] == pytest.approx(0.01)

    table = cli(runner, ops, "executions", "list")
    assert table.exit_code == 0, table.stderr
    assert ok.execution_id in table.stdout
    assert failed.execution_id in table.stdout
    assert "NONZERO_EXIT" in table.stdout
    human = cli(runner, ops, "executions", "show", failed.execution_id)
    assert human.exit_code == 0
    assert f"Execution {failed.execution_id} (NONZERO_EXIT)" in human.stdout
    assert "limits.wall_time_ms" in human.stdout
    assert "exit code" in human.stdout

    assert cli(runner, ops, "executions", "list", "--running").stdout.strip() == "No running executions."


def test_executions_list_filters_by_outcome_and_time(runner: CliRunner, ops: OpsServer) -> None:
    with ops.sandbox("acme") as acme:
        failed = acme.execute("raise SystemExit(2)", session_id="s1")
        middle = datetime.now(UTC)  # ``failed`` started before it, the other two after
        ok = acme.execute("print(1)", session_id="s1")
        newest = acme.execute("print(2)", session_id="s2")

    def ids(*args: str) -> list[str]:
        return [e["execution_id"] for e in parsed(cli(runner, ops, "executions", "list", "--json", *args))]

    assert ids("--outcome", "NONZERO_EXIT") == [failed.execution_id]
    assert ids("--outcome", "OK", "--outcome", "NONZERO_EXIT") == [
        newest.execution_id, ok.execution_id, failed.execution_id
    ]
    # Filtered by the server: --limit counts the matches, so the failure is found behind the newer OKs.
    assert ids("--outcome", "NONZERO_EXIT", "--outcome", "ERROR", "--limit", "1") == [failed.execution_id]
    assert ids("--since", middle.isoformat()) == [newest.execution_id, ok.execution_id]
    assert ids("--until", middle.isoformat(), "--tenant", "acme") == [failed.execution_id]
    assert ids("--since", middle.isoformat(), "--outcome", "OK", "--session", "s1") == [ok.execution_id]
    # A date alone, without a zone, is a UTC midnight.
    assert ids("--until", "2001-01-02") == []
    assert ids("--since", "2001-01-01", "--outcome", "NONZERO_EXIT") == [failed.execution_id]

    table = cli(runner, ops, "executions", "list", "--outcome", "NONZERO_EXIT")
    assert table.exit_code == 0, table.stderr
    assert failed.execution_id in table.stdout
    assert ok.execution_id not in table.stdout
    none = cli(runner, ops, "executions", "list", "--outcome", "TIMEOUT", "--since", middle.isoformat())
    assert (none.exit_code, none.stdout.strip()) == (0, "No executions match.")
    assert cli(runner, ops, "executions", "list", "--running", "--outcome", "RUNNING").stdout.strip() == (
        "No running executions match."
    )

    unknown = cli(runner, ops, "executions", "list", "--outcome", "OK", "--outcome", "FAILED")
    assert unknown.exit_code == EXIT_FAILURE
    assert "(INVALID_ARGUMENT)" in unknown.stderr
    assert "outcomes[1]: unknown outcome 'FAILED'" in unknown.stderr
    machine = cli(runner, ops, "--json", "executions", "list", "--outcome", "ERROR:BOGUS")
    assert [v["field"] for v in json.loads(machine.stderr)["error"]["field_violations"]] == ["outcomes[0]"]
    _refuses_bad_time_ranges(runner, ops, "executions", "list")


def test_executions_kill(runner: CliRunner, ops: OpsServer) -> None:
    with sleeping_execution(ops, "sleepy") as result:
        running = poll(
            "the execution to be running",
            lambda: parsed(cli(runner, ops, "executions", "list", "--running", "--json")) or None,
        )
        [live] = running
        assert (live["outcome"], live["ended_at"], live["session_id"]) == ("RUNNING", None, "sleepy")
        table = cli(runner, ops, "executions", "list", "--running")
        assert live["execution_id"] in table.stdout
        assert "RUNNING" in table.stdout
        human = cli(runner, ops, "executions", "show", live["execution_id"])
        assert "so far" in human.stdout

        killed = cli(runner, ops, "executions", "kill", live["execution_id"])
        assert killed.exit_code == 0, killed.stderr
        assert f"Execution {live['execution_id']} is killed" in killed.stdout
        outcome = result()
    assert (outcome.status, outcome.message) == (Status.KILLED, "killed by an operator")
    shown = parsed(cli(runner, ops, "executions", "show", live["execution_id"], "--json"))
    assert shown["outcome"] == "KILLED"
    assert shown["code_sha256"] == live["code_sha256"]

    again = cli(runner, ops, "executions", "kill", live["execution_id"], "--json")
    assert again.exit_code == EXIT_FAILURE
    assert json.loads(again.stderr)["error"]["code"] == "NOT_FOUND"


# --- incidents and quarantines ---------------------------------------------------------------------------------


def test_incidents_list_show_resolve(runner: CliRunner, ops: OpsServer) -> None:
    trip_escape_attempts(ops, "mallory")
    incident = first_open(runner, ops, "escape_attempts")
    assert (incident["severity"], incident["scope"], incident["subject"], incident["open"]) == (
        "high", "tenant", "mallory", True
    )
    [mitigation] = incident["mitigations"]
    assert (mitigation["action"], mitigation["state"], mitigation["expires_at"]) == ("quarantine", "active", None)
    assert parsed(cli(runner, ops, "incidents", "list", "--tenant", "mallory", "--json")) == [incident]
    assert parsed(cli(runner, ops, "incidents", "list", "--tenant", "acme", "--json")) == []
    assert parsed(cli(runner, ops, "incidents", "show", incident["id"], "--json")) == incident

    table = cli(runner, ops, "incidents", "list")
    assert table.exit_code == 0
    for text in (incident["id"], "escape_attempts", "high", "tenant mallory", "quarantine (active)", "open"):
        assert text in table.stdout
    human = cli(runner, ops, "incidents", "show", incident["id"])
    assert f"Incident {incident['id']} (open)" in human.stdout
    assert mitigation["id"] in human.stdout
    assert "details.rules" in human.stdout
    assert mitigation["id"] in cli(runner, ops, "quarantine", "list").stdout

    resolved = cli(runner, ops, "incidents", "resolve", incident["id"], "--note", "talked to mallory")
    assert resolved.exit_code == 0, resolved.stderr
    assert f"Incident {incident['id']} is resolved (by {ops.admin_actor}" in resolved.stdout
    assert "lifted: 1 of 1" in resolved.stdout
    with ops.sandbox("mallory") as sbx:
        assert sbx.execute("print('back')").stdout == "back\n"  # the quarantine is gone

    after = parsed(cli(runner, ops, "incidents", "show", incident["id"], "--json"))
    assert (after["open"], after["resolved_by"]) == (False, ops.admin_actor)
    assert after["details"]["resolve_note"] == "talked to mallory"
    assert after["mitigations"][0]["state"] == "lifted"
    assert parsed(cli(runner, ops, "incidents", "list", "--open", "--json")) == []
    assert cli(runner, ops, "incidents", "list", "--open").stdout.strip() == "No open incidents."
    assert cli(runner, ops, "quarantine", "list").stdout.strip() == "No active mitigations."
    assert [m["id"] for m in parsed(cli(runner, ops, "quarantine", "list", "--all", "--json"))] == [mitigation["id"]]


def test_quarantine_list_and_lift(runner: CliRunner, ops: OpsServer) -> None:
    trip_repeated_timeouts(ops, "stuck")
    incident = first_open(runner, ops, "repeated_timeouts")
    [throttle] = parsed(cli(runner, ops, "quarantine", "list", "--json"))
    assert sorted(throttle) == sorted(
        ["id", "incident_id", "action", "scope", "subject", "created_at", "expires_at", "lifted_at", "lifted_by",
         "throttle_per_minute", "state"]
    )
    assert (throttle["incident_id"], throttle["action"], throttle["subject"], throttle["state"]) == (
        incident["id"], "throttle", "acme/stuck", "active"
    )
    table = cli(runner, ops, "quarantine", "list")
    rate = f"{throttle['throttle_per_minute']:g}"
    for text in (throttle["id"], incident["id"], "throttle", "session acme/stuck", rate):
        assert text in table.stdout

    lifted = cli(runner, ops, "quarantine", "lift", throttle["id"])
    assert lifted.exit_code == 0, lifted.stderr
    assert f"Mitigation {throttle['id']} (throttle of session acme/stuck) is lifted" in lifted.stdout
    assert parsed(cli(runner, ops, "quarantine", "list", "--json")) == []
    again = parsed(cli(runner, ops, "quarantine", "lift", throttle["id"], "--json"))
    assert (again["state"], again["lifted_by"]) == ("lifted", ops.admin_actor)
    # Lifting the mitigation leaves its incident open.
    assert [i["id"] for i in parsed(cli(runner, ops, "incidents", "list", "--open", "--json"))] == [incident["id"]]


def test_unknown_ids_exit_1_with_not_found(runner: CliRunner, ops: OpsServer) -> None:
    for args in (
        ("incidents", "show", "inc_000000000000"),
        ("incidents", "resolve", "inc_000000000000"),
        ("executions", "show", "nope"),
        ("executions", "kill", "nope"),
        ("quarantine", "lift", "mit_000000000000"),
    ):
        human = cli(runner, ops, *args)
        assert human.exit_code == EXIT_FAILURE, args
        assert "(NOT_FOUND)" in human.stderr
        assert args[-1] in human.stderr
        machine = cli(runner, ops, "--json", *args)
        assert json.loads(machine.stderr)["error"]["code"] == "NOT_FOUND"


# --- costs -----------------------------------------------------------------------------------------------------


def test_costs_report(runner: CliRunner, ops: OpsServer) -> None:
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with ops.sandbox("acme") as acme, ops.sandbox("globex") as globex:
        acme.execute("print(1)", session_id="s1")
        acme.execute("print(2)", session_id="s1")
        globex.execute("print(3)", session_id="s2")

    report = parsed(cli(runner, ops, "costs", "report", "--json"))
    assert sorted(report) == ["group_by", "rows", "since", "tenant", "total", "until"]
    assert (report["group_by"], report["since"], report["until"], report["tenant"]) == ("tenant", None, None, None)
    assert [(r["key"], r["executions"]) for r in report["rows"]] == [("globex", 1), ("acme", 2)]
    assert sorted(report["rows"][0]) == sorted(
        ["key", "execution_cost", "usage_cost", "total", "executions", "input_tokens", "output_tokens"]
    )
    assert report["total"] == pytest.approx(0.07)

    by_session = parsed(cli(runner, ops, "costs", "report", "--by", "session", "--tenant", "acme", "--json"))
    assert [(r["key"], r["executions"]) for r in by_session["rows"]] == [("acme/s1", 2)]
    by_day = parsed(cli(runner, ops, "costs", "report", "--by", "day", "--since", since, "--json"))
    assert [r["key"] for r in by_day["rows"]] == [datetime.now(UTC).strftime("%Y-%m-%d")]
    assert datetime.fromisoformat(by_day["since"]) == datetime.fromisoformat(since)
    # A date alone, without a zone, is a UTC midnight; a range wholly in the past holds nothing.
    past = parsed(cli(runner, ops, "costs", "report", "--since", "2001-01-01", "--until", "2001-01-02", "--json"))
    assert (past["rows"], past["total"], past["since"]) == ([], 0.0, "2001-01-01T00:00:00+00:00")

    table = cli(runner, ops, "costs", "report")
    assert table.exit_code == 0
    assert "Costs by tenant, the beginning to now" in table.stdout
    for text in ("globex", "acme", "0.0500", "0.0200", "0.0700"):
        assert text in table.stdout

    _refuses_bad_time_ranges(runner, ops, "costs", "report")
    assert cli(runner, ops, "costs", "report", "--by", "week").exit_code == EXIT_USAGE


def test_limits_out_of_range_are_usage_errors(runner: CliRunner, ops: OpsServer) -> None:
    for args in (("incidents", "list", "--limit", "0"), ("executions", "list", "--limit", "1001")):
        assert cli(runner, ops, *args).exit_code == EXIT_USAGE


# --- the installed console script ------------------------------------------------------------------------------


def test_subprocess_executions_and_incidents(ops: OpsServer) -> None:
    if not SANDBOX_ADMIN.exists():
        pytest.fail(f"{SANDBOX_ADMIN} is missing: pip install -e './client[cli]'")
    with ops.sandbox("acme") as acme:
        ran = acme.execute("print(1)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update({"SANDBOX_TARGET": ops.target, "SANDBOX_ADMIN_KEY": ops.keys["admin"]})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SANDBOX_ADMIN), *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    listed = run("executions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["execution_id"] for e in json.loads(listed.stdout)] == [ran.execution_id]
    none = run("incidents", "list")
    assert (none.returncode, none.stdout.strip()) == (0, "No incidents."), none.stderr
    missing = run("incidents", "show", "inc_000000000000")
    assert missing.returncode == EXIT_FAILURE
    assert missing.stdout == ""
    assert "NOT_FOUND" in missing.stderr


def _refuses_bad_time_ranges(runner: CliRunner, ops: OpsServer, *command: str) -> None:
    """A backwards range is the server's refusal (exit 1); a time it cannot read is a usage error (exit 2)."""
    backwards = cli(runner, ops, *command, "--since", "2024-02-01", "--until", "2024-01-01")
    assert backwards.exit_code == EXIT_FAILURE
    assert "since: must be before until" in backwards.stderr
    for flag, text in (("--since", "yesterday"), ("--until", "an hour ago")):
        bad = cli(runner, ops, *command, flag, text)
        assert bad.exit_code == EXIT_USAGE
        assert f"{flag}: not an ISO 8601 time or date" in bad.stderr
