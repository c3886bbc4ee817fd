"""The contract every CostStore implementation keeps: budgets, reservations, the ledger and its reports.

The suite runs once per implementation: SQLite (a file) and PostgreSQL (a database of the test's own, on the
server the tests start). An opener is a picklable callable opening one durable backing, so a restart (close,
open again) and a second OS process (spawned, opening the same backing) are both expressible for each.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Literal, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_server import Postgres

from sandbox_server.stores import sqlite_costs
from sandbox_server.stores.costs import BUDGET_NAMES, BudgetName, BudgetRefusal, Budgets, CostRow, CostStore, UsageEntry
from sandbox_server.stores.postgres import PostgresDatabase
from sandbox_server.stores.postgres_costs import PostgresCostStore
from sandbox_server.stores.sqlite_costs import SqliteCostStore

DAY = 86_400.0
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC).timestamp()
TODAY = datetime(2025, 3, 15, tzinfo=UTC).timestamp()
THIS_MONTH = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
NEXT_MONTH = datetime(2025, 4, 1, tzinfo=UTC).timestamp()
LATER = NOW + 3600.0
"""A reservation's default expiry: an hour after NOW."""


# --- implementations --------------------------------------------------------------------------------------


class Opener(Protocol):
    """Opens one durable backing; picklable, so a spawned process can open the same one."""

    def __call__(self) -> CostStore: ...


@dataclass(frozen=True)
class SqliteOpener:
    path: Path

    def __call__(self) -> CostStore:
        return SqliteCostStore(self.path)


@dataclass(frozen=True)
class PostgresOpener:
    url: str

    def __call__(self) -> CostStore:
        return PostgresCostStore(PostgresDatabase(self.url), owns=True)


IMPLEMENTATIONS = ["sqlite", "postgres"]


@dataclass
class Backing:
    """The stores opened by one test, closed at its end; ``fresh`` makes another empty backing."""

    implementation: str
    make: Callable[[str], Opener]  # a new empty backing, by name
    opener: Opener
    _opened: list[CostStore] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=itertools.count)
    examples: Iterator[int] = field(default_factory=itertools.count)  # a property's examples, numbered
    _shared: CostStore | None = None

    def shared(self) -> CostStore:
        """One store over a fresh backing, opened once per test (closed with the others)."""
        if self._shared is None:
            self._shared = self.open(self.fresh())
        return self._shared

    def open(self, opener: Opener | None = None) -> CostStore:
        store = (opener or self.opener)()
        self._opened.append(store)
        return store

    def fresh(self) -> Opener:
        return self.make(f"fresh-{next(self._names)}")

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture(params=IMPLEMENTATIONS)
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    make: Callable[[str], Opener]
    if request.param == "postgres":
        server: Postgres = request.getfixturevalue("postgres")
        make = lambda _name: PostgresOpener(server.create_database())  # noqa: E731
    else:
        make = lambda name: SqliteOpener(tmp_path / f"{name}.db")  # noqa: E731
    made = Backing(request.param, make, make("costs"))
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def store(backing: Backing) -> CostStore:
    return backing.open()


_ids = itertools.count()


def reserve(
    store: CostStore,
    amount: float,
    budgets: Budgets,
    *,
    tenant: str = "acme",
    session: str = "s1",
    now: float = NOW,
    expires_at: float | None = None,
    reservation_id: str | None = None,
) -> list[BudgetRefusal]:
    rid = reservation_id if reservation_id is not None else f"r{next(_ids)}"
    return store.reserve(rid, tenant, session, amount, budgets, now + 3600.0 if expires_at is None else expires_at,
                         now=now)


def charge(store: CostStore, cost: float, *, tenant: str = "acme", session: str = "s1", now: float = NOW) -> None:
    """A settled execution with no reservation behind it (the ledger entry alone)."""
    assert store.settle(f"none-{next(_ids)}", tenant, session, f"e{next(_ids)}", cost, now=now)


def only(name: BudgetName, limit: float) -> Budgets:
    return Budgets(**{f"per_{name}": limit})


def usage(cost: float, *, tenant: str = "acme", session: str = "s1", key: str = "", tokens: tuple[int, int] = (0, 0),
          model: str = "m") -> UsageEntry:
    return UsageEntry(tenant, session, model, tokens[0], tokens[1], cost, key)


