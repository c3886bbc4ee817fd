"""Snapshots: a session's workspace (regular files only) saved durably, and restored into a new session. The
archive's bytes are kept by an ArchiveStore: under the data dir (one server), or in the shared database, where a
snapshot taken on one replica restores on any.

Taking one: the files are listed and read through the session's agent (sessions/files.py: nothing of the
sandbox is touched from the host), each is spooled to a private temp file, and the archive is written by the
server itself (a tar of regular files with normalised paths), fsynced, renamed into place, then indexed.
Links (symbolic or hard), FIFOs and devices are left out and counted. Restoring: the archive's checksum must
match its index entry, and every member is checked again (regular, normalised path) before it is uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbox_server.errors import QuotaViolation, ResourceExhausted, SandboxFailure
from sandbox_server.sessions import files
from sandbox_server.sessions.ids import new_snapshot_id
from sandbox_server.sessions.sandbox import SessionSandbox
from sandbox_server.stores.sessions import ArchiveStore, LocalArchiveStore, SnapshotRecord, SnapshotStore
from sandbox_server.validation.request import path_problem

log = logging.getLogger(__name__)

SPOOL_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SnapshotLimits:
    max_bytes: int
    max_count: int


class SnapshotArchive:
    """Snapshots: their index, the store of their archives' bytes, and the directory (``<data_dir>/snapshots``,
    private to the server) where archives are built and, with the local store, kept."""

    def __init__(self, root: Path, index: SnapshotStore, storage: ArchiveStore | None = None) -> None:
        self.root = root
        self.index = index
        self.storage: ArchiveStore = storage if storage is not None else LocalArchiveStore(root)

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for stale in [*self.root.glob(".tmp-*"), *self.root.glob(".fetch-*")]:  # what a crash cut short
            with contextlib.suppress(OSError):
                stale.unlink()

    async def take(self, sandbox: SessionSandbox, tenant: str, session_id: str, name: str,
                   limits: SnapshotLimits) -> SnapshotRecord:
        """Raises ResourceExhausted (too large, too many snapshots) or an error of the file operations."""
        listing = await files.listdir(sandbox, session_id, "", recursive=True)
        if listing.truncated:
            raise ResourceExhausted("the workspace has more entries than a snapshot holds",
                                    violations=[QuotaViolation(f"session:{session_id}/snapshot",
                                                               "too many files in the workspace")],
                                    retry_after_s=None)
        regular = [e for e in listing.entries
                   if e.kind == "file" and e.links == 1 and path_problem(e.path) is None]
        skipped = sum(1 for e in listing.entries if e.kind != "directory") - len(regular)
        total = sum(e.size for e in regular)
        if total > limits.max_bytes:
            raise _too_large(tenant, total, limits.max_bytes)
        if await asyncio.to_thread(self.index.count, tenant) >= limits.max_count:
            raise _too_many(tenant, limits.max_count)
        snapshot_id = new_snapshot_id()
        final = self.root / f"{snapshot_id}.tar"
        fd, temp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        temp = Path(temp_name)
        digest = hashlib.sha256()
        size = 0
        count = 0
        try:
            with os.fdopen(fd, "wb") as out:
                hashing = _Hashing(out, digest)
                with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                    for entry in regular:
                        with tempfile.TemporaryFile(dir=self.root) as spool:
                            got = await _spool(files.download(sandbox, session_id, entry.path), spool,
                                               limits.max_bytes - size)
                            if got is None:
                                raise _too_large(tenant, size + entry.size, limits.max_bytes)
                            spool.seek(0)
                            info = tarfile.TarInfo(entry.path)
                            info.size, info.mode, info.mtime = got, 0o644, int(entry.mtime)
                            await asyncio.to_thread(tar.addfile, info, spool)
                        size += got
                        count += 1
                out.flush()
                os.fsync(out.fileno())
            record = SnapshotRecord(snapshot_id=snapshot_id, tenant=tenant, session_id=session_id, name=name,
                                    created_at=time.time(), size_bytes=size, files=count, skipped=skipped,
                                    file=final.name, sha256=digest.hexdigest())
            await asyncio.to_thread(self.storage.put, final.name, temp)
            try:
                added = await asyncio.to_thread(self.index.add, record, limits.max_count)
            except BaseException:
                await asyncio.to_thread(self.storage.delete, final.name)
                raise
            if not added:
                await asyncio.to_thread(self.storage.delete, final.name)
                raise _too_many(tenant, limits.max_count)
            return record
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    async def restore(self, record: SnapshotRecord) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """The snapshot's files as (path, content chunks), each read from the archive as it is consumed; raises
        SandboxFailure for a damaged archive (checked whole, against its index entry, before the first file)."""
        with self.storage.fetched(record.file, self.root) as path:
            if path is None:
                raise SandboxFailure(f"snapshot {record.snapshot_id}'s archive is missing")
            await asyncio.to_thread(_check_sum, path, record.sha256)
            tar = await asyncio.to_thread(tarfile.open, path, "r:")
            try:
                while (member := await asyncio.to_thread(tar.next)) is not None:
                    if not member.isreg() or path_problem(member.name) is not None:
                        raise SandboxFailure(f"snapshot {record.snapshot_id} holds an unexpected member")
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise SandboxFailure(f"snapshot {record.snapshot_id} is damaged")
                    yield member.name, _chunks(handle)
            finally:
                tar.close()

    async def delete(self, record: SnapshotRecord) -> None:
        if await asyncio.to_thread(self.index.delete, record.snapshot_id):
            await asyncio.to_thread(self.storage.delete, record.file)


class _Hashing:
    """A write-only file object that hashes what goes through it (tarfile writes the archive through it)."""

    def __init__(self, out: object, digest: hashlib._Hash) -> None:
        self.out = out
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)  # type: ignore[attr-defined,no-any-return]

    def tell(self) -> int:
        return self.out.tell()  # type: ignore[attr-defined,no-any-return]


async def _spool(chunks: AsyncIterator[files.FileEntry | bytes], spool: object, room: int) -> int | None:
    """Copy a download's content into ``spool``; its size, or None past ``room`` bytes."""
    got = 0
    async for item in chunks:
        if isinstance(item, bytes):
            got += len(item)
            if got > room:
                return None
            spool.write(item)  # type: ignore[attr-defined]
    return got


def _check_sum(path: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(SPOOL_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SandboxFailure(f"snapshot archive {path.name} cannot be read: {exc}") from exc
    if digest.hexdigest() != sha256:
        raise SandboxFailure(f"snapshot archive {path.name} does not match its checksum")


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, SPOOL_CHUNK):
        yield chunk


def _too_large(tenant: str, size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the workspace's files ({size} bytes) are over the snapshot limit of {limit} bytes",
        violations=[QuotaViolation(f"tenant:{tenant}/sessions.snapshots.max_bytes",
                                   f"a snapshot holds at most {limit} bytes")], retry_after_s=None)


def _too_many(tenant: str, count: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"tenant {tenant!r} keeps {count} snapshots already; delete one first",
        violations=[QuotaViolation(f"tenant:{tenant}/sessions.snapshots.max_count",
                                   f"at most {count} snapshots at once")], retry_after_s=None)
