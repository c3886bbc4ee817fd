"""Models <-> protobuf messages, and the stream assembler, without a server."""

from __future__ import annotations

import dataclasses
import io
import pickle
from datetime import UTC, datetime

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from sandbox_client import (
    CodeError,
    DisplayData,
    ExecutionResult,
    FileInfo,
    Limits,
    OutputChunk,
    OutputFile,
    ResourceUsage,
    Runtime,
    ServerError,
    SessionInfo,
    SessionState,
    SessionUsage,
    SnapshotInfo,
    Status,
)
from sandbox_client._convert import (
    build_request,
    build_session_request,
    chunk_from_proto,
    file_info_from_proto,
    limits_from_proto,
    limits_to_proto,
    result_from_proto,
    runtime_from_proto,
    session_from_proto,
    session_state_from_proto,
    snapshot_from_proto,
    status_from_proto,
    upload_header,
    upload_requests,
)
from sandbox_client._files import UPLOAD_CHUNK_BYTES, UploadSource
from sandbox_client._models import FileType
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_client._retry import Retrying
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
            egress_bytes=8,
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
        egress_bytes=8,
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
    egress=positive,
)
def test_limits_round_trip(
    wall_ms: int | None,
    cpu_ms: int | None,
    memory: int | None,
    pids: int | None,
    output: int | None,
    file_size: int | None,
    scratch: int | None,
    egress: int | None,
) -> None:
    limits = Limits(
        wall_time_s=None if wall_ms is None else wall_ms / 1000,
        cpu_time_s=None if cpu_ms is None else cpu_ms / 1000,
        memory_bytes=memory,
        max_pids=pids,
        output_bytes=output,
        file_size_bytes=file_size,
        scratch_bytes=scratch,
        egress_bytes=egress,
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
        ({"egress_bytes": 0}, ValueError),
        ({"egress_bytes": 1.0}, TypeError),
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
    assert not request.HasField("network")  # unset: the tenant's network
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
        usage=sandbox_pb2.ResourceUsage(wall_time_s=1.5, cpu_time_s=1.25, peak_memory_bytes=2**27,
                                        egress_bytes_sent=100, egress_bytes_received=2000, egress_connections=2),
        message="killed at the memory limit (128 MiB)",
        limits=sandbox_pb2.Limits(wall_time_ms=10_000, memory_bytes=2**27, egress_bytes=2**20),
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
        usage=ResourceUsage(wall_time_s=1.5, cpu_time_s=1.25, peak_memory_bytes=2**27, egress_bytes_sent=100,
                            egress_bytes_received=2000, egress_connections=2),
        message="killed at the memory limit (128 MiB)",
        limits=Limits(wall_time_s=10.0, memory_bytes=2**27, egress_bytes=2**20),
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
    # A server without egress (or an older one) sends no egress usage: zeros, as ResourceUsage's defaults.
    assert (result.usage.egress_bytes_sent, result.usage.egress_bytes_received, result.usage.egress_connections) \
        == (0, 0, 0)
    assert result.limits.egress_bytes is None
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


# --- sessions: results, streams, sessions, files, snapshots -------------------------------------------


def session_result_message() -> sandbox_pb2.ExecuteResult:
    return sandbox_pb2.ExecuteResult(
        execution_id="e-7",
        status=sandbox_pb2.STATUS_NONZERO_EXIT,
        exit_code=1,
        value="",
        outputs=[
            sandbox_pb2.DisplayData(mime_type="image/png", data=b"\x89PNG\r\n",
                                    alternatives={"text/plain": b"<Figure>"}),
            sandbox_pb2.DisplayData(mime_type="text/html", data="<b>é</b>".encode(), is_result=True,
                                    display_id="d1", update=True),
        ],
        error=sandbox_pb2.CodeError(name="ZeroDivisionError", value="division by zero",
                                    traceback=["Traceback", "ZeroDivisionError: division by zero"]),
        kernel_restarted=True,
        warnings=["the same failure again"],
        execution_count=3,
    )


def test_result_from_proto_keeps_the_session_fields() -> None:
    result = result_from_proto(session_result_message())
    assert result.outputs == (
        DisplayData("image/png", b"\x89PNG\r\n", {"text/plain": b"<Figure>"}),
        DisplayData("text/html", "<b>é</b>".encode(), is_result=True, display_id="d1", update=True),
    )
    assert result.outputs[1].text == "<b>é</b>"
    assert result.error == CodeError("ZeroDivisionError", "division by zero",
                                     ("Traceback", "ZeroDivisionError: division by zero"))
    assert (result.value, result.kernel_restarted, result.warnings, result.execution_count) == (
        "", True, ("the same failure again",), 3)
    with pytest.raises(TypeError):
        result.outputs[0].alternatives["text/plain"] = b"changed"  # type: ignore[index]
    # Frozen values stay values: hashable and picklable, the mappings inside included.
    assert hash(result) == hash(result_from_proto(session_result_message()))
    assert pickle.loads(pickle.dumps(result)) == result  # noqa: S301 (our own bytes)


def test_a_one_shot_result_has_empty_session_fields() -> None:
    result = result_from_proto(full_result_message())
    assert (result.value, result.outputs, result.error, result.kernel_restarted, result.warnings,
            result.execution_count) == ("", (), None, False, (), 0)
    assert DisplayData("text/plain", b"\xff").text == "\ufffd"
    assert DisplayData("text/plain", b"x").alternatives == {}
    by_hand = {"text/plain": b"x"}
    display = DisplayData("text/html", b"<p>x</p>", by_hand)
    by_hand["text/plain"] = b"changed"
    assert display.alternatives == {"text/plain": b"x"}  # a copy, frozen
    assert hash(display) == hash(DisplayData("text/html", b"<p>x</p>", {"text/plain": b"x"}))


def display_event(mime_type: str, data: bytes) -> sandbox_pb2.ExecuteEvent:
    return sandbox_pb2.ExecuteEvent(display=sandbox_pb2.DisplayData(mime_type=mime_type, data=data))


def test_assembler_hands_out_rich_outputs_and_joins_them_into_the_result() -> None:
    assembler = StreamAssembler()
    assert not assembler.handed_out
    items = [
        assembler.feed(display_event("image/png", b"png")),
        assembler.feed(chunk_event(sandbox_pb2.STREAM_STDOUT, b"out")),
        assembler.feed(sandbox_pb2.ExecuteEvent()),  # a kind from a newer server: skipped
        assembler.feed(display_event("text/html", b"<p>")),
        assembler.feed(sandbox_pb2.ExecuteEvent(result=sandbox_pb2.ExecuteResult(execution_id="e", value="7"))),
    ]
    assert items == [DisplayData("image/png", b"png"), OutputChunk("stdout", b"out"), None,
                     DisplayData("text/html", b"<p>"), None]  # fmt: skip
    assert assembler.handed_out
    assert assembler.outputs == (DisplayData("image/png", b"png"), DisplayData("text/html", b"<p>"))
    result = assembler.finish()
    assert (result.stdout, result.value, result.outputs) == ("out", "7", assembler.outputs)


def test_assembler_keeps_rich_outputs_the_server_put_in_the_result() -> None:
    assembler = StreamAssembler()
    assert assembler.feed(display_event("image/png", b"streamed")) == DisplayData("image/png", b"streamed")
    assembler.feed(sandbox_pb2.ExecuteEvent(result=sandbox_pb2.ExecuteResult(
        outputs=[sandbox_pb2.DisplayData(mime_type="image/png", data=b"whole")])))
    assert assembler.finish().outputs == (DisplayData("image/png", b"whole"),)


def test_session_states_are_the_proto_names_without_prefix() -> None:
    from_proto = {name.removeprefix("SESSION_STATE_") for name in sandbox_pb2.SessionState.keys()}  # noqa: SIM118
    assert from_proto == {member.value for member in SessionState}
    assert session_state_from_proto(sandbox_pb2.SESSION_STATE_BUSY) is SessionState.BUSY
    assert session_state_from_proto(99) is SessionState.UNSPECIFIED


def stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_session_from_proto() -> None:
    message = sandbox_pb2.Session(
        id="ses_x", state=sandbox_pb2.SESSION_STATE_READY, created_at=stamp(1_800_000_000),
        last_used_at=stamp(1_800_000_001, 500_000_000), expires_at=stamp(1_800_000_600),
        limits=sandbox_pb2.Limits(wall_time_ms=60_000, memory_bytes=2**30, egress_bytes=2**24), idle_timeout_s=600,
        max_lifetime_s=3600, cpu_total_ms=600_500, languages=["python", "bash"], labels={"b": "2", "a": "1"},
        usage=sandbox_pb2.SessionUsage(calls=2, cpu_time_s=0.5, memory_bytes=10, peak_memory_bytes=20,
                                       workspace_bytes=30, cost=0.25, kernel_restarts=1, egress_bytes=40),
        backend="nsjail", snapshot_id="snap_y")
    info = session_from_proto(message)
    assert info == SessionInfo(
        id="ses_x", state=SessionState.READY, created_at=datetime(2027, 1, 15, 8, 0, tzinfo=UTC),
        last_used_at=datetime(2027, 1, 15, 8, 0, 1, 500_000, tzinfo=UTC),
        expires_at=datetime(2027, 1, 15, 8, 10, tzinfo=UTC), closed_at=None,
        limits=Limits(wall_time_s=60.0, memory_bytes=2**30, egress_bytes=2**24), idle_timeout_s=600,
        max_lifetime_s=3600, cpu_total_s=600.5, languages=("python", "bash"), labels={"a": "1", "b": "2"},
        usage=SessionUsage(calls=2, cpu_time_s=0.5, memory_bytes=10, peak_memory_bytes=20, workspace_bytes=30,
                           cost=0.25, kernel_restarts=1, egress_bytes=40),
        close_reason="", backend="nsjail", snapshot_id="snap_y")
    assert info.created_at.tzinfo is UTC
    assert hash(info) == hash(session_from_proto(message))
    closed = session_from_proto(sandbox_pb2.Session(state=sandbox_pb2.SESSION_STATE_CLOSED, closed_at=stamp(5),
                                                    close_reason="idle_timeout"))
    assert (closed.state, closed.expires_at, closed.closed_at, closed.close_reason) == (
        SessionState.CLOSED, None, datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC), "idle_timeout")


