"""The public surface of sandbox_client, pinned: a change here is a change users see."""

from __future__ import annotations

import inspect
import subprocess
import sys

import sandbox_client
from sandbox_client import AsyncSandboxClient, SandboxClient

PUBLIC_NAMES = [
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

CLIENT_PARAMETERS = ["target", "api_key", "timeout", "credentials", "tls", "options", "retry", "breaker", "exercise"]

RECORD_USAGE_PARAMETERS = ["session_id", "model", "input_tokens", "output_tokens", "idempotency_key", "timeout"]

SESSION_PARAMETERS = [
    "language",
    "languages",
    "limits",
    "network",
    "idle_timeout_s",
    "max_lifetime_s",
    "cpu_total_s",
    "env",
    "files",
    "labels",
    "snapshot_id",
    "idempotency_key",
    "timeout",
]

RUN_PARAMETERS = ["code", "language", "stdin", "files", "env", "limits", "idempotency_key", "timeout"]

CLIENT_METHODS = ["__init__", "execute", "execute_stream", "record_usage", "runtimes", "session", "attach_session",
                  "get_session", "list_sessions", "close_session", "list_snapshots", "delete_snapshot"]
SESSION_METHODS = ["run", "run_stream", "refresh", "snapshot", "close"]
FILES_METHODS = ["upload", "download", "iter_download", "download_to", "list", "delete"]

EXECUTE_PARAMETERS = [
    "code",
    "language",
    "stdin",
    "files",
    "env",
    "limits",
    "network",
    "session_id",
    "idempotency_key",
    "timeout",
]


def test_all_is_pinned() -> None:
    assert sorted(sandbox_client.__all__) == sorted(PUBLIC_NAMES)
    for name in PUBLIC_NAMES:
        assert getattr(sandbox_client, name) is not None


def test_every_error_is_a_sandbox_error() -> None:
    errors = [getattr(sandbox_client, n) for n in PUBLIC_NAMES if n.endswith("Error") and n != "CodeError"]
    assert len(errors) == 14
    assert all(issubclass(e, sandbox_client.SandboxError) for e in errors)
    assert not issubclass(sandbox_client.CodeError, Exception)  # a program's exception is a result, not an error
    # The session errors are the errors code already handles: "not found", "try again later".
    assert issubclass(sandbox_client.SessionNotFoundError, sandbox_client.NotFoundError)
    assert issubclass(sandbox_client.SessionBusyError, sandbox_client.ResourceExhaustedError)
    # Raised by the client itself, they are "the server is unavailable" to code that catches that.
    assert issubclass(sandbox_client.CircuitOpenError, sandbox_client.UnavailableError)
    assert issubclass(sandbox_client.StreamInterruptedError, sandbox_client.UnavailableError)


def _same_signatures(sync_class: type, aio_class: type, methods: list[str]) -> None:
    for method in methods:
        sync = inspect.signature(getattr(sync_class, method))
        aio = inspect.signature(getattr(aio_class, method))
        assert list(sync.parameters) == list(aio.parameters), method
        assert [p.default for p in sync.parameters.values()] == [p.default for p in aio.parameters.values()]
        assert [p.kind for p in sync.parameters.values()] == [p.kind for p in aio.parameters.values()], method


def test_both_clients_take_the_same_arguments() -> None:
    _same_signatures(SandboxClient, AsyncSandboxClient, CLIENT_METHODS)
    _same_signatures(sandbox_client.Session, sandbox_client.AsyncSession, SESSION_METHODS)
    _same_signatures(sandbox_client.SessionFiles, sandbox_client.AsyncSessionFiles, FILES_METHODS)
    assert list(inspect.signature(SandboxClient.session).parameters)[1:] == SESSION_PARAMETERS
    assert list(inspect.signature(sandbox_client.Session.run).parameters)[1:] == RUN_PARAMETERS
    assert list(inspect.signature(sandbox_client.Session.run_stream).parameters)[1:] == RUN_PARAMETERS
    execute = inspect.signature(SandboxClient.execute)
    assert list(execute.parameters)[1:] == EXECUTE_PARAMETERS
    assert list(inspect.signature(SandboxClient.execute_stream).parameters)[1:] == EXECUTE_PARAMETERS
    assert list(inspect.signature(SandboxClient.record_usage).parameters)[1:] == RECORD_USAGE_PARAMETERS
    client = inspect.signature(SandboxClient).parameters
    assert list(client) == CLIENT_PARAMETERS
    assert client["timeout"].default == sandbox_client.DEFAULT_TIMEOUT == 60
    assert client["retry"].default is sandbox_client.DEFAULT_RETRY_POLICY
    assert client["breaker"].default is sandbox_client.DEFAULT_BREAKER_POLICY
    assert client["exercise"].default is False  # an agent's client never marks its traffic as an exercise
    # A session's network is fixed when it is created: its calls do not offer one.
    assert "network" not in inspect.signature(sandbox_client.Session.run).parameters
    assert "network" not in inspect.signature(sandbox_client.AsyncSession.run_stream).parameters


def test_the_default_policies_are_pinned() -> None:
    retry, breaker = sandbox_client.DEFAULT_RETRY_POLICY, sandbox_client.DEFAULT_BREAKER_POLICY
    assert retry == sandbox_client.RetryPolicy(
        max_attempts=4, initial_backoff_s=0.25, max_backoff_s=5.0, multiplier=2.0, jitter=1.0, budget_s=10.0
    )
    assert breaker == sandbox_client.BreakerPolicy(failure_threshold=5, reset_timeout_s=10.0)


def test_import_does_no_work() -> None:
    """Importing the package starts no thread (no channel, no client is made at import time)."""
    code = "import threading, sandbox_client; assert threading.active_count() == 1, threading.enumerate()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
