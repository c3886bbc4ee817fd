"""How a tool's call is made: its limits and deadline, and the ``session_files`` actions. The dispatchers, the MCP
server and the LangChain session tool make their calls through these."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Final

from sandbox_client._errors import SandboxError
from sandbox_client._models import FileInfo, Limits, SessionInfo
from sandbox_client.adapters._arguments import SessionFilesArguments
from sandbox_client.adapters._clients import _Workspace
from sandbox_client.adapters._session_text import _deleted_text, _download_text, _listing_text, _uploaded_text
from sandbox_client.adapters._specs import RUN_IN_SESSION

CALL_DEADLINE_MARGIN_S: Final = 30.0
"""Seconds the call's deadline allows past the wall-time limit: queueing, sandbox set-up and teardown."""
_PER_CALL_LIMITS: Final = ("wall_time_s", "cpu_time_s", "output_bytes")
"""The limits a call in a session may set (the others hold for the session's life)."""


def _deadline(wall_time_s: float | None) -> float | None:
    """A call's deadline (the gRPC timeout, seconds) for its wall-time limit; None: the client's default."""
    return wall_time_s + CALL_DEADLINE_MARGIN_S if wall_time_s else None


def _session_call(
    limits: Limits | None, timeout_s: float | None, info: SessionInfo,
) -> tuple[Limits | None, float | None]:
    """The limits of a call in a session (the per-call ones of ``limits``, ``timeout_s`` over its wall time) and
    its deadline (its wall time, else the session's, plus the margin)."""
    per_call = {name: getattr(limits, name) for name in _PER_CALL_LIMITS
                if limits is not None and getattr(limits, name) is not None}
    if timeout_s is not None:
        per_call["wall_time_s"] = timeout_s
    wall = per_call.get("wall_time_s") or info.limits.wall_time_s
    return (Limits(**per_call) if per_call else None), _deadline(wall)


async def _workspace_action(files: _Workspace, args: SessionFilesArguments, *, max_chars: int, cap: int,
                            run_tool: str = RUN_IN_SESSION) -> str:
    """Do ``args.action`` in a session's workspace and say how it went (``cap``: the bytes of a file a download
    reads at most; ``run_tool``: what the text calls the tool that runs code in the session).

    Raises:
        SandboxError: the call failed (``format_session_error`` words it).
    """
    match args.action:
        case "upload":
            return _uploaded_text(await files.upload(args.path, args.content), run_tool)
        case "download":
            chunks = files.iter_download(args.path)
            data, complete = await _take(chunks, cap)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # cancels the rest of the download
            size = None
            if not complete:
                with contextlib.suppress(SandboxError):
                    size = _file_size(await files.list(args.path.rpartition("/")[0]), args.path)
            return _download_text(args.path, data, complete, size, max_chars, run_tool)
        case "list":
            return _listing_text(args.path, await files.list(args.path, recursive=args.recursive), args.recursive)
        case _:
            await files.delete(args.path, recursive=args.recursive)
            return _deleted_text(args.path)


async def _take(chunks: AsyncIterator[bytes], cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the chunks, and whether that is all of them."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(parts)[:cap], False
    return b"".join(parts), True


def _file_size(entries: Iterable[FileInfo], path: str) -> int | None:
    return next((entry.size for entry in entries if entry.path == path), None)