def test_the_sqlite_module_exports() -> None:
    assert sorted(sqlite_costs.__all__) == ["BUDGET_EPSILON", "SqliteCostStore"]


# --- reserve against each budget --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUDGET_NAMES)
def test_reserving_up_to_a_limit_is_allowed_and_past_it_refused(store: CostStore, name: BudgetName) -> None:
    budgets = only(name, 5.0)
    assert reserve(store, 3.0, budgets) == []
    assert reserve(store, 2.0, budgets) == []  # exactly reaching the limit
    assert reserve(store, 0.01, budgets) == [BudgetRefusal(name, 5.0, 5.0, 0.01)]


@pytest.mark.parametrize("name", BUDGET_NAMES)
def test_settled_cost_counts_toward_each_budget(store: CostStore, name: BudgetName) -> None:
    charge(store, 4.0)
    assert reserve(store, 1.5, only(name, 5.0)) == [BudgetRefusal(name, 5.0, 4.0, 1.5)]
    assert reserve(store, 1.0, only(name, 5.0)) == []


def test_float_sums_reaching_a_limit_exactly_are_allowed(store: CostStore) -> None:
    budgets = Budgets(per_day=0.3)
    for _ in range(3):
        assert reserve(store, 0.1, budgets) == []  # 0.1 + 0.1 + 0.1 > 0.3 in floats
    assert [r.budget for r in reserve(store, 1e-6, budgets)] == ["day"]


def test_a_refusal_names_every_exceeded_budget_and_only_those(store: CostStore) -> None:
    charge(store, 4.0)
    charge(store, 3.0, session="s2")
    budgets = Budgets(per_session=5.0, per_day=8.0, per_month=100.0)
    refusals = reserve(store, 2.0, budgets)
    assert refusals == [BudgetRefusal("session", 5.0, 4.0, 2.0), BudgetRefusal("day", 8.0, 7.0, 2.0)]
    assert reserve(store, 1.0, budgets) == []


def test_nothing_is_held_on_refusal(store: CostStore) -> None:
    budgets = Budgets(per_session=5.0, per_day=5.0, per_month=5.0)
    assert reserve(store, 3.0, budgets) == []
    assert len(reserve(store, 4.0, budgets)) == 3
    assert reserve(store, 2.0, budgets) == []  # the refused 4.0 holds nothing
    assert store.spent("acme", "s1", now=NOW).day == 0.0  # reservations are not spending


def test_no_budgets_means_no_limit(store: CostStore) -> None:
    assert reserve(store, 1e12, Budgets()) == []


def test_the_session_budget_applies_only_with_a_session_id(store: CostStore) -> None:
    budgets = Budgets(per_session=1.0)
    assert reserve(store, 10.0, budgets, session="") == []
    charge(store, 10.0, session="")
    assert reserve(store, 10.0, budgets, session="") == []
    assert store.spent("acme", "", now=NOW).session == 0.0
    assert reserve(store, 1.0, budgets, session="s1") == []  # "" spending is no session's


def test_budgets_are_per_scope(store: CostStore) -> None:
    budgets = Budgets(per_session=5.0, per_day=8.0)
    assert reserve(store, 4.0, budgets, session="s1") == []
    charge(store, 3.0, session="s2")
    charge(store, 100.0, tenant="other", session="s1")
    reserve(store, 100.0, Budgets(), tenant="other", session="s1")
    # s2's cost and s1's reservation count toward acme's day; the other tenant counts toward nothing of acme's.
    assert reserve(store, 1.5, budgets, session="s2") == [BudgetRefusal("day", 8.0, 7.0, 1.5)]
    assert reserve(store, 1.0, budgets, session="s2") == []
    assert reserve(store, 1.0, budgets, session="s1") == [BudgetRefusal("day", 8.0, 8.0, 1.0)]
    assert reserve(store, 1.0, Budgets(per_session=5.0), session="s1") == []


def test_a_held_reservation_id_cannot_be_reserved_again(store: CostStore) -> None:
    assert reserve(store, 1.0, Budgets(), reservation_id="r") == []
    with pytest.raises(ValueError, match="already held"):
        reserve(store, 1.0, Budgets(), reservation_id="r")


