"""The Admin service's operational calls (incidents, costs, executions, quarantines) through a real server.

Each test gets its own server (the nsjail backend, API keys required, SQLite stores in a private data dir) and
drives it with real traffic: executions that run, time out, sleep until killed, or are refused as escape
attempts. Incidents are opened by the server's own rules in a background task, so the tests poll with a
deadline rather than sleep. ``serve_ops`` is shared with test_admin_ops_cli.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from sandbox_client import (
    ExecutionResult,
    InvalidRequestError,
    Limits,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxClient,
    Status,
    UnavailableError,
)
from sandbox_client._errors import from_rpc_error
from sandbox_client._proto.sandbox.v1 import admin_pb2, admin_pb2_grpc
from sandbox_client.admin import AdminClient, Incident, NotFoundError
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

# acme prices every execution (and LLM tokens), globex prices them higher; mallory is the tenant the escape
# tests get quarantined, so no other traffic shares its fate.
OPS_POLICY = """\
version: 1
tenants:
  acme:
    languages: [python]
    pricing:
      per_execution: 0.01
      models:
        gpt-test: {input_per_million_tokens: 1, output_per_million_tokens: 2}
  globex:
    languages: [python]
    pricing: {per_execution: 0.05}
  mallory:
    languages: [python]
"""
POLL_S = 30.0
"""How long to wait for something the server does in the background (an incident opening)."""
LOOP = "while True:\n    pass\n"
SLEEP = "import time\ntime.sleep(60)\n"

_T = TypeVar("_T")


@dataclass(frozen=True)
class OpsServer:
    srv: RunningServer
    keys: dict[str, str]
    """Tenant keys by tenant, and "admin" (an admin key of acme)."""
    admin_actor: str
    """How resolutions and lifts by the admin key are signed: "acme/<key id>"."""

    @property
    def target(self) -> str:
        return self.srv.target

    def sandbox(self, tenant: str) -> SandboxClient:
        return SandboxClient(self.target, api_key=self.keys[tenant], timeout=60, retry=None)

    def admin(self) -> AdminClient:
        return AdminClient(self.target, api_key=self.keys["admin"], timeout=30)


@contextlib.contextmanager
def serve_ops(tmp_path: Path) -> Iterator[OpsServer]:
    """A real server requiring API keys, with OPS_POLICY and one key per tenant plus an admin key."""
    policies = tmp_path / "ops-policies"
    policies.mkdir()
    (policies / "ops.yaml").write_text(OPS_POLICY)
    settings = private_settings(auth="api-keys", policies_dir=policies, max_running=4)
    stores = open_stores(settings.data_dir)
    try:
        keys = {tenant: stores.keys.create(tenant, "tenant", "test")[1] for tenant in ("acme", "globex", "mallory")}
        admin_record, keys["admin"] = stores.keys.create("acme", "admin", "test")
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        yield OpsServer(srv, keys, f"acme/{admin_record.key_id}")


def poll(what: str, probe: Callable[[], _T | None], timeout_s: float = POLL_S) -> _T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout_s:g} s")
        time.sleep(0.05)


def open_incident(admin: AdminClient, rule: str, subject: str) -> Incident:
    """The open incident ``rule`` opened for ``subject``, once the server's background task has recorded it."""

    def probe() -> Incident | None:
        return next(
            (i for i in admin.list_incidents(open_only=True) if i.rule == rule and i.subject == subject), None
        )

    return poll(f"a {rule} incident for {subject}", probe)


def trip_repeated_timeouts(ops: OpsServer, session_id: str) -> None:
    """Five executions of one session that hit their wall-time limit: the "repeated_timeouts" rule's threshold."""
    with ops.sandbox("acme") as sbx:
        for _ in range(5):
            result = sbx.execute(LOOP, session_id=session_id, limits=Limits(wall_time_s=0.2))
            assert result.status in (Status.TIMEOUT, Status.CPU_LIMIT)


