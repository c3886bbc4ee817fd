"""Host pressure: shed new work while the host is short of memory or of tasks, before anything of it starts.

Signals, read by a background sampler every ``interval_s`` (a request reads the last verdict: O(1)):

- ``memory``: the kernel's estimate of available memory (MemAvailable, through psutil: free memory plus what it
  can reclaim without swapping), or the headroom under the tightest memory limit above the sandboxes' cgroups
  when that is less (a container's or a pod's, whose OOM killer acts at its own limit), against a floor, the
  larger of ``memory_floor_bytes`` and ``memory_floor_fraction`` of the host's RAM (or of that limit). Below it,
  one more sandbox growing to its limit may wake the host's (or that cgroup's) OOM killer, which picks any
  process (the server's own included), not the sandbox's cgroup.
- ``tasks``: the kernel's task headroom, ``min(threads-max, pid_max)`` minus the tasks (threads) that exist now
  (``/proc/sys/kernel/*``, and the total of ``/proc/loadavg``), against ``task_headroom_floor``. Past the limit,
  clone() fails with EAGAIN: a sandbox cannot start its init, nor the server a thread.

Hysteresis: a signal starts pressing as soon as a reading is below its floor and stops only once a reading is
back above the floor plus a margin (a tenth of the floor, at most 128 MiB or 128 tasks), so a reading hovering at
the floor does not flap. A floor of 0 turns its signal off.

A signal whose reading fails (e.g. a /proc file a container hides) counts as not pressing, and the failure is logged
once: shedding protects the host, and a broken sensor must not refuse every request.

The verdict is a tuple of QuotaViolations (empty: accept); the caller turns it into a HostPressure error.
One log line when shedding starts and one when it stops, with the measurements; the ``sandbox_shedding`` gauge
is 1 by reason while it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from sandbox_server.backends.cgroups import CgroupsUnavailable, available_memory, detect
from sandbox_server.errors import QuotaViolation
from sandbox_server.settings import (
    DEFAULT_SHED_MEMORY_FLOOR_BYTES,
    DEFAULT_SHED_MEMORY_FLOOR_FRACTION,
    DEFAULT_SHED_SAMPLE_INTERVAL_S,
    DEFAULT_SHED_TASK_HEADROOM_FLOOR,
    MIB,
    Settings,
)
from sandbox_server.telemetry import Metrics

log = logging.getLogger(__name__)

MEMORY = "memory"
TASKS = "tasks"
REASONS = (MEMORY, TASKS)
RESUME_MARGIN_FRACTION = 0.1  # of the floor: how far above it a reading must be to stop shedding
MEMORY_RESUME_MARGIN_MAX_BYTES = 128 * MIB
TASKS_RESUME_MARGIN_MAX = 128
PROC = Path("/proc")


@dataclass(frozen=True)
class Reading:
    """One sample of the host. ``tasks``/``task_limit`` are None when /proc does not tell."""

    available_bytes: int
    total_bytes: int
    tasks: int | None = None
    task_limit: int | None = None  # min(threads-max, pid_max)

    @property
    def task_headroom(self) -> int | None:
        if self.tasks is None or self.task_limit is None:
            return None
        return self.task_limit - self.tasks


def read_memory() -> tuple[int, int]:
    """(available, total) bytes of the host."""
    return available_memory(None)


def sandbox_memory_reader(cgroup_parent: str) -> Callable[[], tuple[int, int]]:
    """read_memory narrowed to the tightest memory limit above the sandboxes' cgroups (a container's or a pod's,
    cgroups.memory_headroom); the host's alone when the host has no usable cgroup hierarchy."""
    try:
        hierarchy = detect(cgroup_parent)
    except CgroupsUnavailable:
        return read_memory
    return lambda: available_memory(hierarchy)


def read_tasks(proc: Path = PROC) -> tuple[int, int]:
    """(tasks that exist now, the most the kernel allows). Raises OSError or ValueError when /proc does not tell."""
    # /proc/loadavg's fourth field is "runnable/existing" scheduling entities: every thread of every process.
    existing = int((proc / "loadavg").read_text().split()[3].split("/")[1])
    threads_max = int((proc / "sys/kernel/threads-max").read_text())
    pid_max = int((proc / "sys/kernel/pid_max").read_text())  # every thread takes a pid
    return existing, min(threads_max, pid_max)


@dataclass(frozen=True)
class PressureConfig:
    """The floors (0 turns a signal off) and the sampling interval; see the module's docstring."""

    memory_floor_bytes: int = DEFAULT_SHED_MEMORY_FLOOR_BYTES
    memory_floor_fraction: float = DEFAULT_SHED_MEMORY_FLOOR_FRACTION
    task_headroom_floor: int = DEFAULT_SHED_TASK_HEADROOM_FLOOR
    interval_s: float = DEFAULT_SHED_SAMPLE_INTERVAL_S

    def __post_init__(self) -> None:
        if self.memory_floor_bytes < 0 or not 0 <= self.memory_floor_fraction < 1 or self.task_headroom_floor < 0:
            raise ValueError("pressure floors must be >= 0 (and the memory fraction below 1)")
        if self.interval_s <= 0:
            raise ValueError("the sampling interval must be > 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(memory_floor_bytes=settings.shed_memory_floor_bytes,
                   memory_floor_fraction=settings.shed_memory_floor_fraction,
                   task_headroom_floor=settings.shed_task_headroom_floor,
                   interval_s=settings.shed_sample_interval_s)

    def memory_floor(self, total_bytes: int) -> int:
        return max(self.memory_floor_bytes, int(self.memory_floor_fraction * total_bytes))


