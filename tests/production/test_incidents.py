"""Incident response through a real server: each rule opens an incident from real traffic and its mitigation
is enforced on the next request (quarantine, throttle, disabled language); alerts reach a loopback webhook;
lifting a mitigation lets requests through again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from production_helpers import metric, scrape, server_with_policy

from sandbox_client import (
    InvalidRequestError,
    Limits,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxClient,
    ServerError,
    Status,
)
from sandbox_server.backends.nsjail import NsjailBackend
from sandbox_server.errors import SandboxFailure
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, OutputCallback
from sandbox_server.incidents import IncidentManager
from sandbox_server.testing import RunningServer


def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _manager(srv: RunningServer) -> IncidentManager:
    assert srv.app.incidents is not None
    return srv.app.incidents


def _open(srv: RunningServer, rule: str) -> list[Any]:
    stores = srv.app.stores
    assert stores is not None
    return [i for i in stores.incidents.list(open_only=True) if i.rule == rule]


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{receiver.server_address[1]}/alerts", received
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_escape_attempts_quarantine_the_tenant_until_lifted(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, alerts = webhook
    with server_with_policy(tmp_path, "", incidents={"webhook_url": url}) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        session = sbx.session()
        for code in ("import ctypes", "import socket", "__import__('os')"):
            with pytest.raises(InvalidRequestError):
                sbx.execute(code, session_id="attacker")
        _until(lambda: bool(_open(srv, "escape_attempts")), "the incident")
        (incident,) = _open(srv, "escape_attempts")
        assert (incident.severity, incident.scope, incident.subject) == ("high", "tenant", "default")
        (mitigation,) = incident.mitigations
        assert mitigation.action == "quarantine"
        with pytest.raises(PermissionDeniedError) as info:
            sbx.execute("print('harmless')", session_id="someone-else")
        assert info.value.reason == "QUARANTINED"
        assert info.value.details.metadata["incident_id"] == incident.id
        assert info.value.details.metadata["mitigation_id"] == mitigation.id
        # Its session runs nothing more, but closing it (which only ends work) is still allowed.
        with pytest.raises(PermissionDeniedError) as info:
            session.run("1")
        assert info.value.reason == "QUARANTINED"
        closed = session.close()
        assert closed is not None
        assert closed.state.name == "CLOSED"
        _until(lambda: any(a["incident"]["id"] == incident.id for a in alerts), "the webhook alert")
        (alert,) = [a for a in alerts if a["incident"]["id"] == incident.id]
        assert alert["event"] == "opened"
        assert alert["incident"]["rule"] == "escape_attempts"
        text = scrape(srv, calls=7)  # create, three refusals, two quarantined, the close
        assert metric(text, "sandbox_rejections_total", reason="quarantine") == 2
        assert metric(text, "sandbox_incidents_total", rule="escape_attempts", severity="high") == 1
        # The operator lifts it (the admin API and CLI call the same manager).
        _run(srv, _manager(srv).lift(mitigation.id, "admin/test"))
        assert sbx.execute("print('harmless')").ok


def test_exercises_are_observed_apart_and_never_mitigated(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, alerts = webhook
    with server_with_policy(tmp_path, "", incidents={"webhook_url": url}) as srv, \
            SandboxClient(srv.target, retry=None, exercise=True) as drill, \
            SandboxClient(srv.target, retry=None) as agent:
        with drill.session() as session:
            for code in ("import ctypes", "import socket", "__import__('os')"):
                with pytest.raises(InvalidRequestError):
                    session.run(code)
            _until(lambda: bool(_open(srv, "escape_attempts")), "the exercise incident")
            (incident,) = _open(srv, "escape_attempts")
            assert (incident.exercise, incident.subject, incident.mitigations) == (True, "default", ())
            assert session.run("1 + 1").value == "2"  # nothing quarantined: the exercise goes on
        ran, plain = drill.execute("print('drill')"), agent.execute("print('agent')")
        stores = srv.app.stores
        assert stores is not None
        audited = {r.execution_id: r.exercise for r in stores.audit.list()}
        assert (audited[ran.execution_id], audited[plain.execution_id]) == (True, False)
        # The same refusals as ordinary traffic open a real incident, which quarantines the tenant (exercises
        # too: they never get round a mitigation in force), and which alone pages.
        for code in ("import ctypes", "import socket", "__import__('os')"):
            with pytest.raises(InvalidRequestError):
                agent.execute(code)
        _until(lambda: len(_open(srv, "escape_attempts")) == 2, "the real incident")
        (real,) = [i for i in _open(srv, "escape_attempts") if not i.exercise]
        assert [m.action for m in real.mitigations] == ["quarantine"]
        for client in (agent, drill):
            with pytest.raises(PermissionDeniedError) as info:
                client.execute("print(1)")
            assert info.value.reason == "QUARANTINED"
        _until(lambda: bool(alerts), "the webhook alert")
        assert [a["incident"]["id"] for a in alerts] == [real.id]
        assert metric(scrape(srv), "sandbox_incidents_total", rule="escape_attempts") == 1


def test_a_teardown_failure_during_an_exercise_is_real(tmp_path: Path) -> None:
    """An exercise provokes refusals and timeouts on purpose; a sandbox the server cannot tear down is the server
    failing, whoever's request it was: a real incident, with its mitigation."""
    with server_with_policy(tmp_path, "", backend_factory=_LeakyTeardown) as srv, \
            SandboxClient(srv.target, retry=None, exercise=True) as drill:
        with pytest.raises(ServerError):
            drill.execute("print(1)")
        _until(lambda: bool(_open(srv, "teardown_failure")), "the incident")
        (incident,) = _open(srv, "teardown_failure")
        assert (incident.exercise, incident.subject) == (False, "python")
        assert [m.action for m in incident.mitigations] == ["disable_language"]
        with pytest.raises(PermissionDeniedError) as info:
            drill.execute("print(1)")
        assert info.value.reason == "LANGUAGE_DISABLED"