# --- settle and release -----------------------------------------------------------------------------------


def test_settling_replaces_the_reservation_with_the_actual_cost(store: CostStore) -> None:
    budgets = Budgets(per_session=5.0, per_day=5.0, per_month=5.0)
    assert reserve(store, 5.0, budgets, reservation_id="r1") == []
    assert [r.budget for r in reserve(store, 1.0, budgets)] == ["session", "day", "month"]
    assert store.settle("r1", "acme", "s1", "e1", 2.0, now=NOW)
    spent = store.spent("acme", "s1", now=NOW)
    assert (spent.session, spent.day, spent.month) == (2.0, 2.0, 2.0)
    assert reserve(store, 3.0, budgets) == []  # the 3.0 freed by settling below the worst case
    assert reserve(store, 0.5, budgets) == [
        BudgetRefusal("session", 5.0, 5.0, 0.5),
        BudgetRefusal("day", 5.0, 5.0, 0.5),
        BudgetRefusal("month", 5.0, 5.0, 0.5),
    ]


def test_settling_an_execution_twice_is_a_no_op(store: CostStore) -> None:
    budgets = Budgets(per_day=10.0)
    assert reserve(store, 5.0, budgets, reservation_id="r1") == []
    assert store.settle("r1", "acme", "s1", "e1", 2.0, now=NOW)
    assert not store.settle("r1", "acme", "s1", "e1", 2.0, now=NOW)
    assert store.spent("acme", "s1", now=NOW).day == 2.0
    # Another reservation settled under the same execution id is dropped all the same, and charged nothing.
    assert reserve(store, 8.0, budgets, reservation_id="r2") == []
    assert not store.settle("r2", "acme", "s1", "e1", 3.0, now=NOW)
    assert store.spent("acme", "s1", now=NOW).day == 2.0
    assert reserve(store, 8.0, budgets) == []
    assert [row.executions for row in store.report("tenant")] == [1]


def test_settling_without_a_reservation_still_charges(store: CostStore) -> None:
    assert store.settle("never-held", "acme", "s1", "e1", 1.5, now=NOW)
    assert store.spent("acme", "s1", now=NOW).day == 1.5


def test_release_frees_the_reservation_and_is_idempotent(store: CostStore) -> None:
    budgets = Budgets(per_day=5.0)
    assert reserve(store, 5.0, budgets, reservation_id="r1") == []
    assert reserve(store, 1.0, budgets) != []
    store.release("r1")
    store.release("r1")
    store.release("unknown")
    assert reserve(store, 5.0, budgets) == []
    assert store.spent("acme", "s1", now=NOW).day == 0.0


def test_expired_reservations_stop_counting(store: CostStore) -> None:
    budgets = Budgets(per_session=5.0, per_day=5.0, per_month=5.0)
    assert reserve(store, 5.0, budgets, expires_at=NOW + 60.0, reservation_id="r1") == []
    assert len(reserve(store, 1.0, budgets, now=NOW + 59.0)) == 3
    assert reserve(store, 5.0, budgets, now=NOW + 60.0) == []  # expires_at is the first instant it is dead
    # Its id is free again once it expired (the server that held it is gone).
    assert reserve(store, 0.0, budgets, now=NOW + 61.0, reservation_id="r1") == []


def test_settling_an_expired_reservation_charges_the_cost(store: CostStore) -> None:
    assert reserve(store, 5.0, Budgets(), expires_at=NOW + 60.0, reservation_id="r1") == []
    assert store.settle("r1", "acme", "s1", "e1", 3.0, now=NOW + 120.0)
    assert store.spent("acme", "s1", now=NOW).day == 3.0


# --- periods ----------------------------------------------------------------------------------------------


def test_yesterday_counts_toward_the_month_but_not_today(store: CostStore) -> None:
    charge(store, 4.0, now=NOW - DAY)
    spent = store.spent("acme", "s1", now=NOW)
    assert (spent.session, spent.day, spent.month) == (4.0, 0.0, 4.0)
    assert reserve(store, 5.0, Budgets(per_day=5.0), reservation_id="today") == []
    store.release("today")
    assert reserve(store, 1.5, Budgets(per_month=5.0)) == [BudgetRefusal("month", 5.0, 4.0, 1.5)]
    assert reserve(store, 1.5, Budgets(per_session=5.0)) == [BudgetRefusal("session", 5.0, 4.0, 1.5)]


