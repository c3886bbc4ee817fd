"""Retries, idempotency keys and the circuit breaker, through real servers: the real nsjail backend made to fail
on purpose, a real full queue, a loopback TCP proxy that cuts connections mid-call, and a server that stops and
comes back on its port. The fake server (fake_sandbox.py) is used where a test must count attempts exactly or
script a status the real server does not send on demand."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from fake_sandbox import FakeSandbox, FakeServer
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from real_servers import audit_ids, failing, running_execution, server_with_policy, unavailable_at_first
from tcp_proxy import TcpProxy

from sandbox_client import (
    AsyncSandboxClient,
    BreakerPolicy,
    CircuitOpenError,
    DisplayData,
    ExecutionResult,
    InvalidRequestError,
    Limits,
    OutputChunk,
    ResourceExhaustedError,
    RetryPolicy,
    SandboxClient,
    SandboxError,
    ServerError,
    StreamInterruptedError,
    UnavailableError,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_server.testing import RunningServer, server_in_thread

# A program that holds its sandbox long enough for a test to act while it runs.
SLOW = "import time; time.sleep(1); print('done once')"
# One line at once, then a pause, then another: a stream a test can cut between the two.
TWO_PARTS = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')"

T = TypeVar("T")
Item = OutputChunk | DisplayData | ExecutionResult

# Retries without long waits, for tests that count attempts.
QUICK_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with server_in_thread() as srv:
        yield srv


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[TcpProxy]:
    with TcpProxy(server.target) as tcp:
        yield tcp


def _in_thread(call: Callable[[], T]) -> Future[T]:
    """Run ``call`` in a thread of its own; the future has its result or exception."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


# --- UNAVAILABLE is retried ---------------------------------------------------------------------------


def test_unavailable_is_retried_until_the_backend_runs() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=unavailable_at_first(2, runs)) as srv, SandboxClient(srv.target) as sbx:
        result = sbx.execute("print('third time lucky')")
    assert result.stdout == "third time lucky\n"
    assert len(runs) == 3
    assert result.execution_id == runs[-1]


async def test_async_unavailable_is_retried_until_the_backend_runs() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=unavailable_at_first(3, runs)) as srv:
        async with AsyncSandboxClient(srv.target) as sbx:
            result = await sbx.execute("print('fourth')")
    assert (result.stdout, len(runs)) == ("fourth\n", 4)


def test_no_retry_policy_raises_the_first_unavailable() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=unavailable_at_first(1, runs)) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        with pytest.raises(UnavailableError) as caught:
            sbx.execute("print(1)")
        assert caught.value.reason == "BACKEND_UNAVAILABLE"
        assert len(runs) == 1
        assert sbx.execute("print(1)").ok  # the backend is back


def test_too_few_attempts_raise_the_last_unavailable() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=unavailable_at_first(5, runs)) as srv, \
            SandboxClient(srv.target, retry=QUICK_RETRY) as sbx, pytest.raises(UnavailableError):
        sbx.execute("print(1)")
    assert len(runs) == 4


# --- RESOURCE_EXHAUSTED with RetryInfo is retried, after the delay the server asks for ---------------------


def test_a_full_queue_is_retried_after_its_retry_info() -> None:
    with server_in_thread(max_running=1, max_queued=0) as srv, SandboxClient(srv.target, retry=None) as other:
        busy = _in_thread(lambda: other.execute(SLOW))
        running_execution(srv)
        with pytest.raises(ResourceExhaustedError) as refused:  # without retries: refused at once
            other.execute("print('no room')")
        assert (refused.value.reason, refused.value.retry_after) == ("QUEUE_FULL", 1.0)
        with SandboxClient(srv.target) as sbx:
            started = time.monotonic()
            result = sbx.execute("print('my turn')")
            waited = time.monotonic() - started
        assert result.stdout == "my turn\n"
        assert waited >= 1.0  # the server's RetryInfo is the least wait
        assert busy.result(timeout=30)


