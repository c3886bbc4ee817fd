"""The embedded default: every durable store in one SQLite file under the data dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox_server.stores.sqlite import SqliteAuditStore, SqliteKeyStore, SqlitePolicyVersionStore
from sandbox_server.stores.sqlite_costs import SqliteCostStore
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore
from sandbox_server.stores.sqlite_sessions import SqliteSessionStore, SqliteSnapshotStore

DB_NAME = "state.db"


@dataclass
class Stores:
    """The server's durable stores."""

    keys: SqliteKeyStore
    versions: SqlitePolicyVersionStore
    audit: SqliteAuditStore
    costs: SqliteCostStore
    incidents: SqliteIncidentStore
    sessions: SqliteSessionStore
    snapshots: SqliteSnapshotStore

    def close(self) -> None:
        for store in (self.keys, self.versions, self.audit, self.costs, self.incidents, self.sessions,
                      self.snapshots):
            store.close()


def open_stores(data_dir: Path) -> Stores:
    """Open (creating if needed) every store in ``data_dir``/state.db; on failure nothing stays open."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / DB_NAME
    opened: list[SqliteKeyStore | SqlitePolicyVersionStore | SqliteAuditStore | SqliteCostStore
                 | SqliteIncidentStore | SqliteSessionStore] = []
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
                  snapshots=snapshots)
