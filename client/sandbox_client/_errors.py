"""Typed exceptions for every failed call, carrying the server's google.rpc details.

    SandboxError               every failed call: .code, .message, .reason, .details
    ├── InvalidRequestError    INVALID_ARGUMENT: .field_violations (BadRequest)
    ├── AuthenticationError    UNAUTHENTICATED
    ├── PermissionDeniedError  PERMISSION_DENIED
    ├── NotFoundError          NOT_FOUND: .resource_type, .resource_name (ResourceInfo, ErrorInfo metadata)
    │   └── SessionNotFoundError   the session named is not live (never was, or closed): .session_id, .close_reason
    ├── ResourceExhaustedError RESOURCE_EXHAUSTED: .quota_violations (QuotaFailure), .retry_after (RetryInfo)
    │   └── SessionBusyError       a call runs in the session and as many as may wait already wait (SESSION_BUSY)
    ├── UnavailableError       UNAVAILABLE: .retry_after (RetryInfo)
    │   ├── CircuitOpenError   the client's breaker is open (failures in a row): not called; .retry_after
    │   └── StreamInterruptedError  a stream cut after it yielded output: .chunks, .outputs, .idempotency_key
    ├── DeadlineExceededError  DEADLINE_EXCEEDED: the call's deadline passed
    ├── RequestCancelledError  CANCELLED
    └── ServerError            INTERNAL, UNKNOWN and every other code; also a server breaking the protocol

A gRPC error becomes one of these in one place, ``error_for_status``, through the ``_ERROR_CLASSES`` table
(a test fails when a status code is missing from it), refined by the details for the two session errors: a
NOT_FOUND whose resource type is "session", a RESOURCE_EXHAUSTED whose reason is SESSION_BUSY. The two
UNAVAILABLE subclasses never come from a status alone: the client raises them itself, so code that handles "the
server is down" handles them too. An execution that ran and failed (non-zero exit, timeout, a Python exception
in a session, ...) is not an exception: it is an ``ExecutionResult`` with its ``status``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sandbox_client._models import DisplayData, OutputChunk

logger = logging.getLogger(__name__)

CLIENT_DOMAIN = "sandbox_client"
"""ErrorInfo.domain of the errors the client raises itself (the server's are "sandbox.v1")."""

# The trailing-metadata key that carries a serialized google.rpc.Status (grpc_status keeps its own private).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    """Path of the field, e.g. "limits.memory_bytes" or "files[0].path"."""
    description: str
    reason: str = ""
    """The rule that refused it, when the server names one (e.g. "denied_import", "prompt_injection")."""


@dataclass(frozen=True)
class QuotaViolation:
    """One quota, rate or capacity limit that was hit (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details of a failed call, decoded. Absent details are None or empty."""

    reason: str | None = None
    """ErrorInfo.reason: a stable machine-readable cause, e.g. "QUEUE_FULL"."""
    domain: str | None = None
    """ErrorInfo.domain, e.g. "sandbox.v1"."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """ErrorInfo.metadata."""
    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    retry_after: float | None = None
    """RetryInfo.retry_delay in seconds: the server's advice on when to try again."""
    resource_type: str | None = None
    """ResourceInfo.resource_type: what a NOT_FOUND call looked for ("session", "file", "snapshot", ...)."""
    resource_name: str | None = None
    """ResourceInfo.resource_name: the id or path that was looked for."""


class SandboxError(Exception):
    """A call failed. ``code`` is the gRPC status code; ``details`` the decoded google.rpc details."""

    def __init__(self, message: str, *, code: grpc.StatusCode, details: ErrorDetails | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details if details is not None else ErrorDetails()

    @property
    def reason(self) -> str | None:
        """ErrorInfo.reason, or None when the server sent none."""
        return self.details.reason

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: the default (cls, args) recipe cannot rebuild these; keep them picklable.
        return (_rebuild, (type(self), self.message, self.code, self.details))


def _rebuild(cls: type[SandboxError], message: str, code: grpc.StatusCode, details: ErrorDetails) -> SandboxError:
    return cls(message, code=code, details=details)


class InvalidRequestError(SandboxError):
    """The request was malformed or broke a rule; nothing was run or changed. Fix it, do not retry."""

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return self.details.field_violations


class AuthenticationError(SandboxError):
    """The API key is missing, unknown or revoked."""


class PermissionDeniedError(SandboxError):
    """The caller is known but not allowed to do this (e.g. a language or limit outside its policy)."""


class NotFoundError(SandboxError):
    """The call named something the server does not know (an incident, an execution, a mitigation): an unknown
    id, or an execution that is not running. Nothing changed."""

    @property
    def resource_type(self) -> str | None:
        """What was looked for ("incident", "execution", "session", "file", "snapshot", ...), from ResourceInfo
        or else ErrorInfo's metadata; None when the server did not say."""
        return self.details.resource_type or self.details.metadata.get("resource_type")

    @property
    def resource_name(self) -> str | None:
        """The id (or workspace path) that was looked for; None when the server did not say."""
        return self.details.resource_name or self.details.metadata.get("resource_name")


class SessionNotFoundError(NotFoundError):
    """The session named is not a live session of the caller's tenant: it was closed (by ``close``, its idle
    timeout, its lifetime, its CPU total, a budget, a failure, the server's restart), or it never existed, or it is
    another tenant's (the same answer, so that ids leak nothing). Nothing ran; a new session starts afresh
    (``session(snapshot_id=...)`` from a snapshot, to get its files back).

    ``close_reason`` says why, when the server tells the session's own tenant ("closed", "idle_timeout",
    "max_lifetime", "cpu_limit", "budget_exceeded", "sandbox_failed", "server_shutdown", ...); "" when unknown.
    """

    @property
    def session_id(self) -> str:
        """The session's id, as the server reports it ("" when it did not say)."""
        return self.resource_name or ""

    @property
    def close_reason(self) -> str:
        """Why the session closed; "" when the server did not say (an unknown id says nothing)."""
        return self.details.metadata.get("close_reason", "")


class ResourceExhaustedError(SandboxError):
    """A quota, rate, budget or capacity limit was hit; worth retrying after ``retry_after`` seconds."""

    @property
    def quota_violations(self) -> tuple[QuotaViolation, ...]:
        return self.details.quota_violations

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying, from RetryInfo; None when the server gave no advice."""
        return self.details.retry_after


class SessionBusyError(ResourceExhaustedError):
    """A call came while one runs in the session and as many calls as may wait already wait (reason
    ``SESSION_BUSY``). The server sends RetryInfo, so the client's retry policy retries it by default; it is raised
    once the retries are spent. Calls to one session run one at a time: wait for yours, or use another session."""


class UnavailableError(SandboxError):
    """The server or its sandbox backend cannot serve right now (or could not be reached)."""

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying, from RetryInfo; None when the server gave no advice."""
        return self.details.retry_after


class CircuitOpenError(UnavailableError):
    """The client's circuit breaker is open: recent calls to this server failed in a row (UNAVAILABLE,
    DEADLINE_EXCEEDED, INTERNAL, UNKNOWN), so this call failed at once, without reaching the server.

    ``retry_after`` is the number of seconds until the breaker lets one probe call through; while a probe is
    under way, the reset timeout (calls go through sooner if the probe succeeds). ``reason`` is
    ``"CIRCUIT_OPEN"``.
    """


class StreamInterruptedError(UnavailableError):
    """``execute_stream`` lost its connection after it had yielded output: the stream was cut, and it is not
    restarted behind the caller's back (the caller has already seen part of the output).

    ``chunks`` is every chunk received before the cut, in order (``stdout_bytes``/``stderr_bytes`` join them);
    ``outputs`` every rich output (``DisplayData``) of a session's call received before it.
    The execution itself was not cancelled by the cut: the server runs it to the end and keeps its result, so
    ``execute(...)`` with the same arguments and ``idempotency_key=error.idempotency_key`` returns that result
    (the same ``execution_id``, the whole output) without running the code again, within the server's dedupe
    window (600 s by default).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        details: ErrorDetails | None = None,
        chunks: tuple[OutputChunk, ...] = (),
        idempotency_key: str = "",
        outputs: tuple[DisplayData, ...] = (),
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.chunks = chunks
        self.idempotency_key = idempotency_key
        self.outputs = outputs

    @property
    def stdout_bytes(self) -> bytes:
        """The stdout received before the cut."""
        return b"".join(chunk.data for chunk in self.chunks if chunk.stream == "stdout")

    @property
    def stderr_bytes(self) -> bytes:
        """The stderr received before the cut."""
        return b"".join(chunk.data for chunk in self.chunks if chunk.stream == "stderr")

    @property
    def stdout(self) -> str:
        """``stdout_bytes`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        """``stderr_bytes`` decoded as UTF-8 (invalid bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_interrupted,
                (self.message, self.code, self.details, self.chunks, self.idempotency_key, self.outputs))


def _rebuild_interrupted(
    message: str,
    code: grpc.StatusCode,
    details: ErrorDetails,
    chunks: tuple[OutputChunk, ...],
    key: str,
    outputs: tuple[DisplayData, ...] = (),
) -> StreamInterruptedError:
    return StreamInterruptedError(message, code=code, details=details, chunks=chunks, idempotency_key=key,
                                  outputs=outputs)


def circuit_open_error(
    target: str, failures: int, last_failure: str, retry_after: float, *, probing: bool = False
) -> CircuitOpenError:
    """The error of a call the open breaker refused. ``retry_after``: seconds until a probe may go;
    ``probing``: a probe is under way (its outcome decides)."""
    when = "a probe call is under way" if probing else f"the next call in {retry_after:.1f} s probes it"
    return CircuitOpenError(
        f"not calling {target}: the circuit breaker is open after {failures} failures in a row"
        f" (last: {last_failure}); {when}",
        code=grpc.StatusCode.UNAVAILABLE,
        details=ErrorDetails(reason="CIRCUIT_OPEN", domain=CLIENT_DOMAIN, retry_after=max(0.0, retry_after)),
    )


def stream_interrupted_error(
    cause: SandboxError,
    chunks: tuple[OutputChunk, ...],
    idempotency_key: str,
    outputs: tuple[DisplayData, ...] = (),
) -> StreamInterruptedError:
    """The error of a stream cut after it yielded ``chunks`` and ``outputs``; ``cause`` is what the cut looked
    like."""
    rich = f" and {len(outputs)} rich output(s)" if outputs else ""
    return StreamInterruptedError(
        f"the stream was cut after {len(chunks)} output chunk(s){rich} ({cause.message}); the server completes the"
        f" execution: execute() with the same arguments and idempotency_key={idempotency_key!r} returns its"
        " result without running the code again",
        code=cause.code,
        details=cause.details,
        chunks=chunks,
        idempotency_key=idempotency_key,
        outputs=outputs,
    )


class DeadlineExceededError(SandboxError):
    """The call's deadline (its ``timeout``) passed before the server answered."""


class RequestCancelledError(SandboxError):
    """The call was cancelled before it completed."""


class ServerError(SandboxError):
    """The server failed (INTERNAL, UNKNOWN, ...), or answered in a way that breaks the protocol."""


_ERROR_CLASSES: Mapping[grpc.StatusCode, type[SandboxError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ServerError,
    grpc.StatusCode.FAILED_PRECONDITION: ServerError,
    grpc.StatusCode.ABORTED: ServerError,
    grpc.StatusCode.OUT_OF_RANGE: ServerError,
    grpc.StatusCode.UNIMPLEMENTED: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}


SESSION_RESOURCE = "session"
"""The resource type of a session in the server's NOT_FOUND details."""
FILE_RESOURCE = "file"
"""The resource type of a session's workspace path in the server's NOT_FOUND details."""
SESSION_BUSY = "SESSION_BUSY"
"""ErrorInfo.reason of a call refused because its session is running one and its queue is full."""


def error_for_status(code: grpc.StatusCode, message: str, rich_status: status_pb2.Status | None = None) -> SandboxError:
    """The typed exception for a failed call: the one place status codes (and, for the session errors, their
    details) become exception classes."""
    cls = _ERROR_CLASSES.get(code, ServerError)
    if rich_status is None:
        return cls(message, code=code)
    details = details_from_status(rich_status)
    return _refined(cls, details)(rich_status.message or message, code=code, details=details)


def _refined(cls: type[SandboxError], details: ErrorDetails) -> type[SandboxError]:
    """The subclass of ``cls`` the details call for: the session errors."""
    if cls is NotFoundError and SESSION_RESOURCE in (details.resource_type, details.metadata.get("resource_type")):
        return SessionNotFoundError
    if cls is ResourceExhaustedError and details.reason == SESSION_BUSY:
        return SessionBusyError
    return cls


def details_from_status(rich_status: status_pb2.Status) -> ErrorDetails:
    """Decode the google.rpc details we know; others are ignored. The first ErrorInfo/ResourceInfo/RetryInfo
    wins."""
    info: error_details_pb2.ErrorInfo | None = None
    resource: error_details_pb2.ResourceInfo | None = None
    retry_after: float | None = None
    field_violations: list[FieldViolation] = []
    quota_violations: list[QuotaViolation] = []
    for packed in rich_status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and info is None:
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            field_violations.extend(FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            packed.Unpack(quota)
            quota_violations.extend(QuotaViolation(v.subject, v.description) for v in quota.violations)
        elif packed.Is(error_details_pb2.ResourceInfo.DESCRIPTOR) and resource is None:
            resource = error_details_pb2.ResourceInfo()
            packed.Unpack(resource)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR) and retry_after is None:
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = max(0.0, retry.retry_delay.ToNanoseconds() / 1e9)
    return ErrorDetails(
        reason=info.reason if info is not None else None,
        domain=info.domain if info is not None else None,
        metadata=dict(info.metadata) if info is not None else {},
        field_violations=tuple(field_violations),
        quota_violations=tuple(quota_violations),
        retry_after=retry_after,
        resource_type=(resource.resource_type or None) if resource is not None else None,
        resource_name=(resource.resource_name or None) if resource is not None else None,
    )


def from_rpc_error(error: grpc.RpcError) -> SandboxError:
    """The typed exception for an error raised by a sync (``grpc.Channel``) call."""
    if not isinstance(error, grpc.Call):
        return ServerError(str(error), code=grpc.StatusCode.UNKNOWN)
    try:
        rich_status = rpc_status.from_call(error)
    except (ValueError, DecodeError):
        # Details that contradict the status line, or do not decode: keep the status line, drop the details.
        logger.debug("ignoring inconsistent grpc-status-details-bin", exc_info=True)
        rich_status = None
    return error_for_status(error.code(), error.details() or "", rich_status)


def from_aio_rpc_error(error: grpc.aio.AioRpcError) -> SandboxError:
    """The typed exception for an error raised by a ``grpc.aio`` call.

    grpc_status's aio helper wants a live ``aio.Call``; the raised ``AioRpcError`` carries the same
    trailing metadata, so the details are decoded from it here, with the same consistency check.
    """
    code = error.code()
    rich_status = _rich_status_from_trailers(code, error.trailing_metadata())
    return error_for_status(code, error.details() or "", rich_status)


def _rich_status_from_trailers(
    code: grpc.StatusCode, trailers: Iterable[tuple[str, str | bytes]] | None
) -> status_pb2.Status | None:
    for key, value in trailers or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            rich_status = status_pb2.Status.FromString(value)
        except DecodeError:
            logger.debug("ignoring undecodable grpc-status-details-bin", exc_info=True)
            return None
        if rich_status.code != code.value[0]:
            logger.debug("ignoring grpc-status-details-bin: code %s != %s", rich_status.code, code)
            return None
        return rich_status
    return None


def protocol_error(message: str) -> ServerError:
    """The error for a server answer that breaks the API's contract (e.g. a stream without a result)."""
    return ServerError(f"protocol error: {message}", code=grpc.StatusCode.UNKNOWN)
