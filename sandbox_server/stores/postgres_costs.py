"""The cost ledger and budget reservations in PostgreSQL (the ``CostStore`` protocol of ``costs``).

The same two tables as the SQLite store. Every write that changes what a tenant has committed (reserve, settle,
record_usage) first takes a transaction-scoped advisory lock on the tenant, so that reservations of one tenant
from any replica are checked and held one after another: the sums a reservation reads cannot change before it
has inserted itself. Tenants never wait on each other. A reservation (and a release) commits without waiting for
the disk (``synchronous_commit = off``), as the SQLite store skips its fsync: one lost in a crash held money for
an execution the crash ended. Settled entries and usage are committed durably.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox_server.stores.costs import (
    SECONDS_PER_DAY,
    BudgetRefusal,
    Budgets,
    CostRow,
    GroupBy,
    Periods,
    Spend,
    UsageEntry,
    check_money,
    check_tenant,
    day_key,
    refusals_for,
    reservation_limits,
)
from sandbox_server.stores.postgres import PostgresStore

TENANT_LOCK = 0x434F5354  # the advisory lock space of the cost store: (TENANT_LOCK, hashtext(tenant))
_GROUP_KEYS: dict[GroupBy, str] = {
    "tenant": "tenant",
    "session": "tenant || '/' || session_id",
    "day": f"floor(at / {SECONDS_PER_DAY})::bigint",  # a day number, turned into "YYYY-MM-DD" in Python
}


class PostgresCostStore(PostgresStore):
    """Budget reservations and the append-only cost ledger in PostgreSQL. Thread-safe, and exact across replicas
    sharing the database (see the module docstring)."""

    def reserve(
        self,
        reservation_id: str,
        tenant: str,
        session_id: str,
        amount: float,
        budgets: Budgets,
        expires_at: float,
        now: float | None = None,
    ) -> list[BudgetRefusal]:
        """As ``CostStore.reserve``; expired reservations (of any tenant) are deleted on the way."""
        limits, now = reservation_limits(reservation_id, tenant, session_id, amount, budgets, expires_at, now)
        periods = Periods.at(now)
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TENANT_LOCK, tenant))
            conn.execute("DELETE FROM cost_reservations WHERE expires_at <= %s", (now,))
            if conn.execute("SELECT 1 FROM cost_reservations WHERE id = %s", (reservation_id,)).fetchone():
                raise ValueError(f"reservation {reservation_id!r} is already held")
            if any(limit is not None for limit in limits.values()):
                settled = _spend(conn.execute(*_settled_query(tenant, session_id, periods)).fetchone())
                held = conn.execute(
                    "SELECT COALESCE(SUM(amount) FILTER (WHERE session_id = %s), 0.0), COALESCE(SUM(amount), 0.0)"
                    " FROM cost_reservations WHERE tenant = %s AND expires_at > %s",
                    (session_id, tenant, now),
                ).fetchone() or (0.0, 0.0)
                refusals = refusals_for(limits, settled, float(held[0]), float(held[1]), amount)
                if refusals:
                    return refusals  # leaving the block commits only the expired-reservation clean-up
            inserted = conn.execute(
                "INSERT INTO cost_reservations (id, tenant, session_id, amount, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (reservation_id, tenant, session_id, amount, now, expires_at),
            ).rowcount
            if inserted != 1:  # held just now for another tenant (whose lock this one does not take)
                raise ValueError(f"reservation {reservation_id!r} is already held")
        return []

    def settle(
        self,
        reservation_id: str,
        tenant: str,
        session_id: str,
        execution_id: str,
        cost: float,
        now: float | None = None,
    ) -> bool:
        """As ``CostStore.settle``: False (no entry written) when ``execution_id`` already has one; the
        reservation is dropped even then. ValueError for bad arguments or another tenant's reservation."""
        check_tenant(tenant)
        if not execution_id:
            raise ValueError("execution_id must not be empty")
        check_money("cost", cost)
        now = time.time() if now is None else now
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TENANT_LOCK, tenant))
            holder = conn.execute("SELECT tenant FROM cost_reservations WHERE id = %s", (reservation_id,)).fetchone()
            if holder is not None and holder[0] != tenant:
                raise ValueError(f"reservation {reservation_id!r} is held for another tenant")
            conn.execute("DELETE FROM cost_reservations WHERE id = %s", (reservation_id,))
            written = conn.execute(
                "INSERT INTO cost_ledger (at, tenant, session_id, kind, execution_id, amount)"
                " VALUES (%s, %s, %s, 'execution', %s, %s)"
                " ON CONFLICT (execution_id) WHERE kind = 'execution' DO NOTHING",
                (now, tenant, session_id, execution_id, cost),
            ).rowcount
        return written == 1

    def release(self, reservation_id: str) -> None:
        """Drop a reservation without charging anything. Idempotent: an unknown id is ignored."""
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("SET LOCAL synchronous_commit = off")  # one lost in a crash leaves a hold that expires
            conn.execute("DELETE FROM cost_reservations WHERE id = %s", (reservation_id,))

    def record_usage(self, entry: UsageEntry, now: float | None = None) -> bool:
        """As ``CostStore.record_usage``."""
        check_tenant(entry.tenant)
        check_money("cost", entry.cost)
        if entry.input_tokens < 0 or entry.output_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {entry.input_tokens} and {entry.output_tokens}")
        now = time.time() if now is None else now
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TENANT_LOCK, entry.tenant))
            written = conn.execute(
                "INSERT INTO cost_ledger"
                " (at, tenant, session_id, kind, model, input_tokens, output_tokens, amount, idempotency_key)"
                " VALUES (%s, %s, %s, 'usage', %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key <> '' DO NOTHING",
                (now, entry.tenant, entry.session_id, entry.model, entry.input_tokens, entry.output_tokens,
                 entry.cost, entry.idempotency_key),
            ).rowcount
        return written == 1

    def spent(self, tenant: str, session_id: str, now: float | None = None) -> Spend:
        """As ``CostStore.spent``."""
        self._check_open()
        periods = Periods.at(time.time() if now is None else now)
        return _spend(self.db.read(*_settled_query(tenant, session_id, periods))[0])

    def report(
        self,
        group_by: GroupBy,
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[CostRow]:
        """As ``CostStore.report``; ValueError for an unknown ``group_by``."""
        key = _GROUP_KEYS.get(group_by)
        if key is None:
            raise ValueError(f"group_by must be one of {', '.join(_GROUP_KEYS)}, not {group_by!r}")
        self._check_open()
        where = ["TRUE"]
        params: list[object] = []
        for clause, value in (("tenant = %s", tenant), ("at >= %s", since), ("at < %s", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = self.db.read(
            f"SELECT {key} AS k,"  # noqa: S608 (key is one of _GROUP_KEYS; values are bound)
            " COALESCE(SUM(amount) FILTER (WHERE kind = 'execution'), 0.0),"
            " COALESCE(SUM(amount) FILTER (WHERE kind = 'usage'), 0.0),"
            " COUNT(*) FILTER (WHERE kind = 'execution'), SUM(input_tokens), SUM(output_tokens)"
            f" FROM cost_ledger WHERE {' AND '.join(where)} GROUP BY k",
            tuple(params),
        )
        report = [
            CostRow(
                key=day_key(int(k)) if group_by == "day" else str(k),
                execution_cost=float(execution_cost),
                usage_cost=float(usage_cost),
                executions=int(executions),
                input_tokens=int(input_tokens),
                output_tokens=int(output_tokens),
            )
            for k, execution_cost, usage_cost, executions, input_tokens, output_tokens in rows
        ]
        report.sort(key=lambda row: (-row.total, row.key))
        return report


def _settled_query(tenant: str, session_id: str, periods: Periods) -> tuple[str, tuple[object, ...]]:
    """Settled cost of the session (all time), the day and the month, in one statement (one snapshot)."""
    return (
        "SELECT"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = %s AND session_id = %s AND %s <> ''),"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = %s AND at >= %s AND at < %s),"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = %s AND at >= %s AND at < %s)",
        (tenant, session_id, session_id, tenant, periods.day_start, periods.day_end, tenant, periods.month_start,
         periods.month_end),
    )


def _spend(row: tuple[Any, ...] | None) -> Spend:
    if row is None:
        raise RuntimeError("the spend query returned no row")
    session, day, month = row
    return Spend(session=float(session), day=float(day), month=float(month))
