"""The records of sessions and snapshots, and the protocols of their stores.

A live session is a sandbox in one server process; the store keeps what must outlive it: who created it and
when, how and why it ended (the lifecycle audit trail: one event per created, closed, snapshot, restore, file
change), the index of snapshots, and their archives' bytes (under the data dir, or in the shared database). A
server that starts closes the
records its predecessor left open (its sessions died with it), so a restarted server answers for them with a
clear NOT_FOUND.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from sandbox_server.stores.base import json_column

EVENTS = ("created", "closed", "snapshot", "restored", "uploaded", "deleted", "kernel_restarted", "loop_detected")


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored. Times are epoch seconds; ``closed_at`` is None while it lives."""

    session_id: str
    tenant: str
    key_id: str
    owner: str  # the server that runs it (its state dir): a restart closes its own orphans only
    backend: str
    languages: tuple[str, ...]
    limits: Mapping[str, int]
    labels: Mapping[str, str]
    snapshot_id: str
    created_at: float
    idle_timeout_s: int = 0
    max_lifetime_s: int = 0
    cpu_total_ms: int = 0
    closed_at: float | None = None
    close_reason: str = ""
    calls: int = 0
    cpu_time_s: float = 0.0
    cost: float = 0.0
    kernel_restarts: int = 0
    last_used_at: float | None = None
    peak_memory_bytes: int = 0


@dataclass(frozen=True)
class SessionEvent:
    """One lifecycle event of a session: the audit trail of sessions (executions have their own records)."""

    session_id: str
    tenant: str
    key_id: str
    event: str  # one of EVENTS
    at: float
    detail: Mapping[str, str | int | float | bool] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SessionEnd:
    """How a session ended, with its totals."""

    closed_at: float
    reason: str
    calls: int
    cpu_time_s: float
    cost: float
    kernel_restarts: int
    last_used_at: float | None = None
    peak_memory_bytes: int = 0


class SessionStore(Protocol):
    """Sessions and their lifecycle events. Every write is durable before it returns."""

    def create(self, rec: SessionRecord, event: SessionEvent) -> None:
        """Record a new session and its ``created`` event in one transaction.

        Raises:
            ValueError: the session id is already recorded.
        """
        ...

    def end(self, session_id: str, end: SessionEnd, event: SessionEvent) -> bool:
        """Mark the session closed and record its ``closed`` event, in one transaction. False (nothing written)
        when it is unknown or already closed."""
        ...

    def record_event(self, event: SessionEvent) -> None: ...

    def get(self, session_id: str) -> SessionRecord | None: ...

    def list(self, tenant: str | None = None, open_only: bool = False,
             limit: int = 100) -> builtins.list[SessionRecord]:
        """Newest first."""
        ...

    def events(self, session_id: str, limit: int = 1000) -> builtins.list[SessionEvent]:
        """Oldest first."""
        ...

    def close_orphans(self, owner: str, reason: str, at: float) -> builtins.list[str]:
        """Close every session of ``owner`` still open (a previous run of that server died with them), with a
        ``closed`` event each; returns their ids."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SnapshotRecord:
    """A saved workspace: its files are a tar under the data dir, named by ``file``."""

    snapshot_id: str
    tenant: str
    session_id: str
    name: str
    created_at: float
    size_bytes: int
    files: int
    skipped: int
    file: str  # the archive's name under the snapshots directory
    sha256: str  # of the archive, checked before a restore


class SnapshotStore(Protocol):
    def add(self, rec: SnapshotRecord, max_count: int) -> bool:
        """Index a snapshot whose archive is already durable. False (nothing written) when the tenant already
        keeps ``max_count`` snapshots."""
        ...

    def get(self, snapshot_id: str) -> SnapshotRecord | None: ...

    def list(self, tenant: str, limit: int = 50, before: tuple[float, str] | None = None
             ) -> builtins.list[SnapshotRecord]:
        """Newest first; ``before`` (created_at, id) pages on."""
        ...

    def delete(self, snapshot_id: str) -> bool:
        """Drop the index entry (the caller removes the archive). False when unknown."""
        ...

    def count(self, tenant: str) -> int: ...

    def close(self) -> None: ...


class ArchiveStore(Protocol):
    """Where snapshot archives' bytes are kept, by file name (``SnapshotRecord.file``): the server's data
    directory (one server), or the shared database (replicas: a snapshot taken on one restores on any)."""

    def put(self, name: str, source: Path) -> None:
        """Keep ``source``'s bytes under ``name``, durably when this returns; ``source`` is the caller's to
        remove (it may be gone: a local store moves it into place)."""
        ...

    def fetched(self, name: str, spool: Path) -> AbstractContextManager[Path | None]:
        """A readable local file with the bytes kept under ``name`` for the block (a copy in ``spool``, removed
        after, when they are not local), or None when none are kept."""
        ...

    def delete(self, name: str) -> None:
        """Forget the bytes under ``name`` (nothing when none are kept)."""
        ...


class LocalArchiveStore:
    """Archives as files in one directory (``<data_dir>/snapshots``), private to the server. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, name: str, source: Path) -> None:
        os.rename(source, self.root / name)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def fetched(self, name: str, spool: Path) -> Iterator[Path | None]:
        path = self.root / name
        yield path if path.is_file() and not path.is_symlink() else None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()


def session_record(row: tuple[Any, ...]) -> SessionRecord:
    """A SessionRecord from a row of the sessions table, in column order; the languages, limits and labels as JSON
    text (SQLite) or already decoded (PostgreSQL's JSONB)."""
    (sid, tenant, key_id, owner, backend, languages, limits, labels, snapshot_id, created_at, idle, lifetime,
     cpu_total, closed_at, reason, calls, cpu, cost, restarts, last_used, peak) = row
    return SessionRecord(sid, tenant, key_id, owner, backend, tuple(json_column(languages)),
                         MappingProxyType(json_column(limits)), MappingProxyType(json_column(labels)), snapshot_id,
                         created_at, idle, lifetime, cpu_total, closed_at, reason, calls, cpu, cost, restarts,
                         last_used, peak)