def test_file_info_and_snapshot_from_proto() -> None:
    mtime = stamp(1_800_000_000, 250_000_000)
    when = datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC)
    cases: list[tuple[int, FileType]] = [
        (sandbox_pb2.FILE_TYPE_FILE, "file"), (sandbox_pb2.FILE_TYPE_DIRECTORY, "directory"),
        (sandbox_pb2.FILE_TYPE_SYMLINK, "symlink"), (sandbox_pb2.FILE_TYPE_OTHER, "other"),
        (sandbox_pb2.FILE_TYPE_UNSPECIFIED, "other"), (42, "other")]  # 42: a type from a newer server
    for number, name in cases:
        message = sandbox_pb2.FileInfo(path="a/b", type=number, size=3, mtime=mtime)  # type: ignore[arg-type]
        assert file_info_from_proto(message) == FileInfo(path="a/b", size=3, mtime=when, type=name)
    snapshot = sandbox_pb2.Snapshot(id="snap_1", session_id="ses_1", name="n", created_at=mtime, size_bytes=9,
                                    files=2, skipped=1)
    assert snapshot_from_proto(snapshot) == SnapshotInfo("snap_1", "ses_1", "n", when, 9, 2, 1)


def test_build_session_request() -> None:
    request = build_session_request(
        languages=["python", "bash"], limits=Limits(memory_bytes=2**29), idle_timeout_s=300, max_lifetime_s=900,
        cpu_total_s=1.5, env={"A": "1"}, files={"in.txt": "ä"}, labels={"k": "v"}, snapshot_id="snap_1",
        idempotency_key="key")
    assert request == sandbox_pb2.CreateSessionRequest(
        languages=["python", "bash"], limits=sandbox_pb2.Limits(memory_bytes=2**29), idle_timeout_s=300,
        max_lifetime_s=900, cpu_total_ms=1500, env={"A": "1"},
        files=[sandbox_pb2.InputFile(path="in.txt", content="ä".encode())], labels={"k": "v"},
        snapshot_id="snap_1", idempotency_key="key")


