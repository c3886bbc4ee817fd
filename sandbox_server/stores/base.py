"""The store protocols and the records they hold.

Methods are synchronous and meant to be fast (an indexed lookup, one small transaction): ``KeyStore.verify`` is
called by the auth interceptor on every request and answers from memory most of the time. Writes may wait for
the disk (fsync); asyncio callers run them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

Role = Literal["tenant", "admin"]
ROLES: tuple[Role, ...] = ("tenant", "admin")

TOKEN_PREFIX = "sbx_"  # noqa: S105 (a prefix, not a password)
"""Every API key reads ``sbx_<key_id>_<secret>``: the key id is public, the secret is 32 random bytes."""

MAX_LABEL_CHARS = 200
ANY_ERROR = "ERROR"
"""In an audit listing's outcome filter: every "ERROR:<code>" outcome."""


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored, without its secret or hash. Times are timezone-aware (UTC)."""

    key_id: str
    tenant: str
    role: Role
    label: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class PolicyVersion:
    """One recorded policy version: who made it, when, and the policy files recorded with it.

    ``files`` holds the file names, sorted; ``texts`` maps each name to its text and is filled only by
    ``PolicyVersionStore.get`` (``list`` leaves it empty).
    """

    version: int
    actor: str
    at: datetime
    files: tuple[str, ...]
    texts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class KeyStore(Protocol):
    """API keys. Only a peppered hash of each secret is stored; the secret is returned once, by ``create``."""

    def create(self, tenant: str, role: Role, label: str) -> tuple[KeyRecord, str]:
        """A new active key and its token ``sbx_<key_id>_<secret>``, the only time the secret is seen.

        Raises:
            ValueError: empty tenant, unknown role, or a label longer than MAX_LABEL_CHARS.
        """
        ...

    def verify(self, token: str) -> KeyRecord | None:
        """The active key the token belongs to; None for a malformed token, an unknown key id, a wrong secret
        or a revoked key."""
        ...

    def get(self, key_id: str) -> KeyRecord | None:
        """The key (active or revoked), or None."""
        ...

    def revoke(self, key_id: str) -> bool:
        """Revoke the key for good. True if it was active; False if unknown or already revoked."""
        ...

    def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        """Every key (revoked ones too) of ``tenant``, or of every tenant for None, oldest first."""
        ...

    def close(self) -> None: ...


class PolicyVersionStore(Protocol):
    """The history of policy versions, append-only."""

    def record(self, version: int, changes: Mapping[str, str], actor: str) -> None:
        """Record ``version`` with its files (file name -> text).

        Raises:
            ValueError: ``version`` is not positive or is already recorded.
        """
        ...

    def list(self, limit: int = 50) -> builtins.list[PolicyVersion]:
        """The latest ``limit`` versions, newest first, without texts."""
        ...

    def get(self, version: int) -> PolicyVersion | None:
        """The version with its texts, or None."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class AuditRecord:
    """One accepted execution: who, what, with which limits, how it ended, what it used, when."""

    execution_id: str
    tenant: str
    key_id: str
    session_id: str
    language: str
    code_sha256: str
    limits: Mapping[str, int]
    outcome: str  # the result status ("OK", "TIMEOUT", ...) or "ERROR:<grpc code>" / "CANCELLED"
    exit_code: int
    wall_time_s: float
    cpu_time_s: float
    peak_memory_bytes: int
    started_at: float
    ended_at: float
    trace_id: str = ""
    cost: float = 0.0
    exercise: bool = False  # marked as an exercise by an admin (an operator's check, not an agent's work)
    egress_bytes_sent: int = 0  # through the egress proxy, from the sandbox
    egress_bytes_received: int = 0
    egress_connections: int = 0


class AuditStore(Protocol):
    """The audit trail: exactly one record per accepted execution, durable before the reply leaves.

    ``remote``: the store is a separate service (PostgreSQL) that can be down while the server runs; then
    ``ensure_writable`` is called before an execution runs, so that none runs when its record could not be
    written (it raises StoreUnavailable)."""

    remote: bool

    def ensure_writable(self) -> None: ...

    def record(self, rec: AuditRecord) -> None:
        """Write one record durably.

        Raises:
            ValueError: the execution already has a record.
        """
        ...

    def get(self, execution_id: str) -> AuditRecord | None: ...

    def list(
        self, tenant: str | None = None, limit: int = 100, session_id: str | None = None, *,
        outcomes: Collection[str] = (), since: float | None = None, until: float | None = None,
    ) -> builtins.list[AuditRecord]:
        """Newest first (by start), at most ``limit`` of those that pass every filter set: ``tenant``,
        ``session_id``, ``outcomes`` (one of these; ANY_ERROR stands for every "ERROR:<code>"), and a start time
        in [``since``, ``until``) (epoch seconds)."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def audit_where(
    mark: str, tenant: str | None, session_id: str | None, outcomes: Collection[str], since: float | None,
    until: float | None,
) -> tuple[str, builtins.list[Any]]:
    """An audit listing's WHERE clause ("WHERE ... ", or "" without a filter) and its parameters, for both SQL
    stores: ``mark`` is the driver's placeholder ("?" or "%s")."""
    where: builtins.list[str] = []
    params: builtins.list[Any] = []
    for column, value in (("tenant", tenant), ("session_id", session_id)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if outcomes:
        exact = sorted(set(outcomes) - {ANY_ERROR})
        either: builtins.list[str] = []
        if exact:
            either.append(f"outcome IN ({', '.join([mark] * len(exact))})")
            params.extend(exact)
        if ANY_ERROR in outcomes:
            # substr rather than LIKE: the same exact, case-sensitive match in both (and no "%" for psycopg).
            either.append(f"substr(outcome, 1, 6) = {mark}")
            params.append(f"{ANY_ERROR}:")
        where.append(f"({' OR '.join(either)})")
    if since is not None:
        where.append(f"started_at >= {mark}")
        params.append(since)
    if until is not None:
        where.append(f"started_at < {mark}")
        params.append(until)
    return (f"WHERE {' AND '.join(where)} " if where else ""), params


def json_column(value: Any) -> Any:
    """A JSON column as read back: text from SQLite (decoded here), or already decoded by PostgreSQL (JSONB)."""
    return json.loads(value) if isinstance(value, str) else value
