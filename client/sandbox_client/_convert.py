"""Models <-> protobuf messages: the only module that knows both shapes."""

from __future__ import annotations

from collections.abc import Mapping

from sandbox_client._errors import protocol_error
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
from sandbox_client._proto.sandbox.v1 import sandbox_pb2

_STATUS_PREFIX = "STATUS_"


def status_from_proto(value: int) -> Status:
    """``STATUS_OK`` -> ``Status.OK``; an unknown number (a newer server) -> ``Status.UNSPECIFIED``."""
    try:
        return Status(sandbox_pb2.Status.Name(value).removeprefix(_STATUS_PREFIX))
    except ValueError:
        return Status.UNSPECIFIED


def _seconds_to_ms(seconds: float) -> int:
    # Limits rejects non-positive times, so a sub-millisecond one still asks for the smallest limit, not none.
    return max(1, round(seconds * 1000))


def limits_to_proto(limits: Limits) -> sandbox_pb2.Limits:
    """Only the fields that are set: an absent field takes the server's default (the proto's ``optional``)."""
    message = sandbox_pb2.Limits()
    if limits.wall_time_s is not None:
        message.wall_time_ms = _seconds_to_ms(limits.wall_time_s)
    if limits.cpu_time_s is not None:
        message.cpu_time_ms = _seconds_to_ms(limits.cpu_time_s)
    if limits.memory_bytes is not None:
        message.memory_bytes = limits.memory_bytes
    if limits.max_pids is not None:
        message.max_pids = limits.max_pids
    if limits.output_bytes is not None:
        message.output_bytes = limits.output_bytes
    if limits.file_size_bytes is not None:
        message.file_size_bytes = limits.file_size_bytes
    if limits.scratch_bytes is not None:
        message.scratch_bytes = limits.scratch_bytes
    return message


def limits_from_proto(message: sandbox_pb2.Limits) -> Limits:
    """Unset fields (and non-positive ones, which the API never sends) become None."""
    wall_time_ms = _present(message.HasField("wall_time_ms"), message.wall_time_ms)
    cpu_time_ms = _present(message.HasField("cpu_time_ms"), message.cpu_time_ms)
    return Limits(
        wall_time_s=wall_time_ms / 1000 if wall_time_ms is not None else None,
        cpu_time_s=cpu_time_ms / 1000 if cpu_time_ms is not None else None,
        memory_bytes=_present(message.HasField("memory_bytes"), message.memory_bytes),
        max_pids=_present(message.HasField("max_pids"), message.max_pids),
        output_bytes=_present(message.HasField("output_bytes"), message.output_bytes),
        file_size_bytes=_present(message.HasField("file_size_bytes"), message.file_size_bytes),
        scratch_bytes=_present(message.HasField("scratch_bytes"), message.scratch_bytes),
    )


def _present(has_field: bool, value: int) -> int | None:
    return value if has_field and value > 0 else None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def build_request(
    code: str,
    *,
    language: str,
    stdin: str | bytes,
    files: Mapping[str, bytes | str] | None,
    env: Mapping[str, str] | None,
    limits: Limits | None,
    session_id: str,
    idempotency_key: str,
) -> sandbox_pb2.ExecuteRequest:
    """The ExecuteRequest for ``execute``'s arguments. Text (code, stdin, str files) is sent as UTF-8."""
    return sandbox_pb2.ExecuteRequest(
        language=language,
        code=code.encode("utf-8"),
        stdin=_as_bytes(stdin),
        files=[sandbox_pb2.InputFile(path=path, content=_as_bytes(content)) for path, content in (files or {}).items()],
        env=dict(env or {}),
        limits=limits_to_proto(limits) if limits is not None else None,
        session_id=session_id,
        idempotency_key=idempotency_key,
    )


def result_from_proto(
    message: sandbox_pb2.ExecuteResult, *, stdout: bytes | None = None, stderr: bytes | None = None
) -> ExecutionResult:
    """The ExecutionResult for ``message``; ``stdout``/``stderr``, when given, replace the message's own
    (``execute_stream`` passes the streamed chunks, joined)."""
    return ExecutionResult(
        execution_id=message.execution_id,
        status=status_from_proto(message.status),
        exit_code=message.exit_code,
        signal=message.signal,
        stdout_bytes=message.stdout if stdout is None else stdout,
        stderr_bytes=message.stderr if stderr is None else stderr,
        stdout_truncated=message.stdout_truncated,
        stderr_truncated=message.stderr_truncated,
        files=tuple(
            OutputFile(path=f.path, content=f.content, size=f.size, truncated=f.truncated) for f in message.files
        ),
        files_truncated=message.files_truncated,
        usage=ResourceUsage(
            wall_time_s=message.usage.wall_time_s,
            cpu_time_s=message.usage.cpu_time_s,
            peak_memory_bytes=message.usage.peak_memory_bytes,
        ),
        message=message.message,
        limits=limits_from_proto(message.limits),
        language=message.language,
        backend=message.backend,
        redactions=message.redactions,
        cost=message.cost,
        trace_id=message.trace_id,
    )


def usage_report_from_proto(message: sandbox_pb2.RecordUsageResponse) -> UsageReport:
    return UsageReport(
        cost=message.cost,
        session_cost=message.session_cost,
        budgets=tuple(BudgetState(budget=b.budget, limit=b.limit, spent=b.spent, exceeded=b.exceeded)
                      for b in message.budgets),
    )


def chunk_from_proto(message: sandbox_pb2.OutputChunk) -> OutputChunk:
    """Raises ServerError for a chunk of no known stream (the server broke the protocol)."""
    if message.stream == sandbox_pb2.STREAM_STDOUT:
        return OutputChunk(stream="stdout", data=message.data)
    if message.stream == sandbox_pb2.STREAM_STDERR:
        return OutputChunk(stream="stderr", data=message.data)
    raise protocol_error(f"output chunk of unknown stream {message.stream}")


def runtime_from_proto(message: sandbox_pb2.Runtime) -> Runtime:
    return Runtime(
        language=message.language,
        aliases=tuple(message.aliases),
        version=message.version,
        file_name=message.file_name,
    )
