"""The store implementations the contract suite runs against, each over one durable backing (a file)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_server.stores import KeyStore, PolicyVersionStore, SqliteKeyStore, SqlitePolicyVersionStore

IMPLEMENTATIONS = ["sqlite"]


@dataclass
class Backing:
    """Opens stores over one durable backing (a file); opening again after ``close`` is a restart."""

    name: str
    _open_keys: Callable[[], KeyStore]
    _open_versions: Callable[[], PolicyVersionStore]
    _opened: list[KeyStore | PolicyVersionStore] = field(default_factory=list)

    def keys(self) -> KeyStore:
        store = self._open_keys()
        self._opened.append(store)
        return store

    def versions(self) -> PolicyVersionStore:
        store = self._open_versions()
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


def _sqlite(tmp_path: Path) -> Backing:
    path = tmp_path / "stores.db"
    return Backing("sqlite", lambda: SqliteKeyStore(path), lambda: SqlitePolicyVersionStore(path))


FACTORIES: dict[str, Callable[[Path], Backing]] = {"sqlite": _sqlite}
