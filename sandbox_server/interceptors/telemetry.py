"""Telemetry, the outermost link: a span per call (joining the caller's trace from W3C ``traceparent``
metadata), the call metrics (``sandbox_rpcs_total``, rejections by reason), one structured log line per call,
and the call's outcome for the observers (incidents). It sees every outcome, rejections by auth and rate
limits included, because the errors link inside it records what it mapped on the call's ``CallRecord``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import CallRecord, current_call, principal
from sandbox_server.errors import InvalidRequest, PermissionDenied, ResourceExhausted, SandboxError, Unauthenticated
from sandbox_server.execution.runtimes import find_runtime
from sandbox_server.guardrails.inputs import GUARDRAIL_RULES
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.telemetry import Telemetry, current_telemetry
from sandbox_server.validation.request import MAX_ID_CHARS

log = logging.getLogger(__name__)

UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
SANDBOX_PREFIX = "/sandbox.v1.Sandbox/"
EXECUTE_METHODS = frozenset({"/sandbox.v1.Sandbox/Execute", "/sandbox.v1.Sandbox/ExecuteStream"})
# Codes that mean the server failed, not the caller: what the error rate and incidents count.
SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                           grpc.StatusCode.DATA_LOSS})
_PROPAGATOR = TraceContextTextMapPropagator()


class CallObserver(Protocol):
    """Told how every Sandbox call ended (incidents count violations, failures and teardown problems)."""

    def on_call_end(self, call: CallRecord, code: grpc.StatusCode) -> None: ...


def rejection_reason(error: BaseException | None) -> str | None:
    """Why a request was refused before it ran, as the rejections metric names it; None if it was not."""
    if isinstance(error, Unauthenticated):
        return "auth"
    if isinstance(error, PermissionDenied):
        return "quarantine" if error.reason in {"QUARANTINED", "LANGUAGE_DISABLED"} else "auth"
    if isinstance(error, ResourceExhausted):
        if error.reason == "BUDGET_EXCEEDED":
            return "budget"
        if error.reason == "QUEUE_FULL":
            return "queue"
        if error.reason == "HOST_PRESSURE":
            return "host_pressure"
        return "rate"
    if isinstance(error, InvalidRequest):
        # An input-guardrail rule makes it a guardrail refusal; any other rule is validation.
        return "guardrail" if any(v.reason in GUARDRAIL_RULES for v in error.violations) else "validation"
    return None


def status_code(error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, SandboxError):
        return error.code
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, telemetry: Telemetry, observers: Sequence[CallObserver] = ()) -> None:
        self.telemetry = telemetry
        self.observers = tuple(observers)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method.startswith(UNTRACED_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        carrier = {key: value for key, value in metadata if isinstance(value, str)}

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call, span, tokens = self._begin(method, carrier, request)
                failure: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    self._end(call, span, tokens, failure)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                call, span, tokens = self._begin(method, carrier, request)
                failure: BaseException | None = None
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    self._end(call, span, tokens, failure)

            return wrapped

        return wrap_handler(handler, unary, stream)

    def _begin(
        self, method: str, carrier: dict[str, str], request: Any
    ) -> tuple[CallRecord, trace.Span, tuple[Any, ...]]:
        parent = _PROPAGATOR.extract(carrier)
        service, _, name = method.lstrip("/").partition("/")
        span = self.telemetry.tracer.start_span(
            f"{service}/{name}", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            if self.telemetry.exports_spans else None,
        )
        call = CallRecord(method=method, started=time.monotonic())
        if isinstance(request, pb.ExecuteRequest):  # known before any check, so refusals are attributed too
            call.session_id = request.session_id[:MAX_ID_CHARS]
            runtime = find_runtime(request.language)
            call.language = runtime.language if runtime is not None else request.language[:40]
        ctx = trace.set_span_in_context(span, parent)
        tokens = (otel_context.attach(ctx), current_call.set(call), current_telemetry.set(self.telemetry))
        return call, span, tokens

    def _end(self, call: CallRecord, span: trace.Span, tokens: tuple[Any, ...], failure: BaseException | None) -> None:
        error = call.error if call.error is not None else failure
        if isinstance(failure, asyncio.CancelledError | GeneratorExit):
            error = failure
        code = status_code(error)
        who = principal()
        if who is not None and not call.tenant:
            call.tenant = who.tenant
        try:
            self._report(call, span, code, error)
        finally:
            span.end()
            otel_context.detach(tokens[0])
            current_call.reset(tokens[1])
            current_telemetry.reset(tokens[2])

    def _report(self, call: CallRecord, span: trace.Span, code: grpc.StatusCode, error: BaseException | None) -> None:
        attributes: dict[str, Any] = {"rpc.grpc.status_code": code.value[0]}
        for key, value in (("sandbox.tenant", call.tenant), ("sandbox.session_id", call.session_id),
                           ("sandbox.language", call.language), ("sandbox.execution_id", call.execution_id)):
            if value:
                attributes[key] = value
        if call.exercise:
            attributes["sandbox.exercise"] = True
        if call.relayed:
            attributes["sandbox.relayed"] = True
        if call.fleet_part:
            attributes["sandbox.fleet_part"] = True
        attributes.update(call.attributes)
        reason = rejection_reason(error)
        if reason is not None:
            attributes["sandbox.rejection"] = reason
        if self.telemetry.exports_spans:  # else no one could read them: the span is kept for its trace id only
            span.set_attributes(attributes)
        if code in SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, getattr(error, "message", type(error).__name__)))
        metrics = self.telemetry.metrics
        # A relayed call is counted by its holder; a part of a fleet call by the server that asked for it.
        if call.method.startswith(SANDBOX_PREFIX) and not (call.relayed or call.fleet_part):
            metrics.rpcs.add(1, {"method": call.method.removeprefix(SANDBOX_PREFIX), "code": code.name})
            if reason is not None:
                metrics.rejections.add(1, {"reason": reason})
        ms = (time.monotonic() - call.started) * 1000
        level = logging.ERROR if code in SERVER_FAULTS else logging.INFO
        log.log(level, "%s %s in %.1f ms", call.method, code.name, ms, extra={
            "event": "call", "method": call.method, "code": code.name, "duration_ms": round(ms, 3),
            "tenant": call.tenant, "session_id": call.session_id, "execution_id": call.execution_id,
            "language": call.language, **({"rejection": reason} if reason else {}),
            **({"exercise": True} if call.exercise else {}),
            **({"relayed": True} if call.relayed else {}),
            **({"fleet_part": True} if call.fleet_part else {}),
            **{k.removeprefix("sandbox."): v for k, v in call.attributes.items()}, **call.log_extra,
        })
        if call.method in EXECUTE_METHODS and not call.relayed:  # the holder observes a relayed call
            for observer in self.observers:
                try:
                    observer.on_call_end(call, code)
                except Exception:  # an observer's fault must not fail the call that already ended
                    log.exception("call observer %r failed", observer)
