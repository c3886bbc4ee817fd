"""Shedding through a real server (nsjail): a real memory hog in a sandbox pushes the host's available memory
under the floor, new work is refused with RESOURCE_EXHAUSTED naming host memory (with RetryInfo), a session's
files and its close still work, and once the hog has ended new work is accepted again."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from production_helpers import metric, scrape, server_with_policy

from sandbox_client import ExecutionResult, Limits, ResourceExhaustedError, SandboxClient
from sandbox_server.backends.cgroups import CgroupVersion, detect, remove_empty_below
from sandbox_server.settings import GIB, MIB

# The floor sits this far under what is available when the test starts; the hog takes far more than that, and
# the gap leaves room for the server's own start and for what other processes on the host do meanwhile.
FLOOR_BELOW_AVAILABLE = 1 * GIB
HOG_BYTES = 2 * GIB
HOG_SLEEP_S = 10.0
# Every page written, so it is resident and charged (bytes(n) or bytearray(n) would map zero pages and touch none)
HOG = f"""
import time
hog = b"x" * {HOG_BYTES}
time.sleep({HOG_SLEEP_S})
print(len(hog))
"""
PRESSURE_LOGGER = "sandbox_server.execution.pressure"


@contextmanager
def pressure_log() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(PRESSURE_LOGGER)
    handler, old_level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def refusal(sbx: SandboxClient, hog: Future[ExecutionResult], timeout_s: float = 20.0) -> ResourceExhaustedError:
    """Run small executions until one is refused (while the hog still runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not hog.done():
        try:
            assert sbx.execute("print(1)").ok
        except ResourceExhaustedError as exc:
            return exc
        time.sleep(0.1)
    if hog.done():
        hog.result()  # its own failure, if it failed
    pytest.fail(f"no execution was refused while the hog ran (available now: {psutil.virtual_memory().available})")


def accepted_again(sbx: SandboxClient, timeout_s: float = 20.0) -> float:
    """Seconds until a small execution is accepted again."""
    start = time.monotonic()
    while True:
        try:
            assert sbx.execute("print(1)").ok
            return time.monotonic() - start
        except ResourceExhaustedError:
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.1)


def test_a_memory_hog_sheds_new_work_until_it_ends(tmp_path: Path) -> None:
    floor = psutil.virtual_memory().available - FLOOR_BELOW_AVAILABLE
    with (server_with_policy(tmp_path, "", backend="nsjail", shed_memory_floor_bytes=floor,
                             shed_memory_floor_fraction=0.0) as srv,
          pressure_log() as logs,
          SandboxClient(srv.target, retry=None, timeout=60) as sbx):
        for _ in range(3):  # accepted; and the drain rate has releases to measure
            assert sbx.execute("print(1)").ok
        session = sbx.session(language="python")
        session.run("x = 41")
        with ThreadPoolExecutor(1) as pool:
            hog = pool.submit(sbx.execute, HOG, limits=Limits(memory_bytes=HOG_BYTES + 512 * MIB, wall_time_s=60))
            refused = refusal(sbx, hog)
            assert refused.details.reason == "HOST_PRESSURE"
            (violation,) = refused.quota_violations
            assert violation.subject == "host/memory"
            assert f"below the floor of {floor // MIB} MiB" in violation.description
            assert refused.retry_after is not None
            assert refused.retry_after >= srv.settings.shed_sample_interval_s
            assert metric(scrape(srv), "sandbox_shedding", reason="memory") == 1
            # A new session and a call in a live one are refused too; the session's files and its close are not.
            with pytest.raises(ResourceExhaustedError, match="host is under pressure"):
                sbx.session(language="python")
            with pytest.raises(ResourceExhaustedError, match="host is under pressure"):
                session.run("x + 1")
            session.files.upload("kept.txt", b"still here")
            assert session.files.download("kept.txt") == b"still here"
            assert not hog.done(), "the refusals must come while the hog holds its memory"
            result = hog.result(timeout=60)
        assert result.ok, result
        assert result.stdout.strip() == str(HOG_BYTES)
        assert result.usage.peak_memory_bytes >= HOG_BYTES
        accepted_again(sbx)
        assert session.run("x + 1").value == "42"
        session.close()
        text = scrape(srv)
    assert metric(text, "sandbox_rejections_total", reason="host_pressure") >= 3
    assert metric(text, "sandbox_shedding", reason="memory") == 0
    assert metric(text, "sandbox_shedding", reason="tasks") == 0
    started = [r for r in logs if getattr(r, "event", "") == "shedding_started"]
    stopped = [r for r in logs if getattr(r, "event", "") == "shedding_stopped"]
    assert len(started) == 1, [r.getMessage() for r in logs]
    assert len(stopped) == 1, [r.getMessage() for r in logs]
    assert vars(started[0])["available_bytes"] < floor
    assert vars(stopped[0])["refused"] >= 3


@contextmanager
def limited_parent(limit_bytes: int) -> Iterator[str]:
    """A cgroup of the test's own with a memory limit (a container's or a pod's, say), to put the server's
    cgroup parent under; removed afterwards in every hierarchy the server made it in."""
    name = f"sandbox-test-limit-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    hierarchy = detect(name)
    top = hierarchy.parents["memory"]
    top.mkdir()
    try:
        limit_file = "memory.max" if hierarchy.version is CgroupVersion.V2 else "memory.limit_in_bytes"
        (top / limit_file).write_text(str(limit_bytes))
        yield name
    finally:
        for directory in {*hierarchy.dirs(), top}:
            remove_empty_below(directory)
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()


def test_a_memory_limit_above_the_sandboxes_sheds_as_the_host_would(tmp_path: Path) -> None:
    """In a container or a pod, the sandboxes' memory is charged to its limit, whose OOM killer acts however much
    the host has free: the floor is held against the headroom under that limit (the host has gigabytes here)."""
    with limited_parent(1 * GIB) as parent, \
            server_with_policy(tmp_path, "", backend="nsjail", cgroup_parent=f"{parent}/sandbox",
                               shed_memory_floor_bytes=600 * MIB, shed_memory_floor_fraction=0.0) as srv, \
            SandboxClient(srv.target, retry=None, timeout=60) as sbx:
        assert psutil.virtual_memory().available > 4 * GIB
        assert sbx.execute("print(1)").ok  # 1 GiB less the pool: above the floor
        with ThreadPoolExecutor(1) as pool:
            hog = pool.submit(sbx.execute, HOG.replace(str(HOG_BYTES), str(700 * MIB)),
                              limits=Limits(memory_bytes=900 * MIB, wall_time_s=60))
            refused = refusal(sbx, hog)
            assert refused.details.reason == "HOST_PRESSURE"
            assert "below the floor of 600 MiB" in refused.quota_violations[0].description
            result = hog.result(timeout=60)
        assert result.ok, result
        accepted_again(sbx)