def test_build_session_request_defaults_leave_fields_unset() -> None:
    request = build_session_request(languages=None, limits=None, idle_timeout_s=None, max_lifetime_s=None,
                                    cpu_total_s=None, env=None, files=None, labels=None, snapshot_id="",
                                    idempotency_key="")
    assert not request.HasField("limits")
    assert not request.HasField("cpu_total_ms")
    assert not request.HasField("network")
    assert request == sandbox_pb2.CreateSessionRequest()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"idle_timeout_s": 0}, ValueError),
        ({"max_lifetime_s": -1}, ValueError),
        ({"idle_timeout_s": 1.5}, TypeError),
        ({"idle_timeout_s": True}, TypeError),
        ({"cpu_total_s": 0}, ValueError),
        ({"cpu_total_s": float("inf")}, ValueError),
        ({"cpu_total_s": "1"}, TypeError),
        ({"languages": "python"}, TypeError),
    ],
)
def test_build_session_request_checks_its_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    arguments: dict[str, object] = {
        "languages": None, "limits": None, "idle_timeout_s": None, "max_lifetime_s": None, "cpu_total_s": None,
        "env": None, "files": None, "labels": None, "snapshot_id": "", "idempotency_key": ""}
    with pytest.raises(error):
        build_session_request(**{**arguments, **kwargs})  # type: ignore[arg-type]