def test_last_month_counts_toward_neither_day_nor_month_but_the_session(store: CostStore) -> None:
    charge(store, 4.0, now=THIS_MONTH - 1.0)
    spent = store.spent("acme", "s1", now=NOW)
    assert (spent.session, spent.day, spent.month) == (4.0, 0.0, 0.0)
    assert reserve(store, 5.0, Budgets(per_day=5.0, per_month=5.0)) == []


def test_periods_are_half_open_utc_days_and_months(store: CostStore) -> None:
    charge(store, 1.0, now=TODAY - 0.001)  # yesterday's last millisecond
    charge(store, 2.0, now=TODAY)  # today's first instant
    charge(store, 4.0, now=TODAY + DAY)  # tomorrow
    charge(store, 8.0, now=NEXT_MONTH)
    charge(store, 16.0, now=THIS_MONTH)
    spent = store.spent("acme", "s1", now=NOW)
    assert (spent.day, spent.month) == (2.0, 1.0 + 2.0 + 4.0 + 16.0)
    rollover = store.spent("acme", "s1", now=NEXT_MONTH + 1.0)
    assert (rollover.day, rollover.month) == (8.0, 8.0)
    end_of_year = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    charge(store, 32.0, now=end_of_year)
    new_year = store.spent("acme", "s1", now=end_of_year + 1.0)
    assert (new_year.day, new_year.month, new_year.session) == (0.0, 0.0, 63.0)


def test_reservations_made_yesterday_still_count_while_live(store: CostStore) -> None:
    assert reserve(store, 4.0, Budgets(), now=NOW - DAY, expires_at=NOW + 60.0) == []
    assert reserve(store, 2.0, Budgets(per_day=5.0)) == [BudgetRefusal("day", 5.0, 4.0, 2.0)]


def test_usage_counts_toward_every_budget(store: CostStore) -> None:
    assert store.record_usage(usage(4.0), now=NOW)
    spent = store.spent("acme", "s1", now=NOW)
    assert (spent.session, spent.day, spent.month) == (4.0, 4.0, 4.0)
    for name in BUDGET_NAMES:
        assert reserve(store, 1.5, only(name, 5.0)) == [BudgetRefusal(name, 5.0, 4.0, 1.5)]


def test_spent_without_a_session(store: CostStore) -> None:
    charge(store, 2.0)
    spent = store.spent("acme", "", now=NOW)
    assert (spent.session, spent.day, spent.month) == (0.0, 2.0, 2.0)
    assert store.spent("nobody", "s1", now=NOW).month == 0.0


# --- usage and idempotency --------------------------------------------------------------------------------


def test_idempotency_keys_dedupe_per_tenant(store: CostStore) -> None:
    assert store.record_usage(usage(1.0, key="k1"), now=NOW)
    assert not store.record_usage(usage(5.0, key="k1", session="s2"), now=NOW)
    assert store.record_usage(usage(2.0, key="k1", tenant="other"), now=NOW)
    assert store.record_usage(usage(1.0), now=NOW)
    assert store.record_usage(usage(1.0), now=NOW)  # no key: never deduplicated
    assert store.spent("acme", "s1", now=NOW).day == 3.0
    assert store.spent("other", "s1", now=NOW).day == 2.0


# --- reports ----------------------------------------------------------------------------------------------


def _report_fixture(store: CostStore) -> None:
    charge(store, 1.0, tenant="acme", session="s1", now=NOW)
    charge(store, 2.0, tenant="acme", session="s1", now=NOW - DAY)
    charge(store, 4.0, tenant="acme", session="", now=NOW)
    assert store.record_usage(usage(0.5, tenant="acme", session="s2", tokens=(100, 20)), now=NOW)
    assert store.record_usage(usage(0.25, tenant="acme", session="s1", tokens=(10, 2)), now=NOW - DAY)
    charge(store, 10.0, tenant="bigco", session="x", now=NOW - 2 * DAY)
    assert store.record_usage(usage(3.0, tenant="bigco", session="x", tokens=(1, 1)), now=NOW)


