"""The server's durable stores: every one in one SQLite file under the data dir (the embedded default), or every
one in one PostgreSQL database (``database_url``: replicas share it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sandbox_server.stores.base import AuditStore, KeyStore, PolicyVersionStore
from sandbox_server.stores.costs import CostStore
from sandbox_server.stores.incidents import IncidentStore
from sandbox_server.stores.sessions import ArchiveStore, SessionStore, SnapshotStore

DB_NAME = "state.db"


@dataclass
class Stores:
    """The server's durable stores; ``where`` says where they are (no password in it)."""

    keys: KeyStore
    versions: PolicyVersionStore
    audit: AuditStore
    costs: CostStore
    incidents: IncidentStore
    sessions: SessionStore
    snapshots: SnapshotStore
    archives: ArchiveStore | None = None  # None: the snapshots directory under the data dir (one server)
    where: str = ""
    _close_backing: Callable[[], None] | None = None

    def close(self) -> None:
        for store in (self.keys, self.versions, self.audit, self.costs, self.incidents, self.sessions,
                      self.snapshots):
            store.close()
        if self._close_backing is not None:
            self._close_backing()


def open_stores(data_dir: Path, database_url: str | None = None) -> Stores:
    """Open (creating if needed) every store: in ``data_dir``/state.db, or in the PostgreSQL database at
    ``database_url`` (its schema brought up to date). On failure nothing stays open."""
    if database_url is not None:
        return _open_postgres(database_url, data_dir)
    from sandbox_server.stores.sqlite import SqliteAuditStore, SqliteKeyStore, SqlitePolicyVersionStore
    from sandbox_server.stores.sqlite_costs import SqliteCostStore
    from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore
    from sandbox_server.stores.sqlite_sessions import SqliteSessionStore, SqliteSnapshotStore

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / DB_NAME
    opened: list[KeyStore | PolicyVersionStore | AuditStore | CostStore | IncidentStore | SessionStore] = []
    try:
        keys = SqliteKeyStore(path)
        opened.append(keys)
        versions = SqlitePolicyVersionStore(path)
        opened.append(versions)
        audit = SqliteAuditStore(path)
        opened.append(audit)
        costs = SqliteCostStore(path)
        opened.append(costs)
        incidents = SqliteIncidentStore(path)
        opened.append(incidents)
        sessions = SqliteSessionStore(path)
        opened.append(sessions)
        snapshots = SqliteSnapshotStore(path)
    except BaseException:
        for store in opened:
            store.close()
        raise
    return Stores(keys=keys, versions=versions, audit=audit, costs=costs, incidents=incidents, sessions=sessions,
                  snapshots=snapshots, where=str(path))


def _open_postgres(url: str, data_dir: Path) -> Stores:
    from sandbox_server.stores.outbox import FILE_NAME, AuditOutbox, OutboxAuditStore
    from sandbox_server.stores.postgres import (
        PostgresAuditStore,
        PostgresDatabase,
        PostgresKeyStore,
        PostgresPolicyVersionStore,
    )
    from sandbox_server.stores.postgres_costs import PostgresCostStore
    from sandbox_server.stores.postgres_incidents import PostgresIncidentStore
    from sandbox_server.stores.postgres_sessions import (
        PostgresArchiveStore,
        PostgresSessionStore,
        PostgresSnapshotStore,
    )

    db = PostgresDatabase(url)
    try:
        # Records the database cannot take during a long outage wait on this server's disk (stores/outbox.py).
        audit = OutboxAuditStore(PostgresAuditStore(db), AuditOutbox(data_dir / FILE_NAME))
    except BaseException:
        db.close()
        raise
    try:
        return Stores(keys=PostgresKeyStore(db), versions=PostgresPolicyVersionStore(db), audit=audit,
                      costs=PostgresCostStore(db), incidents=PostgresIncidentStore(db),
                      sessions=PostgresSessionStore(db), snapshots=PostgresSnapshotStore(db),
                      archives=PostgresArchiveStore(db),
                      where=f"{redacted(url)} (PostgreSQL, schema version {db.schema_version})",
                      _close_backing=db.close)
    except BaseException:
        audit.close()
        db.close()
        raise


def redacted(url: str) -> str:
    """The URL without its password, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))
