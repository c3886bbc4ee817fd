"""Incidents and their mitigations in PostgreSQL (the protocol and records are in ``incidents``).

The same two tables as the SQLite store, with a ``seq`` column standing for SQLite's rowid (insertion order, to
break ties between equal times). ``open_or_bump`` takes a transaction-scoped advisory lock on (rule, scope,
subject, exercise) before it looks for the open incident, so replicas reporting the same misbehaviour at once
bump one incident instead of racing to open two; the partial unique index would refuse a second one anyway.
Details are a JSONB object of strings.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sandbox_server.stores.incidents import (
    INCIDENT_COLUMNS,
    INCIDENT_ID_PREFIX,
    MAX_ID_DRAWS,
    MITIGATION_COLUMNS,
    MITIGATION_ID_PREFIX,
    RESOLVE_NOTE_KEY,
    IncidentRecord,
    MitigationRecord,
    MitigationSpec,
    Scope,
    Severity,
    check_incident,
    incident_record,
    mitigation_record,
    new_id,
)
from sandbox_server.stores.postgres import PostgresStore

OPEN_LOCK = 0x494E4344  # the advisory lock space of open_or_bump: (OPEN_LOCK, hashtext(rule/scope/subject/exercise))
_Conn = psycopg.Connection[Any]


class PostgresIncidentStore(PostgresStore):
    """Incidents and mitigations in PostgreSQL. Thread-safe, and one open incident per key across replicas."""

    def open_or_bump(
        self,
        rule: str,
        severity: Severity,
        scope: Scope,
        subject: str,
        tenant: str,
        summary: str,
        details: Mapping[str, str],
        mitigation: MitigationSpec | None,
        now: float | None = None,
        increment: int = 1,
        exercise: bool = False,
    ) -> tuple[IncidentRecord, bool]:
        check_incident(rule, severity, scope, subject, details, mitigation, increment, exercise)
        at = time.time() if now is None else now
        self._check_open()
        for _ in range(MAX_ID_DRAWS):
            incident_id = new_id(INCIDENT_ID_PREFIX)
            try:
                with self.db.transaction() as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                                 (OPEN_LOCK, "\x1f".join((rule, scope, subject, str(int(exercise))))))
                    found = conn.execute(
                        "SELECT id FROM incidents WHERE rule = %s AND scope = %s AND subject = %s AND exercise = %s"
                        " AND resolved_at IS NULL",
                        (rule, scope, subject, exercise),
                    ).fetchone()
                    if found is not None:
                        conn.execute("UPDATE incidents SET count = count + %s, last_seen_at = %s WHERE id = %s",
                                     (increment, at, found[0]))
                        if mitigation is not None and _rearmable(conn, found[0], at):
                            _insert_mitigation(conn, found[0], mitigation, at)
                        record = _incident_in_tx(conn, found[0])
                        opened = False
                    else:
                        conn.execute(
                            f"INSERT INTO incidents ({INCIDENT_COLUMNS}, last_seen_at)"  # noqa: S608
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, '', %s, %s)",
                            (incident_id, rule, severity, scope, subject, tenant, summary, Jsonb(dict(details)),
                             increment, at, exercise, at),
                        )
                        if mitigation is not None:
                            _insert_mitigation(conn, incident_id, mitigation, at)
                        record = _incident_in_tx(conn, incident_id)
                        opened = True
            except psycopg.errors.UniqueViolation:
                continue  # an id collision (the lock keeps the one-open index from clashing): draw again
            if record is None:  # read back inside the transaction that wrote it: never
                raise RuntimeError(f"incident for {rule}/{scope}/{subject} vanished inside its transaction")
            return record, opened
        raise RuntimeError(f"could not draw a free incident id in {MAX_ID_DRAWS} tries")

    def get(self, incident_id: str) -> IncidentRecord | None:
        self._check_open()
        with self.db.transaction() as conn:
            return _incident_in_tx(conn, incident_id)

    def list(
        self, open_only: bool = False, tenant: str | None = None, limit: int = 50
    ) -> builtins.list[IncidentRecord]:
        """Newest first (by opening time), with their mitigations (oldest first). ValueError: ``limit`` < 1."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        self._check_open()
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if open_only:
            where.append("resolved_at IS NULL")
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)
        sql = f"SELECT {INCIDENT_COLUMNS} FROM incidents"  # noqa: S608 - constant columns, bound values
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, seq DESC LIMIT %s"
        params.append(limit)
        with self.db.transaction() as conn:
            rows = conn.execute(sql.encode(), tuple(params)).fetchall()
            by_incident = _mitigations_of(conn, [str(row[0]) for row in rows])
        return [incident_record(row, by_incident.get(str(row[0]), ())) for row in rows]

    def resolve(self, incident_id: str, actor: str, note: str = "", now: float | None = None) -> IncidentRecord | None:
        at = time.time() if now is None else now
        self._check_open()
        with self.db.transaction() as conn:
            found = conn.execute("SELECT resolved_at, details FROM incidents WHERE id = %s FOR UPDATE",
                                 (incident_id,)).fetchone()
            if found is None:
                return None
            if found[0] is None:
                details = dict(found[1])
                if note:
                    details[RESOLVE_NOTE_KEY] = note
                conn.execute("UPDATE incidents SET resolved_at = %s, resolved_by = %s, details = %s WHERE id = %s",
                             (at, actor, Jsonb(details), incident_id))
                conn.execute(
                    "UPDATE mitigations SET lifted_at = %s, lifted_by = %s WHERE incident_id = %s"
                    " AND lifted_at IS NULL AND (expires_at IS NULL OR expires_at > %s)",
                    (at, actor, incident_id, at),
                )
            return _incident_in_tx(conn, incident_id)

    def mitigations(
        self, include_lifted: bool = False, now: float | None = None
    ) -> builtins.list[MitigationRecord]:
        at = time.time() if now is None else now
        self._check_open()
        sql = f"SELECT {MITIGATION_COLUMNS} FROM mitigations"  # noqa: S608 - constant columns
        params: tuple[object, ...] = ()
        if not include_lifted:
            sql += " WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > %s)"
            params = (at,)
        sql += " ORDER BY created_at DESC, seq DESC"
        return [mitigation_record(row) for row in self.db.read(sql, params)]

    def lift(self, mitigation_id: str, actor: str, now: float | None = None) -> MitigationRecord | None:
        """Lift one mitigation (idempotent: a lifted one is returned as is; an expired one is marked lifted, so
        its incident never re-arms it). None for an unknown id."""
        at = time.time() if now is None else now
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("UPDATE mitigations SET lifted_at = %s, lifted_by = %s WHERE id = %s AND lifted_at IS NULL",
                         (at, actor, mitigation_id))
            row = conn.execute(
                f"SELECT {MITIGATION_COLUMNS} FROM mitigations WHERE id = %s", (mitigation_id,)  # noqa: S608
            ).fetchone()
        return None if row is None else mitigation_record(row)


