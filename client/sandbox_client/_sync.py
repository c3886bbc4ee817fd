"""The blocking client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from sandbox_client._common import DEFAULT_TIMEOUT, auth_metadata, call_timeout, check_timeout, open_channel
from sandbox_client._convert import build_request, result_from_proto, runtime_from_proto, usage_report_from_proto
from sandbox_client._errors import from_rpc_error
from sandbox_client._models import ExecutionResult, Limits, OutputChunk, Runtime, UsageReport
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandbox_client._stream import StreamAssembler


class SandboxClient:
    """A blocking client for the sandbox server. Thread-safe; one per process is plenty.

        with SandboxClient("127.0.0.1:50051", api_key="...") as sbx:
            result = sbx.execute("print(6*7)")

    Args:
        target: the server's address, ``host:port`` (any gRPC target string).
        api_key: sent with every call as ``authorization: Bearer <key>``; None sends none.
        timeout: seconds; the deadline of every call that passes no ``timeout`` of its own.
        credentials: TLS (``grpc.ssl_channel_credentials(...)``); None makes a plaintext channel.
        options: gRPC channel options, passed through.

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
        self._timeout = check_timeout(timeout)
        self._metadata = auth_metadata(api_key)
        self._channel = open_channel(target, credentials, options)
        self._stub = sandbox_pb2_grpc.SandboxStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls in flight. Idempotent."""
        self._closed = True
        self._channel.close()

    def execute(
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
    ) -> ExecutionResult:
        """Run ``code`` in a fresh sandbox and return how it ended.

        A program that fails (non-zero exit, a limit hit, ...) is a result with that ``status``, not an
        exception. ``files`` are placed in the working directory first (relative paths; str is sent as
        UTF-8). ``timeout`` (seconds) is this call's deadline; None uses the client's.

        Raises:
            SandboxError: the call failed; e.g. InvalidRequestError for a bad request, DeadlineExceededError
                when ``timeout`` passed.
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
        self._check_open()
        try:
            response: sandbox_pb2.ExecuteResult = self._stub.Execute(
                request, timeout=call_timeout(timeout, self._timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
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
    ) -> Iterator[OutputChunk | ExecutionResult]:
        """Like ``execute``, but yields the output as it is produced: ``OutputChunk`` items, then, last, the
        ``ExecutionResult`` (with the streamed stdout/stderr joined in it, equal to ``execute``'s).

        The call starts at the first ``next()``; ``timeout`` bounds the whole stream. Closing the iterator
        early (``break``, ``close()``) cancels the call.

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

    def _stream(self, request: sandbox_pb2.ExecuteRequest, timeout: float) -> Iterator[OutputChunk | ExecutionResult]:
        self._check_open()
        call = self._stub.ExecuteStream(request, timeout=timeout, metadata=self._metadata)
        assembler = StreamAssembler()
        try:
            for event in call:
                chunk = assembler.feed(event)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        finally:
            call.cancel()  # a no-op once the call is done; stops the server when the caller stops early
        # Only once the call has ended OK: an error status after the result event must not be lost.
        yield assembler.finish()

    def record_usage(
        self,
        session_id: str,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> UsageReport:
        """Report an agent session's LLM token usage (priced by the tenant's policy), so the session's whole
        cost (executions + model calls) is known and its budgets hold. A report that takes a budget past its
        limit is still recorded (the tokens were spent); later executions are then refused. Send the same
        ``idempotency_key`` when retrying a report: it is recorded once.

        Raises:
            SandboxError: the call failed (InvalidRequestError for a model the tenant's price table lacks).
        """
        self._check_open()
        request = sandbox_pb2.RecordUsageRequest(
            session_id=session_id, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
            idempotency_key=idempotency_key)
        try:
            response: sandbox_pb2.RecordUsageResponse = self._stub.RecordUsage(
                request, timeout=call_timeout(timeout, self._timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return usage_report_from_proto(response)

    def runtimes(self, *, timeout: float | None = None) -> tuple[Runtime, ...]:
        """The languages the server can run.

        Raises:
            SandboxError: the call failed.
        """
        self._check_open()
        try:
            response: sandbox_pb2.ListRuntimesResponse = self._stub.ListRuntimes(
                sandbox_pb2.ListRuntimesRequest(),
                timeout=call_timeout(timeout, self._timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return tuple(runtime_from_proto(runtime) for runtime in response.runtimes)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the SandboxClient is closed")
