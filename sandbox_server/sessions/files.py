"""A session's workspace files, through its agent: upload, download, list, delete.

The agent does the file work inside the sandbox with the sandbox's own rights, walking every path from the
workspace one component at a time with O_NOFOLLOW and reading only regular, singly-linked files, so a link,
FIFO or device the session's code planted is refused, never followed; the server touches no path of the
sandbox. Here: requests to the agent, sizes checked against the session's limits, the agent's refusals turned
into the API's errors, and nothing the agent says trusted (types and sizes checked).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sandbox_server.errors import FieldViolation, InvalidRequest, NotFound, QuotaViolation, ResourceExhausted
from sandbox_server.sessions.channel import AgentError
from sandbox_server.sessions.sandbox import SessionSandbox

CHUNK = 1024 * 1024  # to and from the agent
MAX_PATH_CHARS = 4096
FILE_KINDS = {"f": "file", "d": "directory", "l": "symlink", "o": "other"}


@dataclass(frozen=True)
class FileEntry:
    path: str
    kind: str  # file, directory, symlink, other
    size: int
    mtime: float
    links: int = 1  # hard links to it: a download (and a snapshot) takes only a singly-linked file


@dataclass(frozen=True)
class Listing:
    entries: tuple[FileEntry, ...]
    truncated: bool
    used_bytes: int
    total_bytes: int


def refusal(exc: AgentError, session_id: str, path: str, *, scratch_bytes: int = 0,
            file_size_bytes: int = 0) -> Exception:
    """The API's error for an agent's refusal of a file operation."""
    if exc.code == "not_found":
        return NotFound(f"{path!r} is not in the session's workspace", resource_type="file", resource_name=path)
    if exc.code == "no_space":
        return ResourceExhausted(
            f"the session's workspace is full (scratch_bytes={scratch_bytes})",
            violations=[QuotaViolation(f"session:{session_id}/scratch_bytes",
                                       f"the workspace holds at most {scratch_bytes} bytes")], retry_after_s=None)
    if exc.code == "too_large":
        return ResourceExhausted(
            f"a file may hold at most {file_size_bytes} bytes in this session",
            violations=[QuotaViolation(f"session:{session_id}/file_size_bytes",
                                       f"files hold at most {file_size_bytes} bytes")], retry_after_s=None)
    if exc.code == "busy":
        return ResourceExhausted("too many file transfers at once in this session",
                                 violations=[QuotaViolation(f"session:{session_id}/open_files", exc.message)],
                                 retry_after_s=0.5)
    reasons = {"symlink": "symlink", "not_directory": "not_directory", "is_directory": "is_directory",
               "not_regular": "not_regular_file", "bad_path": "bad_path", "not_empty": "not_empty",
               "exists": "exists", "denied": "denied"}
    if exc.code in reasons:
        return InvalidRequest([FieldViolation("path", exc.message[:500], reason=reasons[exc.code])])
    return exc


async def upload(sandbox: SessionSandbox, session_id: str, path: str, chunks: AsyncIterator[bytes], *,
                 file_size_bytes: int, scratch_bytes: int) -> FileEntry:
    """Write ``path`` from ``chunks``: aside, then renamed over it, so it appears whole or not at all. Raises
    InvalidRequest, NotFound, ResourceExhausted (too large, workspace full)."""
    channel = sandbox.channel
    limits = {"scratch_bytes": scratch_bytes, "file_size_bytes": file_size_bytes}
    try:
        reply, _ = await channel.request("fopen_w", {"path": path})
    except AgentError as exc:
        raise refusal(exc, session_id, path, **limits) from exc
    handle = _int(reply.get("handle"))
    written = 0
    committed = False
    try:
        async for chunk in chunks:
            written += len(chunk)
            if written > file_size_bytes:
                raise refusal(AgentError("too_large", ""), session_id, path, **limits)
            for start in range(0, len(chunk), CHUNK):
                try:
                    await channel.request("fwrite", {"handle": handle}, chunk[start:start + CHUNK])
                except AgentError as exc:
                    raise refusal(exc, session_id, path, **limits) from exc
        try:
            reply, _ = await channel.request("fclose", {"handle": handle, "commit": True})
        except AgentError as exc:
            raise refusal(exc, session_id, path, **limits) from exc
        committed = True
    finally:
        if not committed:
            with contextlib.suppress(Exception):
                await channel.request("fclose", {"handle": handle, "commit": False})
    return FileEntry(path=path, kind="file", size=_int(reply.get("size")), mtime=_float(reply.get("mtime")))


async def download(sandbox: SessionSandbox, session_id: str, path: str) -> AsyncIterator[FileEntry | bytes]:
    """The file's entry, then its content in chunks. Raises InvalidRequest (a link, a directory, ...) or
    NotFound before the first item."""
    channel = sandbox.channel
    try:
        reply, _ = await channel.request("fopen_r", {"path": path})
    except AgentError as exc:
        raise refusal(exc, session_id, path) from exc
    handle = _int(reply.get("handle"))
    size = _int(reply.get("size"))
    try:
        yield FileEntry(path=path, kind="file", size=size, mtime=_float(reply.get("mtime")))
        left = size  # what it held when opened: a file the session's code grows meanwhile is cut there
        while left > 0:
            _, data = await channel.request("fread", {"handle": handle, "size": min(CHUNK, left)})
            if not data:
                break
            left -= len(data)
            yield data[: max(0, len(data) + min(0, left))]
    finally:
        with contextlib.suppress(Exception):
            await channel.request("fclose", {"handle": handle, "commit": False})


async def listdir(sandbox: SessionSandbox, session_id: str, path: str, recursive: bool) -> Listing:
    try:
        reply, _ = await sandbox.channel.request("list", {"path": path, "recursive": recursive})
    except AgentError as exc:
        raise refusal(exc, session_id, path or ".") from exc
    raw = reply.get("entries")
    entries: list[FileEntry] = []
    for item in raw if isinstance(raw, list) else []:
        if (isinstance(item, list) and len(item) >= 4 and isinstance(item[0], str) and item[1] in FILE_KINDS
                and 0 < len(item[0]) <= MAX_PATH_CHARS):
            entries.append(FileEntry(path=_printable(item[0]), kind=FILE_KINDS[item[1]], size=_int(item[2]),
                                     mtime=_float(item[3]), links=_int(item[4]) if len(item) > 4 else 1))
    entries.sort(key=lambda e: e.path)
    return Listing(entries=tuple(entries), truncated=reply.get("truncated") is True,
                   used_bytes=_int(reply.get("used")), total_bytes=_int(reply.get("total")))


async def delete(sandbox: SessionSandbox, session_id: str, path: str, recursive: bool) -> None:
    try:
        await sandbox.channel.request("delete", {"path": path, "recursive": recursive})
    except AgentError as exc:
        raise refusal(exc, session_id, path) from exc


async def workspace_usage(sandbox: SessionSandbox) -> tuple[int, int]:
    """(used, total) bytes of the workspace."""
    reply, _ = await sandbox.channel.request("stat")
    return _int(reply.get("used")), _int(reply.get("total"))


def _printable(name: str) -> str:
    """A name the protocol can carry: invalid UTF-8 (surrogate escapes) shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0
