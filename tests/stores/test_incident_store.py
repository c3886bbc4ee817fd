"""The contract every IncidentStore implementation keeps. Add an implementation to ``INCIDENT_STORES``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox_server.stores.incidents import IncidentRecord, IncidentStore, MitigationSpec
from sandbox_server.stores.postgres import PostgresDatabase
from sandbox_server.stores.postgres_incidents import PostgresIncidentStore
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore

INCIDENT_STORES = ["postgres", "sqlite"]

T0 = 1_700_000_000.0
QUARANTINE_TENANT = MitigationSpec("quarantine", "tenant", "acme")


Opener = Callable[[], IncidentStore]


@pytest.fixture(params=INCIDENT_STORES)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the implementation over one durable backing (a file, or a database of the test's own); opening
    again (after close) is a restart, and two open at once are two replicas."""
    opened: list[IncidentStore] = []
    factory: Callable[[], IncidentStore]
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database()
        factory = lambda: PostgresIncidentStore(PostgresDatabase(url), owns=True)  # noqa: E731
    else:
        factory = lambda: SqliteIncidentStore(tmp_path / "incidents.db")  # noqa: E731

    def open_one() -> IncidentStore:
        made = factory()
        opened.append(made)
        return made

    try:
        yield open_one
    finally:
        for made in opened:
            made.close()


@pytest.fixture
def store(open_store: Opener) -> IncidentStore:
    return open_store()


def _escape(
    store: IncidentStore,
    *,
    subject: str = "acme",
    now: float = T0,
    mitigation: MitigationSpec | None = QUARANTINE_TENANT,
    rule: str = "escape_attempts",
    increment: int = 1,
    exercise: bool = False,
) -> tuple[IncidentRecord, bool]:
    return store.open_or_bump(
        rule, "high", "tenant", subject, subject, f"{subject} tried to escape", {"rules": "denied_import"},
        mitigation, now, increment, exercise,
    )


# --- open and bump -----------------------------------------------------------------------------------------


def test_open_returns_the_new_incident_with_its_mitigation(store: IncidentStore) -> None:
    record, opened = _escape(store)
    assert opened
    assert record.id.startswith("inc_")
    assert len(record.id) == len("inc_") + 12
    assert (record.rule, record.severity, record.scope, record.subject, record.tenant) == (
        "escape_attempts", "high", "tenant", "acme", "acme",
    )
    assert (record.summary, dict(record.details), record.count) == (
        "acme tried to escape", {"rules": "denied_import"}, 1,
    )
    assert (record.opened_at, record.resolved_at, record.resolved_by, record.open) == (T0, None, "", True)
    [mitigation] = record.mitigations
    assert mitigation.id.startswith("mit_")
    assert len(mitigation.id) == len("mit_") + 12
    assert (mitigation.incident_id, mitigation.action, mitigation.scope, mitigation.subject) == (
        record.id, "quarantine", "tenant", "acme",
    )
    assert (mitigation.created_at, mitigation.expires_at, mitigation.lifted_at, mitigation.lifted_by) == (
        T0, None, None, "",
    )
    assert mitigation.active(T0 + 10**6)
    assert store.get(record.id) == record


def test_details_come_back_read_only(store: IncidentStore) -> None:
    record, _ = _escape(store)
    with pytest.raises(TypeError):
        record.details["rules"] = "x"  # type: ignore[index]


def test_an_open_incident_is_bumped_not_opened_again(store: IncidentStore) -> None:
    first, _ = _escape(store)
    second, opened = _escape(store, now=T0 + 5)
    assert not opened
    assert second.id == first.id
    assert second.count == 2
    assert second.opened_at == T0
    assert second.mitigations == first.mitigations  # the bump adds no mitigation
    assert len(store.list()) == 1


def test_increment_counts_several_events_in_one_call(store: IncidentStore) -> None:
    record, opened = _escape(store, increment=3)
    assert opened
    assert record.count == 3
    record, opened = _escape(store, increment=4)
    assert not opened
    assert record.count == 7


def test_another_subject_or_rule_opens_its_own(store: IncidentStore) -> None:
    a, _ = _escape(store, subject="acme")
    b, opened_b = _escape(store, subject="globex", mitigation=None)
    c, opened_c = _escape(store, subject="acme", rule="budget_exceeded", mitigation=None)
    assert opened_b
    assert opened_c
    assert len({a.id, b.id, c.id}) == 3
    assert b.mitigations == ()


