"""The asyncio client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from sandbox_client._aio_session import AsyncSession, AsyncSessionContext
from sandbox_client._breaker import DEFAULT_BREAKER_POLICY, BreakerPolicy, CircuitBreaker, Permit
from sandbox_client._common import (
    DEFAULT_TIMEOUT,
    ChannelConfig,
    TLSConfig,
    auth_metadata,
    call_timeout,
    check_exercise,
    check_policy,
    check_timeout,
    new_idempotency_key,
)
from sandbox_client._convert import (
    build_request,
    build_session_request,
    result_from_proto,
    runtime_from_proto,
    session_from_proto,
    snapshot_from_proto,
    usage_report_from_proto,
)
from sandbox_client._errors import CircuitOpenError, SandboxError, from_aio_rpc_error, stream_interrupted_error
from sandbox_client._models import (
    DisplayData,
    ExecutionResult,
    Limits,
    Network,
    OutputChunk,
    Runtime,
    SessionInfo,
    SnapshotInfo,
    UsageReport,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandbox_client._retry import DEFAULT_RETRY_POLICY, Attempts, Retrying, RetryPolicy
from sandbox_client._stream import StreamAssembler
from sandbox_client._tracing import Metadata, trace_injector

_Response = TypeVar("_Response", bound=Message)


class AsyncSandboxClient:
    """An asyncio client for the sandbox server; same arguments and methods as ``SandboxClient``.

        async with AsyncSandboxClient("127.0.0.1:50051", api_key="...") as sbx:
            result = await sbx.execute("print(6*7)")
            async with sbx.session() as s:        # one sandbox kept across calls (see ``session``)
                await s.run("x = 6 * 7")

    It may be constructed anywhere; its one channel is opened on first use, inside the running event loop
    (a ``grpc.aio`` channel belongs to the loop it was created in), and every later use, by any number of
    tasks, must be in that same loop.

    Every method raises a ``SandboxError`` subclass when the call fails (see ``sandbox_client._errors``).

    Raises:
        ValueError, TypeError: an argument is invalid (see ``SandboxClient``).
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TLSConfig | None = None,
        options: Sequence[tuple[str, Any]] = (),
        retry: RetryPolicy | None = DEFAULT_RETRY_POLICY,
        breaker: BreakerPolicy | None = DEFAULT_BREAKER_POLICY,
        exercise: bool = False,
    ) -> None:
        self._channel_config = ChannelConfig.build(target, credentials, tls, options)
        self._timeout = check_timeout(timeout)
        self._metadata = auth_metadata(api_key)
        self._retry = check_policy(retry, RetryPolicy, "retry")
        self._breaker = CircuitBreaker(check_policy(breaker, BreakerPolicy, "breaker"), target=target)
        self._exercise = check_exercise(exercise)
        self._trace = trace_injector()
        self._random = random.Random()  # noqa: S311 (backoff jitter, not security)
        self._channel: grpc.aio.Channel | None = None
        self._stub: sandbox_pb2_grpc.SandboxStub | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncSandboxClient:
        self._get_stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def exercise(self) -> bool:
        """Whether this client marks its executions and sessions as exercises (see ``SandboxClient``)."""
        return self._exercise

    async def aclose(self) -> None:
        """Close the channel, cancelling calls in flight. Idempotent."""
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _get_stub(self) -> sandbox_pb2_grpc.SandboxStub:
        if self._closed:
            raise RuntimeError("the AsyncSandboxClient is closed")
        if self._stub is None:
            self._channel = self._channel_config.open_aio()
            self._stub = sandbox_pb2_grpc.SandboxStub(self._channel)
        return self._stub

    async def execute(
        self,
        code: str,
        *,
        language: str = "python",
        stdin: str | bytes = b"",
        files: Mapping[str, bytes | str] | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        network: Network | None = None,
        session_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline: the server sees it too)
    ) -> ExecutionResult:
        """Run ``code`` in a fresh sandbox and return how it ended (see ``SandboxClient.execute``: the same
        retries, idempotency key and deadline).

        Raises:
            SandboxError: the call failed.
        """
        request = build_request(
            code,
            language=language,
            stdin=stdin,
            files=files,
            env=env,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key or new_idempotency_key(),
            exercise=self._exercise,
            network=network,
        )
        stub = self._get_stub()
        response: sandbox_pb2.ExecuteResult = await self._unary(stub.Execute, request, timeout)
        return result_from_proto(response)

    def execute_stream(
        self,
        code: str,
        *,
        language: str = "python",
        stdin: str | bytes = b"",
        files: Mapping[str, bytes | str] | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        network: Network | None = None,
        session_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk | DisplayData | ExecutionResult]:
        """An async iterator of ``OutputChunk`` (and, for Python in a session, ``DisplayData``) items then, last,
        the ``ExecutionResult`` (see ``SandboxClient.execute_stream``: the same retries before the first item, and
        ``StreamInterruptedError`` after it). A plain method: ``async for item in sbx.execute_stream(...)``.

        Raises:
            SandboxError: while iterating, when the call fails (possibly after some chunks).
        """
        request = build_request(
            code,
            language=language,
            stdin=stdin,
            files=files,
            env=env,
            limits=limits,
            session_id=session_id,
            idempotency_key=idempotency_key or new_idempotency_key(),
            exercise=self._exercise,
            network=network,
        )
        return self._stream(request, call_timeout(timeout, self._timeout), self._call_metadata())

    async def record_usage(
        self,
        session_id: str,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        idempotency_key: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> UsageReport:
        """Report an agent session's LLM token usage, so its whole cost is known and budgeted (see
        ``SandboxClient.record_usage``: recorded once, whatever the retries).

        Raises:
            SandboxError: the call failed (InvalidRequestError for a model the tenant's price table lacks).
        """
        request = sandbox_pb2.RecordUsageRequest(
            session_id=session_id, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
            idempotency_key=idempotency_key or new_idempotency_key())
        stub = self._get_stub()
        response: sandbox_pb2.RecordUsageResponse = await self._unary(stub.RecordUsage, request, timeout)
        return usage_report_from_proto(response)

    async def runtimes(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline: the server sees it too)
    ) -> tuple[Runtime, ...]:
        """The languages the server can run.

        Raises:
            SandboxError: the call failed.
        """
        stub = self._get_stub()
        response: sandbox_pb2.ListRuntimesResponse = await self._unary(
            stub.ListRuntimes, sandbox_pb2.ListRuntimesRequest(), timeout)
        return tuple(runtime_from_proto(runtime) for runtime in response.runtimes)

    # -- sessions (the twins of SandboxClient's) ---------------------------------------------------------------

    def session(
        self,
        language: str = "python",
        *,
        languages: Sequence[str] | None = None,
        limits: Limits | None = None,
        network: Network | None = None,
        idle_timeout_s: int | None = None,
        max_lifetime_s: int | None = None,
        cpu_total_s: float | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        labels: Mapping[str, str] | None = None,
        snapshot_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> AsyncSessionContext:
        """Start a session (see ``SandboxClient.session``: the same arguments, retries and errors). Either form:

            async with sbx.session() as s:    # closed on leaving the block
                ...
            s = await sbx.session()           # closed by ``await s.aclose()`` (or ``async with s:``)

        A plain method: nothing is sent until the result is awaited or entered, once.

        Raises:
            TypeError, ValueError: an argument is invalid (at once, before anything is sent).
            SandboxError: when awaited or entered, the call failed.
        """
        request = build_session_request(
            languages=languages,
            limits=limits,
            idle_timeout_s=idle_timeout_s,
            max_lifetime_s=max_lifetime_s,
            cpu_total_s=cpu_total_s,
            env=env,
            files=files,
            labels=labels,
            snapshot_id=snapshot_id,
            idempotency_key=idempotency_key or new_idempotency_key(),
            exercise=self._exercise,
            network=network,
        )
        return AsyncSessionContext(self._create_session(request, language, timeout))

    async def _create_session(
        self,
        request: sandbox_pb2.CreateSessionRequest,
        language: str,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncSession:
        stub = self._get_stub()
        response: sandbox_pb2.Session = await self._unary(stub.CreateSession, request, timeout)
        return AsyncSession(self, session_from_proto(response), language)

    async def attach_session(
        self,
        session_id: str,
        language: str = "python",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncSession:
        """An ``AsyncSession`` for a live session of the caller's tenant (see ``SandboxClient.attach_session``).

        Raises:
            SessionNotFoundError: it is closed, or no session of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        return AsyncSession(self, await self.get_session(session_id, timeout=timeout), language)

    async def get_session(
        self,
        session_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo:
        """A live session of the caller's tenant, as it stands now (see ``SandboxClient.get_session``).

        Raises:
            SessionNotFoundError: it is closed (``close_reason`` says why), or no session of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        stub = self._get_stub()
        response: sandbox_pb2.Session = await self._unary(
            stub.GetSession, sandbox_pb2.GetSessionRequest(session_id=session_id), timeout)
        return session_from_proto(response)

    async def list_sessions(
        self,
        labels: Mapping[str, str] | None = None,
        page_size: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (each page's gRPC deadline)
    ) -> AsyncIterator[SessionInfo]:
        """The caller's tenant's live sessions, oldest first, fetched a page at a time as the iteration goes (see
        ``SandboxClient.list_sessions``). An async generator: ``async for info in sbx.list_sessions():``.

        Raises:
            SandboxError: while iterating, when a page's call fails.
        """
        request = sandbox_pb2.ListSessionsRequest(page_size=page_size, labels=dict(labels or {}))
        while True:
            response: sandbox_pb2.ListSessionsResponse = await self._unary(
                self._get_stub().ListSessions, request, timeout)
            for message in response.sessions:
                yield session_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def close_session(
        self,
        session_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo:
        """Close a session now and return its final state (see ``SandboxClient.close_session``).

        Raises:
            SessionNotFoundError: it was closed already, or no session of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        stub = self._get_stub()
        response: sandbox_pb2.Session = await self._unary(
            stub.CloseSession, sandbox_pb2.CloseSessionRequest(session_id=session_id), timeout)
        return session_from_proto(response)

    async def list_snapshots(
        self,
        page_size: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (each page's gRPC deadline)
    ) -> AsyncIterator[SnapshotInfo]:
        """The caller's tenant's snapshots, newest first, fetched a page at a time as the iteration goes (see
        ``SandboxClient.list_snapshots``). An async generator: ``async for snap in sbx.list_snapshots():``.

        Raises:
            SandboxError: while iterating, when a page's call fails.
        """
        request = sandbox_pb2.ListSnapshotsRequest(page_size=page_size)
        while True:
            response: sandbox_pb2.ListSnapshotsResponse = await self._unary(
                self._get_stub().ListSnapshots, request, timeout)
            for message in response.snapshots:
                yield snapshot_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def delete_snapshot(
        self,
        snapshot_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> None:
        """Delete one of the caller's tenant's snapshots (see ``SandboxClient.delete_snapshot``).

        Raises:
            NotFoundError: no snapshot of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        stub = self._get_stub()
        await self._unary(stub.DeleteSnapshot, sandbox_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout)

    # -- the call loop (the twin of SandboxClient's) -----------------------------------------------------------

    def _call_metadata(self) -> Metadata:
        return self._metadata if self._trace is None else self._metadata + self._trace()

    def _admit(self, attempts: Attempts, last: tuple[SandboxError, grpc.aio.AioRpcError] | None) -> Permit:
        """Leave from the breaker for the next attempt. Raises CircuitOpenError, or, when the breaker opened
        during this call's retries, the call's last error (more telling than "the circuit is open"); raises
        RuntimeError when the client was closed meanwhile."""
        self._get_stub()
        try:
            return self._breaker.admit(attempts.remaining())
        except CircuitOpenError:
            if last is None:
                raise
            error, cause = last
            raise error from cause  # the last attempt's own error, not "the circuit is open"

    async def _unary(
        self,
        rpc: Callable[..., Awaitable[_Response]],
        request: Message,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline of the whole call)
        *,
        retrying: Retrying = Retrying.SAFE,
    ) -> _Response:
        """Call ``rpc`` with retries (those ``retrying`` allows) and the breaker, under one deadline for all
        attempts."""
        attempts = Attempts(self._retry, call_timeout(timeout, self._timeout), self._random, retrying=retrying)
        metadata = self._call_metadata()
        last: tuple[SandboxError, grpc.aio.AioRpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            try:
                response = await rpc(request, timeout=attempts.start(), metadata=metadata)
            except grpc.aio.AioRpcError as rpc_error:
                error = from_aio_rpc_error(rpc_error)
                self._breaker.record(permit, error)
                wait = attempts.next_wait(error, self._breaker.blocked_for())
                if wait is None:
                    raise error from rpc_error
                last = (error, rpc_error)
                await asyncio.sleep(wait)
                continue
            except BaseException:
                self._breaker.release(permit)  # e.g. the task was cancelled: nothing learned about the server
                raise
            self._breaker.record(permit, None)
            return response

    async def _stream(
        self,
        request: sandbox_pb2.ExecuteRequest,
        timeout: float,  # noqa: ASYNC109 (the gRPC deadline: the server sees it too)
        metadata: Metadata,
    ) -> AsyncIterator[OutputChunk | DisplayData | ExecutionResult]:
        attempts = Attempts(self._retry, timeout, self._random)
        last: tuple[SandboxError, grpc.aio.AioRpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            assembler = StreamAssembler()
            failure: tuple[SandboxError, grpc.aio.AioRpcError] | None = None
            ended = False
            call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
            try:
                call = self._get_stub().ExecuteStream(request, timeout=attempts.start(), metadata=metadata)
                async for event in call:
                    item = assembler.feed(event)
                    if item is not None:
                        yield item
                ended = True
            except grpc.aio.AioRpcError as rpc_error:
                failure = (from_aio_rpc_error(rpc_error), rpc_error)
                ended = True
            finally:
                if call is not None:
                    call.cancel()  # a no-op once the call is done; stops the server when the caller stops early
                if ended:
                    self._breaker.record(permit, None if failure is None else failure[0])
                else:  # the caller stopped early, or the server broke the protocol
                    self._breaker.release(permit)
            if failure is None:
                # Only once the call has ended OK: an error status after the result event must not be lost.
                yield assembler.finish()
                return
            error, cause = failure
            if assembler.handed_out:  # the caller has seen output: a retry must not happen behind its back
                if error.code is grpc.StatusCode.UNAVAILABLE:
                    raise stream_interrupted_error(
                        error, assembler.chunks, request.idempotency_key, assembler.outputs) from cause
                raise error from cause
            wait = attempts.next_wait(error, self._breaker.blocked_for())
            if wait is None:
                raise error from cause
            last = failure
            await asyncio.sleep(wait)

    def _server_stream(
        self,
        rpc: Callable[..., grpc.aio.UnaryStreamCall[Any, _Response]],
        request: Message,
        timeout: float | None,
    ) -> AsyncGenerator[_Response, None]:
        """Call the server-streaming ``rpc`` with the breaker, under one deadline for all attempts (``timeout``
        is read now; the call starts at the first ``anext()``). A failure before the first response is retried as
        ``_unary``'s are; after it, the caller has had part of the answer, and gets the error."""
        attempts = Attempts(self._retry, call_timeout(timeout, self._timeout), self._random)
        return self._server_stream_attempts(rpc, request, attempts, self._call_metadata())

    async def _server_stream_attempts(
        self,
        rpc: Callable[..., grpc.aio.UnaryStreamCall[Any, _Response]],
        request: Message,
        attempts: Attempts,
        metadata: Metadata,
    ) -> AsyncGenerator[_Response, None]:
        last: tuple[SandboxError, grpc.aio.AioRpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            failure: tuple[SandboxError, grpc.aio.AioRpcError] | None = None
            received = ended = False
            call: grpc.aio.UnaryStreamCall[Any, _Response] | None = None
            try:
                call = rpc(request, timeout=attempts.start(), metadata=metadata)
                async for response in call:
                    received = True
                    yield response
                ended = True
            except grpc.aio.AioRpcError as rpc_error:
                failure = (from_aio_rpc_error(rpc_error), rpc_error)
                ended = True
            finally:
                if call is not None:
                    call.cancel()  # a no-op once the call is done; stops the server when the caller stops early
                if ended:
                    self._breaker.record(permit, None if failure is None else failure[0])
                else:  # the caller stopped early
                    self._breaker.release(permit)
            if failure is None:
                return
            error, cause = failure
            wait = None if received else attempts.next_wait(error, self._breaker.blocked_for())
            if wait is None:
                raise error from cause
            last = failure
            await asyncio.sleep(wait)
