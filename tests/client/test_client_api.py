"""The public surface of sandbox_client, pinned: a change here is a change users see."""

from __future__ import annotations

import inspect
import subprocess
import sys

import sandbox_client
from sandbox_client import AsyncSandboxClient, SandboxClient

PUBLIC_NAMES = [
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

EXECUTE_PARAMETERS = [
    "code",
    "language",
    "stdin",
    "files",
    "env",
    "limits",
    "session_id",
    "idempotency_key",
    "timeout",
]


def test_all_is_pinned() -> None:
    assert sorted(sandbox_client.__all__) == sorted(PUBLIC_NAMES)
    for name in PUBLIC_NAMES:
        assert getattr(sandbox_client, name) is not None


def test_every_error_is_a_sandbox_error() -> None:
    errors = [getattr(sandbox_client, n) for n in PUBLIC_NAMES if n.endswith("Error")]
    assert len(errors) == 10
    assert all(issubclass(e, sandbox_client.SandboxError) for e in errors)


def test_both_clients_take_the_same_arguments() -> None:
    for method in ("__init__", "execute", "execute_stream", "runtimes"):
        sync = inspect.signature(getattr(SandboxClient, method))
        aio = inspect.signature(getattr(AsyncSandboxClient, method))
        assert list(sync.parameters) == list(aio.parameters), method
        assert [p.default for p in sync.parameters.values()] == [p.default for p in aio.parameters.values()]
    execute = inspect.signature(SandboxClient.execute)
    assert list(execute.parameters)[1:] == EXECUTE_PARAMETERS
    assert list(inspect.signature(SandboxClient.execute_stream).parameters)[1:] == EXECUTE_PARAMETERS
    assert inspect.signature(SandboxClient).parameters["timeout"].default == sandbox_client.DEFAULT_TIMEOUT == 60


def test_import_does_no_work() -> None:
    """Importing the package starts no thread (no channel, no client is made at import time)."""
    code = "import threading, sandbox_client; assert threading.active_count() == 1, threading.enumerate()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
