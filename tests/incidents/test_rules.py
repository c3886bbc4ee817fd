"""Each rule fires at its threshold and not before, within its window, with the mitigation of its severity."""

from __future__ import annotations

import pytest
from incident_helpers import T0, FakeClock, RecordingSink, StartManager
from pydantic import ValidationError

from sandbox_server.incidents import (
    ALLOW,
    BudgetExceededRule,
    ErrorRateRule,
    EscapeAttemptsRule,
    IncidentManager,
    IncidentRules,
    IncidentSettings,
    RepeatedTimeoutsRule,
    SeverityResponse,
    SeverityTable,
    TeardownFailureRule,
)
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore

ESCAPE = ["denied_import"]


# --- escape_attempts ---------------------------------------------------------------------------------------


async def test_escape_attempts_fire_at_the_third_and_quarantine_the_tenant(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    for _ in range(2):
        manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    await manager.drain()
    assert store.list() == []
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW

    manager.on_violation(tenant="acme", session_id="s2", language="bash", rules=["denied_command"])
    await manager.drain()
    [incident] = store.list()
    assert (incident.rule, incident.severity, incident.scope, incident.subject, incident.tenant, incident.count) == (
        "escape_attempts", "high", "tenant", "acme", "acme", 1,
    )
    assert incident.details["rules"] == "denied_command"
    [mitigation] = incident.mitigations
    assert (mitigation.action, mitigation.scope, mitigation.subject, mitigation.expires_at) == (
        "quarantine", "tenant", "acme", None,
    )
    for session in ("s1", "another", ""):
        verdict = manager.check(tenant="acme", session_id=session, language="javascript")
        assert (verdict.refusal, verdict.mitigation) == ("quarantine", mitigation)
    assert manager.check(tenant="globex", session_id="s1", language="python") == ALLOW
    assert sink.events() == [("opened", "escape_attempts")]


async def test_escape_attempts_count_escape_like_rules_only_and_once_per_refusal(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    for _ in range(10):
        manager.on_violation(tenant="acme", session_id="s1", language="python", rules=["max_code_bytes", "env"])
    manager.on_violation(
        tenant="acme", session_id="s1", language="python", rules=["denied_import", "denied_call", "dunder_escape"]
    )
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=["denied_file_names", "other"])
    await manager.drain()
    assert store.list() == []


async def test_escape_attempts_outside_the_window_do_not_add_up(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    manager = await start_manager()
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    clock.advance(600)  # the first two are now exactly 10 minutes old: out
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    await manager.drain()
    assert store.list() == []
    clock.advance(599)
    manager.on_violation(tenant="acme", session_id="s1", language="python", rules=ESCAPE)
    await manager.drain()
    assert [i.rule for i in store.list()] == ["escape_attempts"]


async def test_escape_attempts_of_different_tenants_do_not_add_up(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    for tenant in ("a", "b", "c", "a", "b", "c"):
        manager.on_violation(tenant=tenant, session_id="s", language="python", rules=ESCAPE)
    await manager.drain()
    assert store.list() == []


async def test_escape_rule_names_threshold_and_window_are_configurable(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    rule = EscapeAttemptsRule(threshold=2, window_s=30, rules=("my_rule",))
    manager = await start_manager(IncidentSettings(rules=IncidentRules(escape_attempts=rule)))
    manager.on_violation(tenant="acme", session_id="s", language="python", rules=ESCAPE)
    manager.on_violation(tenant="acme", session_id="s", language="python", rules=["my_rule"])
    clock.advance(31)
    manager.on_violation(tenant="acme", session_id="s", language="python", rules=["my_rule"])
    await manager.drain()
    assert store.list() == []
    manager.on_violation(tenant="acme", session_id="s", language="python", rules=["my_rule"])
    await manager.drain()
    assert len(store.list()) == 1


# --- repeated_timeouts -------------------------------------------------------------------------------------


async def test_repeated_timeouts_fire_at_the_fifth_and_throttle_the_session(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    manager = await start_manager()
    for status in ("TIMEOUT", "CPU_LIMIT", "TIMEOUT", "TIMEOUT", "OK", "MEMORY_LIMIT", "ERROR:INTERNAL"):
        manager.on_execution(tenant="acme", session_id="s1", language="python", status=status)
    manager.on_execution(tenant="acme", session_id="s2", language="python", status="TIMEOUT")
    await manager.drain()
    assert store.list() == []

    manager.on_execution(tenant="acme", session_id="s1", language="python", status="CPU_LIMIT")
    await manager.drain()
    [incident] = store.list()
    assert (incident.rule, incident.severity, incident.scope, incident.subject, incident.tenant) == (
        "repeated_timeouts", "medium", "session", "acme/s1", "acme",
    )
    [mitigation] = incident.mitigations
    assert (mitigation.action, mitigation.throttle_per_minute, mitigation.expires_at) == ("throttle", 6, T0 + 900)
    verdict = manager.check(tenant="acme", session_id="s1", language="python")
    assert (verdict.refusal, verdict.mitigation, verdict.throttle_per_minute, verdict.throttle_key) == (
        None, mitigation, 6, "session:acme/s1",
    )
    assert manager.check(tenant="acme", session_id="s2", language="python") == ALLOW
    assert manager.check(tenant="acme", session_id="", language="python") == ALLOW
    clock.advance(899)
    assert manager.check(tenant="acme", session_id="s1", language="python").throttle_per_minute == 6
    clock.advance(1)  # the throttle expires by time, with no store round trip
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW


async def test_repeated_timeouts_outside_the_window_do_not_add_up(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    manager = await start_manager()
    for _ in range(4):
        manager.on_execution(tenant="acme", session_id="s1", language="python", status="TIMEOUT")
        clock.advance(1)
    clock.advance(600)
    manager.on_execution(tenant="acme", session_id="s1", language="python", status="TIMEOUT")
    await manager.drain()
    assert store.list() == []


async def test_executions_without_a_session_share_the_tenants_sessionless_subject(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    for _ in range(5):
        manager.on_execution(tenant="acme", session_id="", language="python", status="TIMEOUT")
    await manager.drain()
    [incident] = store.list()
    assert incident.subject == "acme/"
    assert manager.check(tenant="acme", session_id="", language="python").throttle_key == "session:acme/"
    assert manager.check(tenant="acme", session_id="s1", language="python") == ALLOW


# --- teardown_failure --------------------------------------------------------------------------------------


async def test_one_teardown_failure_disables_the_language(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    manager.on_teardown_failure(tenant="acme", session_id="s1", language="python", detail="cgroup busy")
    await manager.drain()
    [incident] = store.list()
    assert (incident.rule, incident.severity, incident.scope, incident.subject, incident.tenant) == (
        "teardown_failure", "critical", "language", "python", "",
    )
    assert dict(incident.details) == {"tenant": "acme", "session_id": "s1", "detail": "cgroup busy"}
    [mitigation] = incident.mitigations
    assert (mitigation.action, mitigation.scope, mitigation.subject, mitigation.expires_at) == (
        "disable_language", "language", "python", None,
    )
    for tenant in ("acme", "globex"):
        verdict = manager.check(tenant=tenant, session_id="x", language="python")
        assert (verdict.refusal, verdict.mitigation) == ("language_disabled", mitigation)
    assert manager.check(tenant="acme", session_id="x", language="javascript") == ALLOW
    assert sink.events() == [("opened", "teardown_failure")]


# --- error_rate --------------------------------------------------------------------------------------------


async def test_error_rate_needs_the_minimum_number_of_calls(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager()
    for _ in range(19):
        manager.on_call(failed=True)
    await manager.drain()
    assert store.list() == []
    manager.on_call(failed=True)
    await manager.drain()
    [incident] = store.list()
    assert (incident.rule, incident.severity, incident.scope, incident.subject, incident.tenant) == (
        "error_rate", "high", "server", "server", "",
    )
    assert incident.mitigations == ()  # server-wide: alert only
    assert manager.check(tenant="acme", session_id="s", language="python") == ALLOW
    assert sink.events() == [("opened", "error_rate")]


async def test_error_rate_fires_only_above_the_ratio(start_manager: StartManager, store: SqliteIncidentStore) -> None:
    manager = await start_manager()
    for _ in range(95):
        manager.on_call(failed=False)
    for _ in range(5):
        manager.on_call(failed=True)  # 5 of 100: exactly 5%, not above
    await manager.drain()
    assert store.list() == []
    manager.on_call(failed=True)  # 6 of 101
    await manager.drain()
    [incident] = store.list()
    assert (incident.details["calls"], incident.details["failures"]) == ("101", "6")


async def test_error_rate_forgets_calls_older_than_its_window(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    manager = await start_manager()
    for _ in range(15):
        manager.on_call(failed=True)
    clock.advance(301)
    for _ in range(15):
        manager.on_call(failed=True)
    manager.on_call(failed=False)  # successes never fire, whatever the ratio
    await manager.drain()
    assert store.list() == []


# --- budget_exceeded ---------------------------------------------------------------------------------------


async def test_budget_exceeded_throttles_the_tenant_or_the_session(
    start_manager: StartManager, store: SqliteIncidentStore
) -> None:
    manager = await start_manager()
    manager.on_budget_exceeded(tenant="acme", session_id="s1", budget="day")
    manager.on_budget_exceeded(tenant="globex", session_id="s9", budget="session")
    await manager.drain()
    by_subject = {i.subject: i for i in store.list()}
    assert set(by_subject) == {"acme", "globex/s9"}
    assert (by_subject["acme"].scope, by_subject["acme"].severity) == ("tenant", "medium")
    assert by_subject["acme"].details["budget"] == "day"
    assert (by_subject["globex/s9"].scope, by_subject["globex/s9"].tenant) == ("session", "globex")
    assert manager.check(tenant="acme", session_id="any", language="python").throttle_key == "tenant:acme"
    assert manager.check(tenant="globex", session_id="s9", language="python").throttle_key == "session:globex/s9"
    assert manager.check(tenant="globex", session_id="s8", language="python") == ALLOW


# --- switches and severities -------------------------------------------------------------------------------


def _fire_everything(manager: IncidentManager) -> None:
    for _ in range(5):
        manager.on_violation(tenant="acme", session_id="s", language="python", rules=ESCAPE)
        manager.on_execution(tenant="acme", session_id="s", language="python", status="TIMEOUT")
    for _ in range(30):
        manager.on_call(failed=True)
    manager.on_teardown_failure(tenant="acme", session_id="s", language="python", detail="x")
    manager.on_budget_exceeded(tenant="acme", session_id="s", budget="month")


async def test_nothing_fires_when_incidents_are_disabled(
    start_manager: StartManager, store: SqliteIncidentStore, sink: RecordingSink
) -> None:
    manager = await start_manager(IncidentSettings(enabled=False))
    _fire_everything(manager)
    await manager.drain()
    assert store.list() == []
    assert sink.alerts == []


async def test_each_rule_can_be_switched_off(start_manager: StartManager, store: SqliteIncidentStore) -> None:
    rules = IncidentRules(
        escape_attempts=EscapeAttemptsRule(enabled=False),
        repeated_timeouts=RepeatedTimeoutsRule(enabled=False),
        teardown_failure=TeardownFailureRule(enabled=False),
        error_rate=ErrorRateRule(enabled=False),
        budget_exceeded=BudgetExceededRule(enabled=True),
    )
    manager = await start_manager(IncidentSettings(rules=rules))
    _fire_everything(manager)
    await manager.drain()
    assert [i.rule for i in store.list()] == ["budget_exceeded"]


async def test_the_severity_table_decides_the_mitigation(
    start_manager: StartManager, store: SqliteIncidentStore, clock: FakeClock
) -> None:
    rules = IncidentRules(
        escape_attempts=EscapeAttemptsRule(severity="low"),
        repeated_timeouts=RepeatedTimeoutsRule(severity="critical"),
        teardown_failure=TeardownFailureRule(severity="medium"),
        budget_exceeded=BudgetExceededRule(severity="high"),
    )
    severities = SeverityTable(
        medium=SeverityResponse(action="throttle", throttle_per_minute=2, duration_s=60),
        high=SeverityResponse(action="quarantine", duration_s=120),
    )
    manager = await start_manager(IncidentSettings(rules=rules, severities=severities))
    _fire_everything(manager)
    await manager.drain()
    by_rule = {i.rule: i for i in store.list()}
    assert by_rule["escape_attempts"].mitigations == ()  # low: alert only
    [loop] = by_rule["repeated_timeouts"].mitigations
    assert (loop.action, loop.scope, loop.expires_at) == ("quarantine", "session", None)
    [teardown] = by_rule["teardown_failure"].mitigations
    assert (teardown.action, teardown.scope, teardown.throttle_per_minute, teardown.expires_at) == (
        "throttle", "language", 2, T0 + 60,
    )
    [budget] = by_rule["budget_exceeded"].mitigations
    assert (budget.action, budget.scope, budget.expires_at) == ("quarantine", "tenant", T0 + 120)

    assert manager.check(tenant="acme", session_id="s", language="python").refusal == "quarantine"
    verdict = manager.check(tenant="globex", session_id="s", language="python")
    assert (verdict.refusal, verdict.throttle_per_minute, verdict.throttle_key) == (None, 2, "language:python")


@pytest.mark.parametrize(
    "settings",
    [
        {"webhook_url": "ftp://example.com/hook"},
        {"webhook_url": "http://"},
        {"webhook_url": "http://example.com:99999/"},
        {"webhook_url": "http://exa mple.com/"},
        {"webhook_url": "file:///etc/passwd"},
        {"webhook_timeout_s": 0},
        {"unknown_knob": True},
        {"rules": {"escape_attempts": {"threshold": 0}}},
        {"rules": {"escape_attempts": {"rules": [""]}}},
        {"rules": {"error_rate": {"max_failure_ratio": 1.5}}},
        {"severities": {"medium": {"action": "explode"}}},
        {"max_tracked_keys": 0},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        IncidentSettings.model_validate(settings)


def test_settings_have_the_documented_defaults_and_are_frozen() -> None:
    settings = IncidentSettings.model_validate({"webhook_url": "https://hooks.example.com/x"})
    assert settings.enabled
    assert settings.webhook_url == "https://hooks.example.com/x"
    rules = settings.rules
    assert (rules.escape_attempts.threshold, rules.escape_attempts.window_s, rules.escape_attempts.severity) == (
        3, 600, "high",
    )
    assert set(rules.escape_attempts.rules) == {
        "denied_import", "denied_call", "dunder_escape", "denied_module", "dynamic_require", "denied_command",
        "denied_file_names",
    }
    assert (rules.repeated_timeouts.threshold, rules.repeated_timeouts.window_s) == (5, 600)
    assert rules.repeated_timeouts.severity == "medium"
    assert rules.teardown_failure.severity == "critical"
    assert (rules.error_rate.max_failure_ratio, rules.error_rate.window_s, rules.error_rate.min_calls) == (
        0.05, 300, 20,
    )
    assert rules.budget_exceeded.severity == "medium"
    table = settings.severities
    assert table.of("low").action == "alert"
    assert (table.of("medium").action, table.of("medium").throttle_per_minute, table.of("medium").duration_s) == (
        "throttle", 6, 900,
    )
    assert (table.of("high").action, table.of("high").duration_s) == ("quarantine", None)
    assert table.of("critical").action == "quarantine"
    with pytest.raises(ValidationError):
        settings.enabled = False