def test_repeated_timeouts_throttle_the_session_not_the_tenant(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", max_running=4) as srv, SandboxClient(srv.target, retry=None) as sbx:
        for _ in range(5):
            r = sbx.execute("while True: pass", session_id="loopy", limits=Limits(wall_time_s=0.2))
            assert r.status.name == "TIMEOUT"
        _until(lambda: bool(_open(srv, "repeated_timeouts")), "the incident")
        (incident,) = _open(srv, "repeated_timeouts")
        assert (incident.severity, incident.scope, incident.subject) == ("medium", "session", "default/loopy")
        (mitigation,) = incident.mitigations
        assert (mitigation.action, mitigation.throttle_per_minute) == ("throttle", 6)
        assert mitigation.expires_at is not None
        for _ in range(6):
            assert sbx.execute("print(1)", session_id="loopy").ok
        with pytest.raises(ResourceExhaustedError) as info:
            sbx.execute("print(1)", session_id="loopy")
        assert info.value.quota_violations[0].subject == "session:default/loopy/throttle"
        assert info.value.retry_after is not None
        for _ in range(8):
            assert sbx.execute("print(1)", session_id="well-behaved").ok


def test_an_exceeded_budget_opens_an_incident(tmp_path: Path) -> None:
    policy = "pricing: {per_execution: 1.0}\nbudget: {per_session: 2}"
    with server_with_policy(tmp_path, policy) as srv, SandboxClient(srv.target, retry=None) as sbx:
        for _ in range(2):
            sbx.execute("print(1)", session_id="spender")
        _until(lambda: bool(_open(srv, "budget_exceeded")), "the incident")
        (incident,) = _open(srv, "budget_exceeded")
        assert (incident.scope, incident.subject, incident.details.get("budget")) == (
            "session", "default/spender", "session")


class _LeakyTeardown(NsjailBackend):
    """The real nsjail backend, whose teardown then reports a leak: fault injection for the rule."""

    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        await super().run(spec, on_output)
        raise SandboxFailure("sandbox teardown failed: cgroup still busy (injected)",
                             metadata={"phase": "teardown", "backend": self.name})


class _LeakyDeferredTeardown(NsjailBackend):
    """The real nsjail backend, whose teardown after the reply then reports a leak: fault injection for the
    rule's other way in (Backend.on_teardown_failure)."""

    async def _teardown(self, run: Any) -> None:
        await super()._teardown(run)
        raise SandboxFailure("sandbox teardown failed: scratch still mounted (injected)",
                             metadata={"phase": "teardown", "backend": self.name})


class _Failing(NsjailBackend):
    """Fails every execution as the server's fault (fault injection for the error-rate rule)."""

    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        raise SandboxFailure("could not create the execution's cgroup (injected)")


def test_a_teardown_failure_disables_the_language(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", backend_factory=_LeakyTeardown) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        with pytest.raises(ServerError):
            sbx.execute("print(1)")
        _until(lambda: bool(_open(srv, "teardown_failure")), "the incident")
        (incident,) = _open(srv, "teardown_failure")
        assert (incident.severity, incident.scope, incident.subject) == ("critical", "language", "python")
        with pytest.raises(PermissionDeniedError) as info:
            sbx.execute("print(1)")
        assert info.value.reason == "LANGUAGE_DISABLED"
        assert metric(scrape(srv), "sandbox_teardown_failures_total", backend="nsjail") == 1
        _run(srv, _manager(srv).resolve(incident.id, "admin/test", "fixed the host"))
        with pytest.raises(ServerError):  # allowed again (and this backend still fails)
            sbx.execute("print(1)")


def test_a_teardown_failing_after_the_reply_disables_the_language(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", backend_factory=_LeakyDeferredTeardown) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        result = sbx.execute("print(1)", session_id="leaky")
        assert (result.status, result.stdout) == (Status.OK, "1\n")  # the reply went out before the teardown
        _until(lambda: bool(_open(srv, "teardown_failure")), "the incident")
        (incident,) = _open(srv, "teardown_failure")
        assert (incident.severity, incident.scope, incident.subject) == ("critical", "language", "python")
        assert "scratch still mounted" in incident.details.get("detail", "")
        # told in the execution's own context, after its call had ended
        assert (incident.details.get("tenant"), incident.details.get("session_id")) == ("default", "leaky")
        with pytest.raises(PermissionDeniedError) as info:
            sbx.execute("print(1)")
        assert info.value.reason == "LANGUAGE_DISABLED"
        assert metric(scrape(srv), "sandbox_teardown_failures_total", backend="nsjail") == 1


def test_a_high_error_rate_alerts(tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, alerts = webhook
    rules = {"webhook_url": url, "rules": {"error_rate": {"min_calls": 4}}}
    with server_with_policy(tmp_path, "", backend_factory=_Failing, incidents=rules) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        for _ in range(4):
            with pytest.raises(ServerError):
                sbx.execute("print(1)")
        _until(lambda: any(a["incident"]["rule"] == "error_rate" for a in alerts), "the alert")
        (incident,) = _open(srv, "error_rate")
        assert (incident.scope, incident.subject, incident.mitigations) == ("server", "server", ())


def _run(srv: RunningServer, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on the server's own loop (the manager lives there)."""
    return asyncio.run_coroutine_threadsafe(coro, srv.loop).result(timeout=10)
