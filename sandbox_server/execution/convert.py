"""ExecutionResult -> protobuf, in one place."""

from __future__ import annotations

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.execution.spec import DisplayData, ExecutionResult, Limits, StreamName


def limits_to_proto(limits: Limits) -> pb.Limits:
    return pb.Limits(**limits.__dict__)


def result_to_proto(result: ExecutionResult) -> pb.ExecuteResult:
    return pb.ExecuteResult(
        execution_id=result.execution_id,
        status="STATUS_" + result.status.name,
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout,
        stdout_truncated=result.stdout_truncated,
        stderr=result.stderr,
        stderr_truncated=result.stderr_truncated,
        files=[
            pb.OutputFile(path=f.path, content=f.content, size=f.size, truncated=f.truncated)
            for f in result.files
        ],
        files_truncated=result.files_truncated,
        usage=pb.ResourceUsage(
            wall_time_s=result.usage.wall_time_s,
            cpu_time_s=result.usage.cpu_time_s,
            peak_memory_bytes=result.usage.peak_memory_bytes,
            egress_bytes_sent=result.usage.egress_bytes_sent,
            egress_bytes_received=result.usage.egress_bytes_received,
            egress_connections=result.usage.egress_connections,
        ),
        message=result.message,
        limits=limits_to_proto(result.limits),
        language=result.language,
        backend=result.backend,
        value=result.value,
        outputs=[display_to_proto(d) for d in result.outputs],
        error=pb.CodeError(name=result.error.name, value=result.error.value, traceback=result.error.traceback)
        if result.error is not None else None,
        kernel_restarted=result.kernel_restarted,
        warnings=result.warnings,
        execution_count=result.execution_count,
    )


def display_to_proto(display: DisplayData) -> pb.DisplayData:
    return pb.DisplayData(mime_type=display.mime_type, data=display.data, alternatives=dict(display.alternatives),
                          is_result=display.is_result, display_id=display.display_id, update=display.update)


def chunk_to_proto(stream: StreamName, data: bytes) -> pb.ExecuteEvent:
    return pb.ExecuteEvent(output=pb.OutputChunk(stream="STREAM_" + stream.name, data=data))
