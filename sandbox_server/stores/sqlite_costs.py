"""The cost ledger and budget reservations in SQLite (the ``CostStore`` protocol of ``costs``).

Two tables: ``cost_ledger``, append-only, one row per settled execution or reported LLM usage; and
``cost_reservations``, the worst-case costs held for executions still running. A reservation checks every budget
and inserts itself inside one ``BEGIN IMMEDIATE`` transaction: SQLite's write lock is taken before the sums are
read, so no other connection (another thread's store or another process sharing the file) can commit between the
check and the hold. Budget periods are UTC days and months of the ``now`` passed in; a ledger entry belongs to the
period holding its ``at`` (periods are half-open: a day is ``[midnight, next midnight)``).
"""

from __future__ import annotations

import time
from typing import Any

from sandbox_server.stores.costs import (
    BUDGET_EPSILON,
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
from sandbox_server.stores.sqlite import _SqliteStore

__all__ = ["BUDGET_EPSILON", "SqliteCostStore"]

# floor(at / 86400) with no math functions (SQLite builds may lack floor()): truncate, then step down once when
# truncation went up (a negative time, or a quotient rounded up to the next integer).
_SQL_DAY = (
    f"(CAST(at / {SECONDS_PER_DAY} AS INTEGER)"
    f" - (at < CAST(at / {SECONDS_PER_DAY} AS INTEGER) * {SECONDS_PER_DAY}))"
)
_GROUP_KEYS: dict[GroupBy, str] = {
    "tenant": "tenant",
    "session": "tenant || '/' || session_id",
    "day": _SQL_DAY,  # a day number, turned into "YYYY-MM-DD" in Python
}


class SqliteCostStore(_SqliteStore):
    """Budget reservations and the append-only cost ledger in SQLite. Thread-safe, and safe for several
    processes sharing one file (see the module docstring). May share its file with the other SQLite stores.

    Args:
        path: the database file (created if missing).
    """

    schema_name = "costs"
    schema_version = 1
    # amount trails both ledger indexes so the budget sums of reserve() are read from the index alone.
    schema = """
        CREATE TABLE IF NOT EXISTS cost_ledger (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            tenant TEXT NOT NULL CHECK (tenant <> ''),
            session_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('execution', 'usage')),
            execution_id TEXT,
            model TEXT NOT NULL DEFAULT '',
            input_tokens INTEGER NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
            output_tokens INTEGER NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
            amount REAL NOT NULL CHECK (amount >= 0),
            idempotency_key TEXT NOT NULL DEFAULT '',
            CHECK ((kind = 'execution') = (execution_id IS NOT NULL))
        );
        CREATE UNIQUE INDEX IF NOT EXISTS cost_ledger_execution ON cost_ledger (execution_id)
            WHERE kind = 'execution';
        CREATE UNIQUE INDEX IF NOT EXISTS cost_ledger_idempotency ON cost_ledger (tenant, idempotency_key)
            WHERE idempotency_key <> '';
        CREATE INDEX IF NOT EXISTS cost_ledger_tenant_time ON cost_ledger (tenant, at, amount);
        CREATE INDEX IF NOT EXISTS cost_ledger_tenant_session ON cost_ledger (tenant, session_id, amount);
        CREATE TABLE IF NOT EXISTS cost_reservations (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            session_id TEXT NOT NULL,
            amount REAL NOT NULL CHECK (amount >= 0),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS cost_reservations_scope ON cost_reservations (tenant, session_id, expires_at);
        CREATE INDEX IF NOT EXISTS cost_reservations_expiry ON cost_reservations (expires_at)
    """

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
        """Atomically check and hold ``amount`` against every budget set in ``budgets`` (see ``CostStore``).

        Returns [] when held; otherwise holds nothing and returns one refusal per exceeded budget, in
        ``BUDGET_NAMES`` order. Expired reservations (of any tenant) are deleted on the way.

        Raises:
            ValueError: empty ``reservation_id`` or ``tenant``; ``amount`` negative or not finite; a limit that
                is NaN; ``expires_at`` not after ``now``; ``reservation_id`` already held (and unexpired).
        """
        limits, now = reservation_limits(reservation_id, tenant, session_id, amount, budgets, expires_at, now)
        periods = Periods.at(now)
        # Not fsynced: a reservation lost in a power cut held money for an execution the power cut ended
        with self._write(durable=False) as db:
            db.execute("DELETE FROM cost_reservations WHERE expires_at <= ?", (now,))
            if db.execute("SELECT 1 FROM cost_reservations WHERE id = ?", (reservation_id,)).fetchone():
                raise ValueError(f"reservation {reservation_id!r} is already held")
            if any(limit is not None for limit in limits.values()):
                settled = _spend(db.execute(*_settled_query(tenant, session_id, periods)).fetchone())
                held_session, held_tenant = db.execute(
                    "SELECT COALESCE(SUM(CASE WHEN session_id = ? THEN amount END), 0.0),"
                    " COALESCE(SUM(amount), 0.0)"
                    " FROM cost_reservations WHERE tenant = ? AND expires_at > ?",
                    (session_id, tenant, now),
                ).fetchone()
                refusals = refusals_for(limits, settled, held_session, held_tenant, amount)
                if refusals:
                    return refusals  # leaving the block commits only the expired-reservation clean-up
            db.execute(
                "INSERT INTO cost_reservations (id, tenant, session_id, amount, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (reservation_id, tenant, session_id, amount, now, expires_at),
            )
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
        """Drop the reservation (if still held) and write ``cost`` as the execution's entry, in one transaction.

        Returns False, writing no entry, when ``execution_id`` already has one; the reservation is dropped even
        then, since the execution it was held for has been charged.

        Raises:
            ValueError: empty ``tenant`` or ``execution_id``; ``cost`` negative or not finite; the reservation
                is held for another tenant (nothing is changed).
        """
        check_tenant(tenant)
        if not execution_id:
            raise ValueError("execution_id must not be empty")
        check_money("cost", cost)
        now = time.time() if now is None else now
        with self._write() as db:
            holder = db.execute("SELECT tenant FROM cost_reservations WHERE id = ?", (reservation_id,)).fetchone()
            if holder is not None and holder[0] != tenant:
                raise ValueError(f"reservation {reservation_id!r} is held for another tenant")
            db.execute("DELETE FROM cost_reservations WHERE id = ?", (reservation_id,))
            if db.execute(
                "SELECT 1 FROM cost_ledger WHERE kind = 'execution' AND execution_id = ?", (execution_id,)
            ).fetchone():
                return False
            db.execute(
                "INSERT INTO cost_ledger (at, tenant, session_id, kind, execution_id, amount)"
                " VALUES (?, ?, ?, 'execution', ?, ?)",
                (now, tenant, session_id, execution_id, cost),
            )
        return True

    def release(self, reservation_id: str) -> None:
        """Drop a reservation without charging anything. Idempotent: an unknown id is ignored."""
        with self._write(durable=False) as db:  # a release lost in a power cut leaves a hold that expires
            db.execute("DELETE FROM cost_reservations WHERE id = ?", (reservation_id,))

    def record_usage(self, entry: UsageEntry, now: float | None = None) -> bool:
        """Append an LLM usage entry at ``now``. Returns False (writing nothing) when ``entry.idempotency_key``
        is set and the tenant already recorded that key.

        Raises:
            ValueError: empty tenant; negative token counts; cost negative or not finite.
        """
        check_tenant(entry.tenant)
        check_money("cost", entry.cost)
        if entry.input_tokens < 0 or entry.output_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {entry.input_tokens} and {entry.output_tokens}")
        now = time.time() if now is None else now
        with self._write() as db:
            # The write lock is held, so no other writer can record the key between this check and the insert.
            if entry.idempotency_key and db.execute(
                "SELECT 1 FROM cost_ledger WHERE tenant = ? AND idempotency_key = ?",
                (entry.tenant, entry.idempotency_key),
            ).fetchone():
                return False
            db.execute(
                "INSERT INTO cost_ledger"
                " (at, tenant, session_id, kind, model, input_tokens, output_tokens, amount, idempotency_key)"
                " VALUES (?, ?, ?, 'usage', ?, ?, ?, ?, ?)",
                (now, entry.tenant, entry.session_id, entry.model, entry.input_tokens, entry.output_tokens,
                 entry.cost, entry.idempotency_key),
            )
        return True

    def spent(self, tenant: str, session_id: str, now: float | None = None) -> Spend:
        """Settled cost of the session (0 without a session id) and of the tenant's UTC day and month holding
        ``now``; reservations are not included."""
        periods = Periods.at(time.time() if now is None else now)
        return _spend(self._read(*_settled_query(tenant, session_id, periods))[0])

    def report(
        self,
        group_by: GroupBy,
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[CostRow]:
        """Ledger totals grouped by tenant, by "tenant/session" or by UTC day ("YYYY-MM-DD"), for entries with
        ``since <= at < until`` (either bound None: open), sorted by descending total, then by key.

        Raises:
            ValueError: an unknown ``group_by``.
        """
        key = _GROUP_KEYS.get(group_by)
        if key is None:
            raise ValueError(f"group_by must be one of {', '.join(_GROUP_KEYS)}, not {group_by!r}")
        where = ["1 = 1"]
        params: list[object] = []
        for clause, value in (("tenant = ?", tenant), ("at >= ?", since), ("at < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        rows = self._read(
            f"SELECT {key} AS k,"  # noqa: S608 (key is one of _GROUP_KEYS; values are bound)
            " COALESCE(SUM(CASE WHEN kind = 'execution' THEN amount END), 0.0),"
            " COALESCE(SUM(CASE WHEN kind = 'usage' THEN amount END), 0.0),"
            " SUM(kind = 'execution'), SUM(input_tokens), SUM(output_tokens)"
            f" FROM cost_ledger WHERE {' AND '.join(where)} GROUP BY k",
            tuple(params),
        )
        report = [
            CostRow(
                key=day_key(k) if group_by == "day" else str(k),
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
    """The statement summing settled cost of the session (all time), the day and the month: one statement, so
    the three sums come from one snapshot."""
    return (
        "SELECT"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = ? AND session_id = ? AND ? <> ''),"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = ? AND at >= ? AND at < ?),"
        " (SELECT COALESCE(SUM(amount), 0.0) FROM cost_ledger WHERE tenant = ? AND at >= ? AND at < ?)",
        (tenant, session_id, session_id, tenant, periods.day_start, periods.day_end, tenant, periods.month_start,
         periods.month_end),
    )


def _spend(row: tuple[Any, ...]) -> Spend:
    session, day, month = row
    return Spend(session=float(session), day=float(day), month=float(month))