def trip_escape_attempts(ops: OpsServer, tenant: str) -> None:
    """Three refusals for escape-like code: the "escape_attempts" rule's threshold."""
    with ops.sandbox(tenant) as sbx:
        for _ in range(3):
            with pytest.raises(InvalidRequestError) as refused:
                sbx.execute("import ctypes\n", session_id="probe")
            assert "denied_import" in {v.reason for v in refused.value.field_violations}


@contextlib.contextmanager
def sleeping_execution(ops: OpsServer, session_id: str) -> Iterator[Callable[[], ExecutionResult]]:
    """Run SLEEP in the background as acme; the block gets a function that waits for its result."""
    box: dict[str, ExecutionResult | BaseException] = {}

    def run() -> None:
        try:
            with ops.sandbox("acme") as sbx:
                box["result"] = sbx.execute(SLEEP, session_id=session_id, limits=Limits(wall_time_s=60))
        except BaseException as exc:  # handed to the test thread
            box["result"] = exc

    thread = threading.Thread(target=run, name="sleeping-execution")
    thread.start()

    def result() -> ExecutionResult:
        thread.join(timeout=90)
        assert not thread.is_alive(), "the sleeping execution did not end"
        outcome = box["result"]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    try:
        yield result
    finally:
        thread.join(timeout=90)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OpsServer]:
    with serve_ops(tmp_path) as server:
        yield server


@pytest.fixture
def ops_admin(ops: OpsServer) -> Iterator[AdminClient]:
    with ops.admin() as client:
        yield client


# --- executions ------------------------------------------------------------------------------------------------


def test_finished_executions_are_listed_newest_first_and_shown(ops: OpsServer, ops_admin: AdminClient) -> None:
    with ops.sandbox("acme") as acme, ops.sandbox("globex") as globex:
        first = acme.execute("print(1)", session_id="s1")
        second = acme.execute("import sys; sys.exit(3)", session_id="s2")
        third = globex.execute("print(3)", session_id="s1")
    assert (first.status, second.status, third.status) == (Status.OK, Status.NONZERO_EXIT, Status.OK)

    listed = ops_admin.list_executions()
    assert [e.execution_id for e in listed] == [third.execution_id, second.execution_id, first.execution_id]
    assert not any(e.running for e in listed)
    assert [e.execution_id for e in ops_admin.list_executions(tenant="acme")] == [
        second.execution_id, first.execution_id
    ]
    assert [e.execution_id for e in ops_admin.list_executions(session_id="s1")] == [
        third.execution_id, first.execution_id
    ]
    assert [e.execution_id for e in ops_admin.list_executions(tenant="acme", session_id="s2")] == [second.execution_id]
    assert [e.execution_id for e in ops_admin.list_executions(limit=1)] == [third.execution_id]
    assert ops_admin.list_executions(running_only=True) == ()
    assert ops_admin.list_executions(tenant="initech") == ()

    shown = ops_admin.get_execution(second.execution_id)
    assert shown == next(e for e in listed if e.execution_id == second.execution_id)
    assert (shown.tenant, shown.session_id, shown.language) == ("acme", "s2", "python")
    assert (shown.outcome, shown.exit_code) == ("NONZERO_EXIT", 3)
    assert shown.code_sha256 == hashlib.sha256(b"import sys; sys.exit(3)").hexdigest()
    assert shown.cost == pytest.approx(0.01)
    assert shown.limits["wall_time_ms"] == 10_000  # the server's default, applied
    assert shown.trace_id == second.trace_id
    assert shown.started_at is not None
    assert shown.ended_at is not None
    assert shown.started_at <= shown.ended_at
    assert shown.wall_time_s > 0

    with pytest.raises(NotFoundError) as missing:
        ops_admin.get_execution("0" * 32)
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    assert (missing.value.resource_type, missing.value.resource_name) == ("execution", "0" * 32)


