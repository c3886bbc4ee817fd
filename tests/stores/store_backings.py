"""The store implementations the contract suite runs against, each over one durable backing (a SQLite file, or
a PostgreSQL database of the test's own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_server.stores import KeyStore, PolicyVersionStore, SqliteKeyStore, SqlitePolicyVersionStore
from sandbox_server.stores.base import AuditStore
from sandbox_server.stores.postgres import (
    PostgresAuditStore,
    PostgresDatabase,
    PostgresKeyStore,
    PostgresPolicyVersionStore,
)
from sandbox_server.stores.sqlite import SqliteAuditStore

IMPLEMENTATIONS = ["sqlite", "postgres"]


@dataclass
class Backing:
    """Opens stores over one durable backing; opening again after ``close`` is a restart."""

    name: str
    _open_keys: Callable[[], KeyStore]
    _open_versions: Callable[[], PolicyVersionStore]
    _open_audit: Callable[[], AuditStore]
    _opened: list[KeyStore | PolicyVersionStore | AuditStore] = field(default_factory=list)

    def keys(self) -> KeyStore:
        store = self._open_keys()
        self._opened.append(store)
        return store

    def versions(self) -> PolicyVersionStore:
        store = self._open_versions()
        self._opened.append(store)
        return store

    def audit(self) -> AuditStore:
        store = self._open_audit()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


def sqlite(tmp_path: Path) -> Backing:
    path = tmp_path / "stores.db"
    return Backing("sqlite", lambda: SqliteKeyStore(path), lambda: SqlitePolicyVersionStore(path),
                   lambda: SqliteAuditStore(path))


def postgres(url: str) -> Backing:
    """Each store opens its own database pool, as a restarted server (or another replica) would."""
    return Backing("postgres", lambda: PostgresKeyStore(PostgresDatabase(url), owns=True),
                   lambda: PostgresPolicyVersionStore(PostgresDatabase(url), owns=True),
                   lambda: PostgresAuditStore(PostgresDatabase(url), owns=True))
