"""What the dispatchers do with a tool call, written once for both: the settings and their checks, the plan of a
call (an execution, a session tool's checked arguments, or an outcome already: unknown tool, bad arguments), the
calls themselves and the outcome the model is answered with, and the sessions a dispatcher may use.

The calls are coroutines over the asyncio shape of a client (``_Client``): ``AsyncToolDispatcher`` awaits them
over an ``AsyncSandboxClient``; ``ToolDispatcher`` runs them over a ``SandboxClient`` put in that shape, whose
awaits never suspend (``_sync_bridge``).
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Final, Generic

from sandbox_client._convert import _SESSION_ID_RE
from sandbox_client._errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    SessionNotFoundError,
    UnavailableError,
)
from sandbox_client._models import ExecutionResult, Limits, Network, SessionInfo
from sandbox_client.adapters._arguments import (
    CloseSessionArguments,
    CreateSessionArguments,
    RunInSessionArguments,
    SessionFilesArguments,
    SessionToolArguments,
    ToolArgumentError,
    _parse_session_arguments,
    parse_arguments,
)
from sandbox_client.adapters._calls import _deadline, _session_call, _workspace_action
from sandbox_client.adapters._clients import _S, _Client, network_argument
from sandbox_client.adapters._session_text import (
    _closed_text,
    _created_text,
    format_session_error,
    format_session_result,
)
from sandbox_client.adapters._specs import (
    CLOSE_SESSION,
    CREATE_SESSION,
    RUN_IN_SESSION,
    SESSION_FILES,
    SESSION_TOOL_NAMES,
)
from sandbox_client.adapters._text import format_error, format_result

logger = logging.getLogger(__name__)

DEFAULT_MAX_SESSIONS: Final = 4
"""Sessions a dispatcher lets the model hold open at once (``create_session`` is refused past it)."""
SESSION_LABEL: Final = "conversation"
"""The label a dispatcher gives the sessions it creates: its ``session_id``, when it has one."""
_DOWNLOAD_CAP_BYTES: Final = 2**20
"""Bytes of a file ``session_files`` downloads at most (more of a long text file is never shown anyway)."""
_MAX_LABEL_VALUE: Final = 256


@dataclass(frozen=True)
class ToolOutcome:
    """What one tool call came to: the text for the model, and what produced it."""

    text: str
    """The tool-result text the model should see."""
    is_error: bool
    """The code did not run to a successful end: bad arguments, a refusal, a failed call, a non-zero exit or a
    program killed at a limit (Anthropic's ``is_error``, MCP's ``isError``)."""
    result: ExecutionResult | None = None
    """The execution's result; None when nothing ran."""
    error: SandboxError | None = None
    """The refusal or failure of the call, when there was one."""
    session_id: str = ""
    """The session the call was about (created, ran in, closed), for the session tools; "" otherwise."""


@dataclass(frozen=True)
class _Run:
    """One execution to make, from checked arguments and the dispatcher's settings."""

    code: str
    language: str
    stdin: str
    limits: Limits | None
    session_id: str
    timeout: float | None
    network: Network | None = None


def check_network(network: Network | None, session_id: str) -> None:
    """Refuse a ``network`` setting the client would refuse at every call, at construction instead.

    Raises:
        TypeError: ``network`` is not a Network.
        ValueError: ``session_id`` is a sandbox session's id, whose network is fixed when it is created.
    """
    if network is None:
        return
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network (Network.none(), Network.allowlist(...)) or None, not "
                        f"{type(network).__name__}")
    if _SESSION_ID_RE.fullmatch(session_id):
        raise ValueError(f"network cannot be set with session_id {session_id!r}, a sandbox session's id: a "
                         "session's network is set when it is created")