def test_exercise_incidents_are_kept_apart_from_ordinary_ones(store: IncidentStore) -> None:
    drill, opened = _escape(store, mitigation=None, exercise=True)
    assert opened
    assert (drill.exercise, drill.mitigations) == (True, ())
    real, opened = _escape(store, now=T0 + 1)  # the open exercise incident does not absorb real traffic
    assert opened
    assert real.id != drill.id
    assert (real.exercise, [m.action for m in real.mitigations]) == (False, ["quarantine"])
    assert _escape(store, mitigation=None, now=T0 + 2, exercise=True)[0].id == drill.id
    assert _escape(store, now=T0 + 3)[0].id == real.id
    assert [(i.id, i.count, i.exercise) for i in store.list(open_only=True)] == [
        (real.id, 2, False), (drill.id, 2, True)]
    store.resolve(drill.id, "alice", now=T0 + 4)
    assert [i.id for i in store.list(open_only=True)] == [real.id]
    assert [m.incident_id for m in store.mitigations(now=T0 + 5)] == [real.id]


def test_racing_callers_open_one_incident_and_count_every_call(open_store: Opener) -> None:
    stores = [open_store(), open_store()]  # two connections: another replica sharing the backing
    calls_per_worker, workers = 10, 8
    start = threading.Barrier(workers)

    def worker(index: int) -> list[tuple[str, bool]]:
        start.wait()
        results = []
        for _ in range(calls_per_worker):
            record, opened = _escape(stores[index % 2])
            results.append((record.id, opened))
        return results

    with ThreadPoolExecutor(workers) as pool:
        results = [r for batch in pool.map(worker, range(workers)) for r in batch]
    ids = {incident_id for incident_id, _ in results}
    assert len(ids) == 1
    assert sum(opened for _, opened in results) == 1
    [record] = stores[0].list()
    assert record.count == workers * calls_per_worker
    assert len(record.mitigations) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"severity": "urgent"}, "severity"),
        ({"scope": "planet"}, "scope"),
        ({"subject": ""}, "subject"),
        ({"rule": ""}, "rule"),
        ({"increment": 0}, "increment"),
        ({"mitigation": MitigationSpec("quarantine", "server", "server")}, "mitigation"),
        ({"mitigation": MitigationSpec("throttle", "tenant", "acme")}, "rate"),
        ({"mitigation": MitigationSpec("quarantine", "tenant", "")}, "subject"),
        ({"details": {"n": 1}}, "details"),
        ({"exercise": True, "mitigation": QUARANTINE_TENANT}, "exercise incident has no mitigation"),
    ],
)
def test_bad_arguments_are_refused_and_write_nothing(
    store: IncidentStore, change: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "rule": "escape_attempts", "severity": "high", "scope": "tenant", "subject": "acme", "tenant": "acme",
        "summary": "s", "details": {}, "mitigation": None, "now": T0, "increment": 1,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        store.open_or_bump(**arguments)  # type: ignore[arg-type]
    assert store.list() == []
    assert store.mitigations(include_lifted=True) == []


# --- resolve, lift, expiry -----------------------------------------------------------------------------------


def test_resolve_lifts_the_active_mitigations(store: IncidentStore) -> None:
    record, _ = _escape(store)
    resolved = store.resolve(record.id, "ops@example", "false alarm", now=T0 + 60)
    assert resolved is not None
    assert (resolved.resolved_at, resolved.resolved_by, resolved.open) == (T0 + 60, "ops@example", False)
    assert resolved.details["resolve_note"] == "false alarm"
    [mitigation] = resolved.mitigations
    assert (mitigation.lifted_at, mitigation.lifted_by) == (T0 + 60, "ops@example")
    assert not mitigation.active(T0 + 61)
    assert store.mitigations(now=T0 + 61) == []
    assert store.get(record.id) == resolved


def test_resolve_is_idempotent_and_unknown_ids_are_none(store: IncidentStore) -> None:
    record, _ = _escape(store)
    first = store.resolve(record.id, "alice", now=T0 + 1)
    again = store.resolve(record.id, "bob", "late", now=T0 + 2)
    assert again == first
    assert first is not None
    assert "resolve_note" not in first.details
    assert store.resolve("inc_000000000000", "alice") is None


def test_after_resolve_the_next_match_opens_a_new_incident(store: IncidentStore) -> None:
    old, _ = _escape(store)
    store.resolve(old.id, "alice", now=T0 + 1)
    new, opened = _escape(store, now=T0 + 2)
    assert opened
    assert new.id != old.id
    assert new.count == 1
    assert [m.incident_id for m in store.mitigations(now=T0 + 3)] == [new.id]


def test_resolve_does_not_mark_expired_mitigations_lifted(store: IncidentStore) -> None:
    spec = MitigationSpec("throttle", "tenant", "acme", expires_at=T0 + 10, throttle_per_minute=6)
    record, _ = _escape(store, mitigation=spec)
    resolved = store.resolve(record.id, "alice", now=T0 + 20)
    assert resolved is not None
    assert resolved.mitigations[0].lifted_at is None  # it had expired on its own


def test_lift_one_mitigation_leaves_the_incident_open(store: IncidentStore) -> None:
    record, _ = _escape(store)
    mitigation_id = record.mitigations[0].id
    lifted = store.lift(mitigation_id, "alice", now=T0 + 5)
    assert lifted is not None
    assert (lifted.lifted_at, lifted.lifted_by, lifted.active(T0 + 6)) == (T0 + 5, "alice", False)
    assert store.lift(mitigation_id, "bob", now=T0 + 9) == lifted  # idempotent
    assert store.lift("mit_000000000000", "alice") is None
    after = store.get(record.id)
    assert after is not None
    assert after.open
    assert after.mitigations == (lifted,)
    assert store.mitigations(now=T0 + 6) == []
    assert store.mitigations(include_lifted=True, now=T0 + 6) == [lifted]


def test_a_mitigation_lifted_by_hand_is_not_rearmed_by_a_bump(store: IncidentStore) -> None:
    record, _ = _escape(store)
    store.lift(record.mitigations[0].id, "alice", now=T0 + 1)
    bumped, opened = _escape(store, now=T0 + 2)
    assert not opened
    assert len(bumped.mitigations) == 1
    assert store.mitigations(now=T0 + 3) == []


def test_mitigations_expire(store: IncidentStore) -> None:
    spec = MitigationSpec("throttle", "session", "acme/s1", expires_at=T0 + 60, throttle_per_minute=6)
    record, _ = store.open_or_bump(
        "repeated_timeouts", "medium", "session", "acme/s1", "acme", "loops", {}, spec, now=T0
    )
    [mitigation] = record.mitigations
    assert mitigation.throttle_per_minute == 6
    assert store.mitigations(now=T0 + 59.9) == [mitigation]
    assert store.mitigations(now=T0 + 60) == []
    assert store.mitigations(include_lifted=True, now=T0 + 60) == [mitigation]


def test_a_bump_after_expiry_rearms_the_mitigation(store: IncidentStore) -> None:
    spec = MitigationSpec("throttle", "session", "acme/s1", expires_at=T0 + 60, throttle_per_minute=6)
    first, _ = store.open_or_bump("repeated_timeouts", "medium", "session", "acme/s1", "acme", "", {}, spec, T0)
    during, _ = store.open_or_bump("repeated_timeouts", "medium", "session", "acme/s1", "acme", "", {}, spec, T0 + 30)
    assert len(during.mitigations) == 1  # still active: nothing to re-arm
    later = MitigationSpec("throttle", "session", "acme/s1", expires_at=T0 + 160, throttle_per_minute=6)
    after, opened = store.open_or_bump(
        "repeated_timeouts", "medium", "session", "acme/s1", "acme", "", {}, later, T0 + 100
    )
    assert not opened
    assert after.id == first.id
    assert after.count == 3
    assert len(after.mitigations) == 2
    assert [m.expires_at for m in store.mitigations(now=T0 + 101)] == [T0 + 160]


# --- listing -----------------------------------------------------------------------------------------------


def test_list_is_newest_first_and_filters(store: IncidentStore) -> None:
    a, _ = _escape(store, subject="acme", now=T0)
    b, _ = _escape(store, subject="globex", now=T0 + 1, mitigation=None)
    c, _ = _escape(store, subject="acme", rule="budget_exceeded", now=T0 + 2, mitigation=None)
    store.resolve(b.id, "alice", now=T0 + 3)
    assert [r.id for r in store.list()] == [c.id, b.id, a.id]
    assert [r.id for r in store.list(open_only=True)] == [c.id, a.id]
    assert [r.id for r in store.list(tenant="acme")] == [c.id, a.id]
    assert [r.id for r in store.list(tenant="globex", open_only=True)] == []
    assert [r.id for r in store.list(limit=2)] == [c.id, b.id]
    assert store.list()[2].mitigations == a.mitigations  # listed with their mitigations
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)


