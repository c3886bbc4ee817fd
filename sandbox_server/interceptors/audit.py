"""Exactly one durable audit record per accepted execution, written before the reply leaves.

Innermost link: a request refused by validation, policy, guardrails or admission was never accepted and leaves
no record (a bad request changes nothing). An accepted one gets its record whatever happens next: a result,
a sandbox failure (``ERROR:<code>``), or the client going away (``CANCELLED``). A record that cannot be written
fails the call (INTERNAL): the server never replies about an execution it could not record. A remote store
(PostgreSQL) that is down gets OUTBOX_AFTER_S of retries; then the record is kept in its outbox on this server's
disk (stores/outbox.py) before the reply, and moved into the database when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import Acceptance, current_acceptances, principal
from sandbox_server.errors import SandboxError, SandboxFailure, StoreUnavailable
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.stores.base import AuditRecord
from sandbox_server.stores.outage import OUTAGE_RETRY_S, through_outage
from sandbox_server.telemetry import current_trace_id

log = logging.getLogger(__name__)

OUTBOX_AFTER_S = 5.0
"""With an outbox, how long a record waits for the database (a failover) before it is kept on disk instead."""
AUDITED = frozenset({"/sandbox.v1.Sandbox/Execute", "/sandbox.v1.Sandbox/ExecuteStream"})


class AuditSink(Protocol):
    remote: bool

    def record(self, rec: AuditRecord) -> None: ...

    def ensure_writable(self) -> None: ...


class ExecutionObserver(Protocol):
    """Told of every accepted execution once its record is durable (metrics, incidents, logs)."""

    def on_execution(self, rec: AuditRecord) -> None: ...


class _Call:
    """What one call learnt: the executions it accepted and how the call ended."""

    def __init__(self) -> None:
        self.accepted: list[Acceptance] = []
        self.started = time.time()
        self.result: pb.ExecuteResult | None = None
        self.outcome = ""

    def records(self) -> list[AuditRecord]:
        who = principal()
        out = []
        for acc in self.accepted:
            r = self.result if self.result is not None and self.result.execution_id == acc.execution_id else None
            out.append(AuditRecord(
                execution_id=acc.execution_id,
                tenant=who.tenant if who else "",
                key_id=who.key_id if who else "",
                session_id=acc.session_id,
                language=acc.language,
                code_sha256=acc.code_sha256,
                limits=acc.limits,
                outcome=pb.Status.Name(r.status).removeprefix("STATUS_") if r is not None else self.outcome,
                exit_code=r.exit_code if r is not None else -1,
                wall_time_s=r.usage.wall_time_s if r is not None else 0.0,
                cpu_time_s=r.usage.cpu_time_s if r is not None else 0.0,
                peak_memory_bytes=r.usage.peak_memory_bytes if r is not None else 0,
                started_at=self.started,
                ended_at=time.time(),
                trace_id=r.trace_id if r is not None and r.trace_id else current_trace_id(),
                cost=r.cost if r is not None else 0.0,
                exercise=acc.exercise,
                egress_bytes_sent=r.usage.egress_bytes_sent if r is not None else 0,
                egress_bytes_received=r.usage.egress_bytes_received if r is not None else 0,
                egress_connections=r.usage.egress_connections if r is not None else 0,
            ))
        return out


class AuditInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, sink: AuditSink, observers: Sequence[ExecutionObserver] = ()) -> None:
        self.sink = sink
        self.observers = tuple(observers)

    def _record_all(self, records: list[AuditRecord]) -> None:
        for rec in records:
            self.sink.record(rec)

    async def _write_retrying(self, records: list[AuditRecord]) -> None:
        """The execution has run: its record waits through a short store outage (stores/outage.py). A record
        that an attempt cut off by the outage did commit is not written twice (the execution id is its key)."""
        attempts = 0

        def write() -> None:
            nonlocal attempts
            attempts += 1
            for rec in records:
                try:
                    self.sink.record(rec)
                except ValueError:
                    if attempts == 1:
                        raise  # a second record for one execution: a bug, never hidden
                    # else: committed by the attempt the outage cut off

        defer = getattr(self.sink, "defer", None)  # a remote store's outbox (stores/outbox.py), if it has one
        try:
            await through_outage(write, f"audit record of {records[0].execution_id}",
                                 OUTBOX_AFTER_S if defer is not None else OUTAGE_RETRY_S)
        except StoreUnavailable:
            if defer is None:
                raise
            for rec in records:  # one already committed is recognised when the outbox drains
                await asyncio.to_thread(defer, rec)

    async def _ensure_writable(self) -> None:
        """A store that can be down without the server (PostgreSQL) is checked before anything runs: with it
        down, the call is refused (StoreUnavailable) instead of running an execution whose record could not be
        written. What is already running when it goes down waits for it (_write_retrying)."""
        if self.sink.remote:
            await asyncio.to_thread(self.sink.ensure_writable)

    async def _write(self, call: _Call) -> None:
        records = call.records()
        if not records:
            return
        try:
            # shield: a cancelled call still gets its record written
            await asyncio.shield(self._write_retrying(records))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SandboxFailure(f"could not write the audit record: {exc}") from exc
        for rec in records:
            for observer in self.observers:
                try:
                    observer.on_execution(rec)
                except Exception:  # the record is written; an observer's fault must not fail the call
                    log.exception("execution observer %r failed", observer)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in AUDITED:
            return handler

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._ensure_writable()
                call = _Call()
                token = current_acceptances.set(call.accepted)
                try:
                    call.result = await behavior(request, context)
                    return call.result
                except BaseException as exc:
                    call.outcome = _outcome(exc)
                    raise
                finally:
                    current_acceptances.reset(token)
                    await self._write(call)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await self._ensure_writable()
                call = _Call()
                token = current_acceptances.set(call.accepted)
                try:
                    async for event in behavior(request, context):
                        if event.HasField("result"):
                            # Written before the result goes out, like the unary reply.
                            call.result = event.result
                            await self._write(call)
                            call.accepted.clear()
                        yield event
                    if call.accepted and not call.outcome:
                        call.outcome = "ERROR:INTERNAL"  # the stream ended without a result
                except BaseException as exc:
                    call.outcome = _outcome(exc)
                    raise
                finally:
                    current_acceptances.reset(token)
                    await self._write(call)

            return wrapped

        return wrap_handler(handler, unary, stream)



def _outcome(exc: BaseException) -> str:
    """How a call that raised ended, in the audit's words."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    if isinstance(exc, SandboxError):
        return f"ERROR:{exc.code.name}"
    return "ERROR:INTERNAL"
