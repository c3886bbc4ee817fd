"""Mitigations: what incident response decided, enforced before anything else is spent on a request.

A disabled language or a quarantined tenant or session is refused with PERMISSION_DENIED (ErrorInfo reason
LANGUAGE_DISABLED or QUARANTINED, naming the mitigation and its incident, so an agent knows to stop and an
operator knows what to lift); CloseSession, which only ends work, is never refused. A throttled tenant or
session gets the mitigation's rate (a moving window in the rate limits' store: this process's memory, or Redis
shared by replicas): beyond it RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo; a store that does not answer refuses
with UNAVAILABLE. The verdict comes from memory (``IncidentManager.check``), microseconds per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from limits import RateLimitItemPerMinute

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import principal
from sandbox_server.errors import LimiterUnavailable, PermissionDenied, QuotaViolation, ResourceExhausted
from sandbox_server.execution.runtimes import find_runtime
from sandbox_server.incidents.manager import Verdict
from sandbox_server.interceptors._limiter import moving_window
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.interceptors.methods import CLOSE_SESSION, EXECUTE, SESSION
from sandbox_server.interceptors.rate_limit import DEFAULT_STORAGE_URI, LIMITER_ERROR_RETRY_S, LIMITER_TIMEOUT_S
from sandbox_server.telemetry import phase

# Closing a session only ends work and frees what it holds: a quarantined or throttled caller may still do it.
MITIGATED = (EXECUTE | SESSION) - {CLOSE_SESSION}
MIN_RETRY_S = 0.001
log = logging.getLogger(__name__)


class MitigationCheck(Protocol):
    def check(self, *, tenant: str, session_id: str, language: str) -> Verdict: ...


class MitigationsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, mitigations: MitigationCheck, storage_uri: str = DEFAULT_STORAGE_URI) -> None:
        """``storage_uri``: where throttle windows are counted (the rate limits' store)."""
        self.mitigations = mitigations
        self.limiter = moving_window(storage_uri)
        self._items: dict[float, RateLimitItemPerMinute] = {}

    async def enforce(self, request: Any) -> None:
        """Raises PermissionDenied (quarantine, disabled language) or ResourceExhausted (throttled). A session
        method is held to its tenant's (and, when it names one, its session's) mitigations; an upload's stream
        names none before it is read, so its tenant's apply."""
        who = principal()
        if who is None:
            return  # auth refused it already
        language = ""
        if isinstance(request, pb.ExecuteRequest):
            runtime = find_runtime(request.language)
            language = runtime.language if runtime is not None else request.language[:40]
        session_id = getattr(request, "session_id", "")
        verdict = self.mitigations.check(tenant=who.tenant, session_id=session_id if isinstance(session_id, str)
                                         else "", language=language)
        mitigation = verdict.mitigation
        names = {"mitigation_id": mitigation.id, "incident_id": mitigation.incident_id} if mitigation else {}
        if verdict.refusal == "language_disabled":
            raise PermissionDenied(
                f"language {language!r} is disabled by incident response; an operator must lift it",
                reason="LANGUAGE_DISABLED", metadata=names)
        if verdict.refusal == "quarantine":
            subject = f"{mitigation.scope} {mitigation.subject!r}" if mitigation else "the caller"
            raise PermissionDenied(f"{subject} is quarantined by incident response; an operator must lift it",
                                   reason="QUARANTINED", metadata=names)
        if verdict.throttle_per_minute is not None:
            rate = verdict.throttle_per_minute
            item = self._items.get(rate)
            if item is None:
                item = self._items[rate] = RateLimitItemPerMinute(max(1, int(rate)))
            try:
                async with asyncio.timeout(LIMITER_TIMEOUT_S):
                    allowed = await self.limiter.hit(item, "throttle", verdict.throttle_key)
                    stats = None if allowed else await self.limiter.get_window_stats(
                        item, "throttle", verdict.throttle_key)
            except Exception as exc:
                log.error("throttle window unavailable for %s; refusing: %r", verdict.throttle_key, exc)
                raise LimiterUnavailable(f"throttle window unavailable for {verdict.throttle_key}; retry later",
                                         retry_after_s=LIMITER_ERROR_RETRY_S) from exc
            if stats is not None:
                raise ResourceExhausted(
                    f"{verdict.throttle_key} is throttled to {rate:g} requests per minute by incident response",
                    violations=[QuotaViolation(f"{verdict.throttle_key}/throttle",
                                               f"throttled to {rate:g} requests per minute")],
                    retry_after_s=max(MIN_RETRY_S, stats.reset_time - time.time()))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in MITIGATED:
            return handler
        enforce = self.enforce

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with phase("mitigations"):
                    await enforce(request)
                return await behavior(request, context)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with phase("mitigations"):
                    await enforce(request)
                async for item in behavior(request, context):
                    yield item

            return wrapped

        return wrap_handler(handler, unary, stream)
