"""Which session calls are retried, and how: against a small scripted server that fails the first attempts.

Uploads from bytes are sent again whole after UNAVAILABLE; uploads from a stream are not retried; downloads are
retried only before anything of the file arrived; a delete retried after a lost answer that finds the file gone
succeeds; a snapshot is not retried after UNAVAILABLE (a second one would be saved) but is after a refusal with
RetryInfo; a create is retried with the same idempotency key. Both clients.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from grpc_thread import grpc_server_in_thread

from sandbox_client import (
    AsyncSandboxClient,
    AsyncSession,
    NotFoundError,
    ResourceExhaustedError,
    RetryPolicy,
    SandboxClient,
    Session,
    SessionBusyError,
    UnavailableError,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02, budget_s=5.0)
CONTENT = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB: six messages of content on the wire
SESSION_ID = "ses_" + "f" * 32


def unavailable() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the connection broke (scripted)")


def refused_with_retry_info() -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="busy (scripted)")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10_000_000)))
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="SESSION_BUSY", domain="sandbox.v1"))
    return status


def missing_file(path: str) -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message=f"{path!r} is not in the session's workspace")
    status.details.add().Pack(error_details_pb2.ResourceInfo(resource_type="file", resource_name=path))
    return status


@dataclass
class FlakySessions(sandbox_pb2_grpc.SandboxServicer):
    """A session's file and snapshot calls; the first ``failures[method]`` attempts of a method fail with
    ``failure`` (for DownloadFile, after its first content chunk when ``fail_after_content``)."""

    failures: Counter[str] = field(default_factory=Counter)
    failure: status_pb2.Status = field(default_factory=unavailable)
    fail_after_content: bool = False
    attempts: Counter[str] = field(default_factory=Counter)
    uploads: list[tuple[sandbox_pb2.UploadHeader, bytes]] = field(default_factory=list)
    """Every upload attempt as the server received it: its header, and all its content."""
    create_keys: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def reset(self) -> None:
        self.failures.clear()
        self.failure = unavailable()
        self.fail_after_content = False
        self.attempts.clear()
        self.uploads.clear()
        self.create_keys.clear()
        self.files.clear()

    async def _maybe_fail(self, method: str, context: grpc.aio.ServicerContext[object, object]) -> None:
        self.attempts[method] += 1
        if self.failures[method] > 0:
            self.failures[method] -= 1
            await context.abort_with_status(rpc_status.to_status(self.failure))

    async def CreateSession(
        self, request: sandbox_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Session:
        self.create_keys.append(request.idempotency_key)
        await self._maybe_fail("CreateSession", context)
        return sandbox_pb2.Session(id=SESSION_ID, state=sandbox_pb2.SESSION_STATE_READY)

    async def GetSession(
        self, request: sandbox_pb2.GetSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Session:
        return sandbox_pb2.Session(id=request.session_id, state=sandbox_pb2.SESSION_STATE_READY)

    async def CloseSession(
        self, request: sandbox_pb2.CloseSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Session:
        return sandbox_pb2.Session(id=request.session_id, state=sandbox_pb2.SESSION_STATE_CLOSED,
                                   close_reason="closed")

    async def UploadFile(
        self,
        request_iterator: AsyncIterator[sandbox_pb2.UploadFileRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> sandbox_pb2.FileInfo:
        header = sandbox_pb2.UploadHeader()
        content = bytearray()
        async for message in request_iterator:
            if message.HasField("header"):
                header.CopyFrom(message.header)
            else:
                content += message.chunk
        self.uploads.append((header, bytes(content)))
        await self._maybe_fail("UploadFile", context)
        self.files[header.path] = bytes(content)
        return sandbox_pb2.FileInfo(path=header.path, type=sandbox_pb2.FILE_TYPE_FILE, size=len(content))

    async def DownloadFile(
        self, request: sandbox_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[sandbox_pb2.DownloadFileResponse]:
        if not self.fail_after_content:
            await self._maybe_fail("DownloadFile", context)
        else:
            self.attempts["DownloadFile"] += 1
        content = self.files[request.path]
        yield sandbox_pb2.DownloadFileResponse(info=sandbox_pb2.FileInfo(path=request.path, size=len(content)))
        for start in range(0, len(content), 1024 * 1024):
            yield sandbox_pb2.DownloadFileResponse(chunk=content[start:start + 1024 * 1024])
            if self.fail_after_content and self.failures["DownloadFile"] > 0:
                self.failures["DownloadFile"] -= 1
                await context.abort_with_status(rpc_status.to_status(self.failure))

    async def DeleteFile(
        self, request: sandbox_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.DeleteFileResponse:
        if request.path not in self.files:
            self.attempts["DeleteFile"] += 1
            await context.abort_with_status(rpc_status.to_status(missing_file(request.path)))
        del self.files[request.path]
        await self._maybe_fail("DeleteFile", context)  # deleted, but the answer is lost
        return sandbox_pb2.DeleteFileResponse()

    async def SnapshotSession(
        self, request: sandbox_pb2.SnapshotSessionRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sandbox_pb2.Snapshot:
        await self._maybe_fail("SnapshotSession", context)
        return sandbox_pb2.Snapshot(id="snap_" + "a" * 32, session_id=request.session_id, name=request.name)


@pytest.fixture(scope="module")
def flaky_server() -> Iterator[tuple[str, FlakySessions]]:
    servicer = FlakySessions()

    def setup(server: grpc.aio.Server) -> None:
        sandbox_pb2_grpc.add_SandboxServicer_to_server(servicer, server)

    with grpc_server_in_thread(setup, name="flaky-sessions") as target:
        yield target, servicer


@pytest.fixture
def flaky(flaky_server: tuple[str, FlakySessions]) -> FlakySessions:
    flaky_server[1].reset()
    return flaky_server[1]


@pytest.fixture
def session(flaky_server: tuple[str, FlakySessions], flaky: FlakySessions) -> Iterator[Session]:
    with SandboxClient(flaky_server[0], retry=FAST_RETRIES, breaker=None, timeout=30) as sbx:
        yield sbx.attach_session(SESSION_ID)


@pytest.fixture
async def asession(flaky_server: tuple[str, FlakySessions], flaky: FlakySessions) -> AsyncIterator[AsyncSession]:
    async with AsyncSandboxClient(flaky_server[0], retry=FAST_RETRIES, breaker=None, timeout=30) as sbx:
        yield await sbx.attach_session(SESSION_ID)


# ---- uploads -------------------------------------------------------------------------------------------------


def test_an_upload_from_bytes_is_sent_again_whole(session: Session, flaky: FlakySessions) -> None:
    flaky.failures["UploadFile"] = 2
    info = session.files.upload("data/big.bin", CONTENT)
    assert (info.path, info.size, info.type) == ("data/big.bin", len(CONTENT), "file")
    assert len(flaky.uploads) == 3
    for header, content in flaky.uploads:
        assert (header.session_id, header.path, header.size) == (SESSION_ID, "data/big.bin", len(CONTENT))
        assert content == CONTENT


async def test_an_async_upload_from_str_is_sent_again_whole(asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.failures["UploadFile"] = 1
    await asession.files.upload("note.txt", "é")
    assert [content for _, content in flaky.uploads] == ["é".encode()] * 2


def test_an_upload_from_a_stream_is_not_retried(session: Session, flaky: FlakySessions) -> None:
    flaky.failures["UploadFile"] = 1
    with pytest.raises(UnavailableError):
        session.files.upload("big.bin", io.BytesIO(CONTENT))
    assert len(flaky.uploads) == 1
    assert flaky.uploads[0][1] == CONTENT
    assert flaky.uploads[0][0].size == len(CONTENT)  # a seekable stream's size is sent ahead
    flaky.failure = refused_with_retry_info()  # not even a refusal: the stream has been read
    flaky.failures["UploadFile"] = 1
    with pytest.raises(SessionBusyError):
        session.files.upload("big.bin", io.BytesIO(CONTENT))
    assert len(flaky.uploads) == 2


async def test_an_async_upload_from_a_stream_is_not_retried(asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.failures["UploadFile"] = 1
    with pytest.raises(UnavailableError):
        await asession.files.upload("big.bin", io.BytesIO(CONTENT))
    assert len(flaky.uploads) == 1
    assert flaky.uploads[0][1] == CONTENT
    assert (await asession.files.upload("big.bin", io.BytesIO(CONTENT))).size == len(CONTENT)


class BrokenReader(io.RawIOBase):
    """A stream whose second read fails."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError("the disk went away")
        return b"x" * 10


