"""The cost ledger and budget reservations: protocol and records.

Money is in the tenant's currency units (floats; the ledger sums them in SQL). Periods are UTC: a "day" budget
covers the current UTC calendar day, a "month" budget the current UTC calendar month, a "session" budget every
cost ever recorded for (tenant, session_id). Executions without a session id have no session budget.

Reservation, then settlement: before an execution runs, its worst-case cost (priced from its limits) is
reserved against every budget its tenant sets, atomically with the check, so concurrent requests cannot
overspend. When it ends, the reservation is replaced by the actual cost in one transaction. A reservation that
is never settled (the server was killed) stops counting at its ``expires_at``.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

BudgetName = Literal["session", "day", "month"]
BUDGET_NAMES: tuple[BudgetName, ...] = ("session", "day", "month")
CostKind = Literal["execution", "usage"]
GroupBy = Literal["tenant", "session", "day"]


@dataclass(frozen=True)
class Budgets:
    """A tenant's budget limits; None: no such budget."""

    per_session: float | None = None
    per_day: float | None = None
    per_month: float | None = None

    def limit(self, name: BudgetName) -> float | None:
        return {"session": self.per_session, "day": self.per_day, "month": self.per_month}[name]


@dataclass(frozen=True)
class BudgetRefusal:
    """Why a reservation was refused: ``committed`` (settled + live reservations) + ``requested`` > ``limit``."""

    budget: BudgetName
    limit: float
    committed: float
    requested: float


@dataclass(frozen=True)
class Spend:
    """Settled cost (live reservations not included) in each budget's current period."""

    session: float
    day: float
    month: float

    def of(self, name: BudgetName) -> float:
        return {"session": self.session, "day": self.day, "month": self.month}[name]


@dataclass(frozen=True)
class UsageEntry:
    """One reported LLM usage (RecordUsage)."""

    tenant: str
    session_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    idempotency_key: str = ""  # "" : not deduplicated


@dataclass(frozen=True)
class CostRow:
    """One line of a cost report."""

    key: str  # the tenant, "tenant/session" or the UTC day "YYYY-MM-DD"
    execution_cost: float
    usage_cost: float
    executions: int
    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> float:
        return self.execution_cost + self.usage_cost


class CostStore(Protocol):
    """Budget reservations and the append-only cost ledger. Thread-safe; every method is one short transaction.
    ``now`` is epoch seconds (tests pass their own; None: the current time)."""

    def reserve(
        self,
        reservation_id: str,
        tenant: str,
        session_id: str,
        amount: float,
        budgets: Budgets,
        expires_at: float,
        now: float | None = None,
    ) -> builtins.list[BudgetRefusal]:
        """Atomically check and hold ``amount`` against every budget set in ``budgets``.

        Returns [] and holds the reservation when, for each set budget, settled cost in its current period plus
        live (unexpired) reservations plus ``amount`` is at most the limit; otherwise holds nothing and returns
        one refusal per budget that would be exceeded. Atomic across threads and processes sharing the store.

        Raises:
            ValueError: negative amount, or ``reservation_id`` is already held.
        """
        ...

    def settle(
        self, reservation_id: str, tenant: str, session_id: str, execution_id: str, cost: float,
        now: float | None = None,
    ) -> bool:
        """Drop the reservation (if still held) and write ``cost`` as an execution entry, in one transaction.

        Returns False and writes nothing if ``execution_id`` already has an entry (a second settle is a no-op).
        """
        ...

    def release(self, reservation_id: str) -> None:
        """Drop a reservation without charging anything (the execution never ran). Idempotent."""
        ...

    def record_usage(self, entry: UsageEntry, now: float | None = None) -> bool:
        """Append an LLM usage entry. Returns False (and writes nothing) when ``entry.idempotency_key`` is set and
        the tenant already recorded that key."""
        ...

    def spent(self, tenant: str, session_id: str, now: float | None = None) -> Spend:
        """Settled cost of the session (0 without a session id), of the tenant's current UTC day and month."""
        ...

    def report(
        self, group_by: GroupBy, tenant: str | None = None, since: float | None = None, until: float | None = None,
    ) -> builtins.list[CostRow]:
        """Ledger totals grouped by tenant, by "tenant/session" or by UTC day, within [since, until), sorted by
        descending total. Entries of executions without a session group under "tenant/" for "session"."""
        ...

    def close(self) -> None: ...


# ---- what every implementation computes alike ---------------------------------------------------------------
BUDGET_EPSILON = 1e-9
"""Slack when comparing a sum of float costs with a limit, so that reaching a limit exactly is allowed."""
SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@dataclass(frozen=True)
class Periods:
    """The UTC day and month holding one instant, as half-open epoch-second ranges."""

    day_start: float
    day_end: float
    month_start: float
    month_end: float

    @classmethod
    def at(cls, now: float) -> Periods:
        day = int(now // SECONDS_PER_DAY)  # float floor division is exact: no rounding at midnight
        today = date.fromordinal(_EPOCH_ORDINAL + day)
        first = today.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return cls(
            day_start=float(day * SECONDS_PER_DAY),
            day_end=float((day + 1) * SECONDS_PER_DAY),
            month_start=float((first.toordinal() - _EPOCH_ORDINAL) * SECONDS_PER_DAY),
            month_end=float((following.toordinal() - _EPOCH_ORDINAL) * SECONDS_PER_DAY),
        )


def reservation_limits(reservation_id: str, tenant: str, session_id: str, amount: float, budgets: Budgets,
                       expires_at: float, now: float | None) -> tuple[dict[BudgetName, float | None], float]:
    """A reservation's arguments checked (ValueError as CostStore.reserve documents): the limits that apply, by
    budget (no session id, no session budget), and ``now`` (the current time for None)."""
    if not reservation_id:
        raise ValueError("reservation_id must not be empty")
    check_tenant(tenant)
    check_money("amount", amount)
    limits: dict[BudgetName, float | None] = {name: budgets.limit(name) for name in BUDGET_NAMES}
    for name, limit in limits.items():
        if limit is not None and math.isnan(limit):
            raise ValueError(f"the {name} budget limit is NaN")
    if not session_id:
        limits["session"] = None  # no session, no session budget
    now = time.time() if now is None else now
    if not expires_at > now:  # also catches NaN
        raise ValueError(f"expires_at ({expires_at}) must be after now ({now})")
    return limits, now


def refusals_for(limits: Mapping[BudgetName, float | None], settled: Spend, held_session: float,
                 held_tenant: float, amount: float) -> builtins.list[BudgetRefusal]:
    """One refusal per set budget that settled cost plus live reservations plus ``amount`` would exceed, in
    BUDGET_NAMES order. Live reservations carry no period: one running now is charged to the current day and
    month."""
    held: dict[BudgetName, float] = {"session": held_session, "day": held_tenant, "month": held_tenant}
    refusals = []
    for name, limit in limits.items():
        if limit is None:
            continue
        committed = settled.of(name) + held[name]
        if committed + amount > limit + BUDGET_EPSILON:
            refusals.append(BudgetRefusal(name, limit, committed, amount))
    return refusals


def day_key(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def check_tenant(tenant: str) -> None:
    if not tenant:
        raise ValueError("tenant must not be empty")


def check_money(what: str, value: float) -> None:
    # NaN would compare False with every limit and so pass every budget: refuse it here.
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