def test_report_by_tenant(store: CostStore) -> None:
    _report_fixture(store)
    assert store.report("tenant") == [
        CostRow("bigco", 10.0, 3.0, 1, 1, 1),
        CostRow("acme", 7.0, 0.75, 3, 110, 22),
    ]
    assert store.report("tenant", tenant="acme") == [CostRow("acme", 7.0, 0.75, 3, 110, 22)]
    assert store.report("tenant", tenant="nobody") == []


def test_report_by_session(store: CostStore) -> None:
    _report_fixture(store)
    assert store.report("session") == [
        CostRow("bigco/x", 10.0, 3.0, 1, 1, 1),
        CostRow("acme/", 4.0, 0.0, 1, 0, 0),  # executions without a session
        CostRow("acme/s1", 3.0, 0.25, 2, 10, 2),
        CostRow("acme/s2", 0.0, 0.5, 0, 100, 20),
    ]


def test_report_by_day(store: CostStore) -> None:
    _report_fixture(store)
    assert store.report("day") == [
        CostRow("2025-03-13", 10.0, 0.0, 1, 0, 0),
        CostRow("2025-03-15", 5.0, 3.5, 2, 101, 21),
        CostRow("2025-03-14", 2.0, 0.25, 1, 10, 2),
    ]
    assert store.report("day", tenant="acme") == [
        CostRow("2025-03-15", 5.0, 0.5, 2, 100, 20),
        CostRow("2025-03-14", 2.0, 0.25, 1, 10, 2),
    ]


def test_report_days_are_utc_and_split_at_midnight(store: CostStore) -> None:
    charge(store, 1.0, now=TODAY - 1e-4)
    charge(store, 2.0, now=TODAY)
    assert [(row.key, row.total) for row in store.report("day")] == [("2025-03-15", 2.0), ("2025-03-14", 1.0)]


def test_report_window_is_half_open(store: CostStore) -> None:
    _report_fixture(store)
    assert store.report("tenant", since=TODAY) == [
        CostRow("acme", 5.0, 0.5, 2, 100, 20),
        CostRow("bigco", 0.0, 3.0, 0, 1, 1),
    ]
    assert store.report("tenant", until=TODAY) == [
        CostRow("bigco", 10.0, 0.0, 1, 0, 0),
        CostRow("acme", 2.0, 0.25, 1, 10, 2),
    ]
    assert store.report("day", since=NOW - DAY, until=NOW) == [CostRow("2025-03-14", 2.0, 0.25, 1, 10, 2)]
    assert store.report("tenant", since=NOW, until=NOW) == []


def test_report_ties_are_ordered_by_key(store: CostStore) -> None:
    for tenant in ("c", "a", "b"):
        charge(store, 1.0, tenant=tenant)
    assert [row.key for row in store.report("tenant")] == ["a", "b", "c"]


def test_report_rejects_an_unknown_grouping(store: CostStore) -> None:
    with pytest.raises(ValueError, match="group_by"):
        store.report("model")  # type: ignore[arg-type]


def test_reservations_are_not_in_reports(store: CostStore) -> None:
    assert reserve(store, 5.0, Budgets()) == []
    assert store.report("tenant") == []


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [-0.01, float("nan"), float("inf")])
def test_reserve_rejects_bad_amounts(store: CostStore, amount: float) -> None:
    with pytest.raises(ValueError, match="amount"):
        reserve(store, amount, Budgets(per_day=5.0))


@pytest.mark.parametrize("cost", [-1.0, float("nan")])
def test_settle_and_usage_reject_bad_costs(store: CostStore, cost: float) -> None:
    with pytest.raises(ValueError, match="cost"):
        store.settle("r", "acme", "s1", "e1", cost, now=NOW)
    with pytest.raises(ValueError, match="cost"):
        store.record_usage(usage(cost), now=NOW)
    assert store.report("tenant") == []


@pytest.mark.parametrize("tokens", [(-1, 0), (0, -1)])
def test_usage_rejects_negative_tokens(store: CostStore, tokens: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="token"):
        store.record_usage(usage(1.0, tokens=tokens), now=NOW)