async def test_async_full_queue_is_retried_after_its_retry_info() -> None:
    with server_in_thread(max_running=1, max_queued=0) as srv, SandboxClient(srv.target, retry=None) as other:
        busy = _in_thread(lambda: other.execute(SLOW))
        await asyncio.to_thread(running_execution, srv)
        async with AsyncSandboxClient(srv.target) as sbx:
            started = time.monotonic()
            result = await sbx.execute("print('my turn')")
        assert result.stdout == "my turn\n"
        assert time.monotonic() - started >= 1.0
        assert busy.result(timeout=30)


def test_a_spent_session_budget_is_not_retried(tmp_path: Path) -> None:
    policy = "pricing: {per_execution: 1.0}\nbudget: {per_session: 1}"
    with server_with_policy(tmp_path, policy) as srv, SandboxClient(srv.target) as sbx:
        assert sbx.execute("print(1)", session_id="spender").ok
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError) as refused:
            sbx.execute("print(2)", session_id="spender")
        assert time.monotonic() - started < 0.5
        assert refused.value.retry_after is None  # no RetryInfo: final
        assert "budget" in refused.value.message
        assert len(audit_ids(srv)) == 1


# --- what is not retried, and the deadline ------------------------------------------------------------


def test_a_bad_request_is_not_retried(server: RunningServer) -> None:
    with SandboxClient(server.target) as sbx, pytest.raises(InvalidRequestError):
        sbx.execute("print(1)", limits=Limits(memory_bytes=2**50))
    assert audit_ids(server) == []


def test_an_internal_error_is_not_retried() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=failing(runs)) as srv, SandboxClient(srv.target) as sbx, \
            pytest.raises(ServerError) as caught:
        sbx.execute("print(1)")
    assert caught.value.code is grpc.StatusCode.INTERNAL
    assert len(runs) == 1


def test_the_deadline_bounds_the_retries() -> None:
    runs: list[str] = []
    patient = RetryPolicy(max_attempts=100, budget_s=100)
    factory = unavailable_at_first(1000, runs, retry_after_s=0.6)
    with server_in_thread(backend_factory=factory) as srv, SandboxClient(srv.target, retry=patient) as sbx:
        started = time.monotonic()
        with pytest.raises(UnavailableError):  # the last real error, not DEADLINE_EXCEEDED
            sbx.execute("print(1)", timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0  # no wait ends past the deadline
    assert len(runs) == 2  # at 0 s and 0.6 s: the next wait would have ended past the deadline


def test_advice_longer_than_the_deadline_is_not_followed() -> None:
    runs: list[str] = []
    factory = unavailable_at_first(1000, runs, retry_after_s=5.0)
    with server_in_thread(backend_factory=factory) as srv, SandboxClient(srv.target) as sbx:
        started = time.monotonic()
        with pytest.raises(UnavailableError) as caught:
            sbx.execute("print(1)", timeout=2.0)
        assert time.monotonic() - started < 1.0
    assert caught.value.retry_after == 5.0  # for the caller to decide
    assert len(runs) == 1


# --- attempts counted exactly (the fake server) ---------------------------------------------------------


def _status(code: int, message: str, retry_after_s: float | None = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if retry_after_s is not None:
        seconds = int(retry_after_s)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((retry_after_s - seconds) * 1e9)))
        status.details.add().Pack(retry)
    return status


def _keys(fake: FakeSandbox) -> list[str]:
    keys = []
    for call in fake.calls:
        assert isinstance(call.request, sandbox_pb2.ExecuteRequest | sandbox_pb2.RecordUsageRequest)
        keys.append(call.request.idempotency_key)
    return keys


def test_every_attempt_carries_the_same_fresh_idempotency_key(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "down")
    fake.script.fail_first = 2
    with SandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx:
        assert sbx.execute("1").execution_id == "exec-1"
        first = _keys(fake)
        assert len(first) == 3
        assert len(set(first)) == 1
        assert re.fullmatch(r"[0-9a-f]{32}", first[0])
        fake.reset()
        sbx.execute("1")
        assert _keys(fake) != first[:1]  # one key per logical call, not per client


