"""Budgets: reserve an execution's worst-case cost before it runs, settle its actual cost after.

The reservation is checked and held in one store transaction, so concurrent requests of a tenant cannot
overspend: the request that would take a budget past its limit is refused before it runs (BudgetExceeded:
RESOURCE_EXHAUSTED + QuotaFailure naming the budget). The settled cost is the actual one, capped at the
reservation (an execution killed a few ms past its wall limit is not charged beyond what was held).

What is charged when an accepted execution ends without a result: if the client went away, the time it ran,
priced as if it used its whole CPU share and memory limit meanwhile (capped at the reservation); if the server
failed it, nothing (our fault). A request refused before it ran (queue full, a later check) is released.

Events: crossing a budget's warning fraction (policy ``budget.warn_fraction``, 80% by default) logs a warning
and counts ``sandbox_budget_warnings_total``; reaching the limit also tells ``BudgetEvents`` (incidents).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sandbox_server.cost.pricing import execution_cost, usage_cost, worst_case_cost
from sandbox_server.errors import FieldViolation, InvalidRequest, QuotaViolation, ResourceExhausted
from sandbox_server.execution.spec import ExecutionSpec, Usage
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.stores.costs import (
    BUDGET_NAMES,
    BudgetName,
    BudgetRefusal,
    Budgets,
    CostStore,
    Spend,
    UsageEntry,
)
from sandbox_server.stores.outage import through_outage
from sandbox_server.telemetry import Metrics

log = logging.getLogger(__name__)

# The ledger's name for a live session's held memory (a "usage" entry, as model tokens are: cost that is not an
# execution's).
HELD_MEMORY_MODEL = "session:held-memory"
# A reservation outlives its execution's wall limit by this much before it stops counting (a crashed server's
# reservations free themselves); settling happens well before.
RESERVATION_GRACE_S = 300.0


class BudgetExceeded(ResourceExhausted):
    reason = "BUDGET_EXCEEDED"


class BudgetEvents(Protocol):
    def on_budget_exceeded(self, *, tenant: str, session_id: str, budget: str, exercise: bool = False) -> None: ...


@dataclass(frozen=True)
class BudgetState:
    budget: BudgetName
    limit: float
    spent: float

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.limit


@dataclass
class Reservation:
    """One execution's hold on its tenant's budgets (``held``: the store holds it; else nothing to hold)."""

    id: str
    tenant: str
    session_id: str
    amount: float
    policy: TenantPolicy
    cpu_cores: float
    memory_bytes: int  # the limit the reservation was priced with
    held: bool
    started_at: float | None = None  # monotonic; set when the execution got its slot
    done: bool = field(default=False)
    exercise: bool = False  # an exercise's charges are observed as exercise traffic


def budgets_of(policy: TenantPolicy) -> Budgets:
    b = policy.budget
    return Budgets(per_session=b.per_session, per_day=b.per_day, per_month=b.per_month)


def seconds_until_period_ends(budget: BudgetName, now: float) -> float | None:
    """When a day or month budget frees up (UTC); None for a session budget (it never does)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if budget == "day":
        end = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif budget == "month":
        end = (moment.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        return None
    return (end - moment).total_seconds()


class Budgeter:
    def __init__(
        self, store: CostStore, metrics: Metrics | None = None, events: BudgetEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.events = events
        self.clock = clock

    async def reserve(self, tenant: str, policy: TenantPolicy, spec: ExecutionSpec) -> Reservation:
        """Hold the execution's worst-case cost against every budget of its tenant.

        Raises:
            BudgetExceeded: a budget would be exceeded; nothing is held.
        """
        amount = worst_case_cost(policy.pricing, spec.limits, egress=spec.egress is not None)
        budgets = budgets_of(policy)
        if not spec.session_id:
            budgets = Budgets(per_day=budgets.per_day, per_month=budgets.per_month)
        res = Reservation(uuid.uuid4().hex, tenant, spec.session_id, amount, policy, spec.cpu_cores,
                          spec.limits.memory_bytes, held=False, exercise=spec.exercise)
        if budgets == Budgets():
            return res
        now = self.clock()
        expires = now + spec.limits.wall_time_ms / 1000 + RESERVATION_GRACE_S
        refusals = await asyncio.to_thread(
            self.store.reserve, res.id, tenant, spec.session_id, amount, budgets, expires, now)
        if refusals:
            raise _exceeded(tenant, spec.session_id, refusals, now)
        res.held = True
        return res

    def started(self, res: Reservation) -> None:
        res.started_at = time.monotonic()

    async def settle(self, res: Reservation, execution_id: str, usage: Usage) -> float:
        """Charge the actual cost (capped at the reservation); returns it."""
        cost = min(execution_cost(res.policy.pricing, usage), res.amount)
        await self._charge(res, execution_id, cost)
        return cost

    async def abandon(self, res: Reservation, execution_id: str, *, client_went_away: bool) -> None:
        """The execution ended without a result (see the module docstring for what is charged)."""
        if res.done:
            return
        if client_went_away and res.started_at is not None:
            ran = time.monotonic() - res.started_at
            estimate = execution_cost(res.policy.pricing, Usage(
                wall_time_s=ran, cpu_time_s=ran * res.cpu_cores,
                peak_memory_bytes=res.memory_bytes))
            await self._charge(res, execution_id, min(estimate, res.amount))
            return
        res.done = True
        if res.held:
            await asyncio.to_thread(self.store.release, res.id)

    async def _charge(self, res: Reservation, execution_id: str, cost: float) -> None:
        res.done = True
        if cost == 0 and not res.held:
            return  # nothing priced, nothing held: the ledger records money, and the audit every execution
        now = self.clock()
        watched = budgets_of(res.policy) != Budgets()

        def write() -> Spend | None:
            # One trip to a worker thread: what was spent before (only when a budget is watched) and the write.
            before = self.store.spent(res.tenant, res.session_id, now) if watched else None
            self.store.settle(res.id, res.tenant, res.session_id, execution_id, cost, now)
            return before

        # The execution has run: its charge waits through a short store outage (settle is idempotent per
        # execution id).
        before = await through_outage(write, f"charge of {execution_id}")
        self._after_charge(res.tenant, res.session_id, res.policy, cost, before_spent=before, exercise=res.exercise)

    async def record_usage(
        self, tenant: str, policy: TenantPolicy, session_id: str, model: str, input_tokens: int,
        output_tokens: int, idempotency_key: str,
    ) -> tuple[float, float, list[BudgetState]]:
        """Record reported model usage. Returns (its cost, the session's cost so far, every budget's state).

        Raises:
            InvalidRequest: the tenant's price table does not name the model.
        """
        cost = usage_cost(policy.pricing, model, input_tokens, output_tokens)
        if cost is None:
            known = ", ".join(sorted(policy.pricing.models)) or "none"
            raise InvalidRequest([FieldViolation(
                "model", f"no price for model {model[:80]!r} in tenant {tenant!r}'s policy (priced models: {known})",
                reason="unknown_model")])
        now = self.clock()
        entry = UsageEntry(tenant, session_id, model, input_tokens, output_tokens, cost, idempotency_key)

        def write() -> tuple[Spend, bool]:
            return self.store.spent(tenant, session_id, now), self.store.record_usage(entry, now)

        before, recorded = await asyncio.to_thread(write)
        if recorded:
            self._after_charge(tenant, session_id, policy, cost, before_spent=before)
        else:
            cost = 0.0  # a retried report: recorded once already
        after = await asyncio.to_thread(self.store.spent, tenant, session_id, self.clock())
        return cost, after.session, _states(policy, session_id, after)

    async def check(self, tenant: str, policy: TenantPolicy, session_id: str) -> None:
        """Refuse (BudgetExceeded) when a budget the tenant (or ``session_id``) draws on is already spent, as a new
        session's first step; nothing is held."""
        budgets = budgets_of(policy)
        if budgets == Budgets():
            return
        now = self.clock()
        probe = uuid.uuid4().hex
        refusals = await asyncio.to_thread(self.store.reserve, probe, tenant, session_id, 0.0, budgets, now + 1, now)
        if refusals:
            raise _exceeded(tenant, session_id, refusals, now)
        await asyncio.to_thread(self.store.release, probe)

    async def charge_held(self, tenant: str, policy: TenantPolicy, session_id: str, cost: float, key: str,
                          exercise: bool = False) -> bool:
        """Charge a live session's held memory (``key`` makes a repeated charge count once; ``exercise``: the
        session is an exercise). True when a budget the session draws on is now exhausted."""
        now = self.clock()
        entry = UsageEntry(tenant, session_id, HELD_MEMORY_MODEL, 0, 0, cost, key)

        def write() -> tuple[Spend, bool, Spend]:
            before = self.store.spent(tenant, session_id, now)
            recorded = self.store.record_usage(entry, now)
            return before, recorded, self.store.spent(tenant, session_id, now)

        before, recorded, after = await asyncio.to_thread(write)
        if recorded:
            self._after_charge(tenant, session_id, policy, cost, before_spent=before, exercise=exercise)
        return any(state.exceeded for state in _states(policy, session_id, after))

    async def session_spent(self, tenant: str, session_id: str) -> float:
        """What a session has cost so far: its calls, its held time and the model usage reported for it."""
        return (await asyncio.to_thread(self.store.spent, tenant, session_id, self.clock())).session

    def _after_charge(self, tenant: str, session_id: str, policy: TenantPolicy, cost: float, *,
                      before_spent: Spend | None, exercise: bool = False) -> None:
        if self.metrics is not None and cost > 0:
            self.metrics.cost.add(cost, {"tenant": tenant})
        if before_spent is None:
            return
        budgets = budgets_of(policy)
        warn = policy.budget.warn_fraction
        for name in BUDGET_NAMES:
            limit = budgets.limit(name)
            if limit is None or (name == "session" and not session_id):
                continue
            old = before_spent.of(name)
            new = old + cost
            if self.metrics is not None and name != "session":  # per-session series would be unbounded
                self.metrics.budget_used.set(new / limit, {"tenant": tenant, "budget": name})
            subject = f"tenant {tenant!r}" + (f" session {session_id!r}" if name == "session" else "")
            if old < warn * limit <= new:
                log.warning("%s has used %.0f%% of its %s budget (%.4g of %.4g)", subject, 100 * new / limit,
                            name, new, limit, extra={"tenant": tenant, "session_id": session_id, "budget": name})
                if self.metrics is not None:
                    self.metrics.budget_warnings.add(1, {"tenant": tenant, "budget": name})
            if old < limit <= new + 1e-12:
                log.warning("%s has exhausted its %s budget (%.4g of %.4g)", subject, name, new, limit,
                            extra={"tenant": tenant, "session_id": session_id, "budget": name})
                if self.events is not None:
                    self.events.on_budget_exceeded(tenant=tenant, session_id=session_id, budget=name,
                                                   exercise=exercise)


def _states(policy: TenantPolicy, session_id: str, spent: Spend) -> list[BudgetState]:
    budgets = budgets_of(policy)
    out = []
    for name in BUDGET_NAMES:
        limit = budgets.limit(name)
        if limit is not None and (name != "session" or session_id):
            out.append(BudgetState(name, limit, spent.of(name)))
    return out


def _exceeded(tenant: str, session_id: str, refusals: list[BudgetRefusal], now: float) -> BudgetExceeded:
    violations = []
    retry: float | None = 0.0
    for r in refusals:
        subject = (f"session:{tenant}/{session_id}/budget.per_session" if r.budget == "session"
                   else f"tenant:{tenant}/budget.per_{r.budget}")
        violations.append(QuotaViolation(subject, (
            f"the {r.budget} budget of {r.limit:.6g} has {r.committed:.6g} spent or held; this execution may "
            f"cost up to {r.requested:.6g}")))
        frees = seconds_until_period_ends(r.budget, now)
        retry = None if frees is None or retry is None else max(retry, frees)
    names = ", ".join(r.budget for r in refusals)
    return BudgetExceeded(f"budget exceeded ({names}): the execution was not run", violations=violations,
                          retry_after_s=retry)