class _Settings:
    """A dispatcher's settings, checked, and the plan of a call under them."""

    def __init__(
        self, *, name: str, session_id: str, limits: Limits | None, max_output_chars: int, sessions: bool = False,
        session_limits: Limits | None = None, session_labels: Mapping[str, str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS, network: Network | None = None,
    ) -> None:
        if isinstance(max_output_chars, bool) or not isinstance(max_output_chars, int) or max_output_chars < 1:
            raise ValueError(f"max_output_chars must be a positive int, got {max_output_chars!r}")
        if not name:
            raise ValueError("name must not be empty")
        if sessions and name in SESSION_TOOL_NAMES:
            raise ValueError(f"name {name!r} is a session tool's")
        for what, value in (("limits", limits), ("session_limits", session_limits)):
            if value is not None and not isinstance(value, Limits):
                raise TypeError(f"{what} must be a Limits, not {type(value).__name__}")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive int, got {max_sessions!r}")
        check_network(network, session_id)
        self.name = name
        self.session_id = session_id
        self.limits = limits
        self.max_output_chars = max_output_chars
        self.sessions = sessions
        self.session_limits = session_limits
        self.max_sessions = max_sessions
        self.network = network
        """The network of every execution and of the sessions ``create_session`` starts (None: the tenant's)."""
        self.labels = dict(session_labels or {})
        if session_id and len(session_id) <= _MAX_LABEL_VALUE and session_id.isprintable():
            self.labels.setdefault(SESSION_LABEL, session_id)
        self.conversation = self.labels.get(SESSION_LABEL, "")

    @property
    def download_cap(self) -> int:
        return max(_DOWNLOAD_CAP_BYTES, 4 * self.max_output_chars)

    def prepare(
        self, name: str, arguments: Mapping[str, object] | str | None,
    ) -> _Run | SessionToolArguments | ToolOutcome:
        """What to do (an execution, a session tool's checked arguments), or the outcome of a call that cannot do
        anything (unknown tool, bad arguments)."""
        if self.sessions and name in SESSION_TOOL_NAMES:
            try:
                return _parse_session_arguments(name, arguments)
            except ToolArgumentError as error:
                return _invalid(name, error, "nothing was done" if name != RUN_IN_SESSION else "nothing ran")
        if name != self.name:
            text = f"Status: unknown tool {name!r} (nothing ran)\n"
            close = difflib.get_close_matches(name, SESSION_TOOL_NAMES, n=1) if self.sessions else []
            if close:
                text += f"What to do: did you mean {close[0]!r}? Call it by that name."
            else:
                text += f"What to do: the tool that runs code is {self.name!r}; call it instead."
            return ToolOutcome(text=text, is_error=True)
        try:
            args = parse_arguments(arguments)
        except ToolArgumentError as error:
            return _invalid(self.name, error, "nothing ran")
        limits = self.limits
        if args.timeout_s is not None:
            limits = replace(limits or Limits(), wall_time_s=args.timeout_s)
        return _Run(code=args.code, language=args.language, stdin=args.stdin, limits=limits,
                    session_id=self.session_id, timeout=_deadline(limits.wall_time_s if limits is not None else None),
                    network=self.network)


def _invalid(name: str, error: ToolArgumentError, nothing: str) -> ToolOutcome:
    problems = "\n".join(f"- {p}" for p in error.problems)
    text = (f"Status: invalid arguments for {name} ({nothing})\n{problems}\n"
            f"What to do: call {name} again with corrected arguments.")
    return ToolOutcome(text=text, is_error=True)


def _unknown_session(session_id: str) -> ToolOutcome:
    text = (f"Status: unknown session {session_id} (nothing was done): it is not one of this conversation's "
            f"sessions\nWhat to do: use a session_id that {CREATE_SESSION} returned in this conversation, or "
            f"call {CREATE_SESSION} to start a session.")
    return ToolOutcome(text=text, is_error=True, session_id=session_id)


def _too_many(open_ids: Sequence[str]) -> ToolOutcome:
    text = (f"Status: refused: you already have {len(open_ids)} open sessions, as many as this tool allows "
            f"(no session was started): {', '.join(open_ids)}\n"
            f"What to do: go on in one of them with {RUN_IN_SESSION}, or call {CLOSE_SESSION} on one you no "
            "longer need first.")
    return ToolOutcome(text=text, is_error=True)


# Refusals about the request or the sandbox's state, which the model can act on (or wait out).
_MODEL_FACING_ERRORS = (
    InvalidRequestError, ResourceExhaustedError, UnavailableError, DeadlineExceededError, RequestCancelledError,
)
_MODEL_FACING_DENIALS = frozenset({"QUARANTINED", "LANGUAGE_DISABLED", "POLICY_DENIED"})


def _for_the_host(error: SandboxError) -> bool:
    """The error is about the host's set-up (credentials, tenant, a server fault), not the model's request."""
    if isinstance(error, PermissionDeniedError):
        return error.reason not in _MODEL_FACING_DENIALS
    return not isinstance(error, _MODEL_FACING_ERRORS)


# -- the sessions a dispatcher holds ---------------------------------------------------------------------------------


@dataclass
class _Held(Generic[_S]):
    session: _S
    owned: bool
    """Created by the dispatcher (so ``close_sessions`` closes it), not adopted or attached."""
    open: bool = True
    """Not known to be gone."""


class _Registry(Generic[_S]):
    """The sessions a dispatcher may use, by id; thread-safe."""

    def __init__(self) -> None:
        self._held: dict[str, _Held[_S]] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str) -> _S | None:
        with self._lock:
            held = self._held.get(session_id)
        return None if held is None else held.session

    def add(self, session: _S, *, owned: bool) -> None:
        with self._lock:
            self._held[session.id] = _Held(session, owned)

    def gone(self, session_id: str) -> None:
        with self._lock:
            held = self._held.get(session_id)
            if held is not None:
                held.open = False

    def open_sessions(self, *, owned_only: bool = False) -> list[_S]:
        with self._lock:
            return [h.session for h in self._held.values() if h.open and (h.owned or not owned_only)]


