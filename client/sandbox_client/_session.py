"""A session, as the blocking client hands it out: its calls, its workspace files, its snapshots."""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Generator, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import grpc

from sandbox_client._convert import file_info_from_proto, snapshot_from_proto, upload_header, upload_requests
from sandbox_client._errors import FILE_RESOURCE, NotFoundError, SessionNotFoundError, from_rpc_error
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

if TYPE_CHECKING:
    from sandbox_client._sync import SandboxClient

logger = logging.getLogger(__name__)


class Session:
    """A live session of a ``SandboxClient`` (``sbx.session(...)``, ``sbx.attach_session(id)``): one sandbox kept
    across calls, with a stateful Python kernel and a workspace of files.

        with sbx.session(idle_timeout_s=300) as s:
            s.run("import pandas as pd; df = pd.DataFrame({'a': [1, 2]})")
            s.run("df.a.sum()").value                     # "3"
            s.files.upload("data.csv", b"a,b\\n1,2\\n")

    Calls to one session run one at a time, in order (more than the tenant lets wait are refused with
    ``SessionBusyError``, which the client's retry policy retries). It closes when ``close`` is called (or the
    ``with`` block ends), and on its own at its idle timeout, its lifetime or its CPU total: every call then raises
    ``SessionNotFoundError`` with the ``close_reason``. Thread-safe, as its client is.
    """

    def __init__(self, client: SandboxClient, info: SessionInfo, language: str) -> None:
        self._client = client
        self._info = info
        self._language = language
        self._files = SessionFiles(client, info.id)
        self._closed = False

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, language={self._language!r})"

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
    def files(self) -> SessionFiles:
        """The session's workspace: the working directory of its calls."""
        return self._files

    def refresh(self, *, timeout: float | None = None) -> SessionInfo:
        """The session as it stands now (state, usage, expiry).

        Raises:
            SessionNotFoundError: it is closed (``close_reason`` says why).
            SandboxError: the call failed otherwise.
        """
        return self._client.get_session(self.id, timeout=timeout)

    def run(
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
    ) -> ExecutionResult:
        """Run ``code`` in the session (``language``, default the session's) and return how it ended.

        Python runs in the session's kernel: variables and imports live on, ``value`` is the repr of the last
        expression, ``outputs`` the figures and ``display()`` outputs, ``error`` the exception that ended it (the
        kernel survives it; ``status`` is NONZERO_EXIT). Bash and JavaScript run as a new process in the
        workspace. ``files`` are written to the workspace first; ``env`` applies to bash and JavaScript calls only
        (Python's environment is the session's); ``limits`` may set ``wall_time_s``, ``cpu_time_s`` and
        ``output_bytes`` of this call (the others are the session's).

        Retries, idempotency key and deadline are ``SandboxClient.execute``'s: the call runs at most once.

        Raises:
            SessionNotFoundError: the session is closed (``close_reason`` says why).
            SessionBusyError: calls queue up in it past the tenant's limit (after the retries).
            SandboxError: the call failed otherwise.
        """
        return self._client.execute(
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
    ) -> Iterator[OutputChunk | DisplayData | ExecutionResult]:
        """``run``, yielding the output as it comes: ``OutputChunk`` and ``DisplayData`` items, then, last, the
        ``ExecutionResult`` (its stdout, stderr and ``outputs`` the streamed ones, joined). The stream's rules are
        ``SandboxClient.execute_stream``'s (retried before the first item; ``StreamInterruptedError`` after it).

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

    def snapshot(self, name: str = "", *, timeout: float | None = None) -> SnapshotInfo:
        """Save the workspace's regular files durably (links, FIFOs and devices are left out and counted); it
        waits for a running call to end first. ``session(snapshot_id=...)`` starts a new session from it.

        Not retried after UNAVAILABLE (a repeat would save a second snapshot): on that error, look for it in
        ``list_snapshots()``.

        Raises:
            SessionNotFoundError: the session is closed.
            ResourceExhaustedError: the files are over the tenant's snapshot size, or it keeps as many snapshots
                as it may.
            SandboxError: the call failed otherwise.
        """
        client = self._client
        client._check_open()
        request = sandbox_pb2.SnapshotSessionRequest(session_id=self.id, name=name)
        response = client._unary(client._stub.SnapshotSession, request, timeout, retrying=Retrying.REFUSALS)
        return snapshot_from_proto(response)

    def close(self, *, timeout: float | None = None) -> SessionInfo | None:
        """Close the session now (a call running in it ends KILLED): its final state, or None when it was gone
        already (closed before, by this object or otherwise). Idempotent.

        Raises:
            SandboxError: the call failed (not for a session already gone); calling again retries the close.
        """
        if self._closed:
            return None
        try:
            final: SessionInfo | None = self._client.close_session(self.id, timeout=timeout)
        except SessionNotFoundError:
            final = None
        self._closed = True
        return final


class SessionFiles:
    """A session's workspace: the files its calls see in their working directory. Paths are relative and
    normalised ("data/in.csv"; no "..", no absolute path); links are never followed.

    Raises (every method):
        SessionNotFoundError: the session is closed.
        NotFoundError: the path is not in the workspace (``resource_type`` "file").
        InvalidRequestError: a bad path, a directory where a file is due, a link, ...
        SandboxError: the call failed otherwise.
    """

    def __init__(self, client: SandboxClient, session_id: str) -> None:
        self._client = client
        self._session_id = session_id

    def __repr__(self) -> str:
        return f"SessionFiles(session_id={self._session_id!r})"

    def upload(self, path: str, data: bytes | str | BinaryIO, *, timeout: float | None = None) -> FileInfo:
        """Write ``data`` to ``path`` (missing directories are made; an existing file is replaced): bytes, str (sent
        as UTF-8), or a binary stream read to its end. The file appears whole or not at all.

        Sent in chunks of 1 MiB. Bytes and str are sent again whole when the connection fails (retried like
        ``execute``); a stream is read once as it is sent, so it is not retried.

        Raises:
            ResourceExhaustedError: over the session's file size limit, or the workspace is full.
            TypeError: ``data`` is of another type, or the stream gives text.
            OSError: the stream's own read failed (the upload is then abandoned: the file is left as it was).
        """
        client = self._client
        client._check_open()
        source = UploadSource(data)
        stub = client._stub

        def send(header: sandbox_pb2.UploadFileRequest, **kwargs: Any) -> sandbox_pb2.FileInfo:
            try:
                response: sandbox_pb2.FileInfo = stub.UploadFile(upload_requests(header, source.chunks()), **kwargs)
            except grpc.RpcError:
                source.raise_read_error()  # the stream's own failure ended the call: that is the error to see
                raise
            return response

        header = upload_header(self._session_id, path, source.size)
        return file_info_from_proto(client._unary(send, header, timeout, retrying=source.retrying))

    def iter_download(self, path: str, *, timeout: float | None = None) -> Iterator[bytes]:
        """The file's content, in chunks as they arrive (at most 1 MiB each). The call starts at the first
        ``next()``; ``timeout`` bounds the whole download. Closing the iterator early cancels it.

        A failure before anything of the file arrived is retried like ``execute``'s; after it, it is raised.
        """
        request = sandbox_pb2.DownloadFileRequest(session_id=self._session_id, path=path)
        return _content(self._client._server_stream(self._client._stub.DownloadFile, request, timeout))

    def download(self, path: str, *, timeout: float | None = None) -> bytes:
        """The file's content, whole (``iter_download`` or ``download_to`` for a large one)."""
        return b"".join(self.iter_download(path, timeout=timeout))

    def download_to(self, path: str, dest: BinaryIO, *, timeout: float | None = None) -> int:
        """Write the file's content to ``dest`` (a binary file object) as it arrives; the bytes written.

        On a failure part of the content may have been written already.
        """
        written = 0
        for chunk in self.iter_download(path, timeout=timeout):
            dest.write(chunk)
            written += len(chunk)
        return written

    def list(self, path: str = "", *, recursive: bool = False, timeout: float | None = None) -> builtins.list[FileInfo]:
        """The entries of the directory ``path`` ("": the workspace's root), sorted by path; with ``recursive``,
        those of its subdirectories too. Links are listed, never followed. A directory with more entries than the
        server lists at once gives the first ones (a warning is logged).
        """
        client = self._client
        client._check_open()
        request = sandbox_pb2.ListFilesRequest(session_id=self._session_id, path=path, recursive=recursive)
        response = client._unary(client._stub.ListFiles, request, timeout)
        if response.truncated:
            logger.warning("session %s: the listing of %r is cut at %d entries", self._session_id, path or ".",
                           len(response.files))
        return [file_info_from_proto(message) for message in response.files]

    def delete(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        """Delete a file or link, or a directory (with ``recursive``, needed for one that is not empty).

        A retry after a lost answer that finds the path gone counts it deleted (the earlier attempt did it).
        """
        client = self._client
        client._check_open()
        stub = client._stub
        attempts = 0

        def call(request: sandbox_pb2.DeleteFileRequest, **kwargs: Any) -> sandbox_pb2.DeleteFileResponse:
            nonlocal attempts
            attempts += 1
            try:
                response: sandbox_pb2.DeleteFileResponse = stub.DeleteFile(request, **kwargs)
            except grpc.RpcError as rpc_error:
                if attempts > 1 and is_missing_file(from_rpc_error(rpc_error)):
                    return sandbox_pb2.DeleteFileResponse()
                raise
            return response

        request = sandbox_pb2.DeleteFileRequest(session_id=self._session_id, path=path, recursive=recursive)
        client._unary(call, request, timeout)


def is_missing_file(error: Exception) -> bool:
    """NOT_FOUND for a workspace path (not for the session)."""
    return isinstance(error, NotFoundError) and error.resource_type == FILE_RESOURCE


def _content(responses: Generator[sandbox_pb2.DownloadFileResponse, None, None]) -> Iterator[bytes]:
    """The content chunks of DownloadFile's messages (the first carries the file's info only)."""
    with contextlib.closing(responses):
        for message in responses:
            if message.chunk:
                yield message.chunk