async def test_async_attempts_carry_the_callers_key(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "down")
    fake.script.fail_first = 3
    async with AsyncSandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx:
        await sbx.execute("1", idempotency_key="agent-step-17")
    assert _keys(fake) == ["agent-step-17"] * 4


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_record_usage_is_retried_with_one_key(
    fake_server: FakeServer, fake: FakeSandbox, asynchronous: bool
) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "down")
    fake.script.fail_first = 1
    if asynchronous:
        async with AsyncSandboxClient(fake_server.target, retry=QUICK_RETRY) as aclient:
            report = await aclient.record_usage("s-1", "model-a", input_tokens=10)
    else:
        with SandboxClient(fake_server.target, retry=QUICK_RETRY) as client:
            report = await asyncio.to_thread(client.record_usage, "s-1", "model-a", input_tokens=10)
    assert report.cost == 0.25
    keys = _keys(fake)
    assert len(keys) == 2
    assert keys[0] == keys[1] != ""


UNSAFE = {
    "invalid-argument": _status(code_pb2.INVALID_ARGUMENT, "bad"),
    "permission-denied": _status(code_pb2.PERMISSION_DENIED, "no"),
    "unauthenticated": _status(code_pb2.UNAUTHENTICATED, "who?"),
    "internal": _status(code_pb2.INTERNAL, "broke"),
    "unknown": _status(code_pb2.UNKNOWN, "?"),
    "exhausted-without-retry-info": _status(code_pb2.RESOURCE_EXHAUSTED, "budget spent"),
    "not-found": _status(code_pb2.NOT_FOUND, "gone"),
    "failed-precondition": _status(code_pb2.FAILED_PRECONDITION, "not now"),
}


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_failures_are_not_retried(fake_server: FakeServer, fake: FakeSandbox, name: str) -> None:
    fake.script.abort = UNSAFE[name]
    with SandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx, pytest.raises(SandboxError) as caught:
        sbx.execute("1")
    assert caught.value.code.value[0] == UNSAFE[name].code
    assert len(fake.calls) == 1


def test_each_attempt_gets_what_is_left_of_the_deadline(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.abort = _status(code_pb2.RESOURCE_EXHAUSTED, "queue full", retry_after_s=0.3)
    fake.script.fail_first = 2
    with SandboxClient(fake_server.target, timeout=5.0) as sbx:
        sbx.execute("1")
    remaining = [call.time_remaining or 0.0 for call in fake.calls]
    assert len(remaining) == 3
    assert remaining[0] <= 5.5
    assert remaining[1] < remaining[0] - 0.25
    assert remaining[2] < remaining[1] - 0.25


def test_a_stream_failing_before_its_first_chunk_is_retried(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "down")
    fake.script.fail_first = 1
    fake.script.abort_before_output = True
    with SandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx:
        items = list(sbx.execute_stream("1"))
    assert len(items) == 5
    assert isinstance(items[-1], ExecutionResult)
    keys = _keys(fake)
    assert len(keys) == 2
    assert keys[0] == keys[1]


async def test_async_stream_retried_before_output_and_cut_after(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "down")
    fake.script.fail_first = 1
    fake.script.abort_before_output = True
    async with AsyncSandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx:
        items = [item async for item in sbx.execute_stream("1")]
        assert isinstance(items[-1], ExecutionResult)
        assert len(fake.calls) == 2
        fake.reset()
        fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "went away")
        seen: list[Item] = []
        with pytest.raises(StreamInterruptedError) as caught:
            await _aread_all(sbx.execute_stream("1"), seen)
    assert len(fake.calls) == 1
    assert list(caught.value.chunks) == seen
    assert caught.value.stdout == "hello ✓\n"


async def _aread_all(stream: AsyncIterator[Item], into: list[Item]) -> None:
    async for item in stream:
        into.append(item)