def test_mitigations_are_newest_first(store: IncidentStore) -> None:
    a, _ = _escape(store, subject="acme", now=T0)
    b, _ = _escape(store, subject="globex", now=T0 + 1, mitigation=MitigationSpec("quarantine", "tenant", "globex"))
    assert [m.incident_id for m in store.mitigations(now=T0 + 2)] == [b.id, a.id]


def test_get_unknown_is_none(store: IncidentStore) -> None:
    assert store.get("inc_000000000000") is None


# --- durability --------------------------------------------------------------------------------------------


def test_everything_survives_a_restart(open_store: Opener) -> None:
    first = open_store()
    record, _ = _escape(first)
    lifted_one, _ = _escape(first, subject="globex", mitigation=MitigationSpec("quarantine", "tenant", "globex"))
    first.lift(lifted_one.mitigations[0].id, "alice", now=T0 + 1)
    expected = [first.get(record.id), first.get(lifted_one.id)]
    first.close()

    second = open_store()
    assert [second.get(record.id), second.get(lifted_one.id)] == expected
    assert [m.incident_id for m in second.mitigations(now=T0 + 2)] == [record.id]
    bumped, opened = _escape(second, now=T0 + 3)  # still the one open incident for its subject
    assert not opened
    assert bumped.id == record.id
    assert bumped.count == 2


def test_close_is_idempotent_and_a_closed_store_refuses_calls(store: IncidentStore) -> None:
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.list()
