"""Admission control: bounded running, bounded queue, FIFO hand-over, cancellation never leaks a slot; RetryInfo
from the measured drain rate; refusal under host pressure."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sandbox_server.errors import HostPressure, QueueFull
from sandbox_server.execution.admission import (
    DEFAULT_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    MIN_RETRY_AFTER_S,
    Admission,
    DrainRate,
)
from sandbox_server.execution.pressure import PressureConfig, PressureMonitor
from sandbox_server.interceptors.telemetry import rejection_reason
from sandbox_server.settings import MIB


async def _hold(adm: Admission, started: list[int], release: asyncio.Event, n: int) -> None:
    async with adm.slot():
        started.append(n)
        await release.wait()


async def test_runs_up_to_the_limit_then_queues_then_refuses() -> None:
    adm = Admission(max_running=2, max_queued=1)
    release = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(_hold(adm, started, release, i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert started == [0, 1]
    assert (adm.running, adm.queued) == (2, 1)
    with pytest.raises(QueueFull) as info:
        async with adm.slot():
            pass
    assert info.value.retry_after_s is not None
    assert info.value.retry_after_s > 0
    release.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2]
    assert (adm.running, adm.queued) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue_and_no_slot_is_lost() -> None:
    adm = Admission(max_running=1, max_queued=4)
    release = asyncio.Event()
    started: list[int] = []
    holder = asyncio.create_task(_hold(adm, started, release, 0))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(adm, started, release, 1))
    later = asyncio.create_task(_hold(adm, started, release, 2))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert adm.queued == 1
    release.set()
    await asyncio.gather(holder, later)
    assert started == [0, 2]
    assert (adm.running, adm.queued) == (0, 0)


async def test_closed_admission_refuses_new_work() -> None:
    adm = Admission(max_running=1, max_queued=1)
    adm.close()
    with pytest.raises(QueueFull, match="shutting down"):
        async with adm.slot():
            pass


# ---- RetryInfo from the measured drain rate -------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drain(rate: DrainRate, clock: FakeClock, releases: int, every_s: float, held: int = 1) -> None:
    """``held`` slots busy throughout (taken if none is); one released and taken again every ``every_s``
    seconds. The slots stay held at the end."""
    while rate._held < held:
        rate.started()
    for _ in range(releases):
        clock.now += every_s
        rate.released()
        rate.started()


def test_no_drain_rate_before_the_first_release_gives_the_documented_fallback() -> None:
    clock = FakeClock()
    adm = Admission(max_running=1, max_queued=4, drain=DrainRate(clock=clock))
    adm.drain.started()
    clock.now += 60
    assert adm.drain.per_second() is None
    assert adm.retry_after_s() == DEFAULT_RETRY_AFTER_S


async def test_a_steady_drain_rate_is_measured_and_sets_retry_after_from_the_requests_ahead() -> None:
    clock = FakeClock()
    rate = DrainRate(clock=clock)
    _drain(rate, clock, releases=240, every_s=0.25, held=2)  # 4 per second for a minute
    assert rate.per_second() == pytest.approx(4.0, rel=0.02)
    adm = Admission(max_running=2, max_queued=8, drain=rate)
    assert adm.retry_after_s() == pytest.approx(1 / 4, rel=0.02)  # nobody queued: the next release
    adm._waiters.extend(asyncio.get_running_loop().create_future() for _ in range(7))
    assert adm.retry_after_s() == pytest.approx(8 / 4, rel=0.02)  # 7 ahead, then this one


def test_a_young_server_is_not_read_as_a_slow_one() -> None:
    clock = FakeClock()
    rate = DrainRate(clock=clock)
    _drain(rate, clock, releases=4, every_s=0.5)  # two seconds old, 2 per second
    assert rate.per_second() == pytest.approx(2.0, rel=0.05)


def test_idle_time_says_nothing_about_the_drain_rate() -> None:
    clock = FakeClock()
    rate = DrainRate(clock=clock)
    _drain(rate, clock, releases=100, every_s=0.5)
    clock.now += 0.5
    rate.released()
    before = rate.per_second()
    clock.now += 3600  # nothing held for an hour
    assert rate.per_second() == pytest.approx(before)


def test_the_rate_follows_a_change_within_its_window() -> None:
    clock = FakeClock()
    rate = DrainRate(window_s=10, clock=clock)
    _drain(rate, clock, releases=600, every_s=0.1)  # 10 per second for a minute
    _drain(rate, clock, releases=60, every_s=1.0)  # then 1 per second for a minute (six windows)
    clock.now += 0.5  # between two releases: the level's average, not its peak
    assert rate.per_second() == pytest.approx(1.0, rel=0.05)


def test_retry_after_is_clamped_when_nothing_drains_or_everything_does() -> None:
    clock = FakeClock()
    stuck = DrainRate(clock=clock)
    _drain(stuck, clock, releases=10, every_s=1.0)
    stuck.started()  # one long execution holds the host...
    clock.now += 600  # ...for ten minutes, releasing nothing
    assert Admission(1, 4, drain=stuck).retry_after_s() == MAX_RETRY_AFTER_S
    fast = DrainRate(clock=clock)
    _drain(fast, clock, releases=10_000, every_s=0.001)
    assert Admission(1, 4, drain=fast).retry_after_s() == MIN_RETRY_AFTER_S


async def test_queue_full_carries_the_derived_retry_after() -> None:
    clock = FakeClock()
    adm = Admission(max_running=1, max_queued=1, drain=DrainRate(clock=clock))
    for _ in range(20):  # twenty executions of 0.5 s, one at a time: 2 per second
        async with adm.slot():
            clock.now += 0.5
    release = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(_hold(adm, started, release, i)) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:
        async with adm.slot():
            pass
    assert info.value.retry_after_s == pytest.approx(2 / 2, rel=0.05)  # one queued ahead, then this one
    release.set()
    await asyncio.gather(*tasks)


# ---- host pressure --------------------------------------------------------------------------------------------
def _monitor(available_mib: int) -> PressureMonitor:
    monitor = PressureMonitor(
        PressureConfig(memory_floor_bytes=1024 * MIB, memory_floor_fraction=0, task_headroom_floor=0),
        read_memory=lambda: (available_mib * MIB, 16384 * MIB), read_tasks=lambda: (100, 10_000))
    monitor.sample()
    return monitor


def test_host_pressure_refuses_with_the_signal_and_a_retry_after() -> None:
    clock = FakeClock()
    rate = DrainRate(clock=clock)
    _drain(rate, clock, releases=20, every_s=0.5)  # 2 per second
    adm = Admission(max_running=2, max_queued=4, pressure=_monitor(available_mib=512), drain=rate)
    with pytest.raises(HostPressure) as info:
        adm.check_host_pressure()
    (violation,) = info.value.violations
    assert violation.subject == "host/memory"
    assert "512 MiB of memory available, below the floor of 1024 MiB" in violation.description
    assert info.value.retry_after_s == pytest.approx(1 / 2, rel=0.05)
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rejection_reason(info.value) == "host_pressure"


def test_no_pressure_or_no_monitor_admits() -> None:
    Admission(1, 1, pressure=_monitor(available_mib=4096)).check_host_pressure()
    Admission(1, 1).check_host_pressure()
