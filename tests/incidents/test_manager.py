"""The manager around the rules: check() precedence, resolve and lift, the view's life cycle, bounds, sinks."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from incident_helpers import T0, FakeClock, RecordingSink, StartManager, webhook_receiver

import sandbox_server.incidents as incidents
from sandbox_server.incidents import (
    ALLOW,
    EscapeAttemptsRule,
    IncidentManager,
    IncidentRules,
    IncidentSettings,
    LogSink,
    RepeatedTimeoutsRule,
    SeverityResponse,
    SeverityTable,
    Verdict,
    WebhookSink,
    build_sinks,
)
from sandbox_server.stores.incidents import IncidentRecord, MitigationSpec
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore

ESCAPE = ["dunder_escape"]


def _escape_attempts(manager: IncidentManager, tenant: str = "acme", times: int = 3) -> None:
    for _ in range(times):
        manager.on_violation(tenant=tenant, session_id="s1", language="python", rules=ESCAPE)


def _timeouts(manager: IncidentManager, tenant: str = "acme", session_id: str = "s1", times: int = 5) -> None:
    for _ in range(times):
        manager.on_execution(tenant=tenant, session_id=session_id, language="python", status="TIMEOUT")


def test_public_names_are_pinned() -> None:
    assert sorted(incidents.__all__) == [
        "ALLOW", "AlertEvent", "AlertSink", "BudgetExceededRule", "ErrorRateRule", "EscapeAttemptsRule",
        "IncidentManager", "IncidentRules", "IncidentSettings", "LogSink", "RepeatedTimeoutsRule",
        "SeverityResponse", "SeverityTable", "TeardownFailureRule", "Verdict", "WebhookSink", "alert_json",
        "build_sinks",
    ]
    assert Verdict(None, None, None, "") == ALLOW


# --- check() -----------------------------------------------------------------------------------------------


async def test_check_precedence_language_then_quarantine_then_the_tightest_throttle(
    start_manager: StartManager,
) -> None:
    # low: a loose throttle on the tenant; medium (the default 6/min) on the session.
    severities = SeverityTable(low=SeverityResponse(action="throttle", throttle_per_minute=30, duration_s=600))
    rules = IncidentRules(escape_attempts=EscapeAttemptsRule(severity="low"))
    manager = await start_manager(IncidentSettings(rules=rules, severities=severities))
    _escape_attempts(manager)
    await manager.drain()
    verdict = manager.check(tenant="acme", session_id="s1", language="python")
    assert (verdict.throttle_per_minute, verdict.throttle_key) == (30, "tenant:acme")

    _timeouts(manager)
    await manager.drain()
    verdict = manager.check(tenant="acme", session_id="s1", language="python")
    assert (verdict.refusal, verdict.throttle_per_minute, verdict.throttle_key) == (None, 6, "session:acme/s1")
    assert manager.check(tenant="acme", session_id="s2", language="python").throttle_per_minute == 30

    manager.on_budget_exceeded(tenant="acme", session_id="s1", budget="session")
    await manager.drain()  # (a medium throttle on the same session: the same rate, no change)
    manager.on_teardown_failure(tenant="globex", session_id="x", language="bash", detail="stuck")
    await manager.drain()
    assert manager.check(tenant="acme", session_id="s1", language="bash").refusal == "language_disabled"
    assert manager.check(tenant="acme", session_id="s1", language="python").refusal is None


async def test_a_session_quarantine_refuses_that_session_only(start_manager: StartManager) -> None:
    rules = IncidentRules(repeated_timeouts=RepeatedTimeoutsRule(severity="high"))
    manager = await start_manager(IncidentSettings(rules=rules))
    _timeouts(manager, session_id="s1")
    await manager.drain()
    verdict = manager.check(tenant="acme", session_id="s1", language="python")
    assert verdict.refusal == "quarantine"
    assert verdict.mitigation is not None
    assert verdict.mitigation.subject == "acme/s1"
    assert manager.check(tenant="acme", session_id="s2", language="python") == ALLOW
    assert manager.check(tenant="other", session_id="s1", language="python") == ALLOW


async def test_check_is_fast(start_manager: StartManager) -> None:
    manager = await start_manager()
    _timeouts(manager)
    manager.on_teardown_failure(tenant="acme", session_id="s", language="bash", detail="x")
    await manager.drain()
    n = 20_000
    started = time.perf_counter()
    for i in range(n):
        manager.check(tenant="acme", session_id=f"s{i % 3}", language="python")
    per_call = (time.perf_counter() - started) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per check"


# --- resolve and lift --------------------------------------------------------------------------------------


async def test_resolve_clears_the_mitigation_at_once_and_alerts_once(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    _escape_attempts(manager)
    await manager.drain()
    [incident] = await manager.list(open_only=True, tenant="acme", limit=10)
    assert manager.check(tenant="acme", session_id="s1", language="python").refusal == "quarantine"

    resolved = await manager.resolve(incident.id, "ops@example", "looked at it")
    assert resolved is not None
    assert not resolved.open
    assert resolved.resolved_by == "ops@example"
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW  # no drain, no refresh
    again = await manager.resolve(incident.id, "someone-else", "")
    assert again == resolved
    assert await manager.resolve("inc_000000000000", "ops", "") is None
    await manager.drain()
    assert sink.events() == [("opened", "escape_attempts"), ("resolved", "escape_attempts")]
    assert sink.alerts[1][1].resolved_by == "ops@example"
    assert await manager.mitigations(include_lifted=False) == []
    [lifted] = await manager.mitigations(include_lifted=True)
    assert lifted.lifted_by == "ops@example"
    assert await manager.get(incident.id) == resolved


async def test_after_resolve_the_rule_starts_afresh(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    _escape_attempts(manager)
    await manager.drain()
    [incident] = store.list()
    await manager.resolve(incident.id, "ops", "")
    _escape_attempts(manager, times=2)  # the old events no longer count
    await manager.drain()
    assert len(store.list()) == 1
    _escape_attempts(manager, times=1)
    await manager.drain()
    newest = store.list()[0]
    assert newest.id != incident.id
    assert newest.open
    assert manager.check(tenant="acme", session_id="s1", language="python").refusal == "quarantine"
    assert [event for event, _ in sink.events()] == ["opened", "resolved", "opened"]


async def test_lift_clears_one_mitigation_at_once_and_the_incident_stays_open(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    manager.on_teardown_failure(tenant="acme", session_id="s1", language="python", detail="x")
    await manager.drain()
    [mitigation] = await manager.mitigations(include_lifted=False)
    lifted = await manager.lift(mitigation.id, "ops")
    assert lifted is not None
    assert lifted.lifted_by == "ops"
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW
    assert await manager.lift("mit_000000000000", "ops") is None
    # Another failure bumps the still-open incident; the operator's lift is not undone.
    manager.on_teardown_failure(tenant="acme", session_id="s2", language="python", detail="again")
    await manager.drain()
    [incident] = store.list()
    assert incident.open
    assert incident.count == 2
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW


async def test_a_bump_does_not_alert_again(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    _escape_attempts(manager, times=3)
    await manager.drain()
    _escape_attempts(manager, times=4)  # each one past the threshold is one more match
    await manager.drain()
    [incident] = store.list()
    assert incident.count == 5
    assert sink.events() == [("opened", "escape_attempts")]


async def test_events_queued_together_coalesce_into_an_exact_count(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    _escape_attempts(manager, times=50)  # no await in between: the worker sees them all queued
    await manager.drain()
    [incident] = store.list()
    assert incident.count == 48


async def test_a_throttle_that_expired_is_rearmed_when_the_subject_goes_on(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    manager = await start_manager()
    _timeouts(manager)
    await manager.drain()
    clock.advance(901)
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW
    _timeouts(manager)
    await manager.drain()
    assert manager.check(tenant="acme", session_id="s1", language="python").throttle_per_minute == 6
    [incident] = store.list()
    assert len(incident.mitigations) == 2
    assert incident.count == 2


# --- the view's life cycle ---------------------------------------------------------------------------------


async def test_start_loads_what_the_store_holds(
    store: SqliteIncidentStore, clock: FakeClock, sink: RecordingSink, db_path: Path
) -> None:
    first = IncidentManager(store, IncidentSettings(), [sink], clock)
    await first.start()
    _escape_attempts(first)
    await first.aclose()

    reopened = SqliteIncidentStore(db_path)  # a restart: a new connection, a new manager
    second = IncidentManager(reopened, IncidentSettings(), [sink], clock)
    try:
        await second.start()
        assert second.check(tenant="acme", session_id="s9", language="python").refusal == "quarantine"
        # Windows live in memory: after a restart the rule counts afresh, then bumps the incident still open.
        _escape_attempts(second, times=3)
        await second.drain()
        [incident] = reopened.list()
        assert incident.count == 2
    finally:
        await second.aclose()
        reopened.close()


async def test_events_before_start_are_performed_after_it(
    store: SqliteIncidentStore, clock: FakeClock, sink: RecordingSink
) -> None:
    manager = IncidentManager(store, IncidentSettings(), [sink], clock)
    with pytest.raises(RuntimeError, match="not started"):
        await manager.drain()
    _escape_attempts(manager)
    assert store.list() == []
    await manager.start()
    try:
        await manager.drain()
        assert len(store.list()) == 1
        with pytest.raises(RuntimeError, match="already started"):
            await manager.start()
    finally:
        await manager.aclose()


async def test_aclose_performs_what_is_queued(
    store: SqliteIncidentStore, clock: FakeClock, sink: RecordingSink
) -> None:
    manager = IncidentManager(store, IncidentSettings(), [sink], clock)
    await manager.start()
    manager.on_teardown_failure(tenant="acme", session_id="s", language="python", detail="x")
    await manager.aclose()
    assert len(store.list()) == 1
    assert sink.events() == [("opened", "teardown_failure")]
    manager.on_teardown_failure(tenant="acme", session_id="s", language="ruby", detail="x")  # after close: ignored
    await manager.aclose()  # idempotent
    assert len(store.list()) == 1
    assert manager.check(tenant="acme", session_id="s", language="python").refusal == "language_disabled"


async def test_events_from_another_thread_are_performed(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    worker = threading.Thread(
        target=lambda: manager.on_teardown_failure(tenant="acme", session_id="s", language="python", detail="x")
    )
    worker.start()
    worker.join()
    await manager.drain()
    assert [i.rule for i in store.list()] == ["teardown_failure"]


async def test_mitigations_written_by_another_replica_appear_and_go_on_refresh(
    start_manager: StartManager, clock: FakeClock, db_path: Path
) -> None:
    manager = await start_manager(IncidentSettings(refresh_interval_s=0.05))
    other = SqliteIncidentStore(db_path)  # another replica's connection
    try:
        record, _ = await asyncio.to_thread(
            other.open_or_bump, "escape_attempts", "high", "tenant", "acme", "acme", "elsewhere", {},
            MitigationSpec("quarantine", "tenant", "acme"), clock(),
        )
        await _eventually(lambda: manager.check(tenant="acme", session_id="s", language="python").refusal)
        await asyncio.to_thread(other.resolve, record.id, "ops", "", clock())
        await _eventually(lambda: manager.check(tenant="acme", session_id="s", language="python") == ALLOW)
    finally:
        other.close()


async def _eventually(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- bounds ------------------------------------------------------------------------------------------------


async def test_a_spray_of_session_ids_does_not_grow_memory(start_manager: StartManager) -> None:
    manager = await start_manager(IncidentSettings(max_tracked_keys=1_000))

    def spray(first: int, last: int) -> None:
        for i in range(first, last):
            manager.on_execution(tenant="acme", session_id=f"spray-{i}", language="python", status="TIMEOUT")

    tracemalloc.start()
    try:
        spray(0, 5_000)  # fills the bounded windows
        settled, _ = tracemalloc.get_traced_memory()
        spray(5_000, 100_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Unbounded, 95k more sessions would hold tens of megabytes of keys and timestamps.
    assert after - settled < 256 * 1024, f"grew by {after - settled} bytes"
    await manager.drain()


async def test_queued_jobs_are_bounded_and_the_excess_is_dropped(
    start_manager: StartManager, store: SqliteIncidentStore, caplog: pytest.LogCaptureFixture
) -> None:
    rules = IncidentRules(repeated_timeouts=RepeatedTimeoutsRule(threshold=1))
    manager = await start_manager(IncidentSettings(rules=rules, max_pending_events=50))
    with caplog.at_level(logging.WARNING, logger="sandbox_server.incidents.manager"):
        for i in range(100_000):  # every one fires, none can be written before the loop yields
            manager.on_execution(tenant="acme", session_id=f"s{i}", language="python", status="TIMEOUT")
    await manager.drain()
    assert len(store.list(limit=1000)) == 50
    assert any("dropped" in r.getMessage() for r in caplog.records)


# --- sinks -------------------------------------------------------------------------------------------------


def _incident(severity: str = "high") -> IncidentRecord:
    return IncidentRecord(
        id="inc_0123456789ab", rule="escape_attempts", severity=severity,  # type: ignore[arg-type]
        scope="tenant", subject="acme", tenant="acme", summary="tried", details={"rules": "denied_call"}, count=3,
        opened_at=T0, resolved_at=None, resolved_by="",
    )


@pytest.mark.parametrize(
    ("severity", "event", "level"),
    [("low", "opened", logging.WARNING), ("medium", "opened", logging.WARNING), ("high", "opened", logging.ERROR),
     ("critical", "opened", logging.ERROR), ("critical", "resolved", logging.INFO)],
)
async def test_the_log_sink_writes_one_structured_record(
    caplog: pytest.LogCaptureFixture, severity: str, event: str, level: int
) -> None:
    with caplog.at_level(logging.INFO, logger="sandbox_server.incidents.sinks"):
        await LogSink().send(_incident(severity), event)  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.name == "sandbox_server.incidents.sinks"]
    assert record.levelno == level
    assert record.__dict__["incident_id"] == "inc_0123456789ab"
    assert record.__dict__["incident_severity"] == severity
    assert record.__dict__["incident_event"] == event
    assert record.__dict__["incident_details"] == {"rules": "denied_call"}


def test_build_sinks_adds_the_webhook_only_when_configured() -> None:
    assert [type(s) for s in build_sinks(IncidentSettings())] == [LogSink]
    configured = IncidentSettings(webhook_url="https://hooks.example.com/in")
    assert [type(s) for s in build_sinks(configured)] == [LogSink, WebhookSink]


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://", "/relative", "file:///etc/passwd"])
def test_the_webhook_sink_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="http or https"):
        WebhookSink(url)


async def test_the_webhook_sink_delivers_json_to_a_real_receiver(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    with webhook_receiver() as receiver:
        manager = await start_manager(sinks=[LogSink(), WebhookSink(receiver.url, 2.0, backoff_s=0.01)])
        manager.on_teardown_failure(tenant="acme", session_id="s1", language="python", detail="cgroup busy")
        await manager.drain()
        [incident] = store.list()
        await manager.resolve(incident.id, "ops", "fixed")
        await manager.drain()
    assert len(receiver.received) == 2
    opened, resolved = receiver.received
    assert opened.path == "/hooks/incidents?token=s3cret"
    assert opened.headers["Content-Type"] == "application/json"
    body = opened.json()
    assert isinstance(body, dict)
    assert body["event"] == "opened"
    sent = body["incident"]
    assert (sent["id"], sent["rule"], sent["severity"], sent["scope"], sent["subject"], sent["count"]) == (
        incident.id, "teardown_failure", "critical", "language", "python", 1,
    )
    assert sent["details"] == {"tenant": "acme", "session_id": "s1", "detail": "cgroup busy"}
    assert [m["action"] for m in sent["mitigations"]] == ["disable_language"]
    assert sent["resolved_at"] is None
    later = resolved.json()
    assert isinstance(later, dict)
    assert later["event"] == "resolved"
    assert later["incident"]["resolved_by"] == "ops"
    assert later["incident"]["mitigations"][0]["lifted_by"] == "ops"


async def test_the_webhook_sink_retries_a_500_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    with webhook_receiver(statuses=[500, 503]) as receiver, caplog.at_level(logging.WARNING):
        await WebhookSink(receiver.url, 2.0, retries=3, backoff_s=0.01).send(_incident(), "opened")
    assert len(receiver.received) == 3
    assert len({r.body for r in receiver.received}) == 1
    assert json.loads(receiver.received[-1].body)["incident"]["id"] == "inc_0123456789ab"
    assert not [r for r in caplog.records if "not delivered" in r.getMessage()]


async def test_the_webhook_sink_gives_up_after_its_retries(caplog: pytest.LogCaptureFixture) -> None:
    with webhook_receiver(statuses=[500] * 10) as receiver, caplog.at_level(logging.WARNING):
        await WebhookSink(receiver.url, 2.0, retries=2, backoff_s=0.01).send(_incident(), "opened")
    assert len(receiver.received) == 3
    [warning] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert "HTTP 500" in warning.getMessage()
    assert "s3cret" not in warning.getMessage()
    assert "/hooks" not in warning.getMessage()


@pytest.mark.parametrize("status", [400, 302])
async def test_the_webhook_sink_neither_retries_a_client_error_nor_follows_a_redirect(
    caplog: pytest.LogCaptureFixture, status: int
) -> None:
    with webhook_receiver(statuses=[status]) as receiver, caplog.at_level(logging.WARNING):
        await WebhookSink(receiver.url, 2.0, retries=3, backoff_s=0.01).send(_incident(), "opened")
    assert [r.path for r in receiver.received] == ["/hooks/incidents?token=s3cret"]
    assert any(f"HTTP {status}" in r.getMessage() for r in caplog.records)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_receiver_that_is_down_does_not_raise_into_the_manager(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = WebhookSink(f"http://127.0.0.1:{_closed_port()}/hook", 1.0, retries=2, backoff_s=0.01)
    with caplog.at_level(logging.WARNING):
        manager = await start_manager(sinks=[webhook, sink])
        manager.on_teardown_failure(tenant="acme", session_id="s", language="python", detail="x")
        await manager.drain()
    assert len(store.list()) == 1
    assert sink.events() == [("opened", "teardown_failure")]  # the other sink still heard of it
    assert manager.check(tenant="acme", session_id="s", language="python").refusal == "language_disabled"
    assert any("not delivered after 3 attempt(s)" in r.getMessage() for r in caplog.records)


class _BrokenSink:
    async def send(self, incident: IncidentRecord, event: str) -> None:
        raise RuntimeError("a sink that breaks its contract")


async def test_a_sink_that_raises_loses_its_alert_only(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager(sinks=[_BrokenSink(), sink])
    manager.on_teardown_failure(tenant="acme", session_id="s", language="python", detail="x")
    _escape_attempts(manager)
    await manager.drain()
    assert sorted(rule for _, rule in sink.events()) == ["escape_attempts", "teardown_failure"]
    assert len(store.list()) == 2
