"""Exercises (an operator's own checks, marked by an admin): every rule still observes them, but counted apart
from real traffic; their incidents are marked, carry no mitigation and reach only the exercise sinks (the log, by
default), never the sinks that page."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest
from incident_helpers import FakeClock, RecordingSink

from sandbox_server.incidents import ALLOW, IncidentManager, IncidentSettings, LogSink
from sandbox_server.stores.incidents import IncidentRecord
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore

ESCAPE = ["dunder_escape"]
Provoke = Callable[[IncidentManager, bool], None]


def _escapes(manager: IncidentManager, exercise: bool, times: int = 3) -> None:
    for _ in range(times):
        manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE, exercise=exercise)


def _timeouts(manager: IncidentManager, exercise: bool) -> None:
    for _ in range(5):
        manager.on_execution(tenant="acme", session_id="s1", language="python", status="TIMEOUT", exercise=exercise)


def _budget(manager: IncidentManager, exercise: bool) -> None:
    manager.on_budget_exceeded(tenant="acme", session_id="s1", budget="day", exercise=exercise)


def _loop(manager: IncidentManager, exercise: bool) -> None:
    manager.on_session_loop(tenant="acme", session_id="s1", language="python", repeats=3, failure="NameError",
                            exercise=exercise)


RULES: dict[str, Provoke] = {
    "escape_attempts": _escapes, "repeated_timeouts": _timeouts, "budget_exceeded": _budget,
    "session_loop": _loop,
}


@pytest.fixture
async def managers(
    store: SqliteIncidentStore, clock: FakeClock
) -> AsyncIterator[Callable[..., IncidentManager]]:
    """Makes started-later managers over the test's store; closed at the end."""
    made: list[IncidentManager] = []

    def make(*, sinks: list[RecordingSink], exercise_sinks: list[RecordingSink] | None = None) -> IncidentManager:
        manager = IncidentManager(store, IncidentSettings(), sinks, clock, exercise_sinks=exercise_sinks)
        made.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            await manager.aclose()


@pytest.mark.parametrize("rule", sorted(RULES))
async def test_every_rule_observes_an_exercise_without_mitigating_or_paging(
    rule: str, managers: Callable[..., IncidentManager], store: SqliteIncidentStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paging = RecordingSink()
    manager = managers(sinks=[paging])  # the default exercise sink: the log
    await manager.start()
    with caplog.at_level(logging.INFO, logger="sandbox_server.incidents.sinks"):
        RULES[rule](manager, True)
        await manager.drain()
    [incident] = store.list()
    assert (incident.rule, incident.exercise, incident.mitigations) == (rule, True, ())
    for tenant, session_id, language in (("acme", "s1", "python"), ("acme", "", "python")):
        assert manager.check(tenant=tenant, session_id=session_id, language=language) == ALLOW
    assert paging.alerts == []  # no webhook, no incident metric: nothing that pages
    [logged] = [r for r in caplog.records if getattr(r, "incident_id", None) == incident.id]
    assert logged.levelno == logging.INFO
    assert logged.getMessage().startswith(f"exercise incident {incident.id} opened: ")
    assert logged.__dict__["incident_exercise"] is True


async def test_exercises_and_real_traffic_are_counted_apart(managers: Callable[..., IncidentManager]) -> None:
    paging, drills = RecordingSink(), RecordingSink()
    manager = managers(sinks=[paging], exercise_sinks=[drills])
    await manager.start()
    _escapes(manager, True, times=2)
    _escapes(manager, False, times=1)
    await manager.drain()
    assert (paging.alerts, drills.alerts) == ([], [])  # 2 + 1: neither kind reached the threshold of 3

    _escapes(manager, True, times=1)
    await manager.drain()
    [(event, drill)] = drills.alerts
    assert (event, drill.exercise, drill.mitigations) == ("opened", True, ())
    assert manager.check(tenant="acme", session_id="", language="python") == ALLOW

    # Real traffic reaching the threshold opens its own incident, and is quarantined, whatever exercises are open.
    _escapes(manager, False, times=2)
    await manager.drain()
    [(event, real)] = paging.alerts
    assert (event, real.exercise, [m.action for m in real.mitigations]) == ("opened", False, ["quarantine"])
    assert manager.check(tenant="acme", session_id="", language="python").refusal == "quarantine"

    # Later exercise events bump the exercise incident, not the real one; resolving one leaves the other.
    _escapes(manager, True, times=1)
    await manager.drain()
    by_id = {i.id: i for i in await manager.list(open_only=True, tenant="acme", limit=10)}
    assert (by_id[drill.id].count, by_id[real.id].count) == (2, 1)
    assert await manager.resolve(drill.id, "admin/alice", "the red-team run") is not None
    await manager.drain()
    assert manager.check(tenant="acme", session_id="", language="python").refusal == "quarantine"
    assert [e for e, _ in drills.alerts] == ["opened", "resolved"]
    assert [e for e, _ in paging.alerts] == ["opened"]


async def test_an_exercise_never_re_arms_or_widens_a_real_mitigation(
    managers: Callable[..., IncidentManager], clock: FakeClock
) -> None:
    manager = managers(sinks=[RecordingSink()], exercise_sinks=[])
    await manager.start()
    _timeouts(manager, False)  # medium: a 15-minute throttle on the session
    await manager.drain()
    assert manager.check(tenant="acme", session_id="s1", language="python").throttle_per_minute == 6
    clock.advance(16 * 60)  # the throttle expired; a real bump would re-arm it, an exercise must not
    _timeouts(manager, True)
    await manager.drain()
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW


async def test_the_log_sink_says_exercise_at_info(caplog: pytest.LogCaptureFixture) -> None:
    record = IncidentRecord("inc_1", "escape_attempts", "critical", "tenant", "acme", "acme", "tried", {}, 3, 1.0,
                            None, "", (), exercise=True)
    with caplog.at_level(logging.INFO, logger="sandbox_server.incidents.sinks"):
        await LogSink().send(record, "opened")
    [logged] = caplog.records
    assert (logged.levelno, logged.getMessage()) == (
        logging.INFO, "exercise incident inc_1 opened: tried [critical, tenant acme, count 3]")
