"""ExecutionResult -> protobuf, in one place."""

from __future__ import annotations

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.execution.spec import ExecutionResult, Limits, StreamName


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
        ),
        message=result.message,
        limits=limits_to_proto(result.limits),
        language=result.language,
        backend=result.backend,
    )


def chunk_to_proto(stream: StreamName, data: bytes) -> pb.ExecuteEvent:
    return pb.ExecuteEvent(output=pb.OutputChunk(stream="STREAM_" + stream.name, data=data))
