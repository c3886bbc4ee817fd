"""The warm pool's target size: the recent peak of executions in flight, within the operator's bounds and the
host's memory (pool_sizer.py). A fake clock and a fake memory reading; the real psutil reading is checked once."""

from __future__ import annotations

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sandbox_server.backends.pool_sizer import DEFAULT_SANDBOX_BYTES, PoolSizer, host_available_bytes
from sandbox_server.settings import load_settings

MIB = 1 << 20
PLENTY = 64 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sizer(minimum: int = 2, maximum: int = 32, fraction: float = 0.1, available: int = PLENTY,
          clock: Clock | None = None) -> PoolSizer:
    return PoolSizer(minimum, maximum, fraction, window_s=30.0, clock=clock or Clock(),
                     available_bytes=lambda: available)


def test_idle_keeps_the_minimum() -> None:
    assert sizer(minimum=2).target(pooled=0) == 2
    assert sizer(minimum=0).target(pooled=0) == 0


def test_a_burst_raises_the_target_to_its_peak_and_the_window_lowers_it_again() -> None:
    clock = Clock()
    s = sizer(minimum=2, clock=clock)
    for _ in range(7):
        s.started()
    assert s.target(0) == 7
    for _ in range(7):
        s.finished()
    clock.now += 29
    assert s.target(0) == 7, "the window still holds the burst"
    clock.now += 2
    assert s.target(0) == 2, "past the window: back to the minimum"


def test_the_target_follows_the_peak_not_the_last_value() -> None:
    clock = Clock()
    s = sizer(minimum=0, clock=clock)
    for in_flight in (3, 1, 4, 2):
        while s.in_flight < in_flight:
            s.started()
        while s.in_flight > in_flight:
            s.finished()
        clock.now += 5
    assert s.target(0) == 4


def test_the_maximum_bounds_any_burst() -> None:
    s = sizer(maximum=5)
    for _ in range(50):
        s.started()
    assert s.target(0) == 5


def test_host_memory_bounds_the_pool_even_below_the_minimum() -> None:
    # 10% of 40 MiB available is 4 MiB: no 8 MiB sandbox fits, so none is kept, whatever the minimum says
    assert sizer(minimum=2, available=40 * MIB).target(pooled=0) == 0
    # the pool's own sandboxes count as available: 3 ready of 8 MiB plus 136 MiB free is 16 MiB at 10%, 2 fit
    assert sizer(minimum=4, available=136 * MIB).target(pooled=3) == 2


def test_measured_sizes_replace_the_default_estimate() -> None:
    s = sizer(minimum=32, available=320 * MIB)  # 32 MiB for the pool
    assert s.target(0) == 32 * MIB // DEFAULT_SANDBOX_BYTES
    for _ in range(20):
        s.measured(2 * MIB)
    assert s.sandbox_bytes == pytest.approx(2 * MIB, rel=0.01)
    assert s.target(0) == 16
    s.measured(0)  # an unreadable cgroup says nothing
    assert s.sandbox_bytes == pytest.approx(2 * MIB, rel=0.01)


def test_memory_is_read_at_most_once_a_second() -> None:
    clock = Clock()
    reads: list[float] = []

    def available() -> int:
        reads.append(clock.now)
        return PLENTY

    s = PoolSizer(2, 32, 0.1, clock=clock, available_bytes=available)
    for _ in range(100):
        s.target(0)
    clock.now += 1.0
    s.target(0)
    assert reads == [1000.0, 1001.0]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        PoolSizer(3, 2, 0.1)


def test_the_real_reading_is_the_hosts() -> None:
    got = host_available_bytes()
    assert 0 < got <= psutil.virtual_memory().total


@given(st.lists(st.booleans(), max_size=100), st.integers(0, 8), st.integers(0, 40),
       st.integers(0, 4 << 30), st.integers(0, 50))
def test_the_target_always_stays_within_every_bound(steps: list[bool], minimum: int, extra: int, available: int,
                                                    pooled: int) -> None:
    clock = Clock()
    maximum = minimum + extra
    s = sizer(minimum=minimum, maximum=maximum, available=available, clock=clock)
    peak = 0
    for start in steps:
        if start:
            s.started()
        else:
            s.finished()
        peak = max(peak, s.in_flight)
        clock.now += 0.25  # 100 steps stay inside the 30 s window, so the peak is the window's
        assert s.in_flight >= 0
    target = s.target(pooled)
    assert 0 <= target <= maximum
    assert target <= s.memory_cap(pooled)
    assert target <= max(minimum, peak)
    assert target == min(max(minimum, peak), maximum, s.memory_cap(pooled))


def test_settings_refuse_a_minimum_above_the_maximum() -> None:
    assert load_settings(warm_python_pool=4, warm_python_pool_max=4).warm_python_pool_max == 4
    with pytest.raises(ValidationError, match=r"\(the least kept ready\) is above warm_python_pool_max"):
        load_settings(warm_python_pool=5, warm_python_pool_max=4)
    with pytest.raises(ValidationError, match="warm_python_pool_memory_fraction"):
        load_settings(warm_python_pool_memory_fraction=0)
