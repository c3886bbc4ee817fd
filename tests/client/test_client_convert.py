"""Models <-> protobuf messages, and the stream assembler, without a server."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_client import (
    ExecutionResult,
    Limits,
    OutputChunk,
    OutputFile,
    ResourceUsage,
    Runtime,
    ServerError,
    Status,
)
from sandbox_client._convert import (
    build_request,
    chunk_from_proto,
    limits_from_proto,
    limits_to_proto,
    result_from_proto,
    runtime_from_proto,
    status_from_proto,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_client._stream import StreamAssembler

# --- Status -------------------------------------------------------------------------------------------


def test_status_members_are_the_proto_names_without_prefix() -> None:
    """Fails when the proto grows a status this enum lacks, or the enum one the proto lacks."""
    from_proto = {name.removeprefix("STATUS_") for name in sandbox_pb2.Status.keys()}  # noqa: SIM118
    assert from_proto == {member.value for member in Status}


@pytest.mark.parametrize(
    ("number", "status"),
    [
        (sandbox_pb2.STATUS_OK, Status.OK),
        (sandbox_pb2.STATUS_NONZERO_EXIT, Status.NONZERO_EXIT),
        (sandbox_pb2.STATUS_TIMEOUT, Status.TIMEOUT),
        (sandbox_pb2.STATUS_CPU_LIMIT, Status.CPU_LIMIT),
        (sandbox_pb2.STATUS_MEMORY_LIMIT, Status.MEMORY_LIMIT),
        (sandbox_pb2.STATUS_OUTPUT_LIMIT, Status.OUTPUT_LIMIT),
        (sandbox_pb2.STATUS_KILLED, Status.KILLED),
        (sandbox_pb2.STATUS_REJECTED, Status.REJECTED),
        (sandbox_pb2.STATUS_FILE_SIZE_LIMIT, Status.FILE_SIZE_LIMIT),
        (sandbox_pb2.STATUS_UNSPECIFIED, Status.UNSPECIFIED),
        (999, Status.UNSPECIFIED),  # a newer server's status
    ],
)
def test_status_from_proto(number: int, status: Status) -> None:
    assert status_from_proto(number) is status


def test_status_is_a_str_enum() -> None:
    assert Status.MEMORY_LIMIT == "MEMORY_LIMIT"
    assert f"{Status.OK}" == "OK"


# --- Limits -------------------------------------------------------------------------------------------


def test_limits_to_proto_sets_only_the_given_fields() -> None:
    message = limits_to_proto(Limits(wall_time_s=1.5, max_pids=16))
    assert message.wall_time_ms == 1500
    assert message.max_pids == 16
    set_fields = {f.name for f, _ in message.ListFields()}
    assert set_fields == {"wall_time_ms", "max_pids"}
    assert limits_to_proto(Limits()).ListFields() == []


def test_limits_to_proto_every_field() -> None:
    message = limits_to_proto(
        Limits(
            wall_time_s=2,
            cpu_time_s=0.1,
            memory_bytes=3,
            max_pids=4,
            output_bytes=5,
            file_size_bytes=6,
            scratch_bytes=7,
        )
    )
    assert message == sandbox_pb2.Limits(
        wall_time_ms=2000,
        cpu_time_ms=100,
        memory_bytes=3,
        max_pids=4,
        output_bytes=5,
        file_size_bytes=6,
        scratch_bytes=7,
    )


def test_sub_millisecond_times_round_up_to_one_millisecond() -> None:
    assert limits_to_proto(Limits(cpu_time_s=0.0001)).cpu_time_ms == 1


def test_limits_from_proto_leaves_unset_fields_none() -> None:
    assert limits_from_proto(sandbox_pb2.Limits(cpu_time_ms=250, scratch_bytes=10)) == Limits(
        cpu_time_s=0.25, scratch_bytes=10
    )
    assert limits_from_proto(sandbox_pb2.Limits()) == Limits()


def test_limits_from_proto_ignores_non_positive_values() -> None:
    assert limits_from_proto(sandbox_pb2.Limits(wall_time_ms=0, memory_bytes=-1)) == Limits()


positive = st.integers(min_value=1, max_value=2**62) | st.none()
milliseconds = st.integers(min_value=1, max_value=10**9) | st.none()


@given(
    wall_ms=milliseconds,
    cpu_ms=milliseconds,
    memory=positive,
    pids=positive,
    output=positive,
    file_size=positive,
    scratch=positive,
)
def test_limits_round_trip(
    wall_ms: int | None,
    cpu_ms: int | None,
    memory: int | None,
    pids: int | None,
    output: int | None,
    file_size: int | None,
    scratch: int | None,
) -> None:
    limits = Limits(
        wall_time_s=None if wall_ms is None else wall_ms / 1000,
        cpu_time_s=None if cpu_ms is None else cpu_ms / 1000,
        memory_bytes=memory,
        max_pids=pids,
        output_bytes=output,
        file_size_bytes=file_size,
        scratch_bytes=scratch,
    )
    message = limits_to_proto(limits)
    assert (message.wall_time_ms if message.HasField("wall_time_ms") else None) == wall_ms
    assert limits_from_proto(message) == limits


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"wall_time_s": 0}, ValueError),
        ({"cpu_time_s": -1.0}, ValueError),
        ({"wall_time_s": float("inf")}, ValueError),
        ({"wall_time_s": float("nan")}, ValueError),
        ({"memory_bytes": 0}, ValueError),
        ({"max_pids": -5}, ValueError),
        ({"output_bytes": 1.5}, TypeError),
        ({"scratch_bytes": True}, TypeError),
        ({"wall_time_s": "10"}, TypeError),
    ],
)
def test_limits_validate_on_construction(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        Limits(**kwargs)  # type: ignore[arg-type]


# --- requests -----------------------------------------------------------------------------------------


def test_build_request_with_every_argument() -> None:
    request = build_request(
        "print('ü')",
        language="python",
        stdin="line\n",
        files={"a.txt": "ä", "b.bin": b"\x00\x01"},
        env={"A": "1", "B": "2"},
        limits=Limits(memory_bytes=2**20),
        session_id="s",
        idempotency_key="k",
    )
    assert request == sandbox_pb2.ExecuteRequest(
        language="python",
        code="print('ü')".encode(),
        stdin=b"line\n",
        files=[
            sandbox_pb2.InputFile(path="a.txt", content="ä".encode()),
            sandbox_pb2.InputFile(path="b.bin", content=b"\x00\x01"),
        ],
        env={"A": "1", "B": "2"},
        limits=sandbox_pb2.Limits(memory_bytes=2**20),
        session_id="s",
        idempotency_key="k",
    )


def test_build_request_defaults_leave_fields_unset() -> None:
    request = build_request(
        "1",
        language="bash",
        stdin=b"",
        files=None,
        env=None,
        limits=None,
        session_id="",
        idempotency_key="",
    )
    assert not request.HasField("limits")
    assert request == sandbox_pb2.ExecuteRequest(language="bash", code=b"1")


# --- results ------------------------------------------------------------------------------------------


def full_result_message() -> sandbox_pb2.ExecuteResult:
    return sandbox_pb2.ExecuteResult(
        execution_id="e-42",
        status=sandbox_pb2.STATUS_MEMORY_LIMIT,
        exit_code=-1,
        signal=9,
        stdout=b"partial \xff output",
        stdout_truncated=True,
        stderr=b"Killed\n",
        stderr_truncated=False,
        files=[
            sandbox_pb2.OutputFile(path="big.bin", content=b"abc", size=1000, truncated=True),
            sandbox_pb2.OutputFile(path="small.txt", content=b"ok", size=2, truncated=False),
        ],
        files_truncated=True,
        usage=sandbox_pb2.ResourceUsage(wall_time_s=1.5, cpu_time_s=1.25, peak_memory_bytes=2**27),
        message="killed at the memory limit (128 MiB)",
        limits=sandbox_pb2.Limits(wall_time_ms=10_000, memory_bytes=2**27),
        language="python",
        backend="docker",
    )


def test_result_from_proto_keeps_every_field() -> None:
    result = result_from_proto(full_result_message())
    assert result == ExecutionResult(
        execution_id="e-42",
        status=Status.MEMORY_LIMIT,
        exit_code=-1,
        signal=9,
        stdout_bytes=b"partial \xff output",
        stderr_bytes=b"Killed\n",
        stdout_truncated=True,
        stderr_truncated=False,
        files=(
            OutputFile(path="big.bin", content=b"abc", size=1000, truncated=True),
            OutputFile(path="small.txt", content=b"ok", size=2, truncated=False),
        ),
        files_truncated=True,
        usage=ResourceUsage(wall_time_s=1.5, cpu_time_s=1.25, peak_memory_bytes=2**27),
        message="killed at the memory limit (128 MiB)",
        limits=Limits(wall_time_s=10.0, memory_bytes=2**27),
        language="python",
        backend="docker",
    )
    assert result.stdout == "partial \ufffd output"  # invalid UTF-8 replaced, never raised
    assert result.stderr == "Killed\n"
    assert not result.ok
    assert result.file("small.txt") == OutputFile(path="small.txt", content=b"ok", size=2, truncated=False)
    assert result.file("missing.txt") is None


def test_result_is_frozen() -> None:
    result = result_from_proto(full_result_message())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.exit_code = 0  # type: ignore[misc]


def test_an_empty_result_message_converts() -> None:
    result = result_from_proto(sandbox_pb2.ExecuteResult())
    assert result.status is Status.UNSPECIFIED
    assert (result.stdout, result.files, result.limits) == ("", (), Limits())


def test_runtime_from_proto() -> None:
    message = sandbox_pb2.Runtime(language="javascript", aliases=["js", "node"], version="v20", file_name="m.js")
    assert runtime_from_proto(message) == Runtime("javascript", ("js", "node"), "v20", "m.js")


def test_chunk_from_proto() -> None:
    assert chunk_from_proto(sandbox_pb2.OutputChunk(stream=sandbox_pb2.STREAM_STDERR, data=b"e")) == (
        OutputChunk("stderr", b"e")
    )
    assert OutputChunk("stdout", b"caf\xc3\xa9").text == "café"
    with pytest.raises(ServerError, match="unknown stream"):
        chunk_from_proto(sandbox_pb2.OutputChunk(data=b"?"))


# --- the stream assembler -----------------------------------------------------------------------------


def chunk_event(stream: sandbox_pb2.Stream, data: bytes) -> sandbox_pb2.ExecuteEvent:
    return sandbox_pb2.ExecuteEvent(output=sandbox_pb2.OutputChunk(stream=stream, data=data))


def test_assembler_joins_chunks_into_the_result() -> None:
    assembler = StreamAssembler()
    streamed = sandbox_pb2.ExecuteResult(execution_id="e", status=sandbox_pb2.STATUS_OK)
    events = [
        chunk_event(sandbox_pb2.STREAM_STDOUT, b"a\xe2\x82"),
        chunk_event(sandbox_pb2.STREAM_STDERR, b"oops"),
        sandbox_pb2.ExecuteEvent(),  # an event kind from a newer server: skipped
        chunk_event(sandbox_pb2.STREAM_STDOUT, b"\xacb"),
        sandbox_pb2.ExecuteEvent(result=streamed),
    ]
    chunks = [assembler.feed(event) for event in events]
    assert chunks == [OutputChunk("stdout", b"a\xe2\x82"), OutputChunk("stderr", b"oops"), None,
                      OutputChunk("stdout", b"\xacb"), None]  # fmt: skip
    result = assembler.finish()
    assert (result.stdout, result.stderr, result.execution_id) == ("a€b", "oops", "e")


def test_assembler_keeps_output_the_server_put_in_the_result() -> None:
    assembler = StreamAssembler()
    assembler.feed(sandbox_pb2.ExecuteEvent(result=sandbox_pb2.ExecuteResult(stdout=b"from server")))
    assert assembler.finish().stdout == "from server"


def test_assembler_refuses_a_stream_without_result() -> None:
    assembler = StreamAssembler()
    assembler.feed(chunk_event(sandbox_pb2.STREAM_STDOUT, b"x"))
    with pytest.raises(ServerError, match="without a result"):
        assembler.finish()


def test_assembler_refuses_events_after_the_result() -> None:
    assembler = StreamAssembler()
    assembler.feed(sandbox_pb2.ExecuteEvent(result=sandbox_pb2.ExecuteResult()))
    with pytest.raises(ServerError, match="after the final result"):
        assembler.feed(chunk_event(sandbox_pb2.STREAM_STDOUT, b"late"))
