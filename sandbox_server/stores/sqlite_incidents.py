"""Incidents and their mitigations in SQLite (the protocol and records are in ``incidents``).

Two tables: ``incidents`` and ``mitigations`` (each mitigation belongs to one incident). A partial unique index
allows at most one open incident per (rule, scope, subject, exercise); ``open_or_bump`` looks for that incident and
inserts or bumps inside one ``BEGIN IMMEDIATE`` transaction, which holds SQLite's write lock from the start, so
concurrent callers in this process or in another one sharing the file never open two.

Details are kept as a JSON object of strings. A resolution note, when given, is added to the details under
``RESOLVE_NOTE_KEY`` (the records have no field of their own for it, and the admin API shows details as is).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping
from types import MappingProxyType

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
from sandbox_server.stores.sqlite import _SqliteStore, _Tx


class SqliteIncidentStore(_SqliteStore):
    """Incidents and mitigations in SQLite. Thread-safe; every method is one short transaction or read."""

    schema_name = "incidents"
    schema_version = 2
    schema = """
        CREATE TABLE IF NOT EXISTS incidents (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
            scope TEXT NOT NULL CHECK (scope IN ('session', 'tenant', 'language', 'server')),
            subject TEXT NOT NULL,
            tenant TEXT NOT NULL,
            summary TEXT NOT NULL,
            details TEXT NOT NULL,
            count INTEGER NOT NULL CHECK (count >= 1),
            opened_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            resolved_at REAL,
            resolved_by TEXT NOT NULL DEFAULT '',
            exercise INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open
            ON incidents (rule, scope, subject, exercise) WHERE resolved_at IS NULL;
        CREATE INDEX IF NOT EXISTS incidents_by_time ON incidents (opened_at);
        CREATE INDEX IF NOT EXISTS incidents_by_tenant ON incidents (tenant, opened_at);
        CREATE TABLE IF NOT EXISTS mitigations (
            id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            action TEXT NOT NULL CHECK (action IN ('throttle', 'quarantine', 'disable_language')),
            scope TEXT NOT NULL CHECK (scope IN ('session', 'tenant', 'language')),
            subject TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            lifted_at REAL,
            lifted_by TEXT NOT NULL DEFAULT '',
            throttle_per_minute REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS mitigations_by_incident ON mitigations (incident_id);
        CREATE INDEX IF NOT EXISTS mitigations_unlifted ON mitigations (lifted_at, expires_at)
    """
    migrations = MappingProxyType({
        # 2: exercise incidents, kept apart from the ordinary ones of the same rule and subject.
        1: """
            ALTER TABLE incidents ADD COLUMN exercise INTEGER NOT NULL DEFAULT 0;
            DROP INDEX IF EXISTS incidents_one_open;
            CREATE UNIQUE INDEX incidents_one_open
                ON incidents (rule, scope, subject, exercise) WHERE resolved_at IS NULL
        """,
    })

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
        details_json = json.dumps(dict(details), sort_keys=True)
        for _ in range(MAX_ID_DRAWS):
            incident_id = new_id(INCIDENT_ID_PREFIX)
            try:
                with self._write() as db:
                    found = db.execute(
                        "SELECT id FROM incidents WHERE rule = ? AND scope = ? AND subject = ? AND exercise = ?"
                        " AND resolved_at IS NULL",
                        (rule, scope, subject, int(exercise)),
                    ).fetchone()
                    if found is not None:
                        db.execute(
                            "UPDATE incidents SET count = count + ?, last_seen_at = ? WHERE id = ?",
                            (increment, at, found[0]),
                        )
                        if mitigation is not None and _rearmable(db, found[0], at):
                            _insert_mitigation(db, found[0], mitigation, at)
                        record = _incident_in_tx(db, found[0])
                        opened = False
                    else:
                        db.execute(
                            f"INSERT INTO incidents ({INCIDENT_COLUMNS}, last_seen_at)"  # noqa: S608
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '', ?, ?)",
                            (incident_id, rule, severity, scope, subject, tenant, summary, details_json, increment,
                             at, int(exercise), at),
                        )
                        if mitigation is not None:
                            _insert_mitigation(db, incident_id, mitigation, at)
                        record = _incident_in_tx(db, incident_id)
                        opened = True
            except sqlite3.IntegrityError as exc:
                # The unique keys are the random ids and the one-open index (which the SELECT above honours under
                # the write lock): a clash is an id collision, and the whole transaction is simply tried again.
                if "UNIQUE" not in str(exc):
                    raise
                continue
            if record is None:  # read back inside the transaction that wrote it: never
                raise RuntimeError(f"incident for {rule}/{scope}/{subject} vanished inside its transaction")
            return record, opened
        raise RuntimeError(f"could not draw a free incident id in {MAX_ID_DRAWS} tries")

    def get(self, incident_id: str) -> IncidentRecord | None:
        with self._lock:
            self._check_open()
            return _incident_in_tx(_Tx(self._db), incident_id)

    def list(
        self, open_only: bool = False, tenant: str | None = None, limit: int = 50
    ) -> builtins.list[IncidentRecord]:
        """Newest first (by opening time), with their mitigations (oldest first).

        Raises:
            ValueError: ``limit`` < 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if open_only:
            where.append("resolved_at IS NULL")
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        sql = f"SELECT {INCIDENT_COLUMNS} FROM incidents"  # noqa: S608 - constant columns, bound values
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, rowid DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql, tuple(params)).fetchall()
            by_incident = _mitigations_of(_Tx(self._db), [str(row[0]) for row in rows])
        return [incident_record(row, by_incident.get(str(row[0]), ())) for row in rows]

    def resolve(self, incident_id: str, actor: str, note: str = "", now: float | None = None) -> IncidentRecord | None:
        at = time.time() if now is None else now
        with self._write() as db:
            found = db.execute("SELECT resolved_at, details FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if found is None:
                return None
            if found[0] is None:
                details = json.loads(found[1])
                if note:
                    details[RESOLVE_NOTE_KEY] = note
                db.execute(
                    "UPDATE incidents SET resolved_at = ?, resolved_by = ?, details = ? WHERE id = ?",
                    (at, actor, json.dumps(details, sort_keys=True), incident_id),
                )
                db.execute(
                    "UPDATE mitigations SET lifted_at = ?, lifted_by = ? WHERE incident_id = ? AND lifted_at IS NULL"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (at, actor, incident_id, at),
                )
            return _incident_in_tx(db, incident_id)

    def mitigations(
        self, include_lifted: bool = False, now: float | None = None
    ) -> builtins.list[MitigationRecord]:
        at = time.time() if now is None else now
        sql = f"SELECT {MITIGATION_COLUMNS} FROM mitigations"  # noqa: S608 - constant columns
        params: tuple[object, ...] = ()
        if not include_lifted:
            sql += " WHERE lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
            params = (at,)
        sql += " ORDER BY created_at DESC, rowid DESC"
        return [mitigation_record(row) for row in self._read(sql, params)]

    def lift(self, mitigation_id: str, actor: str, now: float | None = None) -> MitigationRecord | None:
        """Lift one mitigation (idempotent: a lifted one is returned as is; an expired one is marked lifted, so
        its incident never re-arms it). None for an unknown id."""
        at = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "UPDATE mitigations SET lifted_at = ?, lifted_by = ? WHERE id = ? AND lifted_at IS NULL",
                (at, actor, mitigation_id),
            )
            row = db.execute(
                f"SELECT {MITIGATION_COLUMNS} FROM mitigations WHERE id = ?", (mitigation_id,)  # noqa: S608
            ).fetchone()
        return None if row is None else mitigation_record(row)


def _rearmable(db: _Tx, incident_id: str, now: float) -> bool:
    """True when the incident has mitigations, none active and none lifted by hand (they all expired)."""
    row = db.execute(
        "SELECT COUNT(*),"
        " COALESCE(SUM(lifted_at IS NOT NULL), 0),"
        " COALESCE(SUM(lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)), 0)"
        " FROM mitigations WHERE incident_id = ?",
        (now, incident_id),
    ).fetchone()
    total, lifted, active = (int(v) for v in row)
    return total > 0 and lifted == 0 and active == 0


def _insert_mitigation(db: _Tx, incident_id: str, spec: MitigationSpec, now: float) -> None:
    # An id collision raises IntegrityError, which rolls the whole transaction back; the caller draws again.
    db.execute(
        f"INSERT INTO mitigations ({MITIGATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, '', ?)",  # noqa: S608
        (new_id(MITIGATION_ID_PREFIX), incident_id, spec.action, spec.scope, spec.subject, now, spec.expires_at,
         spec.throttle_per_minute),
    )


def _incident_in_tx(db: _Tx, incident_id: str) -> IncidentRecord | None:
    row = db.execute(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)  # noqa: S608
    ).fetchone()
    if row is None:
        return None
    return incident_record(row, _mitigations_of(db, [incident_id]).get(incident_id, ()))


def _mitigations_of(db: _Tx, incident_ids: builtins.list[str]) -> dict[str, tuple[MitigationRecord, ...]]:
    """Each incident's mitigations, oldest first."""
    found: dict[str, builtins.list[MitigationRecord]] = {}
    if not incident_ids:
        return {}
    # One query, whatever the number of incidents (json_each avoids building a statement per list length).
    rows = db.execute(
        f"SELECT {MITIGATION_COLUMNS} FROM mitigations"  # noqa: S608 - constant columns, bound values
        " WHERE incident_id IN (SELECT value FROM json_each(?)) ORDER BY created_at, rowid",
        (json.dumps(incident_ids),),
    ).fetchall()
    for row in rows:
        record = mitigation_record(row)
        found.setdefault(record.incident_id, []).append(record)
    return {key: tuple(value) for key, value in found.items()}