def test_an_empty_tenant_is_rejected(store: CostStore) -> None:
    with pytest.raises(ValueError, match="tenant"):
        reserve(store, 1.0, Budgets(), tenant="")
    with pytest.raises(ValueError, match="tenant"):
        store.settle("r", "", "s1", "e1", 1.0, now=NOW)
    with pytest.raises(ValueError, match="tenant"):
        store.record_usage(usage(1.0, tenant=""), now=NOW)


def test_a_reservation_must_outlive_now(store: CostStore) -> None:
    with pytest.raises(ValueError, match="expires_at"):
        reserve(store, 1.0, Budgets(), expires_at=NOW)


def test_a_nan_limit_is_rejected_rather_than_ignored(store: CostStore) -> None:
    with pytest.raises(ValueError, match="NaN"):
        reserve(store, 1.0, Budgets(per_day=float("nan")))


def test_another_tenant_cannot_settle_a_reservation(store: CostStore) -> None:
    assert reserve(store, 5.0, Budgets(), reservation_id="r1") == []
    with pytest.raises(ValueError, match="another tenant"):
        store.settle("r1", "other", "s1", "e1", 1.0, now=NOW)
    assert reserve(store, 1.0, Budgets(per_day=5.0)) != []  # still held
    assert store.report("tenant") == []


# --- durability -------------------------------------------------------------------------------------------


def test_entries_and_reservations_survive_a_restart(backing: Backing) -> None:
    first = backing.open()
    assert reserve(first, 2.0, Budgets(), reservation_id="r1") == []
    assert reserve(first, 3.0, Budgets(), reservation_id="r2") == []
    assert first.settle("r1", "acme", "s1", "e1", 1.5, now=NOW)
    assert first.record_usage(usage(0.5, key="k1", tokens=(7, 3)), now=NOW)
    first.close()
    again = backing.open()
    spent = again.spent("acme", "s1", now=NOW)
    assert (spent.session, spent.day, spent.month) == (2.0, 2.0, 2.0)
    assert again.report("tenant") == [CostRow("acme", 1.5, 0.5, 1, 7, 3)]
    assert not again.settle("r1", "acme", "s1", "e1", 1.5, now=NOW)
    assert not again.record_usage(usage(0.5, key="k1"), now=NOW)
    assert reserve(again, 5.0, Budgets(per_day=5.0)) == [BudgetRefusal("day", 5.0, 5.0, 5.0)]  # r2 still held


# --- concurrency ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stores", [1, 4])
def test_concurrent_threads_never_overspend(backing: Backing, stores: int) -> None:
    """16 threads race to reserve 1.0 each against a 5.0 day budget, through one store or several over the
    same backing: exactly 5 win."""
    opened = [backing.open() for _ in range(stores)]
    start = threading.Barrier(16)

    def attempt(i: int) -> bool:
        start.wait(timeout=30)
        return reserve(opened[i % stores], 1.0, Budgets(per_day=5.0), reservation_id=f"t{i}") == []

    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(attempt, range(16)))
    assert sum(won) == 5
    assert reserve(opened[0], 0.5, Budgets(per_day=5.0)) == [BudgetRefusal("day", 5.0, 5.0, 0.5)]


PROCESSES = 3
ROUNDS = 20
ATTEMPTS_PER_ROUND = 3
ROUND_LIMIT = 4.0


