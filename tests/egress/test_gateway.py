"""Attaching a sandbox's egress proxy (gateway.py, through Backend.attach_egress as every backend calls it), with
real processes and real network namespaces: a sandbox whose process has ended is UNAVAILABLE (SANDBOX_GONE, with
a retry delay), not INTERNAL; any other failure stays a SandboxFailure (INTERNAL); a live sandbox gets its proxy.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2

from sandbox_server.backends.nsjail import NsjailBackend
from sandbox_server.egress.gateway import EgressGateway
from sandbox_server.egress.netns import net_namespace
from sandbox_server.egress.rules import EgressRules
from sandbox_server.errors import SandboxFailure, SandboxGone
from sandbox_server.execution.spec import EgressSpec
from sandbox_server.testing import private_settings

SPEC = EgressSpec(rules=EgressRules(entries=()), tenant="t", max_connections=4, connections_per_s=10.0,
                  refusals_before_incident=10)
MAX_BYTES = 1 << 20


@pytest.fixture
async def backend() -> AsyncIterator[NsjailBackend]:
    """A backend (never started: attaching needs none of its jails) with the server's egress gateway."""
    settings = private_settings()
    backend = NsjailBackend(settings)
    backend.egress = EgressGateway(settings)
    try:
        yield backend
    finally:
        await backend.aclose()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(params=["reaped", "zombie"])
def ended_sandbox(request: pytest.FixtureRequest) -> Iterator[int]:
    """The pid of a process that had a network namespace of its own and has exited: waited for, or a zombie
    (exited, not yet waited for: its namespace is gone all the same)."""
    proc = subprocess.Popen(["unshare", "--net", "true"])
    try:
        if request.param == "reaped":
            proc.wait(timeout=10)
        else:
            wait_for(lambda: net_namespace(proc.pid) is None)
        yield proc.pid
    finally:
        proc.wait(timeout=10)


@pytest.fixture
def live_sandbox() -> Iterator[int]:
    """The pid of a live process in a network namespace of its own."""
    own = net_namespace(os.getpid())
    proc = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        wait_for(lambda: net_namespace(proc.pid) not in (own, None))
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_a_sandbox_process_that_has_ended_is_unavailable(backend: NsjailBackend, ended_sandbox: int) -> None:
    with pytest.raises(SandboxGone) as info:
        await backend.attach_egress(ended_sandbox, SPEC, MAX_BYTES, execution_id="exec-gone")
    error = info.value
    assert "ended before its egress proxy could be attached" in error.message
    status = error.to_status()  # what the errors interceptor sends
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    reasons, retry = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            found = error_details_pb2.ErrorInfo()
            detail.Unpack(found)
            reasons.append(found.reason)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            delay = error_details_pb2.RetryInfo()
            detail.Unpack(delay)
            retry.append(delay.retry_delay.ToTimedelta().total_seconds())
    assert reasons == ["SANDBOX_GONE"]
    assert len(retry) == 1
    assert retry[0] > 0


async def test_other_attach_failures_stay_internal(backend: NsjailBackend) -> None:
    """A live process in the server's own network namespace: refused (the proxy must never listen on the host's
    network), and that is the server's fault, not a sandbox gone."""
    with pytest.raises(SandboxFailure) as info:
        await backend.attach_egress(os.getpid(), SPEC, MAX_BYTES)
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert "shares the server's network namespace" in info.value.message


async def test_a_live_sandbox_gets_its_proxy(backend: NsjailBackend, live_sandbox: int) -> None:
    link = await backend.attach_egress(live_sandbox, SPEC, MAX_BYTES, execution_id="exec-live")
    await link.aclose()