def test_executions_are_filtered_by_outcome_and_start_time(ops: OpsServer, ops_admin: AdminClient) -> None:
    """The filters apply before ``limit`` (in the audit store's SQL and to the running ones alike)."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    with ops.sandbox("acme") as acme, ops.sandbox("globex") as globex:
        failed = acme.execute("import sys; sys.exit(3)", session_id="s1")
        timed_out = acme.execute(LOOP, session_id="s1", limits=Limits(wall_time_s=0.2))
        middle = datetime.now(UTC)  # the two above started before it, the two below after
        ok = globex.execute("print(1)", session_id="s2")
        newest = acme.execute("print(2)", session_id="s2")
    assert (failed.status, ok.status, newest.status) == (Status.NONZERO_EXIT, Status.OK, Status.OK)
    assert timed_out.status in (Status.TIMEOUT, Status.CPU_LIMIT)
    loop_outcome = timed_out.status.value

    def ids(**filters: Any) -> list[str]:
        return [e.execution_id for e in ops_admin.list_executions(**filters)]

    assert ids(outcomes=["NONZERO_EXIT"]) == [failed.execution_id]
    assert ids(outcomes=["NONZERO_EXIT", loop_outcome]) == [timed_out.execution_id, failed.execution_id]
    # One OK is newer than both failures: with the filter, limit=1 still finds the newest failure.
    assert ids(outcomes=["NONZERO_EXIT", loop_outcome], limit=1) == [timed_out.execution_id]
    assert ids(outcomes="OK") == [newest.execution_id, ok.execution_id]  # one outcome as a plain string
    assert ids(outcomes=["OK"], tenant="globex") == [ok.execution_id]
    assert ids(outcomes=["ERROR", "CANCELLED", "RUNNING"]) == []
    assert ids(since=middle) == [newest.execution_id, ok.execution_id]
    assert ids(until=middle) == [timed_out.execution_id, failed.execution_id]
    assert ids(since=before, until=middle, outcomes=["OK", "NONZERO_EXIT"]) == [failed.execution_id]
    assert ids(since=middle, outcomes=["NONZERO_EXIT"]) == []
    assert ids(since=middle, session_id="s2", limit=1) == [newest.execution_id]
    assert ids(until=before) == []

    with sleeping_execution(ops, "sleepy") as result:
        [live] = poll("the execution to be running", lambda: ops_admin.list_executions(running_only=True) or None)
        assert ids(outcomes=["RUNNING"]) == [live.execution_id]
        assert ids(outcomes=["RUNNING", "NONZERO_EXIT"]) == [live.execution_id, failed.execution_id]
        assert live.execution_id not in ids(outcomes=["OK"])
        assert ids(since=middle, limit=2) == [live.execution_id, newest.execution_id]
        assert ids(until=middle, outcomes=["RUNNING"]) == []  # it started later
        assert ids(since=datetime.now(UTC) + timedelta(seconds=1)) == []
        assert ids(running_only=True, outcomes=["RUNNING"], since=middle) == [live.execution_id]
        assert ids(running_only=True, outcomes=["OK"]) == []
        ops_admin.kill_execution(live.execution_id)
        assert result().status is Status.KILLED
    assert ids(outcomes=["KILLED"]) == [live.execution_id]
    assert ids(outcomes=["RUNNING"]) == []


def test_a_running_execution_is_listed_and_killed(ops: OpsServer, ops_admin: AdminClient) -> None:
    with ops.sandbox("acme") as acme:
        done = acme.execute("print('done')", session_id="other")
    with sleeping_execution(ops, "sleepy") as result:
        running = poll("the execution to be running", lambda: ops_admin.list_executions(running_only=True) or None)
        assert len(running) == 1
        live = running[0]
        assert (live.outcome, live.running, live.ended_at) == ("RUNNING", True, None)
        assert (live.tenant, live.session_id, live.language) == ("acme", "sleepy", "python")
        assert live.code_sha256 == hashlib.sha256(SLEEP.encode()).hexdigest()
        assert live.limits["wall_time_ms"] == 60_000
        assert live.started_at is not None
        # The full list has it too, first (newest), then the audit trail.
        assert [e.execution_id for e in ops_admin.list_executions()] == [live.execution_id, done.execution_id]
        assert ops_admin.list_executions(running_only=True, tenant="globex") == ()
        assert ops_admin.list_executions(running_only=True, session_id="other") == ()
        assert ops_admin.get_execution(live.execution_id).outcome == "RUNNING"

        assert ops_admin.kill_execution(live.execution_id) is True
        killed = result()
    assert killed.execution_id == live.execution_id
    assert killed.status is Status.KILLED
    assert killed.message == "killed by an operator"

    scratch = ops.srv.settings.state_dir / "scratch"
    poll("the killed sandbox's scratch dir to be gone", lambda: True if not any(scratch.glob("*")) else None)
    record = ops_admin.get_execution(live.execution_id)
    assert (record.outcome, record.running) == ("KILLED", False)
    assert record.ended_at is not None
    assert ops_admin.list_executions(running_only=True) == ()
    with pytest.raises(NotFoundError, match="no running execution"):
        ops_admin.kill_execution(live.execution_id)  # finished: nothing to kill
    with pytest.raises(NotFoundError):
        ops_admin.kill_execution("f" * 32)


# --- incidents and quarantines ---------------------------------------------------------------------------------


def test_repeated_timeouts_throttle_the_session_until_resolved(ops: OpsServer, ops_admin: AdminClient) -> None:
    trip_repeated_timeouts(ops, "stuck")
    incident = open_incident(ops_admin, "repeated_timeouts", "acme/stuck")
    assert (incident.severity, incident.scope, incident.open) == ("medium", "session", True)
    assert incident.count >= 1
    assert incident.details["session_id"] == "stuck"
    [throttle] = incident.mitigations
    assert (throttle.action, throttle.scope, throttle.subject) == ("throttle", "session", "acme/stuck")
    assert throttle.active()
    assert throttle.expires_at is not None  # medium: for a while, not until lifted
    assert ops_admin.get_incident(incident.id) == incident
    assert ops_admin.list_incidents(tenant="acme") == (incident,)
    assert ops_admin.list_incidents(tenant="globex") == ()
    assert [m.id for m in ops_admin.list_quarantines()] == [throttle.id]

    # The throttle holds: the session gets its few executions per minute, then RESOURCE_EXHAUSTED.
    with ops.sandbox("acme") as sbx:
        for _ in range(int(throttle.throttle_per_minute)):
            assert sbx.execute("print(1)", session_id="stuck").status is Status.OK
        with pytest.raises(ResourceExhaustedError) as throttled:
            sbx.execute("print(1)", session_id="stuck")
        assert "throttled" in throttled.value.message
        assert sbx.execute("print(1)", session_id="elsewhere").status is Status.OK  # other sessions run

        resolved = ops_admin.resolve_incident(incident.id, note="fixed the agent's loop")
        assert resolved.open is False
        assert resolved.resolved_by == ops.admin_actor
        assert resolved.resolved_at is not None
        assert resolved.details["resolve_note"] == "fixed the agent's loop"
        [lifted] = resolved.mitigations
        assert (lifted.id, lifted.lifted_by, lifted.active()) == (throttle.id, ops.admin_actor, False)
        # Lifted at once: the session runs again.
        assert sbx.execute("print(2)", session_id="stuck").stdout == "2\n"

    assert ops_admin.list_quarantines() == ()
    assert [m.id for m in ops_admin.list_quarantines(include_lifted=True)] == [throttle.id]
    assert ops_admin.list_incidents(open_only=True) == ()
    assert ops_admin.resolve_incident(incident.id, note="again") == resolved  # idempotent: nothing changes


def test_escape_attempts_quarantine_the_tenant_until_lifted(ops: OpsServer, ops_admin: AdminClient) -> None:
    trip_escape_attempts(ops, "mallory")
    incident = open_incident(ops_admin, "escape_attempts", "mallory")
    assert (incident.severity, incident.scope) == ("high", "tenant")
    assert "denied_import" in incident.details["rules"]
    [quarantine] = incident.mitigations
    assert (quarantine.action, quarantine.scope, quarantine.subject, quarantine.expires_at) == (
        "quarantine", "tenant", "mallory", None
    )
    assert ops_admin.list_quarantines() == (quarantine,)

    with ops.sandbox("mallory") as sbx:
        with pytest.raises(PermissionDeniedError) as refused:
            sbx.execute("print('let me out')")
        assert refused.value.reason == "QUARANTINED"
        assert refused.value.details.metadata["mitigation_id"] == quarantine.id

        lifted = ops_admin.lift_quarantine(quarantine.id)
        assert (lifted.id, lifted.lifted_by, lifted.active()) == (quarantine.id, ops.admin_actor, False)
        assert lifted.lifted_at is not None
        assert sbx.execute("print('ok')").stdout == "ok\n"

    assert ops_admin.lift_quarantine(quarantine.id) == lifted  # idempotent
    assert ops_admin.list_quarantines() == ()
    assert ops_admin.list_quarantines(include_lifted=True) == (lifted,)
    still = ops_admin.get_incident(incident.id)
    assert still.open  # lifting one mitigation leaves its incident open
    assert still.mitigations == (lifted,)


def test_unknown_ids_are_not_found(ops_admin: AdminClient) -> None:
    for call, kind in (
        (lambda: ops_admin.get_incident("inc_000000000000"), "incident"),
        (lambda: ops_admin.resolve_incident("inc_000000000000"), "incident"),
        (lambda: ops_admin.lift_quarantine("mit_000000000000"), "mitigation"),
        (lambda: ops_admin.get_execution("nope"), "execution"),
        (lambda: ops_admin.kill_execution("nope"), "execution"),
    ):
        with pytest.raises(NotFoundError) as missing:
            call()
        assert missing.value.resource_type == kind
        assert missing.value.reason == "NOT_FOUND"


def test_strings_a_database_cannot_hold_are_bad_input(ops_admin: AdminClient) -> None:
    """PostgreSQL's text refuses NUL: every admin string that reaches a store is checked first, so a NUL is an
    INVALID_ARGUMENT naming the field (never a failed write or an INTERNAL), whichever store the server uses."""
    for call, field in (
        (lambda: ops_admin.resolve_incident("inc_000000000000", note="a\x00b"), "note"),
        (lambda: ops_admin.list_sessions("acme\x00"), "tenant"),
        (lambda: ops_admin.get_session("ses_\x00"), "session_id"),
        (lambda: ops_admin.close_session("ses_\x00"), "session_id"),
        (lambda: ops_admin.list_api_keys("acme\x00"), "tenant"),
        (lambda: ops_admin.revoke_api_key("key\x00"), "key_id"),
        (lambda: ops_admin.list_executions(tenant="acme\x00"), "tenant"),
        (lambda: ops_admin.cost_report(tenant="acme\x00"), "tenant"),
        (lambda: ops_admin.list_incidents(tenant="acme\x00"), "tenant"),
    ):
        with pytest.raises(InvalidRequestError) as bad:
            call()
        assert [v.field for v in bad.value.field_violations] == [field]


# --- costs -----------------------------------------------------------------------------------------------------


def test_cost_report_groups_the_ledger(ops: OpsServer, ops_admin: AdminClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    with ops.sandbox("acme") as acme, ops.sandbox("globex") as globex:
        acme.execute("print(1)", session_id="s1")
        acme.execute("print(2)", session_id="s2")
        acme.record_usage("s1", "gpt-test", input_tokens=1000, output_tokens=500)  # 0.001 + 0.001
        globex.execute("print(3)", session_id="s1")

    report = ops_admin.cost_report()
    assert [(r.key, r.executions) for r in report.rows] == [("globex", 1), ("acme", 2)]  # by descending total
    globex_row, acme_row = report.rows
    assert globex_row.total == pytest.approx(0.05)
    assert acme_row.execution_cost == pytest.approx(0.02)
    assert acme_row.usage_cost == pytest.approx(0.002)
    assert (acme_row.input_tokens, acme_row.output_tokens) == (1000, 500)
    assert acme_row.total == pytest.approx(0.022)
    assert report.total == pytest.approx(0.072)

    by_session = ops_admin.cost_report(group_by="session", tenant="acme")
    assert {r.key: r.total for r in by_session.rows} == {
        "acme/s1": pytest.approx(0.012), "acme/s2": pytest.approx(0.01)
    }
    assert by_session.total == pytest.approx(0.022)
    [today] = ops_admin.cost_report(group_by="day").rows
    assert today.key == datetime.now(UTC).strftime("%Y-%m-%d")
    assert today.total == pytest.approx(0.072)

    assert ops_admin.cost_report(since=before, until=datetime.now(UTC) + timedelta(seconds=1)).total == pytest.approx(
        0.072
    )
    assert ops_admin.cost_report(since=datetime.now(UTC) + timedelta(hours=1)).rows == ()
    assert ops_admin.cost_report(until=before).rows == ()
    assert ops_admin.cost_report(tenant="initech").rows == ()

    with pytest.raises(InvalidRequestError) as backwards:
        ops_admin.cost_report(since=datetime.now(UTC), until=before)
    assert [v.field for v in backwards.value.field_violations] == ["since"]
    with pytest.raises(ValueError, match="aware datetime"):
        ops_admin.cost_report(since=datetime(2024, 1, 1))  # naive: refused


# --- validation and access -------------------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument_with_field_violations(ops_admin: AdminClient) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: ops_admin.list_incidents(limit=1001), "limit"),
        (lambda: ops_admin.list_incidents(limit=-1), "limit"),
        (lambda: ops_admin.list_executions(limit=5000), "limit"),
        (lambda: ops_admin.list_executions(tenant="x" * 500), "tenant"),
        (lambda: ops_admin.list_executions(outcomes=["BOGUS"]), "outcomes[0]"),
        (lambda: ops_admin.list_executions(outcomes=["OK", "ok"]), "outcomes[1]"),  # case-sensitive
        (lambda: ops_admin.list_executions(outcomes=["ERROR:NOPE"]), "outcomes[0]"),  # not a gRPC code
        (lambda: ops_admin.list_executions(outcomes=["ERROR:OK"]), "outcomes[0]"),
        (lambda: ops_admin.list_executions(outcomes=["ERROR:"]), "outcomes[0]"),
        (lambda: ops_admin.list_executions(outcomes=["STATUS_OK"]), "outcomes[0]"),
        (lambda: ops_admin.list_executions(outcomes=["OK\x00"]), "outcomes[0]"),
        (lambda: ops_admin.list_executions(outcomes=["OK"] * 33), "outcomes"),
        (lambda: ops_admin.list_executions(since=datetime.now(UTC), until=datetime.now(UTC) - timedelta(hours=1)),
         "since"),
        (lambda: ops_admin.list_executions(since=datetime(2024, 1, 1, tzinfo=UTC),
                                           until=datetime(2024, 1, 1, tzinfo=UTC)), "since"),
        (lambda: ops_admin.get_incident(""), "id"),
        (lambda: ops_admin.resolve_incident(""), "id"),
        (lambda: ops_admin.resolve_incident("inc_000000000000", note="n" * 1001), "note"),
        (lambda: ops_admin.get_execution(""), "execution_id"),
        (lambda: ops_admin.kill_execution(""), "execution_id"),
        (lambda: ops_admin.lift_quarantine(""), "id"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRequestError) as refused:
            call()
        assert [v.field for v in refused.value.field_violations] == [field]
    assert ops_admin.list_incidents(limit=1000) == ()  # the bounds themselves are fine
    assert ops_admin.list_executions(limit=1) == ()
    every = ["OK", "NONZERO_EXIT", "TIMEOUT", "CPU_LIMIT", "MEMORY_LIMIT", "OUTPUT_LIMIT", "KILLED", "REJECTED",
             "FILE_SIZE_LIMIT", "RUNNING", "CANCELLED", "ERROR", "ERROR:INTERNAL", "ERROR:UNAVAILABLE"]
    assert ops_admin.list_executions(outcomes=every, since=datetime(1, 1, 1, tzinfo=UTC)) == ()
    with pytest.raises(InvalidRequestError) as several:  # every problem at once, each named
        ops_admin.list_executions(outcomes=["OK", "nope", "ERROR:x"], limit=5000,
                                  since=datetime.now(UTC), until=datetime.now(UTC) - timedelta(hours=1))
    assert [v.field for v in several.value.field_violations] == ["outcomes[1]", "outcomes[2]", "since", "limit"]
    with pytest.raises(ValueError, match="aware datetime"):
        ops_admin.list_executions(until=datetime(2024, 1, 1))  # naive: refused


def _refused_by_the_stub(ops: OpsServer, method: str, request: Message) -> InvalidRequestError:
    with grpc.insecure_channel(ops.target) as channel:
        call = getattr(admin_pb2_grpc.AdminStub(channel), method)
        with pytest.raises(grpc.RpcError) as refused:
            call(request, metadata=(("authorization", f"Bearer {ops.keys['admin']}"),), timeout=10)
    error = from_rpc_error(refused.value)
    assert isinstance(error, InvalidRequestError)
    return error


def test_requests_the_client_would_not_send_are_refused_too(ops: OpsServer) -> None:
    """Straight through the stub: an unknown grouping, an empty outcome and out-of-range timestamps."""
    request = admin_pb2.CostReportRequest(group_by=99)  # type: ignore[arg-type]  # an enum value no one defined
    request.since.seconds = 10**12  # past year 9999
    request.until.nanos = -1
    error = _refused_by_the_stub(ops, "CostReport", request)
    assert [v.field for v in error.field_violations] == ["group_by", "since", "until"]

    listing = admin_pb2.ListExecutionsRequest(outcomes=["TIMEOUT", ""])
    listing.since.seconds = -(10**12)  # before year 1
    listing.until.nanos = 10**9
    error = _refused_by_the_stub(ops, "ListExecutions", listing)
    assert [v.field for v in error.field_violations] == ["outcomes[1]", "since", "until"]


def test_a_tenant_key_may_not_use_them(ops: OpsServer) -> None:
    with AdminClient(ops.target, api_key=ops.keys["acme"]) as tenant:
        for call in (
            tenant.list_incidents,
            tenant.list_executions,
            tenant.list_quarantines,
            tenant.cost_report,
            lambda: tenant.kill_execution("x"),
            lambda: tenant.lift_quarantine("x"),
        ):
            with pytest.raises(PermissionDeniedError):
                call()


def test_without_operations_they_are_unavailable(admin: AdminClient) -> None:
    """A server built for policies and keys alone (conftest's ``admin``: no Operations) answers UNAVAILABLE,
    not UNIMPLEMENTED."""
    for call in (
        admin.list_incidents,
        lambda: admin.get_incident("x"),
        lambda: admin.resolve_incident("x"),
        admin.cost_report,
        admin.list_executions,
        lambda: admin.get_execution("x"),
        lambda: admin.kill_execution("x"),
        admin.list_quarantines,
        lambda: admin.lift_quarantine("x"),
    ):
        with pytest.raises(UnavailableError) as unavailable:
            call()
        assert unavailable.value.retry_after is not None