def test_unavailable_after_output_is_not_retried(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.plain_abort = (grpc.StatusCode.UNAVAILABLE, "went away")
    with SandboxClient(fake_server.target, retry=QUICK_RETRY) as sbx:
        seen: list[object] = []
        with pytest.raises(StreamInterruptedError) as caught:
            seen.extend(sbx.execute_stream("1", idempotency_key="k-stream"))
    assert len(fake.calls) == 1
    assert list(caught.value.chunks) == seen
    assert caught.value.stdout == "hello ✓\n"
    assert caught.value.stderr == "warn\n"
    assert caught.value.idempotency_key == "k-stream"


def test_closing_the_client_ends_a_call_waiting_to_retry(fake_server: FakeServer, fake: FakeSandbox) -> None:
    fake.script.abort = _status(code_pb2.UNAVAILABLE, "down", retry_after_s=0.5)
    sbx = SandboxClient(fake_server.target)
    call = _in_thread(lambda: sbx.execute("1"))
    while not fake.calls:
        time.sleep(0.01)
    sbx.close()
    with pytest.raises(RuntimeError, match="closed"):
        call.result(timeout=10)
    assert len(fake.calls) == 1


# --- idempotency: a connection cut mid-call never runs the code twice --------------------------------------


def test_a_cut_execute_is_retried_and_runs_once(server: RunningServer, proxy: TcpProxy) -> None:
    with SandboxClient(proxy.target) as sbx:
        call = _in_thread(lambda: sbx.execute(SLOW))
        first = running_execution(server)  # the request reached the server and its code is running
        assert proxy.cut() > 0
        result = call.result(timeout=30)
    assert isinstance(result, ExecutionResult)
    assert result.stdout == "done once\n"
    assert result.execution_id == first  # the first attempt's execution, not a second run
    assert audit_ids(server) == [first]
    assert proxy.connections == 2  # the retry came on a new connection


async def test_async_cut_execute_is_retried_and_runs_once(server: RunningServer, proxy: TcpProxy) -> None:
    async with AsyncSandboxClient(proxy.target) as sbx:
        call = asyncio.ensure_future(sbx.execute(SLOW))
        first = await asyncio.to_thread(running_execution, server)
        assert proxy.cut() > 0
        result = await call
    assert (result.stdout, result.execution_id) == ("done once\n", first)
    assert audit_ids(server) == [first]


def _read_cutting_after_the_first(
    stream: Iterator[Item], server: RunningServer, proxy: TcpProxy, received: list[Item], ids: list[str]
) -> None:
    """Read ``stream`` into ``received``; right after the first item, note the running execution and cut."""
    for item in stream:
        received.append(item)
        if len(received) == 1:
            ids.append(running_execution(server))
            proxy.cut()


async def _aread_cutting_after_the_first(
    stream: AsyncIterator[Item], server: RunningServer, proxy: TcpProxy, received: list[Item], ids: list[str]
) -> None:
    async for item in stream:
        received.append(item)
        if len(received) == 1:
            ids.append(await asyncio.to_thread(running_execution, server))
            proxy.cut()


def test_a_stream_cut_after_output_raises_with_the_partial_output(server: RunningServer, proxy: TcpProxy) -> None:
    with SandboxClient(proxy.target) as sbx:
        received: list[Item] = []
        ids: list[str] = []
        with pytest.raises(StreamInterruptedError) as caught:
            _read_cutting_after_the_first(sbx.execute_stream(TWO_PARTS), server, proxy, received, ids)
        (first,) = ids
        error = caught.value
        assert received == [OutputChunk("stdout", b"first\n")]
        assert error.chunks == (OutputChunk("stdout", b"first\n"),)
        assert error.stdout == "first\n"
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.idempotency_key
        # The execution went on: its result, whole, without running the code again.
        result = sbx.execute(TWO_PARTS, idempotency_key=error.idempotency_key)
    assert (result.stdout, result.execution_id) == ("first\nsecond\n", first)
    assert audit_ids(server) == [first]


async def test_async_stream_cut_after_output_raises_with_the_partial_output(
    server: RunningServer, proxy: TcpProxy
) -> None:
    async with AsyncSandboxClient(proxy.target) as sbx:
        received: list[Item] = []
        ids: list[str] = []
        with pytest.raises(StreamInterruptedError) as caught:
            await _aread_cutting_after_the_first(sbx.execute_stream(TWO_PARTS), server, proxy, received, ids)
        (first,) = ids
        assert received == [OutputChunk("stdout", b"first\n")]
        assert caught.value.stdout == "first\n"
        result = await sbx.execute(TWO_PARTS, idempotency_key=caught.value.idempotency_key)
    assert (result.stdout, result.execution_id) == ("first\nsecond\n", first)
    assert audit_ids(server) == [first]


def test_a_stream_cut_before_any_output_is_retried(server: RunningServer, proxy: TcpProxy) -> None:
    code = "import time; time.sleep(0.5); print('after the cut')"
    with SandboxClient(proxy.target) as sbx:
        stream = iter(sbx.execute_stream(code))
        cutter = _in_thread(lambda: (running_execution(server), proxy.cut()))
        items = list(stream)
    first, cut = cutter.result(timeout=10)
    assert cut > 0
    assert proxy.connections == 2  # cut mid-call, retried on a new connection
    result = items[-1]
    assert isinstance(result, ExecutionResult)
    assert (result.stdout, result.execution_id) == ("after the cut\n", first)
    assert items[:-1] == [OutputChunk("stdout", b"after the cut\n")]  # replayed: one chunk per stream
    assert audit_ids(server) == [first]


# --- connection reuse ---------------------------------------------------------------------------------


def test_a_client_reuses_one_connection(proxy: TcpProxy) -> None:
    with SandboxClient(proxy.target) as sbx:
        for _ in range(3):
            assert sbx.execute("print(1)").ok
        with ThreadPoolExecutor(6) as pool:
            assert all(r.ok for r in pool.map(lambda _: sbx.execute("print(2)"), range(6)))
        assert list(sbx.execute_stream("print(3)"))
        sbx.runtimes()
    assert proxy.connections == 1


async def test_an_async_client_reuses_one_connection(proxy: TcpProxy) -> None:
    async with AsyncSandboxClient(proxy.target) as sbx:
        results = await asyncio.gather(*(sbx.execute(f"print({i})") for i in range(6)))
        assert all(r.ok for r in results)
        await sbx.runtimes()
    assert proxy.connections == 1


# --- the circuit breaker ------------------------------------------------------------------------------

BREAKER = BreakerPolicy(failure_threshold=3, reset_timeout_s=0.5)
# gRPC waits between reconnection attempts (the client caps that at 5 s); these tests are about the breaker, so
# their channel reconnects at once, and a probe always reaches a server that is back.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 50)]


def test_the_breaker_opens_fails_fast_probes_and_closes() -> None:
    # Open long enough for a server to start on the port (0.3-0.6 s here) while it stays open
    breaker = BreakerPolicy(failure_threshold=3, reset_timeout_s=2.0)
    with server_in_thread() as srv:
        port, target = srv.app.port, srv.target
        sbx = SandboxClient(target, breaker=breaker, retry=None, timeout=5, options=FAST_RECONNECT)
        assert sbx.execute("print('up')").ok
    try:
        for _ in range(3):  # the server is gone: connection refused, three times in a row
            with pytest.raises(UnavailableError) as caught:
                sbx.execute("print(1)")
            assert not isinstance(caught.value, CircuitOpenError)
        started = time.monotonic()
        with pytest.raises(CircuitOpenError) as fast:
            sbx.execute("print(1)")
        assert time.monotonic() - started < 0.25  # no connection tried
        assert 0 < (fast.value.retry_after or 0) <= breaker.reset_timeout_s

        time.sleep(breaker.reset_timeout_s)  # half-open: one probe, still refused, opens it again
        with pytest.raises(UnavailableError) as probe:
            sbx.execute("print(1)")
        assert not isinstance(probe.value, CircuitOpenError)
        with pytest.raises(CircuitOpenError):
            sbx.execute("print(1)")

        with server_in_thread(port=port) as again:
            assert again.target == target
            with pytest.raises(CircuitOpenError) as still:  # open still, though the server is back
                sbx.execute("print(1)")
            time.sleep(still.value.retry_after or 0)
            # The channel may be between two reconnection attempts (the breaker is not what is tested there):
            # connected first, without a call, so that the probe meets a ready channel
            grpc.channel_ready_future(sbx._channel).result(timeout=10)
            assert sbx.execute("print('probe')").stdout == "probe\n"  # the probe goes, and closes it
            assert sbx._breaker.state == "closed"
            assert all(sbx.execute("print(2)").ok for _ in range(3))
    finally:
        sbx.close()


def test_retries_stop_when_the_breaker_opens() -> None:
    with server_in_thread() as srv:
        target = srv.target
    with SandboxClient(target, breaker=BREAKER, retry=RetryPolicy(max_attempts=10, initial_backoff_s=0.01)) as sbx:
        with pytest.raises(UnavailableError) as caught:  # the last real error, after 3 attempts, not 10
            sbx.execute("print(1)")
        assert not isinstance(caught.value, CircuitOpenError)
        assert sbx._breaker.state == "open"
        with pytest.raises(CircuitOpenError):
            sbx.execute("print(1)")


def test_failures_that_are_the_callers_own_do_not_open_it(server: RunningServer) -> None:
    with SandboxClient(server.target, breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=60)) as sbx:
        for _ in range(5):
            with pytest.raises(InvalidRequestError):
                sbx.execute("print(1)", language="cobol")
        assert sbx.execute("print(1)").ok


