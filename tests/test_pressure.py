"""The host-pressure monitor (execution/pressure.py): floors, hysteresis, failing readings, the two log lines and
the gauge, driven by readings of the test's own; the real /proc and psutil readings are checked once."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import generate_latest

from sandbox_server.execution.pressure import (
    MEMORY_RESUME_MARGIN_MAX_BYTES,
    PressureConfig,
    PressureMonitor,
    read_memory,
    read_tasks,
)
from sandbox_server.settings import GIB, MIB, load_settings
from sandbox_server.telemetry import build_telemetry

LOGGER = "sandbox_server.execution.pressure"


class Host:
    """Readings the test sets: available memory (MiB) and tasks in existence."""

    def __init__(self, available_mib: int = 8192, total_mib: int = 16384, tasks: int = 500,
                 task_limit: int = 32768) -> None:
        self.available_mib = available_mib
        self.total_mib = total_mib
        self.tasks = tasks
        self.task_limit = task_limit
        self.broken = False

    def memory(self) -> tuple[int, int]:
        return self.available_mib * MIB, self.total_mib * MIB

    def task_counts(self) -> tuple[int, int]:
        if self.broken:
            raise FileNotFoundError("/proc/sys/kernel/threads-max")
        return self.tasks, self.task_limit


def monitor(host: Host, **config: float) -> PressureMonitor:
    settings = {"memory_floor_bytes": 1000 * MIB, "memory_floor_fraction": 0.0, "task_headroom_floor": 1000,
                **config}
    return PressureMonitor(PressureConfig(**settings),  # type: ignore[arg-type]
                           read_memory=host.memory, read_tasks=host.task_counts)


def subjects(m: PressureMonitor) -> list[str]:
    return [v.subject for v in m.violations()]


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "event", "") for r in caplog.records if r.name == LOGGER]


def test_memory_hysteresis_starts_below_the_floor_and_stops_above_floor_plus_margin(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    host = Host(available_mib=2000)
    m = monitor(host)
    # (available MiB, shedding after that reading): floor 1000, resume at 1000 + 100 (a tenth of the floor)
    for available, shedding in [(2000, False), (1001, False), (999, True), (1050, True), (1099, True),
                                (1100, False), (1050, False), (999, True)]:
        host.available_mib = available
        m.sample()
        assert bool(m.violations()) is shedding, available
    assert events(caplog) == ["shedding_started", "shedding_stopped", "shedding_started"]


def test_a_reading_hovering_at_the_floor_does_not_flap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    host = Host(available_mib=2000)
    m = monitor(host)
    for available in [995, 1005, 990, 1010, 998, 1030, 1001, 999] * 5:
        host.available_mib = available
        m.sample()
        assert subjects(m) == ["host/memory"]
    assert events(caplog) == ["shedding_started"]  # one line, not one per crossing


def test_the_margin_is_capped_for_large_floors() -> None:
    host = Host(available_mib=64 * 1024, total_mib=128 * 1024)
    m = monitor(host, memory_floor_bytes=20 * GIB)
    host.available_mib = 20 * 1024 - 1
    m.sample()
    assert subjects(m) == ["host/memory"]
    host.available_mib = (20 * GIB + MEMORY_RESUME_MARGIN_MAX_BYTES) // MIB  # not 22 GiB: 128 MiB above
    m.sample()
    assert subjects(m) == []


def test_the_memory_floor_is_the_larger_of_bytes_and_fraction() -> None:
    host = Host(available_mib=1500, total_mib=16384)
    bytes_only = monitor(host)
    bytes_only.sample()
    assert subjects(bytes_only) == []
    m = monitor(host, memory_floor_fraction=0.1)  # 1638 MiB > 1000 MiB
    m.sample()
    (violation,) = m.violations()
    assert violation.subject == "host/memory"
    assert "1500 MiB of memory available, below the floor of 1638 MiB" in violation.description


def test_task_headroom_presses_with_its_own_hysteresis() -> None:
    host = Host(tasks=500, task_limit=2000)  # headroom 1500
    m = monitor(host)
    m.sample()
    assert subjects(m) == []
    host.tasks = 1100  # headroom 900 < 1000
    m.sample()
    (violation,) = m.violations()
    assert violation.subject == "host/tasks"
    assert "room for 900 more tasks (1100 exist, the kernel allows 2000), below the floor of 1000" in \
        violation.description
    host.available_mib = 10  # both press: memory is named first
    m.sample()
    assert subjects(m) == ["host/memory", "host/tasks"]
    host.available_mib, host.tasks = 8192, 950  # headroom 1050: above the floor, below 1000 + 100
    m.sample()
    assert subjects(m) == ["host/tasks"]
    host.tasks = 900  # headroom 1100
    m.sample()
    assert subjects(m) == []


def test_zero_floors_turn_the_signals_off() -> None:
    host = Host(available_mib=1, tasks=32767, task_limit=32768)
    m = monitor(host, memory_floor_bytes=0, task_headroom_floor=0)
    m.sample()
    assert subjects(m) == []


def test_a_signal_that_cannot_be_read_does_not_press_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    host = Host(tasks=1900, task_limit=2000)
    m = monitor(host)
    m.sample()
    assert subjects(m) == ["host/tasks"]
    host.broken = True
    for _ in range(3):
        m.sample()
        assert subjects(m) == []  # fail open: a broken sensor refuses nothing
    assert events(caplog) == ["shedding_started", "shedding_signal_failed", "shedding_stopped"]


def test_the_log_lines_carry_the_measurements(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    host = Host(available_mib=500)
    m = monitor(host)
    m.sample()
    m.refused()
    m.refused()
    host.available_mib = 4000
    m.sample()
    started, stopped = (r for r in caplog.records if r.name == LOGGER)
    assert started.levelno == logging.WARNING
    assert vars(started)["reasons"] == "memory"
    assert vars(started)["available_bytes"] == 500 * MIB
    assert vars(started)["memory_floor_bytes"] == 1000 * MIB
    assert (vars(started)["tasks"], vars(started)["task_limit"]) == (500, 32768)
    assert vars(stopped)["refused"] == 2
    assert vars(stopped)["available_bytes"] == 4000 * MIB
    assert vars(stopped)["duration_s"] >= 0


async def test_the_sampler_reads_in_the_background_and_sets_the_gauge() -> None:
    telemetry = build_telemetry(load_settings())
    host = Host(available_mib=4000)
    m = monitor(host, interval_s=0.01)
    try:
        await m.start(telemetry.metrics)
        assert subjects(m) == []  # a first reading at start
        host.available_mib = 500
        await asyncio.sleep(0.1)
        assert subjects(m) == ["host/memory"]
        page = generate_latest(telemetry.registry).decode()
        assert 'sandbox_shedding{reason="memory"} 1.0' in page
        assert 'sandbox_shedding{reason="tasks"} 0.0' in page
        host.available_mib = 4000
        await asyncio.sleep(0.1)
        assert subjects(m) == []
        assert 'sandbox_shedding{reason="memory"} 0.0' in generate_latest(telemetry.registry).decode()
    finally:
        await m.aclose()
        telemetry.shutdown()
    host.available_mib = 500
    await asyncio.sleep(0.05)
    assert subjects(m) == []  # stopped: no more readings


def test_the_real_readings_are_sane() -> None:
    available, total = read_memory()
    assert 0 < available <= total
    tasks, limit = read_tasks()
    assert 0 < tasks < limit
    m = PressureMonitor()  # the defaults never shed a healthy test machine
    reading = m.sample()
    assert reading.task_headroom is not None
    assert m.violations() == ()


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="floors"):
        PressureConfig(memory_floor_fraction=1.0)
    with pytest.raises(ValueError, match="interval"):
        PressureConfig(interval_s=0)