def _rearmable(conn: _Conn, incident_id: str, now: float) -> bool:
    """True when the incident has mitigations, none active and none lifted by hand (they all expired)."""
    row = conn.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE lifted_at IS NOT NULL),"
        " COUNT(*) FILTER (WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > %s))"
        " FROM mitigations WHERE incident_id = %s",
        (now, incident_id),
    ).fetchone()
    total, lifted, active = (int(v) for v in row) if row else (0, 0, 0)
    return total > 0 and lifted == 0 and active == 0


def _insert_mitigation(conn: _Conn, incident_id: str, spec: MitigationSpec, now: float) -> None:
    # An id collision raises UniqueViolation, which rolls the whole transaction back; the caller draws again.
    conn.execute(
        f"INSERT INTO mitigations ({MITIGATION_COLUMNS})"  # noqa: S608
        " VALUES (%s, %s, %s, %s, %s, %s, %s, NULL, '', %s)",
        (new_id(MITIGATION_ID_PREFIX), incident_id, spec.action, spec.scope, spec.subject, now, spec.expires_at,
         spec.throttle_per_minute),
    )


def _incident_in_tx(conn: _Conn, incident_id: str) -> IncidentRecord | None:
    row = conn.execute(f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident_id,)).fetchone()  # noqa: S608
    if row is None:
        return None
    return incident_record(row, _mitigations_of(conn, [incident_id]).get(incident_id, ()))


def _mitigations_of(conn: _Conn, incident_ids: builtins.list[str]) -> dict[str, tuple[MitigationRecord, ...]]:
    """Each incident's mitigations, oldest first."""
    if not incident_ids:
        return {}
    found: dict[str, builtins.list[MitigationRecord]] = {}
    rows = conn.execute(
        f"SELECT {MITIGATION_COLUMNS} FROM mitigations"  # noqa: S608 - constant columns, bound values
        " WHERE incident_id = ANY(%s) ORDER BY created_at, seq",
        (incident_ids,),
    ).fetchall()
    for row in rows:
        record = mitigation_record(row)
        found.setdefault(record.incident_id, []).append(record)
    return {key: tuple(value) for key, value in found.items()}
