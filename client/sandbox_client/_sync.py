"""The blocking client."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

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
from sandbox_client._errors import CircuitOpenError, SandboxError, from_rpc_error, stream_interrupted_error
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
from sandbox_client._session import Session
from sandbox_client._stream import StreamAssembler
from sandbox_client._tracing import Metadata, trace_injector

_Response = TypeVar("_Response", bound=Message)


class SandboxClient:
    """A blocking client for the sandbox server. Thread-safe; one per process (per server) is plenty: it holds
    one channel (one HTTP/2 connection), which every call reuses.

        with SandboxClient("127.0.0.1:50051", api_key="...") as sbx:
            result = sbx.execute("print(6*7)")
            with sbx.session() as s:              # one sandbox kept across calls (see ``session``)
                s.run("x = 6 * 7")

    Args:
        target: the server's address, ``host:port`` (any gRPC target string).
        api_key: sent with every call as ``authorization: Bearer <key>``; None sends none.
        timeout: seconds; the deadline of every call that passes no ``timeout`` of its own. A call's deadline
            covers all its attempts and the waits between them.
        credentials: TLS as ``grpc.ChannelCredentials`` (``grpc.ssl_channel_credentials(...)``), for full control.
        tls: TLS or mTLS from certificates (``TLSConfig``); give ``credentials`` or ``tls``, not both. Neither:
            a plaintext channel.
        options: gRPC channel options, passed through (they win over the client's defaults).
        retry: how failures that are safe to retry are retried (``RetryPolicy``); None never retries.
        breaker: when to stop calling a failing server for a while (``BreakerPolicy``); None never stops.
        exercise: mark every execution and session this client starts as an exercise: an operator's own check
            (a red-team corpus, an evaluation suite) that runs and is audited as usual, but that incident response
            counts apart from real traffic, never mitigates (no quarantine, throttle or disabled language) and
            pages no one for. Needs an admin key, or a server in development mode: with a tenant key each such
            call raises PermissionDeniedError (reason ``EXERCISE_NOT_ALLOWED``).

    Every method raises a ``SandboxError`` subclass when the call fails (see ``sandbox_client._errors``).

    Raises:
        ValueError, TypeError: an argument is invalid (an empty ``api_key``, a non-positive ``timeout``,
            both ``credentials`` and ``tls``, ...).
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
        self._timeout = check_timeout(timeout)
        self._metadata = auth_metadata(api_key)
        self._retry = check_policy(retry, RetryPolicy, "retry")
        self._breaker = CircuitBreaker(check_policy(breaker, BreakerPolicy, "breaker"), target=target)
        self._exercise = check_exercise(exercise)
        self._trace = trace_injector()
        self._random = random.Random()  # noqa: S311 (backoff jitter, not security)
        self._channel = ChannelConfig.build(target, credentials, tls, options).open()
        self._stub = sandbox_pb2_grpc.SandboxStub(self._channel)
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

    @property
    def exercise(self) -> bool:
        """Whether this client marks its executions and sessions as exercises (the ``exercise`` argument)."""
        return self._exercise

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
        network: Network | None = None,
        session_id: str = "",
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` in a fresh sandbox and return how it ended.

        A program that fails (non-zero exit, a limit hit, ...) is a result with that ``status``, not an
        exception. ``files`` are placed in the working directory first (relative paths; str is sent as
        UTF-8). ``timeout`` (seconds) is this call's deadline, retries included; None uses the client's.

        ``network`` narrows the tenant's egress for this run (``Network.none()``, ``Network.allowlist(...)``); None
        takes the tenant's. A rule outside the tenant's allow-list is refused (PermissionDeniedError). Not with a
        session's id as ``session_id``: a session's network is set when it is created (``session(network=...)``).

        ``idempotency_key`` names this request to the server; "" makes a fresh one for this call. Every retry
        of the call sends the same key, so the server runs the code at most once (a retry gets the first
        attempt's result, the same ``execution_id``). Reuse a key only to repeat the very same request: the
        same key with another request is refused (InvalidRequestError, reason ``idempotency_key_reused``).

        Raises:
            TypeError, ValueError: an argument is invalid (``network`` not a Network, or with a session's id).
            SandboxError: the call failed (after the retries the client's ``retry`` policy allows); e.g.
                InvalidRequestError for a bad request, DeadlineExceededError when ``timeout`` passed,
                CircuitOpenError when the client's circuit breaker is open.
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
        self._check_open()
        response = self._unary(self._stub.Execute, request, timeout)
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
    ) -> Iterator[OutputChunk | DisplayData | ExecutionResult]:
        """Like ``execute``, but yields the output as it is produced: ``OutputChunk`` items (and, for Python in a
        session, ``DisplayData`` items: figures, ``display()``), then, last, the ``ExecutionResult`` (with the
        streamed stdout/stderr joined in it and the streamed rich outputs as its ``outputs``, equal to
        ``execute``'s). Skip the kinds of item you do not use: test for the ones you want with ``isinstance``.

        The call starts at the first ``next()``; ``timeout`` bounds the whole stream, retries included. Closing
        the iterator early (``break``, ``close()``) cancels the call. The trace context is taken when this
        method is called.

        Failures before the first item are retried as ``execute``'s are (with the same idempotency key). A
        connection cut after items were yielded is not: it raises ``StreamInterruptedError``, which carries the
        chunks (and rich outputs) received and the key with which ``execute`` fetches the whole result.

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
        limit is still recorded (the tokens were spent); later executions are then refused.

        ``idempotency_key`` ("" makes a fresh one) is sent on every retry of this call, so a report is recorded
        once; pass your own to make a report you repeat yourself count once too.

        Raises:
            SandboxError: the call failed (InvalidRequestError for a model the tenant's price table lacks).
        """
        self._check_open()
        request = sandbox_pb2.RecordUsageRequest(
            session_id=session_id, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
            idempotency_key=idempotency_key or new_idempotency_key())
        response = self._unary(self._stub.RecordUsage, request, timeout)
        return usage_report_from_proto(response)

    def runtimes(self, *, timeout: float | None = None) -> tuple[Runtime, ...]:
        """The languages the server can run.

        Raises:
            SandboxError: the call failed.
        """
        self._check_open()
        response = self._unary(self._stub.ListRuntimes, sandbox_pb2.ListRuntimesRequest(), timeout)
        return tuple(runtime_from_proto(runtime) for runtime in response.runtimes)

    # -- sessions --------------------------------------------------------------------------------------------------

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
    ) -> Session:
        """Start a session: one sandbox kept across calls, with a stateful Python kernel (variables, imports and
        figures live on between ``run`` calls) and a workspace of files. Returned READY; used as a context
        manager, it is closed on leaving the block.

            with sbx.session() as s:
                s.run("x = 41")
                s.run("x + 1").value   # "42"

        ``language`` is the default language of ``Session.run``. ``languages`` restricts what the session may run
        (None: every language the tenant allows). ``limits`` are the session's (see ``SessionInfo.limits``: memory,
        pids, workspace, file size and egress bytes for its life; wall, CPU and output the default of each call);
        unset ones take the tenant's session defaults. ``idle_timeout_s``, ``max_lifetime_s`` (int seconds) and
        ``cpu_total_s`` (CPU seconds for its whole life) take the tenant's defaults when None. ``env`` is every
        call's environment (a Python call cannot set its own); ``files`` are placed in the workspace first
        (relative paths; str is sent as UTF-8); ``labels`` are tags of your own (``list_sessions`` filters on
        them); ``snapshot_id`` starts it from a snapshot's files. ``network`` narrows the tenant's egress for the
        session's whole life (see ``execute``; None: the tenant's); its calls cannot change it.

        ``idempotency_key`` ("" makes a fresh one) is sent on every retry of this call, so a retried create
        returns the same session rather than a second one.

        Raises:
            TypeError, ValueError: an argument is invalid (before anything is sent).
            SandboxError: the call failed; e.g. PermissionDeniedError (the tenant's policy), ResourceExhaustedError
                (too many live sessions), NotFoundError (the snapshot).
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
        self._check_open()
        response = self._unary(self._stub.CreateSession, request, timeout)
        return Session(self, session_from_proto(response), language)

    def attach_session(self, session_id: str, language: str = "python", *, timeout: float | None = None) -> Session:
        """A ``Session`` for a live session of the caller's tenant, made elsewhere (another process, an earlier
        run of the agent), checked with ``get_session``. ``language`` is the default of its ``run``.

        Raises:
            SessionNotFoundError: it is closed, or no session of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        return Session(self, self.get_session(session_id, timeout=timeout), language)

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """A live session of the caller's tenant, as it stands now.

        Raises:
            SessionNotFoundError: it is closed (``close_reason`` says why), or no session of the tenant has this id.
            SandboxError: the call failed otherwise.
        """
        self._check_open()
        response = self._unary(self._stub.GetSession, sandbox_pb2.GetSessionRequest(session_id=session_id), timeout)
        return session_from_proto(response)

    def list_sessions(
        self, labels: Mapping[str, str] | None = None, page_size: int = 0, *, timeout: float | None = None
    ) -> Iterator[SessionInfo]:
        """The caller's tenant's live sessions, oldest first, carrying every one of ``labels`` (None: all).

        Fetched a page at a time as the iteration goes (``page_size`` sessions a call; 0: the server's default,
        50); ``timeout`` is each page's deadline. A session that closes meanwhile may be left out.

        Raises:
            SandboxError: while iterating, when a page's call fails.
        """
        self._check_open()
        request = sandbox_pb2.ListSessionsRequest(page_size=page_size, labels=dict(labels or {}))
        return self._pages(request, timeout)

    def _pages(self, request: sandbox_pb2.ListSessionsRequest, timeout: float | None) -> Iterator[SessionInfo]:
        while True:
            response = self._unary(self._stub.ListSessions, request, timeout)
            for message in response.sessions:
                yield session_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def close_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """Close a session now (a call running in it ends KILLED) and return its final state (CLOSED, with its
        usage). ``Session.close`` is the forgiving form: it returns None for a session already gone.

        Raises:
            SessionNotFoundError: it was closed already, or no session of the tenant has this id (also when a
                retry follows an attempt that closed it but whose answer was lost).
            SandboxError: the call failed otherwise.
        """
        self._check_open()
        request = sandbox_pb2.CloseSessionRequest(session_id=session_id)
        return session_from_proto(self._unary(self._stub.CloseSession, request, timeout))

    def list_snapshots(self, page_size: int = 0, *, timeout: float | None = None) -> Iterator[SnapshotInfo]:
        """The caller's tenant's snapshots, newest first, fetched a page at a time as the iteration goes
        (``page_size`` a call; 0: the server's default); ``timeout`` is each page's deadline.

        Raises:
            SandboxError: while iterating, when a page's call fails.
        """
        self._check_open()
        return self._snapshot_pages(sandbox_pb2.ListSnapshotsRequest(page_size=page_size), timeout)

    def _snapshot_pages(
        self, request: sandbox_pb2.ListSnapshotsRequest, timeout: float | None
    ) -> Iterator[SnapshotInfo]:
        while True:
            response = self._unary(self._stub.ListSnapshots, request, timeout)
            for message in response.snapshots:
                yield snapshot_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def delete_snapshot(self, snapshot_id: str, *, timeout: float | None = None) -> None:
        """Delete one of the caller's tenant's snapshots (sessions started from it keep their files).

        Raises:
            NotFoundError: no snapshot of the tenant has this id (also when a retry follows an attempt that
                deleted it but whose answer was lost).
            SandboxError: the call failed otherwise.
        """
        self._check_open()
        request = sandbox_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id)
        self._unary(self._stub.DeleteSnapshot, request, timeout)

    # -- the call loop ---------------------------------------------------------------------------------------------

    def _call_metadata(self) -> Metadata:
        return self._metadata if self._trace is None else self._metadata + self._trace()

    def _admit(self, attempts: Attempts, last: tuple[SandboxError, grpc.RpcError] | None) -> Permit:
        """Leave from the breaker for the next attempt. Raises CircuitOpenError, or, when the breaker opened
        during this call's retries, the call's last error (more telling than "the circuit is open"); raises
        RuntimeError when the client was closed meanwhile."""
        self._check_open()
        try:
            return self._breaker.admit(attempts.remaining())
        except CircuitOpenError:
            if last is None:
                raise
            error, cause = last
            raise error from cause  # the last attempt's own error, not "the circuit is open"

    def _unary(
        self,
        rpc: Callable[..., _Response],
        request: Message,
        timeout: float | None,
        *,
        retrying: Retrying = Retrying.SAFE,
    ) -> _Response:
        """Call ``rpc`` with retries (those ``retrying`` allows) and the breaker, under one deadline for all
        attempts."""
        attempts = Attempts(self._retry, call_timeout(timeout, self._timeout), self._random, retrying=retrying)
        metadata = self._call_metadata()
        last: tuple[SandboxError, grpc.RpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            try:
                response = rpc(request, timeout=attempts.start(), metadata=metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                self._breaker.record(permit, error)
                wait = attempts.next_wait(error, self._breaker.blocked_for())
                if wait is None:
                    raise error from rpc_error
                last = (error, rpc_error)
                time.sleep(wait)
                continue
            except BaseException:
                self._breaker.release(permit)  # e.g. KeyboardInterrupt: nothing learned about the server
                raise
            self._breaker.record(permit, None)
            return response

    def _stream(
        self, request: sandbox_pb2.ExecuteRequest, timeout: float, metadata: Metadata
    ) -> Iterator[OutputChunk | DisplayData | ExecutionResult]:
        attempts = Attempts(self._retry, timeout, self._random)
        last: tuple[SandboxError, grpc.RpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            assembler = StreamAssembler()
            failure: tuple[SandboxError, grpc.RpcError] | None = None
            ended = False
            call: grpc.Future | None = None
            try:
                call = self._stub.ExecuteStream(request, timeout=attempts.start(), metadata=metadata)
                for event in call:
                    item = assembler.feed(event)
                    if item is not None:
                        yield item
                ended = True
            except grpc.RpcError as rpc_error:
                failure = (from_rpc_error(rpc_error), rpc_error)
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
            time.sleep(wait)

    def _server_stream(
        self, rpc: Callable[..., grpc.Future], request: Message, timeout: float | None
    ) -> Generator[_Response, None, None]:
        """Call the server-streaming ``rpc`` with the breaker, under one deadline for all attempts (``timeout``
        is read now; the call starts at the first ``next()``). A failure before the first response is retried as
        ``_unary``'s are; after it, the caller has had part of the answer, and gets the error."""
        attempts = Attempts(self._retry, call_timeout(timeout, self._timeout), self._random)
        return self._server_stream_attempts(rpc, request, attempts, self._call_metadata())

    def _server_stream_attempts(
        self, rpc: Callable[..., grpc.Future], request: Message, attempts: Attempts, metadata: Metadata
    ) -> Generator[_Response, None, None]:
        last: tuple[SandboxError, grpc.RpcError] | None = None
        while True:
            permit = self._admit(attempts, last)
            failure: tuple[SandboxError, grpc.RpcError] | None = None
            received = ended = False
            call: grpc.Future | None = None
            try:
                call = rpc(request, timeout=attempts.start(), metadata=metadata)
                for response in call:
                    received = True
                    yield response
                ended = True
            except grpc.RpcError as rpc_error:
                failure = (from_rpc_error(rpc_error), rpc_error)
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
            time.sleep(wait)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the SandboxClient is closed")
