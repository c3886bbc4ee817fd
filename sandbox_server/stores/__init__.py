"""Durable stores behind small protocols (``base``); SQLite is the embedded default (``sqlite``).

Every implementation passes the one contract suite in tests/stores/.
"""

from __future__ import annotations

from sandbox_server.stores.base import KeyRecord, KeyStore, PolicyVersion, PolicyVersionStore, Role
from sandbox_server.stores.sqlite import SqliteKeyStore, SqlitePolicyVersionStore

__all__ = [
    "KeyRecord",
    "KeyStore",
    "PolicyVersion",
    "PolicyVersionStore",
    "Role",
    "SqliteKeyStore",
    "SqlitePolicyVersionStore",
]
