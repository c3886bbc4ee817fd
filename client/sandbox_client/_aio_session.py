"""A session, as the asyncio client hands it out: the twin of ``_session``, every method awaited."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import grpc
import grpc.aio

from sandbox_client._convert import aupload_requests, file_info_from_proto, snapshot_from_proto, upload_header
from sandbox_client._errors import SessionNotFoundError, from_aio_rpc_error
from sandbox_client._files import UploadSource
from sandbox_client._models import (
    DisplayData,
    ExecutionResult,
    FileInfo,
    Limits,
    OutputChunk,
    SessionInfo,
    SnapshotInfo,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_client._retry import Retrying
from sandbox_client._session import is_missing_file

if TYPE_CHECKING:
    from sandbox_client._aio import AsyncSandboxClient

logger = logging.getLogger(__name__)


class AsyncSessionContext:
    """What ``AsyncSandboxClient.session(...)`` returns: await it for the ``AsyncSession``, or enter it with
    ``async with`` to have the session closed on leaving the block. Either, once."""

    def __init__(self, create: Coroutine[Any, Any, AsyncSession]) -> None:
        self._create: Coroutine[Any, Any, AsyncSession] | None = create
        self._session: AsyncSession | None = None

    def __del__(self) -> None:
        if self._create is not None:  # never awaited nor entered: no session was made
            self._create.close()

    def _take(self) -> Coroutine[Any, Any, AsyncSession]:
        create, self._create = self._create, None
        if create is None:
            raise RuntimeError("this session() was awaited or entered already: call session() again for another")
        return create

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._take().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._take()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.aclose()


class AsyncSession:
    """A live session of an ``AsyncSandboxClient``: the twin of ``Session``, every call awaited.

        async with sbx.session(idle_timeout_s=300) as s:
            await s.run("x = 41")
            (await s.run("x + 1")).value                    # "42"
            await s.files.upload("data.csv", b"a,b\\n1,2\\n")

    Use it from the client's event loop only.
    """

    def __init__(self, client: AsyncSandboxClient, info: SessionInfo, language: str) -> None:
        self._client = client
        self._info = info
        self._language = language
        self._files = AsyncSessionFiles(client, info.id)
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncSession(id={self.id!r}, language={self._language!r})"

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def id(self) -> str:
        """"ses_" + 32 base-32 characters: pass it to ``attach_session`` to use the session from elsewhere."""
        return self._info.id

    @property
    def language(self) -> str:
        """The default language of ``run`` and ``run_stream``."""
        return self._language

    @property
    def info(self) -> SessionInfo:
        """The session as it was when this object was made (created or attached); ``refresh()`` fetches it now."""
        return self._info

    @property
    def files(self) -> AsyncSessionFiles:
        """The session's workspace: the working directory of its calls."""
        return self._files

    async def refresh(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo:
        """The session as it stands now (see ``Session.refresh``)."""
        return await self._client.get_session(self.id, timeout=timeout)

    async def run(
        self,
        code: str,
        *,
        language: str | None = None,
        stdin: str | bytes = b"",
        files: Mapping[str, bytes | str] | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        idempotency_key: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult:
        """Run ``code`` in the session and return how it ended (see ``Session.run``).

        Raises:
            SessionNotFoundError: the session is closed (``close_reason`` says why).
            SessionBusyError: calls queue up in it past the tenant's limit (after the retries).
            SandboxError: the call failed otherwise.
        """
        return await self._client.execute(
            code,
            language=self._language if language is None else language,
            stdin=stdin,
            files=files,
            env=env,
            limits=limits,
            session_id=self.id,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )

    def run_stream(
        self,
        code: str,
        *,
        language: str | None = None,
        stdin: str | bytes = b"",
        files: Mapping[str, bytes | str] | None = None,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        idempotency_key: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[OutputChunk | DisplayData | ExecutionResult]:
        """``run``, yielding ``OutputChunk`` and ``DisplayData`` items as they come, then the ``ExecutionResult``
        (see ``Session.run_stream``). A plain method: ``async for item in s.run_stream(...)``.

        Raises:
            SandboxError: while iterating, when the call fails (see ``run``).
        """
        return self._client.execute_stream(
            code,
            language=self._language if language is None else language,
            stdin=stdin,
            files=files,
            env=env,
            limits=limits,
            session_id=self.id,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )

    async def snapshot(
        self,
        name: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SnapshotInfo:
        """Save the workspace's regular files durably (see ``Session.snapshot``: not retried after UNAVAILABLE).

        Raises:
            SessionNotFoundError: the session is closed.
            ResourceExhaustedError: over the tenant's snapshot size or count.
            SandboxError: the call failed otherwise.
        """
        client = self._client
        request = sandbox_pb2.SnapshotSessionRequest(session_id=self.id, name=name)
        response: sandbox_pb2.Snapshot = await client._unary(
            client._get_stub().SnapshotSession, request, timeout, retrying=Retrying.REFUSALS)
        return snapshot_from_proto(response)

    async def aclose(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo | None:
        """Close the session now: its final state, or None when it was gone already. Idempotent (see
        ``Session.close``).

        Raises:
            SandboxError: the call failed (not for a session already gone); calling again retries the close.
        """
        if self._closed:
            return None
        try:
            final: SessionInfo | None = await self._client.close_session(self.id, timeout=timeout)
        except SessionNotFoundError:
            final = None
        self._closed = True
        return final

    async def close(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo | None:
        """``aclose``, under the name ``Session`` uses."""
        return await self.aclose(timeout=timeout)


class AsyncSessionFiles:
    """A session's workspace (see ``SessionFiles``: the same paths, rules and errors), every call awaited."""

    def __init__(self, client: AsyncSandboxClient, session_id: str) -> None:
        self._client = client
        self._session_id = session_id

    def __repr__(self) -> str:
        return f"AsyncSessionFiles(session_id={self._session_id!r})"

    async def upload(
        self,
        path: str,
        data: bytes | str | BinaryIO,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> FileInfo:
        """Write ``data`` to ``path`` (see ``SessionFiles.upload``: bytes and str retried, a stream not). A stream
        is read in a worker thread, off the event loop.

        Raises:
            ResourceExhaustedError: over the session's file size limit, or the workspace is full.
            TypeError: ``data`` is of another type, or the stream gives text.
            OSError: the stream's own read failed.
        """
        client = self._client
        source = UploadSource(data)
        stub = client._get_stub()

        async def send(header: sandbox_pb2.UploadFileRequest, **kwargs: Any) -> sandbox_pb2.FileInfo:
            try:
                response: sandbox_pb2.FileInfo = await stub.UploadFile(
                    aupload_requests(header, source.achunks()), **kwargs)
            except grpc.aio.AioRpcError:
                source.raise_read_error()  # the stream's own failure ended the call: that is the error to see
                raise
            except asyncio.CancelledError:
                # grpc.aio ends a call whose request iterator raised as cancelled; unless this task itself is
                # being cancelled, that failure is the error to see.
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    source.raise_read_error()
                raise
            return response

        header = upload_header(self._session_id, path, source.size)
        return file_info_from_proto(await client._unary(send, header, timeout, retrying=source.retrying))

    def iter_download(self, path: str, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """The file's content, in chunks as they arrive (see ``SessionFiles.iter_download``). A plain method:
        ``async for chunk in s.files.iter_download(path)``."""
        client = self._client
        request = sandbox_pb2.DownloadFileRequest(session_id=self._session_id, path=path)
        return _content(client._server_stream(client._get_stub().DownloadFile, request, timeout))

    async def download(
        self,
        path: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> bytes:
        """The file's content, whole."""
        return b"".join([chunk async for chunk in self.iter_download(path, timeout=timeout)])

    async def download_to(
        self,
        path: str,
        dest: BinaryIO,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> int:
        """Write the file's content to ``dest`` as it arrives (each write in a worker thread); the bytes
        written."""
        written = 0
        async for chunk in self.iter_download(path, timeout=timeout):
            await asyncio.to_thread(dest.write, chunk)
            written += len(chunk)
        return written

    async def list(
        self,
        path: str = "",
        *,
        recursive: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> builtins.list[FileInfo]:
        """The entries of the directory ``path`` (see ``SessionFiles.list``)."""
        client = self._client
        request = sandbox_pb2.ListFilesRequest(session_id=self._session_id, path=path, recursive=recursive)
        response: sandbox_pb2.ListFilesResponse = await client._unary(client._get_stub().ListFiles, request, timeout)
        if response.truncated:
            logger.warning("session %s: the listing of %r is cut at %d entries", self._session_id, path or ".",
                           len(response.files))
        return [file_info_from_proto(message) for message in response.files]

    async def delete(
        self,
        path: str,
        *,
        recursive: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> None:
        """Delete a file, link or directory (see ``SessionFiles.delete``)."""
        client = self._client
        stub = client._get_stub()
        attempts = 0

        async def call(request: sandbox_pb2.DeleteFileRequest, **kwargs: Any) -> sandbox_pb2.DeleteFileResponse:
            nonlocal attempts
            attempts += 1
            try:
                response: sandbox_pb2.DeleteFileResponse = await stub.DeleteFile(request, **kwargs)
            except grpc.aio.AioRpcError as rpc_error:
                if attempts > 1 and is_missing_file(from_aio_rpc_error(rpc_error)):
                    return sandbox_pb2.DeleteFileResponse()
                raise
            return response

        request = sandbox_pb2.DeleteFileRequest(session_id=self._session_id, path=path, recursive=recursive)
        await client._unary(call, request, timeout)


async def _content(responses: AsyncGenerator[sandbox_pb2.DownloadFileResponse, None]) -> AsyncIterator[bytes]:
    """The content chunks of DownloadFile's messages (the first carries the file's info only)."""
    async with contextlib.aclosing(responses):
        async for message in responses:
            if message.chunk:
                yield message.chunk
