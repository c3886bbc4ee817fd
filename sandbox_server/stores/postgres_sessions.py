"""Session and snapshot records in PostgreSQL (see stores/sessions.py for what they hold and why).

Same conventions as the other PostgreSQL stores (stores/postgres.py): a shared connection pool, every write one
durable transaction. A snapshot's index entry is added under a per-tenant advisory lock, so replicas adding
snapshots for one tenant at once never keep more than its ``max_count``.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sandbox_server.stores.postgres import PostgresStore
from sandbox_server.stores.sessions import (
    EVENTS,
    SessionEnd,
    SessionEvent,
    SessionRecord,
    SnapshotRecord,
    session_record,
)

ARCHIVE_CHUNK = 1024 * 1024
SNAPSHOT_LOCK = 0x534E4150  # the advisory lock space of SnapshotStore.add: (SNAPSHOT_LOCK, hashtext(tenant))
_Conn = psycopg.Connection[Any]


class PostgresSessionStore(PostgresStore):
    """Sessions and their lifecycle events in PostgreSQL. Thread-safe."""

    def create(self, rec: SessionRecord, event: SessionEvent) -> None:
        self._check_open()
        row = (rec.session_id, rec.tenant, rec.key_id, rec.owner, rec.backend, Jsonb(list(rec.languages)),
               Jsonb(dict(rec.limits)), Jsonb(dict(rec.labels)), rec.snapshot_id, rec.created_at, rec.idle_timeout_s,
               rec.max_lifetime_s, rec.cpu_total_ms)
        try:
            with self.db.transaction() as conn:
                conn.execute("INSERT INTO sessions (session_id, tenant, key_id, owner, backend, languages, limits,"
                             " labels, snapshot_id, created_at, idle_timeout_s, max_lifetime_s, cpu_total_ms)"
                             " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
                _insert_event(conn, event)
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"session {rec.session_id} is already recorded") from exc

    def end(self, session_id: str, end: SessionEnd, event: SessionEvent) -> bool:
        self._check_open()
        with self.db.transaction() as conn:
            changed = conn.execute(
                "UPDATE sessions SET closed_at = %s, close_reason = %s, calls = %s, cpu_time_s = %s, cost = %s,"
                " kernel_restarts = %s, last_used_at = %s, peak_memory_bytes = %s"
                " WHERE session_id = %s AND closed_at IS NULL",
                (end.closed_at, end.reason, end.calls, end.cpu_time_s, end.cost, end.kernel_restarts, end.last_used_at,
                 end.peak_memory_bytes, session_id)).rowcount
            if changed != 1:
                return False
            _insert_event(conn, event)
        return True

    def record_event(self, event: SessionEvent) -> None:
        self._check_open()
        with self.db.transaction() as conn:
            _insert_event(conn, event)

    def get(self, session_id: str) -> SessionRecord | None:
        self._check_open()
        rows = self.db.read("SELECT * FROM sessions WHERE session_id = %s", (session_id,))
        return session_record(rows[0]) if rows else None

    def list(self, tenant: str | None = None, open_only: bool = False,
             limit: int = 100) -> builtins.list[SessionRecord]:
        self._check_open()
        where, params = [], []
        if tenant is not None:
            where.append("tenant = %s")
            params.append(tenant)
        if open_only:
            where.append("closed_at IS NULL")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self.db.read(f"SELECT * FROM sessions {clause}ORDER BY created_at DESC LIMIT %s",  # noqa: S608
                            (*params, limit))
        return [session_record(r) for r in rows]

    def events(self, session_id: str, limit: int = 1000) -> builtins.list[SessionEvent]:
        self._check_open()
        rows = self.db.read("SELECT session_id, tenant, key_id, event, at, detail FROM session_events"
                            " WHERE session_id = %s ORDER BY id LIMIT %s", (session_id, limit))
        return [SessionEvent(sid, tenant, key_id, event, at, MappingProxyType(dict(detail)))
                for sid, tenant, key_id, event, at, detail in rows]

    def close_orphans(self, owner: str, reason: str, at: float) -> builtins.list[str]:
        self._check_open()
        with self.db.transaction() as conn:
            rows = conn.execute("UPDATE sessions SET closed_at = %s, close_reason = %s"
                                " WHERE owner = %s AND closed_at IS NULL RETURNING session_id, tenant, key_id",
                                (at, reason, owner)).fetchall()
            detail = MappingProxyType({"reason": reason})
            for session_id, tenant, key_id in rows:
                _insert_event(conn, SessionEvent(session_id, tenant, key_id, "closed", at, detail))
        return [row[0] for row in rows]


def _insert_event(conn: _Conn, event: SessionEvent) -> None:
    if event.event not in EVENTS:
        raise ValueError(f"unknown session event {event.event!r}")
    conn.execute("INSERT INTO session_events (session_id, tenant, key_id, event, at, detail)"
                 " VALUES (%s, %s, %s, %s, %s, %s)",
                 (event.session_id, event.tenant, event.key_id, event.event, event.at, Jsonb(dict(event.detail))))


class PostgresSnapshotStore(PostgresStore):
    """The snapshot index in PostgreSQL. Thread-safe."""

    def add(self, rec: SnapshotRecord, max_count: int) -> bool:
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SNAPSHOT_LOCK, rec.tenant))
            row = conn.execute("SELECT COUNT(*) FROM snapshots WHERE tenant = %s", (rec.tenant,)).fetchone()
            if row is not None and row[0] >= max_count:
                return False
            conn.execute("INSERT INTO snapshots VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (rec.snapshot_id, rec.tenant, rec.session_id, rec.name, rec.created_at, rec.size_bytes,
                          rec.files, rec.skipped, rec.file, rec.sha256))
        return True

    def get(self, snapshot_id: str) -> SnapshotRecord | None:
        self._check_open()
        rows = self.db.read("SELECT * FROM snapshots WHERE snapshot_id = %s", (snapshot_id,))
        return SnapshotRecord(*rows[0]) if rows else None

    def list(self, tenant: str, limit: int = 50, before: tuple[float, str] | None = None
             ) -> builtins.list[SnapshotRecord]:
        self._check_open()
        if before is None:
            rows = self.db.read("SELECT * FROM snapshots WHERE tenant = %s"
                                " ORDER BY created_at DESC, snapshot_id DESC LIMIT %s", (tenant, limit))
        else:
            rows = self.db.read("SELECT * FROM snapshots WHERE tenant = %s AND (created_at, snapshot_id) < (%s, %s)"
                                " ORDER BY created_at DESC, snapshot_id DESC LIMIT %s",
                                (tenant, before[0], before[1], limit))
        return [SnapshotRecord(*row) for row in rows]

    def delete(self, snapshot_id: str) -> bool:
        self._check_open()
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM snapshots WHERE snapshot_id = %s", (snapshot_id,)).rowcount == 1

    def count(self, tenant: str) -> int:
        self._check_open()
        return int(self.db.read("SELECT COUNT(*) FROM snapshots WHERE tenant = %s", (tenant,))[0][0])


class PostgresArchiveStore(PostgresStore):
    """Snapshot archives' bytes in PostgreSQL, in chunks of ARCHIVE_CHUNK bytes. Thread-safe."""

    def put(self, name: str, source: Path) -> None:
        self._check_open()
        with self.db.transaction() as conn, open(source, "rb") as f:
            conn.execute("DELETE FROM snapshot_archives WHERE name = %s", (name,))
            seq = 0
            while chunk := f.read(ARCHIVE_CHUNK):
                conn.execute("INSERT INTO snapshot_archives (name, seq, data) VALUES (%s, %s, %s)",
                             (name, seq, chunk))
                seq += 1
            if seq == 0:  # an empty archive still exists
                conn.execute("INSERT INTO snapshot_archives (name, seq, data) VALUES (%s, 0, %s)", (name, b""))

    @contextlib.contextmanager
    def fetched(self, name: str, spool: Path) -> Iterator[Path | None]:
        self._check_open()
        fd, temp = tempfile.mkstemp(prefix=".fetch-", dir=spool)
        try:
            found = False
            with os.fdopen(fd, "wb") as out:
                seq = 0
                while rows := self.db.read("SELECT data FROM snapshot_archives WHERE name = %s AND seq = %s",
                                           (name, seq)):
                    out.write(bytes(rows[0][0]))
                    found = True
                    seq += 1
            yield Path(temp) if found else None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def delete(self, name: str) -> None:
        self._check_open()
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM snapshot_archives WHERE name = %s", (name,))
