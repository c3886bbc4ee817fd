"""The audit outbox: a record that the shared database cannot take now is kept on the server's own disk and moved
there once it answers again, so an execution that has run keeps its one durable record through an outage of any
length.

Only a remote audit store (PostgreSQL) has one. New executions are refused while the database is down (the
audit link checks it first); the outbox serves those already running when it went down. The audit link waits
through a short outage (a failover) first, then hands the call's records to ``defer``: written to a SQLite file
in the data dir (synchronous=FULL) before the reply leaves. A background thread drains it every
DRAIN_INTERVAL_S, oldest first: a record the database already has (an attempt the outage cut off had committed)
counts as moved, so each execution ends with exactly one record there. ``get`` finds a record still waiting too.

A record waits in the outbox as long as the database is down; one whose server is gone for good waits with its
data dir (a replica's data dir must outlive it for that: see docs/kubernetes.md).
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType

from sandbox_server.errors import StoreUnavailable
from sandbox_server.stores.base import AuditRecord, AuditStore

log = logging.getLogger(__name__)

FILE_NAME = "audit-outbox.db"
DRAIN_INTERVAL_S = 1.0


class AuditOutbox:
    """Records waiting for the database, in a SQLite file of their own. Thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a deferred record is as durable as one in the database
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "execution_id TEXT NOT NULL UNIQUE, record TEXT NOT NULL)")
        self._lock = threading.Lock()

    def put(self, rec: AuditRecord) -> None:
        """Keep ``rec`` (again: a no-op for an execution already waiting)."""
        # Not dataclasses.asdict: it deep-copies, and a record's limits are a read-only mapping proxy.
        data = json.dumps({**{f.name: getattr(rec, f.name) for f in fields(rec)}, "limits": dict(rec.limits)})
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO outbox (execution_id, record) VALUES (?, ?)",
                             (rec.execution_id, data))

    def oldest(self, limit: int = 100) -> builtins.list[AuditRecord]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [_record(row[0]) for row in rows]

    def get(self, execution_id: str) -> AuditRecord | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM outbox WHERE execution_id = ?", (execution_id,)).fetchone()
        return _record(row[0]) if row else None

    def remove(self, execution_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE execution_id = ?", (execution_id,))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(text: str) -> AuditRecord:
    data = json.loads(text)
    data["limits"] = MappingProxyType(data["limits"])
    return AuditRecord(**data)


class OutboxAuditStore:
    """A remote audit store with an outbox in front of it for the records it cannot take now."""

    remote = True

    def __init__(self, remote: AuditStore, outbox: AuditOutbox, drain_interval_s: float = DRAIN_INTERVAL_S) -> None:
        self._store = remote
        self.outbox = outbox
        self._interval = drain_interval_s
        self._stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain_forever, name="audit-outbox", daemon=True)
        self._drainer.start()

    def ensure_writable(self) -> None:
        self._store.ensure_writable()

    def record(self, rec: AuditRecord) -> None:
        self._store.record(rec)

    def defer(self, rec: AuditRecord) -> None:
        """Keep ``rec`` until the database takes it (durable when this returns)."""
        self.outbox.put(rec)
        log.warning("audit record of %s kept in the outbox until the database answers", rec.execution_id)

    def get(self, execution_id: str) -> AuditRecord | None:
        waiting = self.outbox.get(execution_id)
        return waiting if waiting is not None else self._store.get(execution_id)

    def list(
        self, tenant: str | None = None, limit: int = 100, session_id: str | None = None, *,
        outcomes: Collection[str] = (), since: float | None = None, until: float | None = None,
    ) -> builtins.list[AuditRecord]:
        return self._store.list(tenant, limit, session_id, outcomes=outcomes, since=since, until=until)

    def count(self) -> int:
        return self._store.count()

    def drain_once(self) -> int:
        """Move what waits into the database, oldest first, until it refuses; how many were moved."""
        moved = 0
        for rec in self.outbox.oldest():
            try:
                self._store.record(rec)
            except ValueError:
                pass  # committed by an attempt the outage cut off: already there, once
            except StoreUnavailable:
                break
            self.outbox.remove(rec.execution_id)
            moved += 1
        if moved:
            log.info("audit outbox: %d record(s) moved into the database", moved)
        return moved

    def _drain_forever(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.drain_once()
            except Exception:  # the next round tries again
                log.exception("audit outbox: draining failed")

    def close(self) -> None:
        self._stop.set()
        self._drainer.join(timeout=10)
        try:
            self.drain_once()  # what the database takes now is not left behind
        except Exception:
            log.warning("audit outbox: %d record(s) wait for the next start", self.outbox.count())
        self.outbox.close()
        self._store.close()
