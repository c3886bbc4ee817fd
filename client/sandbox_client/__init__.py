"""Python client for the sandbox code-execution server: run untrusted code over gRPC.

    from sandbox_client import SandboxClient

    with SandboxClient("127.0.0.1:50051", api_key="...") as sbx:
        result = sbx.execute("print(6*7)", language="python")
        print(result.status, result.stdout)

``AsyncSandboxClient`` is the asyncio twin. Failed calls raise a ``SandboxError`` subclass; a program that
fails is a result with a ``Status``, not an exception.
"""

from __future__ import annotations

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._common import DEFAULT_TIMEOUT
from sandbox_client._errors import (
    AuthenticationError,
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
    UnavailableError,
)
from sandbox_client._models import (
    BudgetState,
    ExecutionResult,
    Limits,
    OutputChunk,
    OutputFile,
    ResourceUsage,
    Runtime,
    Status,
    UsageReport,
)
from sandbox_client._sync import SandboxClient

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncSandboxClient",
    "AuthenticationError",
    "BudgetState",
    "DeadlineExceededError",
    "ErrorDetails",
    "ExecutionResult",
    "FieldViolation",
    "InvalidRequestError",
    "Limits",
    "NotFoundError",
    "OutputChunk",
    "OutputFile",
    "PermissionDeniedError",
    "QuotaViolation",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "ResourceUsage",
    "Runtime",
    "SandboxClient",
    "SandboxError",
    "ServerError",
    "Status",
    "UnavailableError",
    "UsageReport",
]
