"""Both clients against the scripted grpc.aio server of fake_sandbox.py (canned answers, every call recorded): what
goes on the wire, what comes back, streaming. The same calls against the sandbox server itself are in
test_client_sessions.py, test_client_resilience.py, test_client_readme.py and tests/backends/test_contract.py."""

from __future__ import annotations

import asyncio

import pytest
from fake_sandbox import API_KEY, CLIENT_TIMEOUT_S, FakeSandbox, FakeServer

from sandbox_client import (
    AsyncSandboxClient,
    DeadlineExceededError,
    ExecutionResult,
    Limits,
    OutputChunk,
    OutputFile,
    ResourceUsage,
    Runtime,
    SandboxClient,
    SandboxError,
    Status,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2

# gRPC sends a deadline as a coarse timeout (a few significant digits), so the server may see a little more.
SLACK_S = 0.5

EXPECTED_RESULT = ExecutionResult(
    execution_id="exec-1",
    status=Status.OK,
    exit_code=0,
    signal=0,
    stdout_bytes="hello ✓\n".encode(),
    stderr_bytes=b"warn\n",
    stdout_truncated=False,
    stderr_truncated=False,
    files=(OutputFile(path="out/answer.txt", content=b"42", size=2, truncated=False),),
    files_truncated=False,
    usage=ResourceUsage(
        wall_time_s=0.25,
        cpu_time_s=0.125,
        peak_memory_bytes=12_345_678,
        egress_bytes_sent=1_234,
        egress_bytes_received=56_789,
        egress_connections=3,
    ),
    message="",
    limits=Limits(
        wall_time_s=10.0,
        cpu_time_s=5.0,
        memory_bytes=256 * 2**20,
        max_pids=64,
        output_bytes=2**20,
        file_size_bytes=2**20,
        scratch_bytes=64 * 2**20,
        egress_bytes=8 * 2**20,
    ),
    language="python",
    backend="nsjail",
)

EXPECTED_CHUNKS = [
    OutputChunk("stdout", b"hel"),
    OutputChunk("stderr", b"warn\n"),
    OutputChunk("stdout", b"lo \xe2\x9c"),
    OutputChunk("stdout", b"\x93\n"),
]

EXPECTED_RUNTIMES = (
    Runtime(language="python", aliases=("py", "python3"), version="3.12.3", file_name="main.py"),
    Runtime(language="bash", aliases=("sh",), version="5.2.21", file_name="main.sh"),
)


def _only_call(fake: FakeSandbox) -> sandbox_pb2.ExecuteRequest:
    assert len(fake.calls) == 1
    request = fake.calls[0].request
    assert isinstance(request, sandbox_pb2.ExecuteRequest)
    return request


# --- sync ---------------------------------------------------------------------------------------------


def test_execute_returns_the_result(client: SandboxClient) -> None:
    result = client.execute("print(6*7)")
    assert result == EXPECTED_RESULT
    assert result.stdout == "hello ✓\n"
    assert result.ok


def test_execute_sends_every_argument(client: SandboxClient, fake: FakeSandbox) -> None:
    client.execute(
        "print(input())",
        language="py",
        stdin="42\n",
        files={"data/in.csv": b"a,b\n", "notes.txt": "héllo"},
        env={"MODE": "test"},
        limits=Limits(wall_time_s=2.5, memory_bytes=2**27),
        session_id="session-7",
        idempotency_key="key-9",
    )
    request = _only_call(fake)
    assert request.code == b"print(input())"
    assert request.language == "py"
    assert request.stdin == b"42\n"
    assert [(f.path, f.content) for f in request.files] == [
        ("data/in.csv", b"a,b\n"),
        ("notes.txt", "héllo".encode()),
    ]
    assert dict(request.env) == {"MODE": "test"}
    assert request.limits.wall_time_ms == 2500
    assert request.limits.memory_bytes == 2**27
    assert not request.limits.HasField("cpu_time_ms")
    assert (request.session_id, request.idempotency_key) == ("session-7", "key-9")


def test_api_key_goes_as_bearer_authorization(client: SandboxClient, fake: FakeSandbox) -> None:
    client.execute("1")
    client.runtimes()
    assert [call.metadata.get("authorization") for call in fake.calls] == [f"Bearer {API_KEY}"] * 2


def test_no_api_key_sends_no_authorization(fake_server: FakeServer, fake: FakeSandbox) -> None:
    with SandboxClient(fake_server.target) as sbx:
        sbx.execute("1")
    assert "authorization" not in fake.calls[0].metadata


def test_deadline_is_always_sent(client: SandboxClient, fake: FakeSandbox) -> None:
    client.execute("1")  # the client's default
    client.execute("1", timeout=3.0)  # the call's own
    list(client.execute_stream("1", timeout=4.0))
    client.runtimes(timeout=5.0)
    remaining = [call.time_remaining for call in fake.calls]
    assert all(r is not None for r in remaining), remaining
    default, own, stream, runtimes = (r or 0.0 for r in remaining)
    assert CLIENT_TIMEOUT_S - 5 < default <= CLIENT_TIMEOUT_S + SLACK_S
    assert 1.0 < own <= 3.0 + SLACK_S
    assert 2.0 < stream <= 4.0 + SLACK_S
    assert 3.0 < runtimes <= 5.0 + SLACK_S


def test_the_default_deadline_is_sixty_seconds(fake_server: FakeServer, fake: FakeSandbox) -> None:
    with SandboxClient(fake_server.target) as sbx:
        sbx.execute("1")
    remaining = fake.calls[0].time_remaining
    assert remaining is not None
    assert 55.0 < remaining <= 60.0 + SLACK_S


def test_a_passed_deadline_raises_deadline_exceeded(client: SandboxClient, fake: FakeSandbox) -> None:
    fake.script.delay_s = 5.0
    with pytest.raises(DeadlineExceededError) as caught:
        client.execute("1", timeout=0.2)
    assert caught.value.code.name == "DEADLINE_EXCEEDED"


def test_stream_yields_chunks_then_the_joined_result(client: SandboxClient) -> None:
    items = list(client.execute_stream("print('hello ✓')"))
    assert items[:-1] == EXPECTED_CHUNKS
    final = items[-1]
    assert isinstance(final, ExecutionResult)
    assert final.stdout == "hello ✓\n"
    assert final.stderr == "warn\n"
    assert final == EXPECTED_RESULT
    assert final == client.execute("print('hello ✓')")


def test_closing_the_stream_early_cancels_the_call(client: SandboxClient, fake: FakeSandbox) -> None:
    fake.script.stream_forever = True
    stream = client.execute_stream("while True: print('y')")
    first = next(iter(stream))
    assert first == EXPECTED_CHUNKS[0]
    stream.close()  # type: ignore[attr-defined]  # it is a generator
    assert fake.stream_cancelled.wait(5), "the server never saw the cancellation"


def test_runtimes(client: SandboxClient) -> None:
    assert client.runtimes() == EXPECTED_RUNTIMES


def test_a_closed_client_refuses_calls(fake_server: FakeServer) -> None:
    sbx = SandboxClient(fake_server.target)
    sbx.close()
    sbx.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        sbx.execute("1")


def test_an_unreachable_server_is_a_sandbox_error() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with SandboxClient("127.0.0.1:1", timeout=5) as sbx, pytest.raises(SandboxError) as caught:
        sbx.execute("1")
    assert caught.value.code.name in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@pytest.mark.parametrize("timeout", [0, -1.0, float("inf"), float("nan")])
def test_the_client_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        SandboxClient("127.0.0.1:1", timeout=timeout)


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="api_key"):
        SandboxClient("127.0.0.1:1", api_key="")


