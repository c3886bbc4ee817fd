"""How many warm sandboxes to keep ready: as many as the recent load ran at once, bounded by the host's memory.

A burst of N requests should find N sandboxes ready, so the target is the peak number of warm executions in
flight during the last ``window_s`` seconds (never below the operator's minimum or above their maximum). An idle
sandbox holds memory (its private pages: what its cgroup is charged, read as each is taken by a request), so the
pool may take at most ``memory_fraction`` of what the host has available (psutil), counting the pool's own
sandboxes as available: a host short of memory keeps fewer, down to none, whatever the minimum says. After a
burst the target falls back once the window has passed it.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from sandbox_server.backends.cgroups import available_memory

# A pooled sandbox's private memory before any has been measured (two forked processes' touched pages, measured
# at 2-4 MiB on Debian 12's python3.11; rounded up so the first estimate errs on the side of the host)
DEFAULT_SANDBOX_BYTES = 8 << 20
MEMORY_CHECK_INTERVAL_S = 1.0  # psutil reads /proc/meminfo: cheap, but not on every request


def host_available_bytes() -> int:
    return available_memory(None)[0]


class PoolSizer:
    """The pool's target size, from in-flight executions (``started``/``finished``) and measured sizes."""

    def __init__(self, minimum: int, maximum: int, memory_fraction: float, window_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 available_bytes: Callable[[], int] = host_available_bytes) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError(f"pool bounds must satisfy 0 <= minimum <= maximum, got {minimum}, {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        self.memory_fraction = memory_fraction
        self.window_s = window_s
        self._clock = clock
        self._available_bytes = available_bytes
        self.in_flight = 0
        # (second, peak in flight during that second), oldest first: at most window_s entries
        self._peaks: collections.deque[tuple[int, int]] = collections.deque()
        self.sandbox_bytes = float(DEFAULT_SANDBOX_BYTES)
        self._measured = 0
        self._available = 0
        self._available_at = -math.inf

    def started(self) -> None:
        self.in_flight += 1
        self._note(self.in_flight)

    def finished(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def measured(self, sandbox_bytes: int) -> None:
        """One ready sandbox's private memory; the estimate follows the recent ones (not one outlier)."""
        if sandbox_bytes <= 0:
            return
        self._measured += 1
        weight = 1.0 / min(self._measured, 8)  # the mean of the first few, then a moving average
        self.sandbox_bytes += (sandbox_bytes - self.sandbox_bytes) * weight

    def demand(self) -> int:
        """The most warm executions in flight at once during the window, the current ones included."""
        self._note(self.in_flight)
        return max(peak for _, peak in self._peaks)

    def memory_cap(self, pooled: int) -> int:
        """How many idle sandboxes the host's memory allows, ``pooled`` of them existing already."""
        now = self._clock()
        if now - self._available_at >= MEMORY_CHECK_INTERVAL_S:
            self._available, self._available_at = self._available_bytes(), now
        budget = self.memory_fraction * (self._available + pooled * self.sandbox_bytes)
        return max(0, int(budget // self.sandbox_bytes))

    def target(self, pooled: int) -> int:
        """How many sandboxes the pool should hold now, ``pooled`` being ready already."""
        wanted = min(max(self.minimum, self.demand()), self.maximum)
        return min(wanted, self.memory_cap(pooled))

    def _note(self, in_flight: int) -> None:
        second = int(self._clock())
        peaks = self._peaks
        while peaks and peaks[0][0] <= second - self.window_s:
            peaks.popleft()
        if peaks and peaks[-1][0] == second:
            if in_flight > peaks[-1][1]:
                peaks[-1] = (second, in_flight)
        else:
            peaks.append((second, in_flight))
