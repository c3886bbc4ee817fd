"""Models <-> protobuf messages: the only module that knows both shapes."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from sandbox_client._errors import protocol_error
from sandbox_client._models import (
    BudgetState,
    CodeError,
    DisplayData,
    EgressRule,
    ExecutionResult,
    FileInfo,
    FileType,
    FrozenMapping,
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
from sandbox_client._proto.sandbox.v1 import sandbox_pb2

_STATUS_PREFIX = "STATUS_"
# ExecuteRequest.session_id of exactly this shape runs in that session; any other value is a free label.
_SESSION_ID_RE = re.compile(r"ses_[a-z2-7]{32}")
_SESSION_STATE_PREFIX = "SESSION_STATE_"


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
    if limits.egress_bytes is not None:
        message.egress_bytes = limits.egress_bytes
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
        egress_bytes=_present(message.HasField("egress_bytes"), message.egress_bytes),
    )


_NETWORK_MODES = {"none": sandbox_pb2.Network.MODE_NONE, "allowlist": sandbox_pb2.Network.MODE_ALLOWLIST}


def network_to_proto(network: Network) -> sandbox_pb2.Network:
    return sandbox_pb2.Network(
        mode=_NETWORK_MODES[network.mode],
        allow=[sandbox_pb2.EgressRule(host=rule.host, ports=rule.ports) for rule in network.allow],
    )


def network_from_proto(message: sandbox_pb2.Network) -> Network | None:
    """The inverse of ``network_to_proto``; None for MODE_UNSPECIFIED (the tenant's network), and for a mode this
    client version does not know."""
    if message.mode == sandbox_pb2.Network.MODE_NONE:
        return Network.none()
    if message.mode == sandbox_pb2.Network.MODE_ALLOWLIST:
        return Network.allowlist(*(EgressRule(rule.host, rule.ports) for rule in message.allow))
    return None


def _network(network: Network | None) -> sandbox_pb2.Network | None:
    """Raises TypeError for anything but a Network or None (a dict would otherwise fail deep in protobuf)."""
    if network is None:
        return None
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network (Network.none(), Network.allowlist(...)) or None, not "
                        f"{type(network).__name__}")
    return network_to_proto(network)


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
    exercise: bool = False,
    network: Network | None = None,
) -> sandbox_pb2.ExecuteRequest:
    """The ExecuteRequest for ``execute``'s arguments. Text (code, stdin, str files) is sent as UTF-8.

    Raises:
        TypeError: ``network`` is not a Network.
        ValueError: ``network`` with a session's id as ``session_id`` (its network is fixed when it is created).
    """
    if network is not None and _SESSION_ID_RE.fullmatch(session_id):
        # The server refuses it too (INVALID_ARGUMENT); saying so here costs no round trip.
        raise ValueError("network cannot be set for a call in a session: set it when the session is created")
    return sandbox_pb2.ExecuteRequest(
        language=language,
        code=code.encode("utf-8"),
        stdin=_as_bytes(stdin),
        files=[sandbox_pb2.InputFile(path=path, content=_as_bytes(content)) for path, content in (files or {}).items()],
        env=dict(env or {}),
        limits=limits_to_proto(limits) if limits is not None else None,
        session_id=session_id,
        idempotency_key=idempotency_key,
        exercise=exercise,
        network=_network(network),
    )


def result_from_proto(
    message: sandbox_pb2.ExecuteResult,
    *,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
    outputs: Sequence[DisplayData] | None = None,
) -> ExecutionResult:
    """The ExecutionResult for ``message``; ``stdout``/``stderr``/``outputs``, when given, replace the message's
    own (``execute_stream`` passes the streamed chunks, joined, and the streamed rich outputs)."""
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
            egress_bytes_sent=message.usage.egress_bytes_sent,
            egress_bytes_received=message.usage.egress_bytes_received,
            egress_connections=message.usage.egress_connections,
        ),
        message=message.message,
        limits=limits_from_proto(message.limits),
        language=message.language,
        backend=message.backend,
        redactions=message.redactions,
        cost=message.cost,
        trace_id=message.trace_id,
        value=message.value,
        outputs=tuple(display_from_proto(d) for d in message.outputs) if outputs is None else tuple(outputs),
        error=code_error_from_proto(message.error) if message.HasField("error") else None,
        kernel_restarted=message.kernel_restarted,
        warnings=tuple(message.warnings),
        execution_count=message.execution_count,
    )


def display_from_proto(message: sandbox_pb2.DisplayData) -> DisplayData:
    return DisplayData(
        mime_type=message.mime_type,
        data=message.data,
        alternatives=FrozenMapping(sorted(message.alternatives.items())),
        is_result=message.is_result,
        display_id=message.display_id,
        update=message.update,
    )


def code_error_from_proto(message: sandbox_pb2.CodeError) -> CodeError:
    return CodeError(name=message.name, value=message.value, traceback=tuple(message.traceback))


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


# ---- sessions --------------------------------------------------------------------------------------------------


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _optional_datetime(message: sandbox_pb2.Session, name: str) -> datetime | None:
    """The Timestamp field ``name``; None when unset (the proto's way to say "not yet" or "never")."""
    return _datetime(getattr(message, name)) if message.HasField(name) else None


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of seconds, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def build_session_request(
    *,
    languages: Sequence[str] | None,
    limits: Limits | None,
    idle_timeout_s: int | None,
    max_lifetime_s: int | None,
    cpu_total_s: float | None,
    env: Mapping[str, str] | None,
    files: Mapping[str, bytes | str] | None,
    labels: Mapping[str, str] | None,
    snapshot_id: str,
    idempotency_key: str,
    exercise: bool = False,
    network: Network | None = None,
) -> sandbox_pb2.CreateSessionRequest:
    """The CreateSessionRequest for ``session``'s arguments; None leaves a field to the tenant's default.

    Raises:
        TypeError: a timeout that is not an int, a CPU total that is not a number, ``languages`` given as one str,
            a ``network`` that is not a Network.
        ValueError: a timeout or CPU total that is not positive (or not finite).
    """
    if isinstance(languages, str):
        raise TypeError("languages must be a sequence of language names, not one str")
    request = sandbox_pb2.CreateSessionRequest(
        languages=list(languages or ()),
        limits=limits_to_proto(limits) if limits is not None else None,
        idle_timeout_s=_positive_int("idle_timeout_s", idle_timeout_s) if idle_timeout_s is not None else 0,
        max_lifetime_s=_positive_int("max_lifetime_s", max_lifetime_s) if max_lifetime_s is not None else 0,
        env=dict(env or {}),
        files=[sandbox_pb2.InputFile(path=path, content=_as_bytes(content)) for path, content in (files or {}).items()],
        labels=dict(labels or {}),
        snapshot_id=snapshot_id,
        idempotency_key=idempotency_key,
        exercise=exercise,
        network=_network(network),
    )
    if cpu_total_s is not None:
        if isinstance(cpu_total_s, bool) or not isinstance(cpu_total_s, int | float):
            raise TypeError(f"cpu_total_s must be a number of seconds, not {type(cpu_total_s).__name__}")
        if not (math.isfinite(cpu_total_s) and cpu_total_s > 0):
            raise ValueError(f"cpu_total_s must be positive and finite, got {cpu_total_s!r}")
        request.cpu_total_ms = _seconds_to_ms(cpu_total_s)
    return request


def session_state_from_proto(value: int) -> SessionState:
    """``SESSION_STATE_READY`` -> ``SessionState.READY``; an unknown number -> ``SessionState.UNSPECIFIED``."""
    try:
        return SessionState(sandbox_pb2.SessionState.Name(value).removeprefix(_SESSION_STATE_PREFIX))
    except ValueError:
        return SessionState.UNSPECIFIED


def session_from_proto(message: sandbox_pb2.Session) -> SessionInfo:
    usage = message.usage
    return SessionInfo(
        id=message.id,
        state=session_state_from_proto(message.state),
        created_at=_datetime(message.created_at),
        last_used_at=_datetime(message.last_used_at),
        expires_at=_optional_datetime(message, "expires_at"),
        closed_at=_optional_datetime(message, "closed_at"),
        limits=limits_from_proto(message.limits),
        idle_timeout_s=message.idle_timeout_s,
        max_lifetime_s=message.max_lifetime_s,
        cpu_total_s=message.cpu_total_ms / 1000,
        languages=tuple(message.languages),
        labels=FrozenMapping(sorted(message.labels.items())),
        usage=SessionUsage(
            calls=usage.calls,
            cpu_time_s=usage.cpu_time_s,
            memory_bytes=usage.memory_bytes,
            peak_memory_bytes=usage.peak_memory_bytes,
            workspace_bytes=usage.workspace_bytes,
            cost=usage.cost,
            kernel_restarts=usage.kernel_restarts,
            egress_bytes=usage.egress_bytes,
        ),
        close_reason=message.close_reason,
        backend=message.backend,
        snapshot_id=message.snapshot_id,
    )


def snapshot_from_proto(message: sandbox_pb2.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        id=message.id,
        session_id=message.session_id,
        name=message.name,
        created_at=_datetime(message.created_at),
        size_bytes=message.size_bytes,
        files=message.files,
        skipped=message.skipped,
    )


_FILE_TYPES: Mapping[int, FileType] = {
    sandbox_pb2.FILE_TYPE_FILE: "file",
    sandbox_pb2.FILE_TYPE_DIRECTORY: "directory",
    sandbox_pb2.FILE_TYPE_SYMLINK: "symlink",
    sandbox_pb2.FILE_TYPE_OTHER: "other",
}


def file_info_from_proto(message: sandbox_pb2.FileInfo) -> FileInfo:
    """An unknown (or unset) type, from a newer server, is "other": listed, never to be read as a file."""
    return FileInfo(
        path=message.path,
        size=message.size,
        mtime=_datetime(message.mtime),
        type=_FILE_TYPES.get(message.type, "other"),
    )


def upload_header(session_id: str, path: str, size: int | None) -> sandbox_pb2.UploadFileRequest:
    """UploadFile's first message; ``size`` (when known) lets the server refuse an oversized file at once."""
    return sandbox_pb2.UploadFileRequest(
        header=sandbox_pb2.UploadHeader(session_id=session_id, path=path, size=size)
    )


def upload_requests(
    header: sandbox_pb2.UploadFileRequest, chunks: Iterable[bytes]
) -> Iterator[sandbox_pb2.UploadFileRequest]:
    """UploadFile's messages: ``header``, then one message per (non-empty) chunk, read as they are sent."""
    yield header
    for chunk in chunks:
        if chunk:
            yield sandbox_pb2.UploadFileRequest(chunk=chunk)


async def aupload_requests(
    header: sandbox_pb2.UploadFileRequest, chunks: AsyncIterable[bytes]
) -> AsyncIterator[sandbox_pb2.UploadFileRequest]:
    """``upload_requests`` for chunks read asynchronously."""
    yield header
    async for chunk in chunks:
        if chunk:
            yield sandbox_pb2.UploadFileRequest(chunk=chunk)
