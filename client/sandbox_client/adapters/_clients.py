"""What the dispatchers need of a client: the protocols a host's client fits (``SandboxClient`` and
``AsyncSandboxClient`` do), and the asyncio shape of a client and its sessions that the dispatchers' calls are
written against (``_dispatch_core``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

from sandbox_client._models import ExecutionResult, FileInfo, Limits, Network, SessionInfo

if TYPE_CHECKING:
    from sandbox_client._aio_session import AsyncSession
    from sandbox_client._session import Session


class Executor(Protocol):
    """What ``ToolDispatcher`` needs of a client: ``SandboxClient.execute`` (the client itself fits). ``network`` is
    passed only when the dispatcher has one."""

    def execute(
        self, code: str, *, language: str = ..., stdin: str | bytes = ..., limits: Limits | None = ...,
        network: Network | None = ..., session_id: str = ..., timeout: float | None = ...,
    ) -> ExecutionResult: ...


class AsyncExecutor(Protocol):
    """What ``AsyncToolDispatcher`` needs of a client: ``AsyncSandboxClient.execute``."""

    async def execute(
        self, code: str, *, language: str = ..., stdin: str | bytes = ..., limits: Limits | None = ...,
        network: Network | None = ..., session_id: str = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult: ...


class SessionClient(Executor, Protocol):
    """What the session tools need of a client besides ``execute``: ``SandboxClient`` fits. A dispatcher over a
    client without ``session`` answers the session tools as unknown tools."""

    def session(
        self, language: str = ..., *, languages: Sequence[str] | None = ..., limits: Limits | None = ...,
        network: Network | None = ..., idle_timeout_s: int | None = ..., labels: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
    ) -> Session: ...

    def attach_session(self, session_id: str, language: str = ..., *, timeout: float | None = ...) -> Session: ...

    def close_session(self, session_id: str, *, timeout: float | None = ...) -> SessionInfo: ...


class AsyncSessionClient(AsyncExecutor, Protocol):
    """``SessionClient`` for ``AsyncToolDispatcher``: ``AsyncSandboxClient`` fits."""

    def session(
        self, language: str = ..., *, languages: Sequence[str] | None = ..., limits: Limits | None = ...,
        network: Network | None = ..., idle_timeout_s: int | None = ..., labels: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
    ) -> Awaitable[AsyncSession]: ...

    async def attach_session(
        self, session_id: str, language: str = ..., *,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncSession: ...

    async def close_session(
        self, session_id: str, *,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo: ...


# -- the asyncio shape the calls are written against (the sync dispatcher gives a SandboxClient this shape) -------


class _Workspace(Protocol):
    """What the ``session_files`` actions need of a session's files: ``AsyncSessionFiles`` fits (the sync
    dispatcher gives ``SessionFiles`` this shape)."""

    async def upload(self, path: str, data: str) -> FileInfo: ...

    def iter_download(self, path: str) -> AsyncIterator[bytes]: ...

    async def list(self, path: str, *, recursive: bool = False) -> Sequence[FileInfo]: ...

    async def delete(self, path: str, *, recursive: bool = False) -> None: ...


class _Session(Protocol):
    """What the calls need of a session: ``AsyncSession`` fits."""

    @property
    def id(self) -> str: ...

    @property
    def info(self) -> SessionInfo: ...

    @property
    def files(self) -> _Workspace: ...

    async def refresh(self) -> SessionInfo: ...

    async def run(
        self, code: str, *, language: str, stdin: str, limits: Limits | None,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult: ...


_S = TypeVar("_S", bound=_Session)
_S_co = TypeVar("_S_co", bound=_Session, covariant=True)


class _Client(Protocol[_S_co]):
    """What the calls need of a client: ``AsyncSandboxClient`` fits. Its session methods are called only when the
    dispatcher runs the session tools (the client has them); ``network`` is passed only when the dispatcher has
    one (a client of the host's own that predates it works as before)."""

    async def execute(
        self, code: str, *, language: str, stdin: str, limits: Limits | None, session_id: str,
        timeout: float | None,  # noqa: ASYNC109 (the gRPC deadline)
        network: Network | None = ...,
    ) -> ExecutionResult: ...

    def session(
        self, *, languages: Sequence[str] | None, limits: Limits | None, idle_timeout_s: int | None,
        labels: Mapping[str, str] | None, network: Network | None = ...,
    ) -> Awaitable[_S_co]: ...

    async def attach_session(self, session_id: str) -> _S_co: ...

    async def close_session(self, session_id: str) -> SessionInfo: ...


class _NetworkArgument(TypedDict, total=False):
    network: Network


def network_argument(network: Network | None) -> _NetworkArgument:
    """``network=`` for a client's call, or nothing when there is none: a client of the host's own written before
    the argument existed keeps working while no network is set."""
    return {} if network is None else {"network": network}
