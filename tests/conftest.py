"""Shared fixtures: real servers on loopback ports, real jails, and a leak check after every test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_client import SandboxClient
from sandbox_server.backends.cgroups import CgroupsUnavailable, detect
from sandbox_server.testing import RunningServer, server_in_thread

BACKENDS = ["nsjail"]


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite runs real jails and must run as root")


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One real server per backend for the session (its own state dir and cgroup parent)."""
    with server_in_thread(backend=request.param, max_running=4, max_queued=32) as srv:
        yield srv


@pytest.fixture
def sbx(server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(server.target, timeout=60) as client:
        yield client


def leftovers(server: RunningServer) -> list[str]:
    """Scratch mounts, cgroups and jailed processes of this server that still exist."""
    found: list[str] = []
    scratch = server.settings.state_dir / "scratch"
    if scratch.exists():
        found += [f"scratch {p.name}" for p in scratch.iterdir()]
    try:
        hierarchy = detect(server.settings.cgroup_parent)
    except CgroupsUnavailable:
        return found
    for d in hierarchy.dirs():
        if d.exists():
            found += [f"cgroup {p}" for p in d.iterdir() if p.is_dir()]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if str(scratch) in line:
            found.append("mount " + line.split()[4])
    return found


def assert_no_leftovers(server: RunningServer, wait_s: float = 5.0) -> None:
    """Teardown may still be finishing for a cancelled call: wait briefly, then fail with what is left."""
    deadline = time.monotonic() + wait_s
    while (left := leftovers(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left behind: {left}"


@pytest.fixture
def no_leftovers(server: RunningServer) -> Iterator[None]:
    yield
    assert_no_leftovers(server)