def test_server_errors_open_it() -> None:
    runs: list[str] = []
    with server_in_thread(backend_factory=failing(runs)) as srv, \
            SandboxClient(srv.target, breaker=BreakerPolicy(failure_threshold=2, reset_timeout_s=60)) as sbx:
        for _ in range(2):
            with pytest.raises(ServerError):
                sbx.execute("print(1)")
        with pytest.raises(CircuitOpenError):
            sbx.execute("print(1)")
    assert len(runs) == 2


async def test_async_breaker_lets_one_probe_through_then_closes() -> None:
    with server_in_thread() as srv:
        port = srv.app.port
    sbx = AsyncSandboxClient(srv.target, breaker=BREAKER, retry=None, timeout=5, options=FAST_RECONNECT)
    try:
        for _ in range(3):
            with pytest.raises(UnavailableError):
                await sbx.execute("print(1)")
        with pytest.raises(CircuitOpenError):
            await sbx.execute("print(1)")
        with server_in_thread(port=port):
            await asyncio.sleep(0.5)
            outcomes = await asyncio.gather(*(sbx.execute("print('probe')") for _ in range(5)),
                                            return_exceptions=True)
            assert sum(isinstance(o, ExecutionResult) for o in outcomes) == 1  # the probe
            assert sum(isinstance(o, CircuitOpenError) for o in outcomes) == 4  # failed fast meanwhile
            assert (await sbx.execute("print('closed')")).stdout == "closed\n"
    finally:
        await sbx.aclose()