def _race_in_child(opener: Opener, index: int, start: Barrier, results: SimpleQueue[list[int]]) -> None:
    """Runs in a spawned process: open the shared backing, then in each round wait for the others and reserve
    1.0 against that round's tenant as often as asked; report how many were granted per round."""
    store = opener()
    try:
        won = []
        for round_ in range(ROUNDS):
            start.wait(timeout=60)
            won.append(sum(
                reserve(store, 1.0, Budgets(per_day=ROUND_LIMIT), tenant=f"t{round_}",
                        reservation_id=f"t{round_}-p{index}-{attempt}") == []
                for attempt in range(ATTEMPTS_PER_ROUND)
            ))
        results.put(won)
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_concurrent_processes_never_overspend(backing: Backing) -> None:
    """Separate OS processes sharing one backing race, round after round, 9 reservations of 1.0 against a
    fresh tenant's 4.0 budget: exactly 4 are granted every round (the check and the hold are one transaction
    across processes, not only across threads). Each round starts at a barrier, so every race is at the limit."""
    store = backing.open()  # the schema exists before the children race
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results: SimpleQueue[list[int]] = context.SimpleQueue()
    children = [
        context.Process(target=_race_in_child, args=(backing.opener, i, start, results)) for i in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(timeout=150)
            assert child.exitcode == 0, f"child exited with {child.exitcode}"
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
    won = [results.get() for _ in children]
    assert [sum(per_round) for per_round in zip(*won, strict=True)] == [ROUND_LIMIT] * ROUNDS
    for round_ in range(ROUNDS):
        assert reserve(store, 0.5, Budgets(per_day=ROUND_LIMIT), tenant=f"t{round_}") == [
            BudgetRefusal("day", ROUND_LIMIT, ROUND_LIMIT, 0.5)
        ]


# --- a property: no sequence of operations over-commits ---------------------------------------------------

PROPERTY_BUDGETS = Budgets(per_session=6.0, per_day=10.0, per_month=16.0)
Op = (
    tuple[Literal["reserve"], str, float, float]  # session, amount, lifetime (s)
    | tuple[Literal["settle"], int, float]  # which held reservation, fraction of its amount charged
    | tuple[Literal["release"], int]
    | tuple[Literal["wait"], float]  # seconds
)
_quarters = st.integers(min_value=0, max_value=24).map(lambda n: n / 4)  # exact in binary: no epsilon games
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from(["a", "b", ""]), _quarters, st.sampled_from([60.0, 7200.0])),
        st.tuples(st.just("settle"), st.integers(0, 7), st.sampled_from([0.0, 0.5, 1.0])),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("wait"), st.sampled_from([30.0, 3600.0, 6 * 3600.0])),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_no_sequence_of_operations_over_commits(backing: Backing, ops: list[Op]) -> None:
    """Model-based: a reservation is granted exactly when settled spend plus the live reservations the model
    knows of plus the amount fits every budget, and committed never exceeds a limit."""
    # One store for every example, each example its own tenant (budgets are per tenant): an empty database per
    # example made PostgreSQL's run of this property take as long as a hundred CREATE DATABASEs.
    store = backing.shared()
    tenant = f"acme-{next(backing.examples)}"
    now = NOW
    held: dict[str, tuple[str, float, float]] = {}  # id -> (session, amount, expires_at)
    counter = itertools.count()

    def committed(session: str) -> dict[BudgetName, float]:
        spent = store.spent(tenant, session, now=now)
        live = [(s, amount) for s, amount, expires in held.values() if expires > now]
        return {
            "session": spent.session + sum(a for s, a in live if s == session) if session else 0.0,
            "day": spent.day + sum(a for _, a in live),
            "month": spent.month + sum(a for _, a in live),
        }

    for op in ops:
        if op[0] == "reserve":
            _, session, amount, lifetime = op
            before = committed(session)
            fits = all(
                before[name] + amount <= limit
                for name in BUDGET_NAMES
                if (limit := PROPERTY_BUDGETS.limit(name)) is not None and (name != "session" or session)
            )
            rid = f"{tenant}-r{next(counter)}"
            refusals = store.reserve(rid, tenant, session, amount, PROPERTY_BUDGETS, now + lifetime, now=now)
            assert (refusals == []) == fits, (before, amount, refusals)
            if not refusals:
                held[rid] = (session, amount, now + lifetime)
        elif op[0] == "settle" and held:
            _, which, fraction = op
            rid = sorted(held)[which % len(held)]
            session, amount, _ = held.pop(rid)
            assert store.settle(rid, tenant, session, f"e-{rid}", amount * fraction, now=now)
        elif op[0] == "release" and held:
            rid = sorted(held)[op[1] % len(held)]
            held.pop(rid)
            store.release(rid)
        elif op[0] == "wait":
            now += op[1]
            # An expired reservation's execution is presumed gone with its server: never settled. (A settlement
            # after expiry charges its cost, which nothing held for any more: expiries must outlast executions.)
            held = {rid: h for rid, h in held.items() if h[2] > now}
        for session in ("a", "b"):
            for name, value in committed(session).items():
                limit = PROPERTY_BUDGETS.limit(name)
                assert limit is not None
                # Settling or waiting into a new period can only lower what is committed in the current one.
                assert value <= limit, (name, session, value)
