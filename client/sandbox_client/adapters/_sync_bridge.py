"""A ``SandboxClient`` in the asyncio shape the dispatchers' calls are written for (``_dispatch_core``), so that
``ToolDispatcher`` runs the same calls as ``AsyncToolDispatcher``: each ``async`` method here makes its blocking
call and returns, never suspending, and ``run_sync`` runs such a coroutine to its end without an event loop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from sandbox_client._models import ExecutionResult, FileInfo, Limits, Network, SessionInfo
from sandbox_client.adapters._clients import Executor, SessionClient, network_argument

if TYPE_CHECKING:
    from sandbox_client._session import Session, SessionFiles

_T = TypeVar("_T")


def run_sync(call: Coroutine[object, None, _T]) -> _T:
    """The value of a coroutine that never suspends (its awaits are of this module's methods), run to its end.

    Raises:
        What the coroutine raises; RuntimeError if it suspended (it awaited something of an event loop's: a bug).
    """
    try:
        call.send(None)
    except StopIteration as done:
        value: _T = done.value
        return value
    call.close()
    raise RuntimeError("a sync dispatcher's call suspended: it awaited something that needs an event loop")


class SyncClient:
    """``client`` (a ``SandboxClient``, or anything with its ``execute``) with asyncio-shaped methods."""

    def __init__(self, client: Executor) -> None:
        self._client = client

    async def execute(
        self, code: str, *, language: str, stdin: str, limits: Limits | None, session_id: str,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline)
        network: Network | None = None,
    ) -> ExecutionResult:
        return self._client.execute(code, language=language, stdin=stdin, limits=limits, session_id=session_id,
                                    timeout=timeout, **network_argument(network))

    async def session(
        self, *, languages: Sequence[str] | None, limits: Limits | None, idle_timeout_s: int | None,
        labels: Mapping[str, str] | None, network: Network | None = None,
    ) -> SyncSession:
        return SyncSession(self._sessions.session(languages=languages, limits=limits, idle_timeout_s=idle_timeout_s,
                                                  labels=labels, **network_argument(network)))

    async def attach_session(self, session_id: str) -> SyncSession:
        return SyncSession(self._sessions.attach_session(session_id))

    async def close_session(self, session_id: str) -> SessionInfo:
        return self._sessions.close_session(session_id)

    @property
    def _sessions(self) -> SessionClient:
        return self._client  # type: ignore[return-value]  # called only when the dispatcher found it has session()


class SyncSession:
    """A ``Session`` with asyncio-shaped methods."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def info(self) -> SessionInfo:
        return self._session.info

    @property
    def files(self) -> _SyncFiles:
        return _SyncFiles(self._session.files)

    async def refresh(self) -> SessionInfo:
        return self._session.refresh()

    async def run(
        self, code: str, *, language: str, stdin: str, limits: Limits | None,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult:
        return self._session.run(code, language=language, stdin=stdin, limits=limits, timeout=timeout)


class _SyncFiles:
    """``SessionFiles`` with asyncio-shaped methods."""

    def __init__(self, files: SessionFiles) -> None:
        self._files = files

    async def upload(self, path: str, data: str) -> FileInfo:
        return self._files.upload(path, data)

    def iter_download(self, path: str) -> AsyncIterator[bytes]:
        return _chunks(self._files.iter_download(path))

    async def list(self, path: str, *, recursive: bool = False) -> Sequence[FileInfo]:
        return self._files.list(path, recursive=recursive)

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        self._files.delete(path, recursive=recursive)


async def _chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks of a download; closing this closes ``chunks``, which cancels the rest of the download."""
    try:
        for chunk in chunks:
            yield chunk
    finally:
        with contextlib.suppress(AttributeError):
            chunks.close()  # type: ignore[attr-defined]  # the generator iter_download returns


class ThreadLock:
    """A ``threading.Lock`` taken with ``async with`` (it blocks the thread, as the sync dispatcher may)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def __aenter__(self) -> None:
        self._lock.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