def test_upload_messages_are_a_header_then_the_chunks() -> None:
    content = bytes(range(256)) * (UPLOAD_CHUNK_BYTES * 5 // 2 // 256)  # 2.5 MiB: three chunks
    source = UploadSource(content)
    assert (source.size, source.retrying) == (len(content), Retrying.SAFE)
    messages = list(upload_requests(upload_header("ses_1", "a/b.bin", source.size), source.chunks()))
    assert messages[0] == sandbox_pb2.UploadFileRequest(
        header=sandbox_pb2.UploadHeader(session_id="ses_1", path="a/b.bin", size=len(content)))
    assert [len(m.chunk) for m in messages[1:]] == [UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES // 2]
    assert b"".join(m.chunk for m in messages[1:]) == content
    assert list(source.chunks()) == list(source.chunks())  # bytes are sent again whole on a retry
    assert not upload_header("s", "p", None).header.HasField("size")
    assert list(UploadSource("é").chunks()) == ["é".encode()]
    assert list(UploadSource(b"").chunks()) == []


def test_an_upload_stream_is_read_once_from_its_position() -> None:
    stream = io.BytesIO(b"skip" + b"x" * 10)
    stream.seek(4)
    source = UploadSource(stream)
    assert (source.size, source.retrying) == (10, Retrying.NEVER)
    assert stream.tell() == 4  # measuring did not move it
    assert b"".join(source.chunks()) == b"x" * 10
    assert list(source.chunks()) == []
    with pytest.raises(TypeError, match="binary"):
        list(UploadSource(io.StringIO("text")).chunks())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes, str or a binary stream"):
        UploadSource(42)  # type: ignore[arg-type]
