"""Fixtures for the adapter tests: one real sandbox server (nsjail, loopback) for the module, and clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox_client import SandboxClient
from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="session")
def adapter_server() -> Iterator[RunningServer]:
    """The default tenant's policy (static validation on, the usual limits). Incident response is off: the
    tests' deliberate timeouts and refused programs would otherwise throttle or quarantine this shared server
    (test_quarantine_is_explained runs one of its own)."""
    with server_in_thread(max_running=4, max_queued=32, incidents={"enabled": False}) as srv:
        yield srv


@pytest.fixture
def adapter_client(adapter_server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(adapter_server.target, timeout=60) as client:
        yield client
