"""The server's one error tree. Each class knows its gRPC status code and its google.rpc details.

    SandboxError                      INTERNAL (only for our own faults)
    ├── InvalidRequest                INVALID_ARGUMENT + BadRequest (field violations)
    ├── Unauthenticated               UNAUTHENTICATED
    ├── PermissionDenied              PERMISSION_DENIED + ErrorInfo
    ├── NotFound                      NOT_FOUND + ResourceInfo + ErrorInfo: an id the server does not know
    ├── ResourceExhausted             RESOURCE_EXHAUSTED + QuotaFailure + RetryInfo
    │   ├── QueueFull                 the admission queue is full
    │   └── HostPressure              the host is short of memory or tasks: new work is shed
    ├── BackendUnavailable            UNAVAILABLE + ErrorInfo + RetryInfo
    │   └── SandboxGone               the sandbox's process ended while it was being set up
    └── SandboxFailure                INTERNAL + ErrorInfo: the sandbox could not be set up or torn down

The errors interceptor turns any of these into a status with rich details; anything else that escapes a
handler becomes INTERNAL with a generic message (the cause is logged, never sent).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "sandbox.v1"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""  # a machine-readable rule name, when there is one


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


class SandboxError(Exception):
    """Base of every error the server reports on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        """google.rpc detail messages packed as Any; subclasses add theirs."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        return [_pack(info)]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=_rpc_code(self.code), message=self.message, details=self.details()
        )


class RelayedStatus(SandboxError):
    """The status another server answered a call relayed to it with (interceptors/forward.py). The forward link
    passes that status on unchanged; this names its code and reason to the telemetry link, which would
    otherwise take the abort for a fault of this server."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class InvalidRequest(SandboxError):
    """The request is malformed; nothing was run or changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, violations: list[FieldViolation]) -> None:
        if not violations:
            raise ValueError("InvalidRequest needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"invalid request: {summary}{more}")
        self.violations = tuple(violations)

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description, reason=v.reason)
                for v in self.violations
            ]
        )
        return [_pack(bad), *super().details()]


class Unauthenticated(SandboxError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(SandboxError):
    """The caller is known but its policy forbids this; ``metadata`` names the rule (and the limit)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"

    def __init__(self, message: str, *, reason: str = "PERMISSION_DENIED",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        return [_pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))]


class NotFound(SandboxError):
    """The request names something (an incident, an execution, a mitigation) the server does not know; nothing
    changed. ``resource_type`` and ``resource_name`` say what was looked for (also in ErrorInfo's metadata)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, message: str, *, resource_type: str, resource_name: str,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.resource_name = resource_name
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        resource = error_details_pb2.ResourceInfo(
            resource_type=self.resource_type, resource_name=self.resource_name, description=self.message
        )
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN,
            metadata={"resource_type": self.resource_type, "resource_name": self.resource_name, **self.metadata},
        )
        return [_pack(resource), _pack(info)]


class ResourceExhausted(SandboxError):
    """A quota, rate or capacity limit was hit; the client may retry after ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, *, violations: list[QuotaViolation], retry_after_s: float | None
    ) -> None:
        super().__init__(message)
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        out = [
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        ]
        if self.retry_after_s is not None:
            out.append(_pack(_retry_info(self.retry_after_s)))
        return [*out, *super().details()]


class QueueFull(ResourceExhausted):
    reason = "QUEUE_FULL"


class HostPressure(ResourceExhausted):
    """The host is short of memory or of tasks: new work is refused before anything starts (shedding, see
    execution/pressure.py); the violations name the signal (``host/memory``, ``host/tasks``)."""

    reason = "HOST_PRESSURE"


class BackendUnavailable(SandboxError):
    """The sandbox backend cannot run anything right now (e.g. its daemon is down)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        return [_pack(_retry_info(self.retry_after_s)), *super().details()]


class LimiterUnavailable(BackendUnavailable):
    """The rate limiter's or concurrency count's store (Redis) cannot be consulted: nothing is admitted."""

    reason = "RATE_LIMITER_UNAVAILABLE"


class SharedStateUnavailable(BackendUnavailable):
    """The state replicas share (Redis) cannot be consulted for this call: nothing runs."""

    reason = "SHARED_STATE_UNAVAILABLE"


class StoreUnavailable(BackendUnavailable):
    """The durable store (PostgreSQL) cannot be reached: nothing that needs it runs (fails closed)."""

    reason = "STORE_UNAVAILABLE"


class SandboxGone(BackendUnavailable):
    """The sandbox's process ended while the server was still setting the sandbox up (e.g. before its egress
    proxy was attached), so the program never started: a transient condition on our side, worth retrying."""

    reason = "SANDBOX_GONE"


class SandboxFailure(SandboxError):
    """The sandbox could not be set up or torn down: our fault, never the user's."""

    code = grpc.StatusCode.INTERNAL
    reason = "SANDBOX_FAILURE"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        return [_pack(info)]


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=whole, nanos=nanos))


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _rpc_code(code: grpc.StatusCode) -> int:
    """google.rpc.Code has the same numbers as grpc.StatusCode."""
    value: int = code.value[0]
    return value
