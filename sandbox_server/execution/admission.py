"""Admission control: at most ``max_running`` sandboxes at once and ``max_queued`` requests waiting, and no new
work while the host is under pressure.

Beyond the queue a request is refused at once with QueueFull (RESOURCE_EXHAUSTED + RetryInfo): the server never
piles up unbounded work. A waiter that is cancelled (client gone, deadline passed) leaves the queue cleanly.
While the host is short of memory or tasks (execution/pressure.py), ``check_host_pressure`` refuses new work
with HostPressure before anything is reserved or started.

Every RetryInfo comes from the measured drain rate (slots released per second, see DrainRate): a refused
request is told to come back once the requests ahead of it have drained, ``(queued + 1) / rate``, clamped to
[MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S]. Before the first slot has been released there is no rate: the advice is
DEFAULT_RETRY_AFTER_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from sandbox_server.errors import HostPressure, QueueFull, QuotaViolation
from sandbox_server.execution.pressure import PressureMonitor

DEFAULT_RETRY_AFTER_S = 1.0  # before any drain rate was measured
MIN_RETRY_AFTER_S = 0.1  # a fast server still gets a breath between a refusal and its retry
MAX_RETRY_AFTER_S = 30.0  # nothing drains (one long execution holds the host): ask again within this anyway
DRAIN_WINDOW_S = 10.0  # the drain rate's time constant: a completion weighs exp(-age / window) of its first weight
MIN_DRAIN_SPAN_S = 0.1  # the least busy time a rate is computed over (no rate of infinity from the first release)


class DrainRate:
    """Slots released per second of busy time: an exponentially weighted moving average over ``window_s``.

    Only time with at least one slot held counts (an idle server's silence says nothing about how fast it
    drains), and the average is normalised by the busy time measured so far, so that a young server is not read
    as a slow one. ``per_second`` is None until the first release.
    """

    def __init__(self, window_s: float = DRAIN_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._clock = clock
        self._held = 0
        self._busy_s = 0.0  # busy time before the current busy stretch
        self._busy_since: float | None = None  # when the current busy stretch began (clock time)
        self._level = 0.0  # the decayed count of releases, as of busy time _level_at
        self._level_at = 0.0
        self._releases = 0

    def started(self) -> None:
        if self._held == 0:
            self._busy_since = self._clock()
        self._held += 1

    def released(self) -> None:
        now = self._busy_time()
        self._level = self._decayed(now) + 1.0
        self._level_at = now
        self._releases += 1
        self._held = max(0, self._held - 1)
        if self._held == 0:
            self._busy_s, self._busy_since = now, None

    def per_second(self) -> float | None:
        """The measured rate; None before the first release."""
        if not self._releases:
            return None
        now = self._busy_time()
        span = max(now, MIN_DRAIN_SPAN_S)
        # At a steady rate r the decayed level tends to r * window * (1 - exp(-span / window)).
        return self._decayed(now) / (self.window_s * -math.expm1(-span / self.window_s))

    def _busy_time(self) -> float:
        if self._busy_since is None:
            return self._busy_s
        return self._busy_s + self._clock() - self._busy_since

    def _decayed(self, now: float) -> float:
        return self._level * math.exp(-(now - self._level_at) / self.window_s)


class Admission:
    def __init__(self, max_running: int, max_queued: int, pressure: PressureMonitor | None = None,
                 drain: DrainRate | None = None) -> None:
        """``pressure``: the host's pressure monitor (None: never shed); ``drain``: the drain-rate estimate
        (tests pass one with their own clock)."""
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be >= 1 and max_queued >= 0")
        self.max_running = max_running
        self.max_queued = max_queued
        self.pressure = pressure
        self.drain = drain if drain is not None else DrainRate()
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def close(self) -> None:
        """Refuse every new request (drain on shutdown); running and queued ones go on."""
        self._closed = True

    def retry_after_s(self) -> float:
        """When a request refused now should come back: once those queued ahead of it and itself have drained."""
        rate = self.drain.per_second()
        if rate is None:
            return DEFAULT_RETRY_AFTER_S
        if rate <= 0:
            return MAX_RETRY_AFTER_S
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, (self.queued + 1) / rate))

    def check_host_pressure(self) -> None:
        """Raise HostPressure while the host is short of memory or tasks. Called before anything of a new
        request is reserved or started (its budget, its turn in a session, a slot); O(1)."""
        if self.pressure is None:
            return
        violations = self.pressure.violations()
        if not violations:
            return
        self.pressure.refused()
        # Nothing changes before the next reading: no advice shorter than the sampling interval.
        retry = max(self.retry_after_s(), self.pressure.interval_s)
        raise HostPressure(
            "the host is under pressure (" + ", ".join(v.subject for v in violations) + "): new work is refused "
            "until it recovers", violations=list(violations), retry_after_s=retry)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one running slot for the duration of the block; raise QueueFull when over capacity."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._closed:
            raise QueueFull(
                "the server is shutting down",
                violations=[QuotaViolation("server", "draining: no new executions")],
                retry_after_s=self.retry_after_s(),
            )
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            self.drain.started()
            return
        if len(self._waiters) >= self.max_queued:
            raise QueueFull(
                f"all {self.max_running} sandboxes are busy and {self.max_queued} requests are queued",
                violations=[QuotaViolation("server/queue", f"queue of {self.max_queued} is full")],
                retry_after_s=self.retry_after_s(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _release hands its slot over: running stays counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot arrived as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self.drain.released()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.drain.started()
                return
        self.running -= 1
