"""``ToolDispatcher`` and ``AsyncToolDispatcher``: the one API a host calls per tool call. Both run the same calls
(``_dispatch_core``); the sync one over its client put in their asyncio shape (``_sync_bridge``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sandbox_client._models import Limits, Network
from sandbox_client.adapters._clients import _S, AsyncExecutor, AsyncSessionClient, Executor
from sandbox_client.adapters._dispatch_core import DEFAULT_MAX_SESSIONS, ToolOutcome, _Core, _Settings
from sandbox_client.adapters._messages import (
    _anthropic_answer,
    _anthropic_call,
    _openai_answer,
    _openai_call,
    _responses_answer,
    _responses_call,
)
from sandbox_client.adapters._specs import (
    TOOL_NAME,
    ToolSpec,
    _anthropic_shape,
    _openai_responses_shape,
    _openai_shape,
    tool_specs,
)
from sandbox_client.adapters._sync_bridge import SyncClient, SyncSession, ThreadLock, run_sync
from sandbox_client.adapters._text import DEFAULT_MAX_OUTPUT_CHARS

if TYPE_CHECKING:
    from sandbox_client._aio_session import AsyncSession
    from sandbox_client._session import Session

_C = TypeVar("_C")


class _Dispatcher(Generic[_C, _S]):
    """The settings both dispatchers take, and expose read-only; the calls are their core's (``_make_core``)."""

    def __init__(
        self,
        client: _C,
        *,
        session_id: str = "",
        limits: Limits | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        name: str = TOOL_NAME,
        session_tools: bool = True,
        session_limits: Limits | None = None,
        session_labels: Mapping[str, str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        network: Network | None = None,
    ) -> None:
        sessions = session_tools and callable(getattr(client, "session", None))
        settings = _Settings(name=name, session_id=session_id, limits=limits, max_output_chars=max_output_chars,
                             sessions=sessions, session_limits=session_limits, session_labels=session_labels,
                             max_sessions=max_sessions, network=network)
        self._core = self._make_core(client, settings)

    def _make_core(self, client: _C, settings: _Settings) -> _Core[_S]:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self._core.settings.name

    @property
    def session_id(self) -> str:
        return self._core.settings.session_id

    @property
    def limits(self) -> Limits | None:
        return self._core.settings.limits

    @property
    def max_output_chars(self) -> int:
        return self._core.settings.max_output_chars

    @property
    def network(self) -> Network | None:
        return self._core.settings.network

    @property
    def session_tools(self) -> bool:
        """The dispatcher runs the session tools (asked for, and the client has sessions)."""
        return self._core.settings.sessions

    @property
    def sessions(self) -> tuple[str, ...]:
        """The ids of the sessions the model can use that are not known to be closed."""
        return tuple(s.id for s in self._core.sessions.open_sessions())

    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The tools this dispatcher runs (its ``name``; the session tools when it runs them), described for its
        ``network``: what to offer the model. ``openai_tools()`` and the others shape them for each API."""
        settings = self._core.settings
        return tool_specs(sessions=settings.sessions, name=settings.name, network=settings.network)

    def openai_tools(self) -> list[dict[str, Any]]:
        """``tool_specs()`` for OpenAI Chat Completions."""
        return [_openai_shape(spec) for spec in self.tool_specs()]

    def openai_responses_tools(self) -> list[dict[str, Any]]:
        """``tool_specs()`` for the OpenAI Responses API."""
        return [_openai_responses_shape(spec) for spec in self.tool_specs()]

    def anthropic_tools(self) -> list[dict[str, Any]]:
        """``tool_specs()`` for the Anthropic Messages API."""
        return [_anthropic_shape(spec) for spec in self.tool_specs()]


class ToolDispatcher(_Dispatcher[Executor, SyncSession]):
    """Runs ``execute_code`` and the session tools' calls through a ``SandboxClient`` and answers with text for
    the model.

    Args:
        client: a ``SandboxClient`` (or anything with its ``execute``); used as is, never closed here.
        session_id: sent with every execution (the server's per-session budgets, rate limits and audit), and
            given as the ``conversation`` label (``SESSION_LABEL``) to the sessions ``create_session`` starts.
        limits: the limits of every execution; a call's ``timeout_s`` replaces ``wall_time_s``. None: the
            server's defaults. In a session, only its wall time, CPU time and output size apply (per call).
        max_output_chars: characters of stdout, and as many of stderr, the model sees (head and tail kept).
        name: the tool's name, if the host gave it another one in its tool definition.
        session_tools: run ``create_session``, ``run_in_session``, ``session_files`` and ``close_session``
            calls (when the client has sessions); False answers them as unknown tools.
        session_limits: the limits of the sessions ``create_session`` starts (None: the tenant's defaults).
        session_labels: labels of your own for those sessions.
        max_sessions: sessions the model may hold open at once through this dispatcher.
        network: the network of every execution and of the sessions ``create_session`` starts
            (``Network.none()``, ``Network.allowlist(...)``: it narrows the tenant's, never widens it; a rule outside
            the tenant's allow-list makes every call a refusal). None: the tenant's. It is the host's setting: no
            tool argument lets the model choose or widen it. ``tool_specs()`` (and ``openai_tools()``, ...) describe
            it to the model; the module's ``openai_tools(network=...)`` and the others do too.

    The model can use only the sessions this dispatcher started or adopted (``adopt_session``), and those that
    carry its ``session_id`` as their ``conversation`` label (started by another dispatcher of the same
    conversation). ``close_sessions()``, or leaving a ``with`` block, closes the ones it started and the model
    left open; others close at their idle timeout.

    Raises:
        ValueError, TypeError: a setting is invalid (``network`` with a sandbox session's id as ``session_id``).
    """

    def _make_core(self, client: Executor, settings: _Settings) -> _Core[SyncSession]:
        return _Core(SyncClient(client), settings, ThreadLock())

    def __enter__(self) -> ToolDispatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        self.close_sessions()

    def adopt_session(self, session: Session) -> None:
        """Let the model use a session of your own (``sbx.session(...)``, ``sbx.attach_session(id)``) by its id;
        ``close_sessions`` leaves it open (it is yours to close)."""
        self._core.sessions.add(SyncSession(session), owned=False)

    def close_sessions(self) -> None:
        """Close the sessions this dispatcher started that are still open. A failure is logged, not raised."""
        run_sync(self._core.close_sessions())

    def dispatch(self, name: str, arguments: Mapping[str, object] | str | None) -> str:
        """Run one tool call (``arguments``: a dict, or the JSON string OpenAI sends) and return the text the
        model should see. A model's mistake (unknown tool, bad arguments) and the sandbox's refusals come back
        as text, never as an exception.

        Raises:
            RuntimeError: the client is closed (the host's mistake, not the model's).
        """
        return self.dispatch_outcome(name, arguments).text

    def dispatch_outcome(self, name: str, arguments: Mapping[str, object] | str | None) -> ToolOutcome:
        """Like ``dispatch``, with whether it is an error and the result or refusal behind the text."""
        return run_sync(self._core.dispatch(name, arguments))

    def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """Run a Chat Completions tool call (SDK object or dict) and return the ``{"role": "tool", ...}`` message
        that answers it (text only: a tool message takes no images; see ``openai_image_parts``).

        Raises:
            ValueError: the tool call has no id.
        """
        return _openai_answer(tool_call, self.dispatch_outcome(*_openai_call(tool_call)))

    def handle_openai_responses_call(self, function_call: object, *, images: bool = False) -> dict[str, Any]:
        """Run a Responses API ``function_call`` item and return the ``function_call_output`` item answering it.
        With ``images``, a result's figures come too: the output is then a list, an ``input_text`` part and
        ``input_image`` parts.

        Raises:
            ValueError: the function call has no call_id.
        """
        return _responses_answer(function_call, self.dispatch_outcome(*_responses_call(function_call)), images)

    def handle_anthropic_tool_use(self, tool_use: object, *, images: bool = False) -> dict[str, Any]:
        """Run an Anthropic ``tool_use`` block and return the ``tool_result`` block answering it (``is_error``
        set as in ``ToolOutcome``). With ``images``, a result's figures come too: the content is then a list, a
        text block and image blocks.

        Raises:
            ValueError: the block has no id.
        """
        return _anthropic_answer(tool_use, self.dispatch_outcome(*_anthropic_call(tool_use)), images)


class AsyncToolDispatcher(_Dispatcher[AsyncExecutor, "AsyncSession"]):
    """The asyncio twin of ``ToolDispatcher``, over an ``AsyncSandboxClient``; same arguments and texts
    (``async with`` closes the sessions it started; ``await close_sessions()`` too)."""

    def _make_core(self, client: AsyncExecutor, settings: _Settings) -> _Core[AsyncSession]:
        # Its session methods are called only when it has them (settings.sessions).
        return _Core(cast("AsyncSessionClient", client), settings, asyncio.Lock())

    async def __aenter__(self) -> AsyncToolDispatcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        await self.close_sessions()

    def adopt_session(self, session: AsyncSession) -> None:
        """See ``ToolDispatcher.adopt_session``."""
        self._core.sessions.add(session, owned=False)

    async def close_sessions(self) -> None:
        """See ``ToolDispatcher.close_sessions``."""
        await self._core.close_sessions()

    async def dispatch(self, name: str, arguments: Mapping[str, object] | str | None) -> str:
        """See ``ToolDispatcher.dispatch``."""
        return (await self.dispatch_outcome(name, arguments)).text

    async def dispatch_outcome(self, name: str, arguments: Mapping[str, object] | str | None) -> ToolOutcome:
        """See ``ToolDispatcher.dispatch_outcome``."""
        return await self._core.dispatch(name, arguments)

    async def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_tool_call``."""
        return _openai_answer(tool_call, await self.dispatch_outcome(*_openai_call(tool_call)))

    async def handle_openai_responses_call(self, function_call: object, *, images: bool = False) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_responses_call``."""
        return _responses_answer(function_call, await self.dispatch_outcome(*_responses_call(function_call)), images)

    async def handle_anthropic_tool_use(self, tool_use: object, *, images: bool = False) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_anthropic_tool_use``."""
        return _anthropic_answer(tool_use, await self.dispatch_outcome(*_anthropic_call(tool_use)), images)