def test_an_exercise_client_marks_every_execution(fake_server: FakeServer, fake: FakeSandbox) -> None:
    with SandboxClient(fake_server.target, retry=None, breaker=None, exercise=True) as drill:
        assert drill.exercise
        drill.execute("print(1)")
        list(drill.execute_stream("print(1)"))
    with SandboxClient(fake_server.target, retry=None, breaker=None) as plain:
        assert not plain.exercise
        plain.execute("print(1)")
    assert [(c.method, _exercise(c.request)) for c in fake.calls] == [
        ("Execute", True), ("ExecuteStream", True), ("Execute", False)]


def _exercise(request: object) -> bool:
    assert isinstance(request, sandbox_pb2.ExecuteRequest)
    return request.exercise


@pytest.mark.parametrize("client_class", [SandboxClient, AsyncSandboxClient])
def test_exercise_must_be_a_bool(client_class: type[SandboxClient] | type[AsyncSandboxClient]) -> None:
    with pytest.raises(TypeError, match="exercise must be a bool"):
        client_class("127.0.0.1:1", exercise="no")  # type: ignore[arg-type]


# --- asyncio ------------------------------------------------------------------------------------------


async def test_async_execute_returns_the_result(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    result = await aclient.execute("print(6*7)", stdin=b"x", limits=Limits(cpu_time_s=1.5))
    assert result == EXPECTED_RESULT
    request = _only_call(fake)
    assert (request.code, request.stdin, request.limits.cpu_time_ms) == (b"print(6*7)", b"x", 1500)


async def test_async_api_key_and_deadline_are_sent(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    await aclient.execute("1")
    await aclient.execute("1", timeout=3.0)
    assert [call.metadata.get("authorization") for call in fake.calls] == [f"Bearer {API_KEY}"] * 2
    default, own = (call.time_remaining for call in fake.calls)
    assert default is not None
    assert own is not None
    assert CLIENT_TIMEOUT_S - 5 < default <= CLIENT_TIMEOUT_S + SLACK_S
    assert 1.0 < own <= 3.0 + SLACK_S


async def test_async_deadline_exceeded(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    fake.script.delay_s = 5.0
    with pytest.raises(DeadlineExceededError):
        await aclient.execute("1", timeout=0.2)


async def test_async_stream_yields_chunks_then_the_joined_result(aclient: AsyncSandboxClient) -> None:
    items = [item async for item in aclient.execute_stream("print('hello ✓')", timeout=4.0)]
    assert items[:-1] == EXPECTED_CHUNKS
    assert items[-1] == EXPECTED_RESULT
    assert items[-1] == await aclient.execute("print('hello ✓')")


async def test_async_closing_the_stream_early_cancels_the_call(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    fake.script.stream_forever = True
    stream = aclient.execute_stream("while True: print('y')")
    assert await anext(stream) == EXPECTED_CHUNKS[0]
    await stream.aclose()  # type: ignore[attr-defined]  # it is an async generator
    assert await asyncio.to_thread(fake.stream_cancelled.wait, 5), "the server never saw the cancellation"


async def test_async_exercise_client_marks_every_execution(fake_server: FakeServer, fake: FakeSandbox) -> None:
    async with AsyncSandboxClient(fake_server.target, retry=None, breaker=None, exercise=True) as drill:
        assert drill.exercise
        await drill.execute("print(1)")
        [item async for item in drill.execute_stream("print(1)")]
    assert [(c.method, _exercise(c.request)) for c in fake.calls] == [("Execute", True), ("ExecuteStream", True)]


async def test_async_runtimes(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    assert await aclient.runtimes(timeout=5.0) == EXPECTED_RUNTIMES
    assert fake.calls[0].metadata.get("authorization") == f"Bearer {API_KEY}"


async def test_async_client_built_outside_a_loop_opens_lazily(fake_server: FakeServer) -> None:
    sbx = AsyncSandboxClient(fake_server.target)  # no channel yet: nothing to close if never used
    try:
        assert (await sbx.execute("1")).ok
    finally:
        await sbx.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await sbx.execute("1")
