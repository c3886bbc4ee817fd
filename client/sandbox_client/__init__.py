"""Python client for the sandbox code-execution server: run untrusted code over gRPC.

    from sandbox_client import SandboxClient

    with SandboxClient("127.0.0.1:50051", api_key="...") as sbx:
        result = sbx.execute("print(6*7)", language="python")
        print(result.status, result.stdout)

``AsyncSandboxClient`` is the asyncio twin. ``sbx.session()`` starts a session: one sandbox kept across calls,
with a stateful Python kernel, a workspace of files and snapshots. Failed calls raise a ``SandboxError``
subclass; a program that fails is a result with a ``Status``, not an exception. Both clients retry what is safe to retry
(``RetryPolicy``), send an idempotency key with every execution so that nothing runs twice, stop calling a
failing server for a while (``BreakerPolicy``), carry the caller's OpenTelemetry trace context when there is
one, and speak TLS or mTLS (``TLSConfig``).
"""

from __future__ import annotations

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._aio_session import AsyncSession, AsyncSessionContext, AsyncSessionFiles
from sandbox_client._breaker import DEFAULT_BREAKER_POLICY, BreakerPolicy
from sandbox_client._common import DEFAULT_TIMEOUT, TLSConfig
from sandbox_client._errors import (
    AuthenticationError,
    CircuitOpenError,
    DeadlineExceededError,
    ErrorDetails,
    FieldViolation,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaViolation,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    ServerError,
    SessionBusyError,
    SessionNotFoundError,
    StreamInterruptedError,
    UnavailableError,
)
from sandbox_client._models import (
    BudgetState,
    CodeError,
    DisplayData,
    EgressRule,
    ExecutionResult,
    FileInfo,
    Limits,
    Network,
    OutputChunk,
    OutputFile,
    ResourceUsage,
    Runtime,
    SessionInfo,
    SessionState,
    SessionUsage,
    SnapshotInfo,
    Status,
    UsageReport,
)
from sandbox_client._retry import DEFAULT_RETRY_POLICY, RetryPolicy
from sandbox_client._session import Session, SessionFiles
from sandbox_client._sync import SandboxClient

__all__ = [
    "DEFAULT_BREAKER_POLICY",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_TIMEOUT",
    "AsyncSandboxClient",
    "AsyncSession",
    "AsyncSessionContext",
    "AsyncSessionFiles",
    "AuthenticationError",
    "BreakerPolicy",
    "BudgetState",
    "CircuitOpenError",
    "CodeError",
    "DeadlineExceededError",
    "DisplayData",
    "EgressRule",
    "ErrorDetails",
    "ExecutionResult",
    "FieldViolation",
    "FileInfo",
    "InvalidRequestError",
    "Limits",
    "Network",
    "NotFoundError",
    "OutputChunk",
    "OutputFile",
    "PermissionDeniedError",
    "QuotaViolation",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "ResourceUsage",
    "RetryPolicy",
    "Runtime",
    "SandboxClient",
    "SandboxError",
    "ServerError",
    "Session",
    "SessionBusyError",
    "SessionFiles",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionState",
    "SessionUsage",
    "SnapshotInfo",
    "Status",
    "StreamInterruptedError",
    "TLSConfig",
    "UnavailableError",
    "UsageReport",
]