# -- the calls ---------------------------------------------------------------------------------------------------------


class _Core(Generic[_S]):
    """A dispatcher's calls through ``client`` under ``settings``. ``create_lock`` makes the check of the open
    sessions and the start of a new one one step (a ``threading.Lock`` for the sync dispatcher, which may serve
    threads at once; an ``asyncio.Lock`` for the asyncio one)."""

    def __init__(self, client: _Client[_S], settings: _Settings, create_lock: AbstractAsyncContextManager[object],
                 ) -> None:
        self.settings = settings
        self.sessions: _Registry[_S] = _Registry()
        self._client = client
        self._create_lock = create_lock

    async def dispatch(self, name: str, arguments: Mapping[str, object] | str | None) -> ToolOutcome:
        planned = self.settings.prepare(name, arguments)
        match planned:
            case ToolOutcome():
                return planned
            case _Run():
                return await self._execute(planned)
            case CreateSessionArguments():
                return await self._create(planned)
            case RunInSessionArguments():
                return await self._run_in_session(planned)
            case SessionFilesArguments():
                return await self._files(planned)
            case CloseSessionArguments():
                return await self._close(planned)

    async def close_sessions(self) -> None:
        """Close the sessions this dispatcher started that are still open. A failure is logged, not raised."""
        for session in self.sessions.open_sessions(owned_only=True):
            try:
                await self._client.close_session(session.id)
            except SessionNotFoundError:
                pass
            except SandboxError as error:
                logger.warning("could not close session %s: %s", session.id, error)
                continue
            self.sessions.gone(session.id)

    async def _execute(self, run: _Run) -> ToolOutcome:
        try:
            result = await self._client.execute(run.code, language=run.language, stdin=run.stdin,
                                                limits=run.limits, session_id=run.session_id, timeout=run.timeout,
                                                **network_argument(run.network))
        except SandboxError as error:
            if _for_the_host(error):
                # The model is told too, but only the host can fix this one: make sure someone sees it.
                logger.warning("%s: the sandbox refused or failed the call: %s", self.settings.name, error)
            return ToolOutcome(text=format_error(error, tool_name=self.settings.name), is_error=True, error=error)
        return ToolOutcome(text=format_result(result, max_output_chars=self.settings.max_output_chars),
                           is_error=not result.ok, result=result)

    async def _create(self, args: CreateSessionArguments) -> ToolOutcome:
        settings = self.settings
        async with self._create_lock:
            open_sessions = self.sessions.open_sessions(owned_only=True)
            if len(open_sessions) >= settings.max_sessions:
                for session in open_sessions:  # some may have closed on their own since
                    try:
                        await session.refresh()
                    except SessionNotFoundError:
                        self.sessions.gone(session.id)
                    except SandboxError:
                        pass
                open_sessions = self.sessions.open_sessions(owned_only=True)
                if len(open_sessions) >= settings.max_sessions:
                    return _too_many([s.id for s in open_sessions])
            try:
                session = await self._client.session(
                    languages=args.languages, limits=settings.session_limits, idle_timeout_s=args.idle_timeout_s,
                    labels=settings.labels or None, **network_argument(settings.network))
            except SandboxError as error:
                return self._refused(error, CREATE_SESSION)
            self.sessions.add(session, owned=True)
        return ToolOutcome(text=_created_text(session.info), is_error=False, session_id=session.id)

    async def _session(self, session_id: str, tool: str) -> _S | ToolOutcome:
        """The session the model named, or why it cannot use it."""
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        if not self.settings.conversation:
            return _unknown_session(session_id)
        try:
            session = await self._client.attach_session(session_id)
        except SandboxError as error:
            return self._refused(error, tool, session_id)
        if session.info.labels.get(SESSION_LABEL) != self.settings.conversation:
            return _unknown_session(session_id)
        self.sessions.add(session, owned=False)
        return session

    async def _run_in_session(self, args: RunInSessionArguments) -> ToolOutcome:
        session = await self._session(args.session_id, RUN_IN_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        limits, timeout = _session_call(self.settings.limits, args.timeout_s, session.info)
        try:
            result = await session.run(args.code, language=args.language, stdin=args.stdin, limits=limits,
                                       timeout=timeout)
        except SandboxError as error:
            return self._failed(error, RUN_IN_SESSION, args.session_id)
        return ToolOutcome(text=format_session_result(result, max_output_chars=self.settings.max_output_chars),
                           is_error=not result.ok, result=result, session_id=session.id)

    async def _files(self, args: SessionFilesArguments) -> ToolOutcome:
        session = await self._session(args.session_id, SESSION_FILES)
        if isinstance(session, ToolOutcome):
            return session
        try:
            text = await _workspace_action(session.files, args, max_chars=self.settings.max_output_chars,
                                           cap=self.settings.download_cap)
        except SandboxError as error:
            return self._failed(error, SESSION_FILES, args.session_id)
        return ToolOutcome(text=text, is_error=False, session_id=session.id)

    async def _close(self, args: CloseSessionArguments) -> ToolOutcome:
        session = await self._session(args.session_id, CLOSE_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        final: SessionInfo | None = None
        gone: SessionNotFoundError | None = None
        try:
            final = await self._client.close_session(session.id)
        except SessionNotFoundError as error:
            gone = error
        except SandboxError as error:
            return self._refused(error, CLOSE_SESSION, session.id)
        self.sessions.gone(session.id)
        return ToolOutcome(text=_closed_text(session.id, final, gone), is_error=False, error=gone,
                           session_id=session.id)

    def _failed(self, error: SandboxError, tool: str, session_id: str) -> ToolOutcome:
        """A call in a session failed: a session found gone is no longer offered."""
        if isinstance(error, SessionNotFoundError):
            self.sessions.gone(session_id)
        return self._refused(error, tool, session_id)

    def _refused(self, error: SandboxError, tool: str, session_id: str = "") -> ToolOutcome:
        if _for_the_host(error) and not isinstance(error, NotFoundError):
            logger.warning("%s: the sandbox refused or failed the call: %s", tool, error)
        text = format_session_error(error, tool_name=tool, session_id=session_id)
        return ToolOutcome(text=text, is_error=True, error=error, session_id=session_id)
