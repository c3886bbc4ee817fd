"""Session and snapshot records in SQLite (see stores/sessions.py for what they hold and why).

Same conventions as the other SQLite stores (stores/sqlite.py): one connection per store, WAL, every write a
durable transaction, safe to share one file with the other stores and with other processes.
"""

from __future__ import annotations

import builtins
import json
from types import MappingProxyType

from sandbox_server.stores.sessions import (
    EVENTS,
    SessionEnd,
    SessionEvent,
    SessionRecord,
    SnapshotRecord,
    session_record,
)
from sandbox_server.stores.sqlite import _SqliteStore, _Tx


class SqliteSessionStore(_SqliteStore):
    schema_name = "sessions"
    schema = """
        CREATE TABLE IF NOT EXISTS sessions (
            session_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL CHECK (tenant <> ''),
            key_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            backend TEXT NOT NULL,
            languages TEXT NOT NULL,
            limits TEXT NOT NULL,
            labels TEXT NOT NULL,
            snapshot_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            idle_timeout_s INTEGER NOT NULL,
            max_lifetime_s INTEGER NOT NULL,
            cpu_total_ms INTEGER NOT NULL,
            closed_at REAL,
            close_reason TEXT NOT NULL DEFAULT '',
            calls INTEGER NOT NULL DEFAULT 0,
            cpu_time_s REAL NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0,
            kernel_restarts INTEGER NOT NULL DEFAULT 0,
            last_used_at REAL,
            peak_memory_bytes INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS sessions_tenant_time ON sessions (tenant, created_at);
        CREATE INDEX IF NOT EXISTS sessions_open ON sessions (owner) WHERE closed_at IS NULL;
        CREATE TABLE IF NOT EXISTS session_events (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            event TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS session_events_by_session ON session_events (session_id, id)
    """

    def create(self, rec: SessionRecord, event: SessionEvent) -> None:
        row = (rec.session_id, rec.tenant, rec.key_id, rec.owner, rec.backend, json.dumps(list(rec.languages)),
               json.dumps(dict(rec.limits), sort_keys=True), json.dumps(dict(rec.labels), sort_keys=True),
               rec.snapshot_id, rec.created_at, rec.idle_timeout_s, rec.max_lifetime_s, rec.cpu_total_ms)
        with self._write() as db:
            if db.execute("SELECT 1 FROM sessions WHERE session_id = ?", (rec.session_id,)).fetchone():
                raise ValueError(f"session {rec.session_id} is already recorded")
            db.execute("INSERT INTO sessions (session_id, tenant, key_id, owner, backend, languages, limits, labels,"
                       " snapshot_id, created_at, idle_timeout_s, max_lifetime_s, cpu_total_ms)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            _insert_event(db, event)

    def end(self, session_id: str, end: SessionEnd, event: SessionEvent) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE sessions SET closed_at = ?, close_reason = ?, calls = ?, cpu_time_s = ?, cost = ?,"
                " kernel_restarts = ?, last_used_at = ?, peak_memory_bytes = ?"
                " WHERE session_id = ? AND closed_at IS NULL",
                (end.closed_at, end.reason, end.calls, end.cpu_time_s, end.cost, end.kernel_restarts, end.last_used_at,
                 end.peak_memory_bytes, session_id))
            if cursor.rowcount != 1:
                return False
            _insert_event(db, event)
        return True

    def record_event(self, event: SessionEvent) -> None:
        with self._write() as db:
            _insert_event(db, event)

    def get(self, session_id: str) -> SessionRecord | None:
        rows = self._read("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return session_record(rows[0]) if rows else None

    def list(self, tenant: str | None = None, open_only: bool = False,
             limit: int = 100) -> builtins.list[SessionRecord]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if open_only:
            where.append("closed_at IS NULL")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._read(f"SELECT * FROM sessions {clause}ORDER BY created_at DESC LIMIT ?",  # noqa: S608
                          (*params, limit))
        return [session_record(r) for r in rows]

    def events(self, session_id: str, limit: int = 1000) -> builtins.list[SessionEvent]:
        rows = self._read("SELECT session_id, tenant, key_id, event, at, detail FROM session_events"
                          " WHERE session_id = ? ORDER BY id LIMIT ?", (session_id, limit))
        return [SessionEvent(sid, tenant, key_id, event, at, MappingProxyType(json.loads(detail)))
                for sid, tenant, key_id, event, at, detail in rows]

    def close_orphans(self, owner: str, reason: str, at: float) -> builtins.list[str]:
        with self._write() as db:
            rows = db.execute("SELECT session_id, tenant, key_id FROM sessions WHERE owner = ? AND closed_at IS NULL",
                              (owner,)).fetchall()
            for session_id, tenant, key_id in rows:
                db.execute("UPDATE sessions SET closed_at = ?, close_reason = ? WHERE session_id = ?",
                           (at, reason, session_id))
                _insert_event(db, SessionEvent(session_id, tenant, key_id, "closed", at,
                                               MappingProxyType({"reason": reason})))
        return [row[0] for row in rows]


def _insert_event(db: _Tx, event: SessionEvent) -> None:
    if event.event not in EVENTS:
        raise ValueError(f"unknown session event {event.event!r}")
    db.execute("INSERT INTO session_events (session_id, tenant, key_id, event, at, detail) VALUES (?, ?, ?, ?, ?, ?)",
               (event.session_id, event.tenant, event.key_id, event.event, event.at,
                json.dumps(dict(event.detail), sort_keys=True)))


class SqliteSnapshotStore(_SqliteStore):
    schema_name = "snapshots"
    schema = """
        CREATE TABLE IF NOT EXISTS snapshots (
            snapshot_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL CHECK (tenant <> ''),
            session_id TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            files INTEGER NOT NULL,
            skipped INTEGER NOT NULL,
            file TEXT NOT NULL,
            sha256 TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS snapshots_tenant_time ON snapshots (tenant, created_at, snapshot_id)
    """

    def add(self, rec: SnapshotRecord, max_count: int) -> bool:
        with self._write() as db:
            count = db.execute("SELECT COUNT(*) FROM snapshots WHERE tenant = ?", (rec.tenant,)).fetchone()[0]
            if count >= max_count:
                return False
            db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (rec.snapshot_id, rec.tenant, rec.session_id, rec.name, rec.created_at, rec.size_bytes,
                        rec.files, rec.skipped, rec.file, rec.sha256))
        return True

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        rows = self._read("SELECT * FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))
        return SnapshotRecord(*rows[0]) if rows else None

    def list(self, tenant: str, limit: int = 50, before: tuple[float, str] | None = None
             ) -> builtins.list[SnapshotRecord]:
        if before is None:
            rows = self._read("SELECT * FROM snapshots WHERE tenant = ? ORDER BY created_at DESC, snapshot_id DESC"
                              " LIMIT ?", (tenant, limit))
        else:
            rows = self._read("SELECT * FROM snapshots WHERE tenant = ? AND (created_at, snapshot_id) < (?, ?)"
                              " ORDER BY created_at DESC, snapshot_id DESC LIMIT ?",
                              (tenant, before[0], before[1], limit))
        return [SnapshotRecord(*row) for row in rows]

    def delete(self, snapshot_id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,)).rowcount == 1

    def count(self, tenant: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM snapshots WHERE tenant = ?", (tenant,))[0][0])