def _resume_level(floor: int, margin_max: int) -> int:
    return floor + min(int(floor * RESUME_MARGIN_FRACTION), margin_max)


class PressureMonitor:
    """The host's pressure, sampled in the background; ``violations()`` is the current verdict.

    ``read_memory`` and ``read_tasks`` are the host's readings (tests pass their own); ``sample()`` takes one
    reading and updates the verdict (the sampler calls it every ``interval_s``).
    """

    def __init__(self, config: PressureConfig | None = None, *,
                 read_memory: Callable[[], tuple[int, int]] = read_memory,
                 read_tasks: Callable[[], tuple[int, int]] = read_tasks,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else PressureConfig()
        self._read_memory = read_memory
        self._read_tasks = read_tasks
        self._clock = clock
        self._pressing: dict[str, QuotaViolation] = {}
        self._violations: tuple[QuotaViolation, ...] = ()
        self._since = 0.0
        self._refused = 0
        self._failed: set[str] = set()  # signals whose reading failed (logged once)
        self._metrics: Metrics | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def interval_s(self) -> float:
        return self.config.interval_s

    def violations(self) -> tuple[QuotaViolation, ...]:
        """What presses now, as QuotaViolations naming the signal and its measurement; empty when none does."""
        return self._violations

    def refused(self) -> None:
        """A request was shed (counted for the line that says shedding stopped)."""
        self._refused += 1

    async def start(self, metrics: Metrics | None = None) -> None:
        """Take a first reading (the first request is judged on a real one), then sample in the background."""
        self._metrics = metrics
        if metrics is not None:
            for reason in REASONS:  # exported from the start: "not shedding" is a sample, not a missing series
                metrics.shedding.set(0, {"reason": reason})
        self.sample()
        self._task = asyncio.create_task(self._sample_forever(), name="host-pressure-sampler")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                self.sample()
            except Exception:  # a bug here must not end sampling (the verdict would freeze)
                log.exception("host pressure sampling failed")

    def sample(self) -> Reading:
        """One reading of the host; updates the verdict, the gauge, and logs a start or a stop of shedding."""
        available, total = self._guarded(MEMORY, self._read_memory) or (0, 0)
        tasks = self._guarded(TASKS, self._read_tasks)
        reading = Reading(available, total, *(tasks or (None, None)))
        pressing: dict[str, QuotaViolation] = {}  # a signal that could not be read is left out: it does not press
        if total:
            floor = self.config.memory_floor(total)
            resume = _resume_level(floor, MEMORY_RESUME_MARGIN_MAX_BYTES)
            if self._presses(MEMORY, available, floor, resume):
                pressing[MEMORY] = QuotaViolation("host/memory", (
                    f"{available // MIB} MiB of memory available, below the floor of {floor // MIB} MiB "
                    f"(new work is accepted again from {resume // MIB} MiB)"))
        headroom = reading.task_headroom
        if headroom is not None:
            floor = self.config.task_headroom_floor
            resume = _resume_level(floor, TASKS_RESUME_MARGIN_MAX)
            if self._presses(TASKS, headroom, floor, resume):
                pressing[TASKS] = QuotaViolation("host/tasks", (
                    f"room for {headroom} more tasks ({reading.tasks} exist, the kernel allows {reading.task_limit}), "
                    f"below the floor of {floor} (new work is accepted again from {resume})"))
        self._switch(pressing, reading)
        return reading

    def _presses(self, signal: str, measured: int, floor: int, resume: int) -> bool:
        """Hysteresis: a reading below the floor starts pressing; only one at or above ``resume`` stops it."""
        return measured < floor or (signal in self._pressing and measured < resume)

    def _guarded(self, signal: str, read: Callable[[], tuple[int, int]]) -> tuple[int, int] | None:
        try:
            value = read()
        except Exception as exc:  # whatever broke the sensor, it fails open (see the module's docstring)
            if signal not in self._failed:
                self._failed.add(signal)
                log.error("host pressure: the %s signal cannot be read (%s): it will not shed", signal, exc,
                          extra={"event": "shedding_signal_failed", "signal": signal})
            return None
        self._failed.discard(signal)
        return value

    def _switch(self, pressing: dict[str, QuotaViolation], reading: Reading) -> None:
        before = set(self._pressing)
        self._pressing = pressing
        self._violations = tuple(pressing[r] for r in REASONS if r in pressing)
        if self._metrics is not None:
            for reason in before ^ set(pressing):
                self._metrics.shedding.set(1 if reason in pressing else 0, {"reason": reason})
        if bool(pressing) == bool(before):
            return
        measurements = {"available_bytes": reading.available_bytes, "total_bytes": reading.total_bytes,
                        "memory_floor_bytes": self.config.memory_floor(reading.total_bytes),
                        "tasks": reading.tasks, "task_limit": reading.task_limit,
                        "task_headroom_floor": self.config.task_headroom_floor}
        if pressing:
            self._since, self._refused = self._clock(), 0
            log.warning("host pressure: shedding new work (%s)", "; ".join(v.description for v in self._violations),
                        extra={"event": "shedding_started", "reasons": ",".join(sorted(pressing)), **measurements})
        else:
            duration = self._clock() - self._since
            log.info("host pressure: shedding stopped after %.1f s, %d requests refused (%d MiB available)",
                     duration, self._refused, reading.available_bytes // MIB,
                     extra={"event": "shedding_stopped", "duration_s": round(duration, 3), "refused": self._refused,
                            **measurements})
