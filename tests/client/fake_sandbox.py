"""A scripted stand-in for the sandbox server: a small grpc.aio server of the Sandbox service for the client
tests (the fixtures are in conftest.py), which runs no code.

It runs on its own event loop in a background thread, so the sync client (which blocks) and the asyncio
client (on pytest-asyncio's session loop) both talk to it over loopback. It serves canned answers, records
what each call carried (metadata, deadline, request), and does what the test scripts: abort with a given
status (every call, or the first few), sleep, or stream until cancelled. Of sessions it knows only CreateSession
and CloseSession, enough to see what a create sends and how its answer reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
from google.rpc import status_pb2
from grpc_status import rpc_status
from grpc_thread import grpc_server_in_thread

from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

API_KEY = "sk-test-123"
CLIENT_TIMEOUT_S = 30.0

# What ExecuteStream streams, in order: a multi-byte character ("✓") is split across two stdout chunks.
STREAMED_CHUNKS = (
    (sandbox_pb2.STREAM_STDOUT, b"hel"),
    (sandbox_pb2.STREAM_STDERR, b"warn\n"),
    (sandbox_pb2.STREAM_STDOUT, b"lo \xe2\x9c"),
    (sandbox_pb2.STREAM_STDOUT, b"\x93\n"),
)


def canned_result() -> sandbox_pb2.ExecuteResult:
    """Execute's answer; ExecuteStream's final result is the same with stdout/stderr left empty."""
    return sandbox_pb2.ExecuteResult(
        execution_id="exec-1",
        status=sandbox_pb2.STATUS_OK,
        exit_code=0,
        signal=0,
        stdout=b"hello \xe2\x9c\x93\n",
        stderr=b"warn\n",
        files=[sandbox_pb2.OutputFile(path="out/answer.txt", content=b"42", size=2, truncated=False)],
        usage=sandbox_pb2.ResourceUsage(
            wall_time_s=0.25,
            cpu_time_s=0.125,
            peak_memory_bytes=12_345_678,
            egress_bytes_sent=1_234,
            egress_bytes_received=56_789,
            egress_connections=3,
        ),
        limits=sandbox_pb2.Limits(
            wall_time_ms=10_000,
            cpu_time_ms=5_000,
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


SESSION_ID = "ses_" + "c" * 32


def canned_session(*, closed: bool = False) -> sandbox_pb2.Session:
    """CreateSession's answer; CloseSession's when ``closed``."""
    return sandbox_pb2.Session(
        id=SESSION_ID,
        state=sandbox_pb2.SESSION_STATE_CLOSED if closed else sandbox_pb2.SESSION_STATE_READY,
        close_reason="closed" if closed else "",
        limits=sandbox_pb2.Limits(memory_bytes=512 * 2**20, egress_bytes=16 * 2**20),
        languages=["python"],
        usage=sandbox_pb2.SessionUsage(calls=2, egress_bytes=4_096),
        backend="nsjail",
    )


Request = (
    sandbox_pb2.ExecuteRequest
    | sandbox_pb2.ListRuntimesRequest
    | sandbox_pb2.RecordUsageRequest
    | sandbox_pb2.CreateSessionRequest
    | sandbox_pb2.CloseSessionRequest
)


@dataclass(frozen=True)
class SeenCall:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    request: Request


@dataclass
class Script:
    """What the fake does on its next calls (reset before every test)."""

    abort: status_pb2.Status | None = None
    """Abort every call with this rich status (ExecuteStream: after streaming the chunks)."""
    plain_abort: tuple[grpc.StatusCode, str] | None = None
    """Abort with a status that carries no details."""
    delay_s: float = 0.0
    """Sleep this long before answering."""
    stream_forever: bool = False
    """ExecuteStream: stream chunks until the client cancels."""
    fail_first: int | None = None
    """Abort (as ``abort``/``plain_abort`` say) only the first this many calls, then answer; None: every call."""
    abort_before_output: bool = False
    """ExecuteStream: abort before the first chunk instead of after the chunks."""


@dataclass
class FakeSandbox(sandbox_pb2_grpc.SandboxServicer):
    calls: list[SeenCall] = field(default_factory=list)
    script: Script = field(default_factory=Script)
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when an ExecuteStream call ends while its handler is still streaming chunks."""

    aborted: int = 0
    """Calls aborted as scripted since the last reset."""

    def reset(self) -> None:
        self.calls.clear()
        self.script = Script()
        self.stream_cancelled.clear()
        self.aborted = 0

    def _record(
        self,
        method: str,
        request: Request,
        context: grpc.aio.ServicerContext[object, object],
    ) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.calls.append(SeenCall(method, metadata, context.time_remaining(), request))

    async def _scripted_failure(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        if self.script.fail_first is not None and self.aborted >= self.script.fail_first:
            return
        if self.script.abort is not None or self.script.plain_abort is not None:
            self.aborted += 1
        if self.script.abort is not None:
            await context.abort_with_status(rpc_status.to_status(self.script.abort))
        if self.script.plain_abort is not None:
            await context.abort(*self.script.plain_abort)

    async def Execute(
        self, request: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.ExecuteResult:
        self._record("Execute", request, context)
        await asyncio.sleep(self.script.delay_s)
        await self._scripted_failure(context)
        return canned_result()

    async def ExecuteStream(
        self, request: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[sandbox_pb2.ExecuteEvent]:
        self._record("ExecuteStream", request, context)
        handler_finished = False

        def note_early_end(_: object) -> None:
            # context.cancelled() is not reliably set yet here; an RPC that is over before its handler
            # is, was ended by the client.
            if not handler_finished:
                self.stream_cancelled.set()

        context.add_done_callback(note_early_end)
        await asyncio.sleep(self.script.delay_s)
        if self.script.abort_before_output:
            handler_finished = True
            await self._scripted_failure(context)
        while True:
            for stream, data in STREAMED_CHUNKS:
                yield sandbox_pb2.ExecuteEvent(output=sandbox_pb2.OutputChunk(stream=stream, data=data))
            if not self.script.stream_forever:
                break
            await asyncio.sleep(0.01)
        handler_finished = True
        if not self.script.abort_before_output:
            await self._scripted_failure(context)
        result = canned_result()
        result.stdout = b""
        result.stderr = b""
        yield sandbox_pb2.ExecuteEvent(result=result)

    async def RecordUsage(
        self, request: sandbox_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.RecordUsageResponse:
        self._record("RecordUsage", request, context)
        await self._scripted_failure(context)
        return sandbox_pb2.RecordUsageResponse(cost=0.25, session_cost=1.25)

    async def ListRuntimes(
        self, request: sandbox_pb2.ListRuntimesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.ListRuntimesResponse:
        self._record("ListRuntimes", request, context)
        await self._scripted_failure(context)
        return sandbox_pb2.ListRuntimesResponse(
            runtimes=[
                sandbox_pb2.Runtime(
                    language="python", aliases=["py", "python3"], version="3.12.3", file_name="main.py"
                ),
                sandbox_pb2.Runtime(language="bash", aliases=["sh"], version="5.2.21", file_name="main.sh"),
            ],
            backend="nsjail",
        )

    async def CreateSession(
        self, request: sandbox_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Session:
        self._record("CreateSession", request, context)
        await self._scripted_failure(context)
        return canned_session()

    async def CloseSession(
        self, request: sandbox_pb2.CloseSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Session:
        self._record("CloseSession", request, context)
        await self._scripted_failure(context)
        return canned_session(closed=True)


@dataclass(frozen=True)
class FakeServer:
    target: str
    servicer: FakeSandbox


@contextlib.contextmanager
def serve_in_thread(servicer: FakeSandbox) -> Iterator[FakeServer]:
    """Serve ``servicer`` on 127.0.0.1:<ephemeral> from its own event loop in a background thread."""

    def setup(server: grpc.aio.Server) -> None:
        sandbox_pb2_grpc.add_SandboxServicer_to_server(servicer, server)

    with grpc_server_in_thread(setup, name="fake-sandbox-server") as target:
        yield FakeServer(target=target, servicer=servicer)
