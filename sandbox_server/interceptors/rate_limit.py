"""Rate limits and concurrency around Execute, ExecuteStream and the session methods, per the caller's tenant
policy. Every such call counts against the tenant's rates; only executions take a concurrency slot.

Per tenant: ``requests_per_second`` and ``requests_per_minute``; per session (``request.session_id``, when set;
keyed by tenant and session): ``session_requests_per_minute``; and ``concurrent_executions`` per tenant, a
count released when the call ends in any way (result, error, stream closed, cancelled). Unset settings mean no
limit. The rates use ``limits``' moving window, so a limit of N refuses the N+1th request in any window, never
2N across a boundary. Both live in this process by default, or in Redis (``redis_url``), shared by every
replica on it: a hit and a slot are each taken atomically there, so replicas together never admit one request
over a limit (_concurrency.py).

A refused request runs nothing and queues nothing: RESOURCE_EXHAUSTED with a QuotaFailure naming every limit it
hit (``tenant:acme/requests_per_minute``, ``session:abc/requests_per_minute``,
``tenant:acme/concurrent_executions``) and RetryInfo: when the window frees a slot, or CONCURRENCY_RETRY_S.
A refused request does not count against any limit: every limit is checked first and only then are all hit,
under a per-tenant lock (exact within one process; across replicas sharing a store, a race may count a
refused request against the limits it passed, which only ever errs towards refusing).

Limits are read from the current policy on every request, so a hot reload applies to the next request (a
changed rate starts a fresh window; running executions count against a newly set concurrency limit).

Fails closed: an error or a timeout inside the limiter (e.g. Redis is unreachable) rejects the request with
UNAVAILABLE (reason RATE_LIMITER_UNAVAILABLE) and RetryInfo, and is logged: nothing is counted and nothing
runs, and the client's right move is to back off and retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import grpc
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.errors import LimiterUnavailable, QuotaViolation, ResourceExhausted
from sandbox_server.interceptors._concurrency import Concurrency, InProcessConcurrency, NoSlot, Slot
from sandbox_server.interceptors._limiter import moving_window
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.interceptors.methods import EXECUTE, SESSION
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.policy.models import RateSettings
from sandbox_server.telemetry import phase
from sandbox_server.validation.request import MAX_ID_CHARS

log = logging.getLogger(__name__)

RATE_LIMITED = EXECUTE | SESSION
DEFAULT_STORAGE_URI = "memory://"
KEY_NAMESPACE = "sandbox"  # prefix of every key in the store (it may be shared, e.g. one Redis)
CONCURRENCY_RETRY_S = 0.5  # a slot frees when some execution ends: no window to read, so a short retry
LIMITER_ERROR_RETRY_S = 1.0
MIN_RETRY_S = 0.001
LIMITER_TIMEOUT_S = 2.0  # a store that does not answer in time rejects (fail closed), never queues
# A fractional rate becomes n requests per d windows with d at most this (2.5/s: 5 per 2 s).
MAX_WINDOWS = 3600


@dataclass(frozen=True)
class _RateCheck:
    subject: str  # the QuotaFailure subject
    description: str
    item: RateLimitItem
    key: tuple[str, ...]  # identifiers in the store


def _per(value: float, window: type[RateLimitItem]) -> RateLimitItem:
    """``value`` requests per ``window`` as a limits item with a whole amount (at least 1)."""
    frac = Fraction(value).limit_denominator(MAX_WINDOWS)
    if frac.numerator == 0:  # rarer than one per MAX_WINDOWS windows
        frac = Fraction(1, max(1, round(1 / value)))
    return window(frac.numerator, frac.denominator, namespace=KEY_NAMESPACE)


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policies: TenantPolicies, storage_uri: str = DEFAULT_STORAGE_URI,
                 concurrency: Concurrency | None = None) -> None:
        """``storage_uri``: a ``limits`` storage URI (``memory://``, ``redis://host:6379``, ...); the store must
        support the moving window. Raises ValueError (or limits' ConfigurationError) for an unusable one.
        ``concurrency``: where executions in flight are counted (default: in this process)."""
        self.policies = policies
        self.limiter = moving_window(storage_uri)
        self.concurrency = concurrency if concurrency is not None else InProcessConcurrency()
        self._items: dict[tuple[str, float], RateLimitItem] = {}  # parsed once per distinct policy value
        self._locks: dict[str, asyncio.Lock] = {}  # per tenant; tenants are bounded by the policy set

    def running(self, tenant: str) -> int:
        """Executions of ``tenant`` admitted here and not yet ended."""
        return self.concurrency.running(tenant)

    def _item(self, value: float, window: type[RateLimitItem]) -> RateLimitItem:
        cache_key = (window.__name__, value)
        item = self._items.get(cache_key)
        if item is None:
            item = self._items[cache_key] = _per(value, window)
        return item

    def _checks(self, tenant: str, rate: RateSettings, session_id: str) -> list[_RateCheck]:
        checks: list[_RateCheck] = []
        if rate.requests_per_second is not None:
            checks.append(_RateCheck(
                f"tenant:{tenant}/requests_per_second",
                f"tenant {tenant!r} allows {rate.requests_per_second:g} requests per second",
                self._item(rate.requests_per_second, RateLimitItemPerSecond), ("tenant", tenant, "rps")))
        if rate.requests_per_minute is not None:
            checks.append(_RateCheck(
                f"tenant:{tenant}/requests_per_minute",
                f"tenant {tenant!r} allows {rate.requests_per_minute:g} requests per minute",
                self._item(rate.requests_per_minute, RateLimitItemPerMinute), ("tenant", tenant, "rpm")))
        # An over-long session id is refused by request validation further in; it is not worth a key here.
        if rate.session_requests_per_minute is not None and session_id and len(session_id) <= MAX_ID_CHARS:
            checks.append(_RateCheck(
                f"session:{session_id}/requests_per_minute",
                f"session {session_id!r} of tenant {tenant!r} allows "
                f"{rate.session_requests_per_minute:g} requests per minute",
                self._item(rate.session_requests_per_minute, RateLimitItemPerMinute),
                ("session", tenant, session_id, "rpm")))
        return checks

    async def admit(self, request: Any, execution: bool = True) -> Slot:
        """Count the request against its tenant's (and session's) limits and take a concurrency slot.

        Raises:
            ResourceExhausted: a limit is hit, or the limiter failed (fail closed); nothing was counted.
            Unauthenticated, PermissionDenied: no caller, or a tenant without a policy (from caller_policy).
        """
        with phase("rate_limit"):
            return await self._admit(request, execution)

    async def _admit(self, request: Any, execution: bool) -> Slot:
        tenant, policy = caller_policy(self.policies)
        rate = policy.rate
        session_id = request.session_id if isinstance(request, pb.ExecuteRequest) else ""
        checks = self._checks(tenant, rate, session_id)
        lock = self._locks.get(tenant)
        if lock is None:
            lock = self._locks[tenant] = asyncio.Lock()
        async with lock:
            violations: list[QuotaViolation] = []
            retry_after = 0.0
            try:
                async with asyncio.timeout(LIMITER_TIMEOUT_S):
                    for check in checks:
                        stats = await self.limiter.get_window_stats(check.item, *check.key)
                        if stats.remaining < 1:
                            violations.append(QuotaViolation(check.subject, check.description))
                            retry_after = max(retry_after, stats.reset_time - time.time())
            except Exception as exc:
                raise self._unavailable(tenant, exc) from exc
            slot: Slot = NoSlot()
            if execution:
                limit = rate.concurrent_executions
                try:
                    taken, count = await self.concurrency.acquire(tenant, limit)
                except Exception as exc:
                    raise self._unavailable(tenant, exc) from exc
                if taken is None:
                    violations.append(QuotaViolation(
                        f"tenant:{tenant}/concurrent_executions",
                        f"tenant {tenant!r} allows {limit} concurrent executions; {count} running"))
                    retry_after = max(retry_after, CONCURRENCY_RETRY_S)
                else:
                    slot = taken
            if violations:
                slot.release()
                raise _exhausted(violations, retry_after)
            try:
                async with asyncio.timeout(LIMITER_TIMEOUT_S):
                    for check in checks:
                        if not await self.limiter.hit(check.item, *check.key):
                            # Taken by another replica since the check: refuse; the window says when to retry.
                            stats = await self.limiter.get_window_stats(check.item, *check.key)
                            raise _exhausted([QuotaViolation(check.subject, check.description)],
                                             stats.reset_time - time.time())
            except ResourceExhausted:
                slot.release()
                raise
            except Exception as exc:
                slot.release()
                raise self._unavailable(tenant, exc) from exc
            return slot

    @staticmethod
    def _unavailable(tenant: str, exc: Exception) -> LimiterUnavailable:
        log.error("rate limiter failed for tenant %r; rejecting the request: %r", tenant, exc)
        return LimiterUnavailable(f"rate limiter unavailable for tenant {tenant!r}; retry later",
                                  retry_after_s=LIMITER_ERROR_RETRY_S)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method not in RATE_LIMITED:
            return handler
        execution = handler_call_details.method in EXECUTE

        async def admit(request: Any) -> Slot:
            return await self.admit(request, execution)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                slot = await admit(request)
                try:
                    return await behavior(request, context)
                finally:
                    slot.release()

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                slot = await admit(request)
                # A cancelled stream may be left suspended at a yield until it is collected: the done callback
                # frees the slot when the RPC ends, whichever comes first.
                context.add_done_callback(lambda _: slot.release())
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    slot.release()

            return wrapped

        return wrap_handler(handler, unary, stream)


def _exhausted(violations: list[QuotaViolation], retry_after_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        "rate limit exceeded: " + "; ".join(v.description for v in violations),
        violations=violations,
        retry_after_s=max(MIN_RETRY_S, retry_after_s),
    )
