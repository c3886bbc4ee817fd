"""Durable stores behind small protocols, one module per domain: keys, policy versions and the audit trail
(``base``), the cost ledger (``costs``), incidents (``incidents``). SQLite is the embedded default (``sqlite``,
``sqlite_costs``, ``sqlite_incidents``; ``embedded.open_stores`` opens them all in one file).

Every implementation passes the contract suites in tests/stores/.
"""

from __future__ import annotations

from sandbox_server.stores.base import (
    AuditRecord,
    AuditStore,
    KeyRecord,
    KeyStore,
    PolicyVersion,
    PolicyVersionStore,
    Role,
)
from sandbox_server.stores.costs import CostStore
from sandbox_server.stores.incidents import IncidentStore
from sandbox_server.stores.sqlite import SqliteAuditStore, SqliteKeyStore, SqlitePolicyVersionStore

__all__ = [
    "AuditRecord",
    "AuditStore",
    "CostStore",
    "IncidentStore",
    "KeyRecord",
    "KeyStore",
    "PolicyVersion",
    "PolicyVersionStore",
    "Role",
    "SqliteAuditStore",
    "SqliteKeyStore",
    "SqlitePolicyVersionStore",
]
