"""The server's end of a session agent's channel (sessions/agent.py): frames over a byte stream, requests
matched to replies by id, and the events of a running call.

Everything read here comes from inside a sandbox, shared with the code the agent runs, so it is untrusted:
headers must be small JSON objects, payloads are bounded (an output chunk is passed on in pieces, never held
whole; a rich output too large to hold is dropped and reported as such), and a frame that breaks the protocol
ends the channel (the session is then closed: fail closed). Nothing read is ever used as a host path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FRAME = struct.Struct(">II")
MAX_HEADER_BYTES = 8 * 1024 * 1024  # a workspace listing is the largest header the agent sends
MAX_REPLY_PAYLOAD = 8 * 1024 * 1024  # a file chunk (the server asks for at most 1 MiB)
MAX_DISPLAY_BYTES = 16 * 1024 * 1024  # one rich output held at once; a larger one is dropped
PIECE = 64 * 1024
CLOSED = "closed"

Write = Callable[[bytes], Awaitable[None]]


class AgentError(Exception):
    """The agent refused a request (``code`` says why, e.g. not_found, no_space, symlink)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ChannelClosed(Exception):
    """The channel ended (the sandbox died, was closed, or broke the protocol); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CallEvents:
    """Where a running call's events go. ``on_display`` gets None as its payload when the output was too large
    to hold (its header still says how large)."""

    on_out: Callable[[int, bytes], Awaitable[None]]
    on_display: Callable[[dict[str, Any], bytes | None], Awaitable[None]]


class AgentChannel:
    def __init__(self, reader: asyncio.StreamReader, write: Write, name: str) -> None:
        self.reader = reader
        self._write = write
        self.name = name
        self._lock = asyncio.Lock()
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._calls: dict[int, CallEvents] = {}
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    def new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    async def send(self, op: str, fields: dict[str, Any] | None = None, payload: bytes = b"") -> None:
        """Send one frame. Raises ChannelClosed."""
        if self.closed.done():
            raise ChannelClosed(self.closed.result())
        header = json.dumps({"op": op, **(fields or {})}, separators=(",", ":")).encode()
        async with self._lock:
            try:
                await self._write(FRAME.pack(len(header), len(payload)) + header + payload)
            except (OSError, RuntimeError) as exc:
                self._close(f"the sandbox's channel broke: {exc}")
                raise ChannelClosed(self.closed.result()) from exc

    async def request(self, op: str, fields: dict[str, Any] | None = None, payload: bytes = b"",
                      *, events: CallEvents | None = None, rid: int | None = None) -> tuple[dict[str, Any], bytes]:
        """Send a request and wait for its reply (header, payload). ``events`` receive a call's output while it
        runs. Raises AgentError (a refusal) or ChannelClosed."""
        rid = self.new_id() if rid is None else rid
        waiter: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = waiter
        if events is not None:
            self._calls[rid] = events
        try:
            await self.send(op, {**(fields or {}), "id": rid}, payload)
            either: list[asyncio.Future[Any]] = [waiter, self.closed]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                raise ChannelClosed(self.closed.result())
            return waiter.result()
        finally:
            self._pending.pop(rid, None)
            self._calls.pop(rid, None)

    async def aclose(self, reason: str = CLOSED) -> None:
        self._close(reason)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ChannelClosed(reason))
                waiter.exception()  # retrieved: a request that went away meanwhile must not warn

    async def _read_loop(self) -> None:
        reason = "the session's sandbox ended"
        try:
            while True:
                head = await self.reader.readexactly(FRAME.size)
                hlen, plen = FRAME.unpack(head)
                if hlen > MAX_HEADER_BYTES:
                    raise ValueError(f"a frame header of {hlen} bytes")
                header = json.loads(await self.reader.readexactly(hlen))
                if not isinstance(header, dict) or not isinstance(header.get("op"), str):
                    raise ValueError("a frame header that is not an object with an op")
                rid = header.get("id", 0)
                if not isinstance(rid, int) or isinstance(rid, bool):
                    raise ValueError("a frame with a non-integer id")
                await self._dispatch(header["op"], rid, header, plen)
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            reason = self.closed.result() if self.closed.done() else CLOSED
            raise
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            reason = f"the session's sandbox broke the protocol ({exc})"
            log.error("session channel %s: %s", self.name, reason)
        except Exception as exc:
            reason = f"the session's channel failed: {exc!r}"
            log.exception("session channel %s failed", self.name)
        finally:
            self._close(reason)

    async def _dispatch(self, op: str, rid: int, header: dict[str, Any], plen: int) -> None:
        events = self._calls.get(rid)
        if op == "out":
            stream = 2 if header.get("s") == 2 else 1
            left = plen
            while left:  # passed on in pieces: an output chunk is never held whole
                piece = await self.reader.readexactly(min(PIECE, left))
                left -= len(piece)
                if events is not None:
                    await events.on_out(stream, piece)
            return
        if op == "display":
            if plen > MAX_DISPLAY_BYTES:
                await self._discard(plen)
                if events is not None:
                    await events.on_display({**header, "dropped": plen}, None)
                return
            payload = await self.reader.readexactly(plen) if plen else b""
            if events is not None:
                await events.on_display(header, payload)
            return
        if op in ("reply", "error"):
            if plen > MAX_REPLY_PAYLOAD:
                raise ValueError(f"a reply of {plen} bytes")
            payload = await self.reader.readexactly(plen) if plen else b""
            waiter = self._pending.get(rid)
            if waiter is None or waiter.done():
                return  # its requester went away
            if op == "error":
                waiter.set_exception(AgentError(str(header.get("code", "agent_error"))[:64],
                                                str(header.get("message", ""))[:2000]))
            else:
                waiter.set_result((header, payload))
            return
        if op == "clear":
            await self._discard(plen)
            return
        raise ValueError(f"unknown frame {op[:40]!r}")

    async def _discard(self, size: int) -> None:
        while size:
            size -= len(await self.reader.readexactly(min(PIECE, size)))