def test_the_breaker_is_per_client() -> None:
    with server_in_thread() as srv:
        target = srv.target
    one = SandboxClient(target, breaker=BreakerPolicy(failure_threshold=1, reset_timeout_s=60), retry=None)
    other = SandboxClient(target, breaker=BreakerPolicy(failure_threshold=1, reset_timeout_s=60), retry=None)
    try:
        with pytest.raises(UnavailableError):
            one.execute("1")
        with pytest.raises(CircuitOpenError):
            one.execute("1")
        with pytest.raises(UnavailableError) as caught:
            other.execute("1")
        assert not isinstance(caught.value, CircuitOpenError)
    finally:
        one.close()
        other.close()


def test_no_breaker_never_fails_fast() -> None:
    with server_in_thread() as srv:
        target = srv.target
    with SandboxClient(target, breaker=None, retry=None) as sbx:
        for _ in range(10):
            with pytest.raises(UnavailableError) as caught:
                sbx.execute("1")
            assert not isinstance(caught.value, CircuitOpenError)


def test_a_sync_client_is_safe_across_threads_while_failing() -> None:
    """Many threads calling one client against a dead server: every call fails as an UnavailableError (open
    breaker or real failure), none hangs, and the breaker ends open."""
    with server_in_thread() as srv:
        target = srv.target
    errors: list[BaseException] = []
    lock = threading.Lock()
    with SandboxClient(target, breaker=BREAKER, retry=QUICK_RETRY, timeout=5) as sbx:

        def call() -> None:
            try:
                sbx.execute("1")
            except BaseException as error:
                with lock:
                    errors.append(error)

        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(call) for _ in range(40)]:
                future.result(timeout=30)
        assert len(errors) == 40
        assert all(isinstance(e, UnavailableError) for e in errors)
        assert any(isinstance(e, CircuitOpenError) for e in errors)
        assert sbx._breaker.state == "open"
