"""Idempotency: an Execute or ExecuteStream retried with the same ``idempotency_key`` never runs twice.

Right after auth (keys are per tenant), for requests that carry a key:

- The first request with a key runs the rest of the chain (limits, guardrails, cost, audit, the execution) in
  a task of its own, detached from the call: if the client's connection breaks mid-way, the execution goes on
  for ``grace_s`` (3 s by default) waiting for a retry to take it over; a retry that comes gets its response,
  recorded and charged once. With no retry by then, or when the call's deadline has passed (the client gave up
  and will not retry), the execution is cancelled and torn down like any cancelled call.
- A retry while it runs waits for it; a retry after it completed gets the kept response (the same
  ``execution_id``), without counting against limits, budgets or the audit again. ExecuteStream replays the
  output as one chunk per stream, then the result; Execute and ExecuteStream may replay each other.
- The same key with a different request is INVALID_ARGUMENT (reason ``idempotency_key_reused``).
- A request refused by a later link (a full queue, a rate limit, a budget) keeps nothing: a retry tries again.

Kept responses live in this process for ``window_s`` and within ``max_bytes`` in all (oldest dropped first). With
``redis_url``, the run first claims its key in Redis and shares its response there before replying
(_shared_idempotency.py), so a retry that lands on another replica waits for it or gets it, and never runs it
again; with Redis down, a keyed request is refused (UNAVAILABLE) rather than risk running twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import principal
from sandbox_server.errors import BackendUnavailable, FieldViolation, InvalidRequest
from sandbox_server.interceptors._shared_idempotency import Claim, SharedIdempotency
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler

log = logging.getLogger(__name__)

KEYED = frozenset({"/sandbox.v1.Sandbox/Execute", "/sandbox.v1.Sandbox/ExecuteStream"})
DEFAULT_WINDOW_S = 600.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_GRACE_S = 3.0  # how long a run whose caller went away waits for a retry to take it over
MAX_KEYS = 100_000  # a bound on entries too, whatever their size
# What an entry costs beyond its response's bytes (the entry, its future, its key and fingerprint, the table's
# slot), counted against max_bytes so that the cap bounds the table's real memory.
ENTRY_OVERHEAD_BYTES = 1024
_STREAM_END = object()


@dataclass(frozen=True)
class Kept:
    """A completed response, in a form both methods can replay: the output, and the result without it (a
    session call's rich outputs stay in the result: a replayed stream sends them as display events)."""

    stdout: bytes
    stderr: bytes
    result: bytes  # a serialized ExecuteResult with empty stdout and stderr, its outputs in it

    @property
    def size(self) -> int:
        return len(self.stdout) + len(self.stderr) + len(self.result)

    @classmethod
    def of(cls, result: pb.ExecuteResult, stdout: bytes | None = None, stderr: bytes | None = None,
           outputs: list[pb.DisplayData] | None = None) -> Kept:
        """``outputs``: the rich outputs a stream sent as events (its final result carries none)."""
        bare = pb.ExecuteResult()
        bare.CopyFrom(result)
        out = bytes(result.stdout) if stdout is None else stdout
        err = bytes(result.stderr) if stderr is None else stderr
        bare.stdout, bare.stderr = b"", b""
        if outputs is not None:
            del bare.outputs[:]
            bare.outputs.extend(outputs)
        return cls(out, err, bare.SerializeToString())

    def unary(self) -> pb.ExecuteResult:
        result = pb.ExecuteResult.FromString(self.result)
        result.stdout, result.stderr = self.stdout, self.stderr
        return result

    def events(self) -> list[pb.ExecuteEvent]:
        result = pb.ExecuteResult.FromString(self.result)
        events = [pb.ExecuteEvent(output=pb.OutputChunk(stream=stream, data=data))
                  for stream, data in ((pb.STREAM_STDOUT, self.stdout), (pb.STREAM_STDERR, self.stderr)) if data]
        events += [pb.ExecuteEvent(display=display) for display in result.outputs]
        del result.outputs[:]  # streamed, as the first response streamed them
        return [*events, pb.ExecuteEvent(result=result)]


@dataclass
class _Entry:
    fingerprint: bytes
    done: asyncio.Future[Kept]
    expires: float = float("inf")  # set when it completes
    size: int = 0
    task: asyncio.Task[None] | None = None  # the detached run, while it runs
    callers: int = 0  # calls waiting for it now (its owner included)


def fingerprint(request: pb.ExecuteRequest) -> bytes:
    """What makes two requests the same, apart from their key."""
    bare = pb.ExecuteRequest()
    bare.CopyFrom(request)
    bare.idempotency_key = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).digest()


class IdempotencyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 grace_s: float = DEFAULT_GRACE_S, clock: Callable[[], float] = time.monotonic,
                 shared: SharedIdempotency | None = None) -> None:
        """``shared``: the entries replicas share (Redis), consulted before a run and written before a reply."""
        self.shared = shared
        self.window_s = window_s
        self.max_bytes = max_bytes
        self.grace_s = grace_s
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Cancel executions still running for callers that went away (at shutdown, after the drain)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the table ---------------------------------------------------------------------------------------------

    def _find(self, key: tuple[str, str], request: pb.ExecuteRequest) -> _Entry | None:
        now = self.clock()
        while self._entries:  # completed entries expire in insertion order of completion, roughly: sweep the head
            oldest_key, oldest = next(iter(self._entries.items()))
            if oldest.expires > now:
                break
            self._drop(oldest_key)
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            self._drop(key)
            entry = None
        if entry is not None and entry.fingerprint != fingerprint(request):
            raise InvalidRequest([FieldViolation(
                "idempotency_key", "was already used for a different request; use a new key for a new request",
                reason="idempotency_key_reused")])
        return entry

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def _keep(self, key: tuple[str, str], entry: _Entry, kept: Kept) -> None:
        entry.size = kept.size + ENTRY_OVERHEAD_BYTES
        entry.expires = self.clock() + self.window_s
        self._entries.move_to_end(key)
        self._bytes += entry.size
        while (self._bytes > self.max_bytes or len(self._entries) > MAX_KEYS) and len(self._entries) > 1:
            oldest_key, oldest = next(iter(self._entries.items()))
            if not oldest.done.done():
                break  # still running: never dropped
            self._drop(oldest_key)
        entry.done.set_result(kept)

    def _fail(self, key: tuple[str, str], entry: _Entry, exc: BaseException) -> None:
        """Nothing kept: a retry runs it again. Waiters get the same error."""
        if self._entries.get(key) is entry:
            del self._entries[key]
        if isinstance(exc, asyncio.CancelledError):
            exc = BackendUnavailable("the server stopped before the execution completed", retry_after_s=1.0)
        entry.done.set_exception(exc)
        entry.done.exception()  # retrieved: no "never retrieved" warning when nobody waits

    def _detach(self, entry: _Entry, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = entry.task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._ran(entry, done))

    def _ran(self, entry: _Entry, task: asyncio.Task[None]) -> None:
        """A run is over: only its response stays. A finished task still holds its context (the call's span,
        its attributes, the principal), ~5 KiB a call, which the window would keep for every call it keeps."""
        self._tasks.discard(task)
        if entry.task is task:
            entry.task = None

    async def _wait(self, entry: _Entry, context: grpc.aio.ServicerContext) -> Kept:
        """Wait for the entry's run as one of its callers. A caller that goes away leaves the run to the
        others; when none is left, the run is cancelled at once if the caller's deadline has passed (its client
        gave up), else after ``grace_s`` unless a retry has come for it meanwhile."""
        entry.callers += 1
        try:
            return await asyncio.shield(entry.done)
        except asyncio.CancelledError:
            self._caller_left(entry, context)
            raise
        finally:
            entry.callers -= 1

    def _caller_left(self, entry: _Entry, context: grpc.aio.ServicerContext) -> None:
        """Called as a caller goes away (while it still counts)."""
        if entry.callers == 1 and not entry.done.done() and entry.task is not None:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                entry.task.cancel()
            else:
                asyncio.get_running_loop().call_later(self.grace_s, self._abandon, entry)

    async def _claim(self, key: tuple[str, str], entry: _Entry,
                     context: grpc.aio.ServicerContext) -> Claim | Kept | None:
        """With shared entries: a Claim (this replica runs the request), or the response another replica kept
        (this entry is then resolved with it). None without shared entries. Raises what the shared store
        raises (SharedStateUnavailable, InvalidRequest for a key reused with another request)."""
        if self.shared is None:
            return None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            got = await self.shared.claim(key[0], key[1], entry.fingerprint, deadline)
        except TimeoutError as exc:
            raise BackendUnavailable(str(exc), retry_after_s=1.0) from exc
        if isinstance(got, Claim):
            return got
        return Kept(*got)

    @staticmethod
    def _abandon(entry: _Entry) -> None:
        if entry.callers == 0 and entry.task is not None and not entry.task.done():
            log.info("no retry came for an execution whose caller went away: cancelling it")
            entry.task.cancel()

    # -- the link ----------------------------------------------------------------------------------------------

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in KEYED:
            return handler

        def keyed(request: Any) -> tuple[str, str] | None:
            who = principal()
            if who is None or not isinstance(request, pb.ExecuteRequest) or not request.idempotency_key:
                return None
            return who.tenant, request.idempotency_key

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                key = keyed(request)
                if key is None:
                    return await behavior(request, context)
                entry = self._find(key, request)
                if entry is None:
                    entry = self._entries[key] = _Entry(fingerprint(request),
                                                        asyncio.get_running_loop().create_future())

                    async def own(owned: _Entry = entry, k: tuple[str, str] = key) -> None:
                        claim = None
                        try:
                            claimed = await self._claim(k, owned, context)
                            if isinstance(claimed, Kept):  # another replica ran it
                                self._keep(k, owned, claimed)
                                return
                            claim = claimed
                            result = await behavior(request, context)
                        except BaseException as exc:
                            if claim is not None:
                                await claim.release()
                            self._fail(k, owned, exc)
                            return
                        kept = Kept.of(result)
                        if claim is not None:
                            await claim.keep(kept.stdout, kept.stderr, kept.result)
                        self._keep(k, owned, kept)

                    self._detach(entry, own())
                kept = await self._wait(entry, context)
                return kept.unary()

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                key = keyed(request)
                if key is None:
                    async for event in behavior(request, context):
                        yield event
                    return
                entry = self._find(key, request)
                if entry is not None:  # a retry: wait for the first, then replay
                    kept = await self._wait(entry, context)
                    for event in kept.events():
                        yield event
                    return
                live: asyncio.Queue[Any] = asyncio.Queue()
                entry = self._entries[key] = _Entry(fingerprint(request), asyncio.get_running_loop().create_future())
                self._detach(entry, self._own_stream(key, entry, live, behavior(request, context), context))
                entry.callers += 1
                try:
                    while (event := await live.get()) is not _STREAM_END:
                        if isinstance(event, BaseException):
                            raise event
                        yield event
                except (asyncio.CancelledError, GeneratorExit):
                    self._caller_left(entry, context)
                    raise
                finally:
                    entry.callers -= 1

            return wrapped

        return wrap_handler(handler, unary, stream)

    async def _own_stream(
        self, key: tuple[str, str], entry: _Entry, live: asyncio.Queue[Any], events: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Run the stream to its end whether or not its caller is still there; keep its response. ``live``
        gets every event as it comes, then _STREAM_END or the exception that ended it."""
        out = {pb.STREAM_STDOUT: bytearray(), pb.STREAM_STDERR: bytearray()}
        displays: list[pb.DisplayData] = []
        claim = None
        try:
            claimed = await self._claim(key, entry, context)
            if isinstance(claimed, Kept):  # another replica ran it: replay its response
                self._keep(key, entry, claimed)
                for event in claimed.events():
                    live.put_nowait(event)
                live.put_nowait(_STREAM_END)
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
                return
            claim = claimed
            async for event in events:
                if event.HasField("output"):
                    out[event.output.stream] += event.output.data
                elif event.HasField("display"):
                    displays.append(event.display)
                elif event.HasField("result"):
                    kept = Kept.of(event.result, bytes(out[pb.STREAM_STDOUT]), bytes(out[pb.STREAM_STDERR]), displays)
                    if claim is not None:
                        await claim.keep(kept.stdout, kept.stderr, kept.result)
                        claim = None
                    self._keep(key, entry, kept)
                live.put_nowait(event)  # unbounded, but the output limit bounds it (and it is kept anyway)
        except BaseException as exc:
            if claim is not None:
                await claim.release()
            if not entry.done.done():
                self._fail(key, entry, exc)
            failure = entry.done.exception()
            live.put_nowait(failure if failure is not None else _STREAM_END)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
        if not entry.done.done():  # the stream ended without a result
            if claim is not None:
                await claim.release()
            self._fail(key, entry, BackendUnavailable("the execution ended without a result"))
        live.put_nowait(_STREAM_END)
