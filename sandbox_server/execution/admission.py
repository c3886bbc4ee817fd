"""Admission control: at most ``max_running`` sandboxes at once and ``max_queued`` requests waiting.

Beyond that a request is refused at once with QueueFull (RESOURCE_EXHAUSTED + RetryInfo): the server never
piles up unbounded work. A waiter that is cancelled (client gone, deadline passed) leaves the queue cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from sandbox_server.errors import QueueFull, QuotaViolation

DEFAULT_RETRY_AFTER_S = 1.0


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be >= 1 and max_queued >= 0")
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def close(self) -> None:
        """Refuse every new request (drain on shutdown); running and queued ones go on."""
        self._closed = True

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
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            )
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise QueueFull(
                f"all {self.max_running} sandboxes are busy and {self.max_queued} requests are queued",
                violations=[QuotaViolation("server/queue", f"queue of {self.max_queued} is full")],
                retry_after_s=DEFAULT_RETRY_AFTER_S,
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
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1