def test_a_failing_stream_raises_its_own_error(session: Session, flaky: FlakySessions) -> None:
    """Not the cancelled call's error, and not retried (the real server's test checks no file is left)."""
    with pytest.raises(OSError, match="the disk went away"):
        session.files.upload("sync-broken.bin", BrokenReader())  # type: ignore[arg-type]
    assert [header.path for header, _ in flaky.uploads].count("sync-broken.bin") <= 1


async def test_an_async_failing_stream_raises_its_own_error(asession: AsyncSession, flaky: FlakySessions) -> None:
    with pytest.raises(OSError, match="the disk went away"):
        await asession.files.upload("async-broken.bin", BrokenReader())  # type: ignore[arg-type]
    assert [header.path for header, _ in flaky.uploads].count("async-broken.bin") <= 1


# ---- downloads -----------------------------------------------------------------------------------------------


def test_a_download_is_retried_before_anything_arrived(session: Session, flaky: FlakySessions) -> None:
    flaky.files["big.bin"] = CONTENT
    flaky.failures["DownloadFile"] = 2
    assert session.files.download("big.bin") == CONTENT
    assert flaky.attempts["DownloadFile"] == 3


async def test_an_async_download_is_retried_before_anything_arrived(
        asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.files["big.bin"] = CONTENT
    flaky.failures["DownloadFile"] = 1
    assert await asession.files.download("big.bin") == CONTENT
    assert flaky.attempts["DownloadFile"] == 2


def test_a_download_cut_after_content_is_not_retried(session: Session, flaky: FlakySessions) -> None:
    flaky.files["big.bin"] = CONTENT
    flaky.fail_after_content = True
    flaky.failures["DownloadFile"] = 1
    chunks = session.files.iter_download("big.bin")
    assert next(chunks) == CONTENT[:1024 * 1024]
    with pytest.raises(UnavailableError):
        next(chunks)
    assert flaky.attempts["DownloadFile"] == 1


async def test_an_async_download_cut_after_content_is_not_retried(
        asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.files["big.bin"] = CONTENT
    flaky.fail_after_content = True
    flaky.failures["DownloadFile"] = 1
    sink = io.BytesIO()
    with pytest.raises(UnavailableError):
        await asession.files.download_to("big.bin", sink)
    assert sink.getvalue() == CONTENT[:1024 * 1024]
    assert flaky.attempts["DownloadFile"] == 1


# ---- deletes, snapshots, creates -----------------------------------------------------------------------------


def test_a_delete_whose_answer_was_lost_succeeds_on_its_retry(session: Session, flaky: FlakySessions) -> None:
    flaky.files["a.txt"] = b"a"
    flaky.failures["DeleteFile"] = 1
    session.files.delete("a.txt")  # attempt 1 deleted it and failed; attempt 2 finds it gone
    assert flaky.attempts["DeleteFile"] == 2
    with pytest.raises(NotFoundError) as info:  # a first attempt that finds nothing still says so
        session.files.delete("a.txt")
    assert info.value.resource_name == "a.txt"


async def test_an_async_delete_whose_answer_was_lost_succeeds_on_its_retry(
        asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.files["a.txt"] = b"a"
    flaky.failures["DeleteFile"] = 1
    await asession.files.delete("a.txt")
    assert flaky.attempts["DeleteFile"] == 2
    with pytest.raises(NotFoundError):
        await asession.files.delete("a.txt")


def test_a_snapshot_is_retried_after_a_refusal_but_not_after_unavailable(
        session: Session, flaky: FlakySessions) -> None:
    flaky.failures["SnapshotSession"] = 1
    with pytest.raises(UnavailableError):
        session.snapshot("once")
    assert flaky.attempts["SnapshotSession"] == 1
    flaky.failure = refused_with_retry_info()
    flaky.failures["SnapshotSession"] = 2
    assert session.snapshot("n").name == "n"
    assert flaky.attempts["SnapshotSession"] == 4


async def test_an_async_snapshot_is_not_retried_after_unavailable(
        asession: AsyncSession, flaky: FlakySessions) -> None:
    flaky.failures["SnapshotSession"] = 1
    with pytest.raises(UnavailableError):
        await asession.snapshot("once")
    assert flaky.attempts["SnapshotSession"] == 1


def test_a_create_is_retried_with_the_same_idempotency_key(
        flaky_server: tuple[str, FlakySessions], flaky: FlakySessions) -> None:
    flaky.failures["CreateSession"] = 2
    with SandboxClient(flaky_server[0], retry=FAST_RETRIES, breaker=None, timeout=30) as sbx:
        assert sbx.session().id == SESSION_ID
        assert len(flaky.create_keys) == 3
        assert len(set(flaky.create_keys)) == 1
        assert len(flaky.create_keys[0]) == 32
        sbx.session(idempotency_key="mine")
        assert flaky.create_keys[-1] == "mine"
    with SandboxClient(flaky_server[0], retry=None, breaker=None, timeout=30) as sbx:
        flaky.failure = refused_with_retry_info()
        flaky.failures["CreateSession"] = 1
        with pytest.raises(ResourceExhaustedError):
            sbx.session()


async def test_an_async_create_is_retried_with_the_same_idempotency_key(
        flaky_server: tuple[str, FlakySessions], flaky: FlakySessions) -> None:
    flaky.failures["CreateSession"] = 1
    async with AsyncSandboxClient(flaky_server[0], retry=FAST_RETRIES, breaker=None, timeout=30) as sbx, \
            sbx.session() as s:
        assert s.id == SESSION_ID
    assert len(flaky.create_keys) == 2
    assert len(set(flaky.create_keys)) == 1
