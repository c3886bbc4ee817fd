"""The asyncio client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from sandbox_client._common import DEFAULT_TIMEOUT, auth_metadata, call_timeout, channel_options, check_timeout
from sandbox_client._convert import build_request, result_from_proto, runtime_from_proto, usage_report_from_proto
from sandbox_client._errors import from_aio_rpc_error
from sandbox_client._models import ExecutionResult, Limits, OutputChunk, Runtime, UsageReport
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandbox_client._stream import StreamAssembler


class AsyncSandboxClient:
    """An asyncio client for the sandbox server; same arguments and methods as ``SandboxClient``.

        async with AsyncSandboxClient("127.0.0.1:50051", api_key="...") as sbx:
            result = await sbx.execute("print(6*7)")

    It may be constructed anywhere; the channel is opened on first use, inside the running event loop
    (a ``grpc.aio`` channel belongs to the loop it was created in), and every later use must be in that
    same loop.

    Every method raises a ``SandboxError`` subclass when the call fails (see ``sandbox_client._errors``).
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._target = target
        self._credentials = credentials
        self._options = channel_options(options)
        self._timeout = check_timeout(timeout)
        self._metadata = auth_metadata(api_key)
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
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self._target, self._credentials, options=self._options)
            self._stub = sandbox_pb2_grpc.SandboxStub(self._channel)  # type: ignore[no-untyped-call]
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
        session_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline: the server sees it too)
    ) -> ExecutionResult:
        """Run ``code`` in a fresh sandbox and return how it ended (see ``SandboxClient.execute``).

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
            idempotency_key=idempotency_key,
        )
        stub = self._get_stub()
        try:
            response: sandbox_pb2.ExecuteResult = await stub.Execute(
                request, timeout=call_timeout(timeout, self._timeout), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_aio_rpc_error(error) from error
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
        session_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """An async iterator of ``OutputChunk`` items then, last, the ``ExecutionResult``
        (see ``SandboxClient.execute_stream``). A plain method: ``async for item in sbx.execute_stream(...)``.

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
            idempotency_key=idempotency_key,
        )
        return self._stream(request, call_timeout(timeout, self._timeout))

    async def _stream(
        self,
        request: sandbox_pb2.ExecuteRequest,
        timeout: float,  # noqa: ASYNC109 (the gRPC deadline: the server sees it too)
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        call = self._get_stub().ExecuteStream(request, timeout=timeout, metadata=self._metadata)
        assembler = StreamAssembler()
        try:
            async for event in call:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
        except grpc.aio.AioRpcError as error:
            raise from_aio_rpc_error(error) from error
        finally:
            call.cancel()  # a no-op once the call is done; stops the server when the caller stops early
        # Only once the call has ended OK: an error status after the result event must not be lost.
        yield assembler.finish()

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
        ``SandboxClient.record_usage``).

        Raises:
            SandboxError: the call failed (InvalidRequestError for a model the tenant's price table lacks).
        """
        request = sandbox_pb2.RecordUsageRequest(
            session_id=session_id, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
            idempotency_key=idempotency_key)
        stub = self._get_stub()
        try:
            response: sandbox_pb2.RecordUsageResponse = await stub.RecordUsage(
                request, timeout=call_timeout(timeout, self._timeout), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_aio_rpc_error(error) from error
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
        try:
            response: sandbox_pb2.ListRuntimesResponse = await stub.ListRuntimes(
                sandbox_pb2.ListRuntimesRequest(),
                timeout=call_timeout(timeout, self._timeout),
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise from_aio_rpc_error(error) from error
        return tuple(runtime_from_proto(runtime) for runtime in response.runtimes)
