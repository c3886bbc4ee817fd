"""The sandbox as a LangChain tool (``pip install 'sandbox-client[langchain]'``).

    from sandbox_client import SandboxClient
    from sandbox_client.adapters.langchain import SandboxTool

    tool = SandboxTool(client=SandboxClient("127.0.0.1:50051"), session_id="conversation-1")
    print(tool.invoke({"code": "print(6*7)"}))
    model_with_tools = chat_model.bind_tools([tool])

``invoke`` runs through the sync client, ``ainvoke`` through the asyncio one (``async_client=``; with only a sync
client it runs in a worker thread). The text is ``ToolDispatcher``'s: a model's mistake or the sandbox's refusal
comes back as text for the model, not as an exception.

``SandboxSessionTool`` runs every call in one sandbox session that it holds for its lifetime (started by the first
call, ended by ``close()``), so Python's variables and the working directory's files persist between calls:

    with SandboxSessionTool(client=SandboxClient("127.0.0.1:50051")) as tool:
        tool.invoke({"code": "x = 41"})
        print(tool.invoke({"code": "x + 1"}))        # ... Out[2]: 42 ...
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Annotated, Final, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool
from langchain_core.tools.base import ArgsSchema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.v1 import ValidationError as ValidationErrorV1

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._aio_session import AsyncSession
from sandbox_client._errors import SandboxError, SessionNotFoundError
from sandbox_client._models import ExecutionResult, Limits, Network
from sandbox_client._session import Session
from sandbox_client._sync import SandboxClient
from sandbox_client.adapters._calls import _session_call
from sandbox_client.adapters._dispatch_core import check_network
from sandbox_client.adapters._session_text import _restarted_note
from sandbox_client.adapters._specs import _kept_session_description
from sandbox_client.adapters.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    LANGUAGE_ALIASES,
    LANGUAGES,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    AsyncToolDispatcher,
    ToolDispatcher,
    format_session_error,
    format_session_result,
    parameters_schema,
    tool_description,
)

__all__ = [
    "SESSION_TOOL_DESCRIPTION",
    "SESSION_TOOL_NAME",
    "ExecuteCodeInput",
    "SandboxSessionTool",
    "SandboxTool",
    "SessionCodeInput",
    "validation_error_text",
]

SESSION_TOOL_NAME: Final = "run_code_in_session"
SESSION_TOOL_DESCRIPTION: Final = _kept_session_description(LANGUAGES, figures=False)

_SCHEMA = parameters_schema()["properties"]


class ExecuteCodeInput(BaseModel):
    """The arguments of ``execute_code``, as LangChain validates them (the JSON schema of ``tool.py``)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, description=_SCHEMA["code"]["description"])
    language: Literal["python", "javascript", "bash"] = Field(
        default="python", description=_SCHEMA["language"]["description"]
    )
    stdin: str | None = Field(default=None, description=_SCHEMA["stdin"]["description"])
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                    description=_SCHEMA["timeout_s"]["description"])

    @field_validator("language", mode="before")
    @classmethod
    def _canonical_language(cls, value: object) -> object:
        if isinstance(value, str):
            name = value.strip().lower()
            return LANGUAGE_ALIASES.get(name, name)
        return value if value is not None else "python"


def validation_error_text(error: ValidationError | ValidationErrorV1, *, tool_name: str = TOOL_NAME) -> str:
    """The tool-result text for arguments LangChain's validation refused (the layout ``ToolDispatcher`` uses)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        problems.append(f"- {where}: {item['msg']}")
    return (f"Status: invalid arguments for {tool_name} (nothing ran)\n" + "\n".join(problems)
            + f"\nWhat to do: call {tool_name} again with corrected arguments.")


class SandboxTool(BaseTool):
    """``execute_code``: runs a program in a fresh sandbox and answers with its status, exit code and output.

    Give it ``client`` (a ``SandboxClient``), ``async_client`` (an ``AsyncSandboxClient``) or both; they are used
    as is and never closed here. ``session_id``, ``limits``, ``max_output_chars`` and ``network`` are
    ``ToolDispatcher``'s: ``network`` (None: the tenant's) is every execution's, and the default description
    says what it allows; the model cannot change it (it is not an argument of the tool).

    Raises (at construction):
        pydantic.ValidationError: no client, or an invalid setting.
    """

    name: str = TOOL_NAME
    description: str = TOOL_DESCRIPTION
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = ExecuteCodeInput
    handle_validation_error: bool | str | Callable[[ValidationError | ValidationErrorV1], str] | None = (
        validation_error_text
    )
    """Bad arguments from the model become text for it (set it as in ``BaseTool`` to change that)."""

    client: SandboxClient | None = None
    async_client: AsyncSandboxClient | None = None
    session_id: str = ""
    limits: Limits | None = None
    max_output_chars: int = Field(default=DEFAULT_MAX_OUTPUT_CHARS, gt=0)
    network: Network | None = None
    """The network of every execution (narrowing the tenant's; None: the tenant's)."""

    @model_validator(mode="after")
    def _has_a_client(self) -> SandboxTool:
        if self.client is None and self.async_client is None:
            raise ValueError("SandboxTool needs client= (a SandboxClient), async_client= (an AsyncSandboxClient) "
                             "or both")
        check_network(self.network, self.session_id)
        if self.network is not None and "description" not in self.model_fields_set:
            self.description = tool_description(network=self.network)  # what the model is told matches it
        return self

    def _run(
        self,
        code: str,
        language: str = "python",
        stdin: str | None = None,
        timeout_s: float | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the program through the sync client and return the text for the model.

        Raises:
            RuntimeError: the tool has no sync client (use ``ainvoke``), or the client is closed.
        """
        if self.client is None:
            raise RuntimeError("this SandboxTool has only an async_client: call ainvoke, or give it client=")
        dispatcher = ToolDispatcher(self.client, session_id=self.session_id, limits=self.limits,
                                    max_output_chars=self.max_output_chars, name=self.name, network=self.network)
        return dispatcher.dispatch(self.name, _arguments(code, language, stdin, timeout_s))

    async def _arun(
        self,
        code: str,
        language: str = "python",
        stdin: str | None = None,
        timeout_s: float | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the program through the asyncio client (or, without one, the sync client in a worker thread).

        Raises:
            RuntimeError: the client is closed.
        """
        if self.async_client is None:
            return await asyncio.to_thread(self._run, code, language, stdin, timeout_s)
        dispatcher = AsyncToolDispatcher(self.async_client, session_id=self.session_id, limits=self.limits,
                                         max_output_chars=self.max_output_chars, name=self.name,
                                         network=self.network)
        return await dispatcher.dispatch(self.name, _arguments(code, language, stdin, timeout_s))


def _arguments(code: str, language: str, stdin: str | None, timeout_s: float | None) -> dict[str, object]:
    return {"code": code, "language": language, "stdin": stdin, "timeout_s": timeout_s}


# -- the session tool ------------------------------------------------------------------------------------------------


class SessionCodeInput(BaseModel):
    """The arguments of ``SandboxSessionTool``: the code, its language, and optionally this call's time limit."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, description="The code to run: only the new code, since what ran before in the "
                      "session is still defined.")
    language: Literal["python", "javascript", "bash"] = Field(
        default="python", description="The code's language. Python runs in the session's kernel (its state "
        "persists); bash and javascript run as new processes in the working directory.")
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                    description="Wall-time limit of this call in seconds: past it the code is "
                                    "interrupted. Omit it for the session's default.")

    @field_validator("language", mode="before")
    @classmethod
    def _canonical_language(cls, value: object) -> object:
        return ExecuteCodeInput._canonical_language(value)


def _unset_validation_error(error: ValidationError | ValidationErrorV1) -> str:
    """A marker default, replaced at construction by ``validation_error_text`` naming the tool."""
    return validation_error_text(error, tool_name=SESSION_TOOL_NAME)


class SandboxSessionTool(BaseTool):
    """``run_code_in_session``: runs code in one sandbox session that the tool holds for its lifetime, so Python's
    variables, imports and functions and the working directory's files persist from one call to the next; it
    answers with ``format_session_result``'s text (status, ``Out[n]``, the exception, stdout and stderr).

    The session starts with the first call (``languages``, ``limits``, ``idle_timeout_s``, ``labels`` and
    ``network`` are its settings; None: the tenant's defaults; the default description says what ``network``
    allows, and the model cannot change it) and ends with ``close()`` (``aclose()``, or leaving a ``with`` block).
    A session that closed on its own (idle too long) is replaced at the next call, whose text says the state is
    gone. Give it ``client``, ``async_client`` or both (used as is, never closed here); ``invoke`` needs
    ``client``, ``ainvoke`` uses ``async_client`` (else ``client`` in a worker thread). Calls through one tool run
    one at a time.

    Raises (at construction):
        pydantic.ValidationError: no client, or an invalid setting.
    """

    name: str = SESSION_TOOL_NAME
    description: str = SESSION_TOOL_DESCRIPTION
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = SessionCodeInput
    handle_validation_error: bool | str | Callable[[ValidationError | ValidationErrorV1], str] | None = (
        _unset_validation_error
    )
    """Bad arguments from the model become text for it, naming the tool."""

    client: SandboxClient | None = None
    async_client: AsyncSandboxClient | None = None
    languages: tuple[Literal["python", "javascript", "bash"], ...] | None = None
    limits: Limits | None = None
    """The session's limits (memory and files for its life; wall time, CPU time and output per call)."""
    idle_timeout_s: int | None = Field(default=None, gt=0)
    labels: dict[str, str] | None = None
    max_output_chars: int = Field(default=DEFAULT_MAX_OUTPUT_CHARS, gt=0)
    network: Network | None = None
    """The session's network, set when it starts (narrowing the tenant's; None: the tenant's)."""

    _session: Session | None = PrivateAttr(default=None)
    _async_session: AsyncSession | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _async_lock: asyncio.Lock | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _has_a_client(self) -> SandboxSessionTool:
        if self.client is None and self.async_client is None:
            raise ValueError("SandboxSessionTool needs client= (a SandboxClient), async_client= (an "
                             "AsyncSandboxClient) or both")
        if self.handle_validation_error is _unset_validation_error:
            self.handle_validation_error = functools.partial(validation_error_text, tool_name=self.name)
        if self.network is not None and "description" not in self.model_fields_set:
            self.description = _kept_session_description(LANGUAGES, figures=False, network=self.network)
        return self

    def __enter__(self) -> SandboxSessionTool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def session_id(self) -> str | None:
        """The id of the session the tool holds; None before the first call and after ``close()``."""
        held = self._session or self._async_session
        return held.id if held is not None else None

    def close(self) -> None:
        """End the session (if one was started); the next call starts a new one. A session already gone is fine.

        Raises:
            RuntimeError: the tool has only an async_client (use ``aclose``).
            SandboxError: the close failed (call again to retry).
        """
        session_id = self.session_id
        if session_id is None:
            return
        if self.client is None:
            raise RuntimeError("this SandboxSessionTool has only an async_client: await aclose()")
        with contextlib.suppress(SessionNotFoundError):  # gone already
            self.client.close_session(session_id)
        self._session = self._async_session = None

    async def aclose(self) -> None:
        """``close`` through the asyncio client (without one, the sync client in a worker thread)."""
        session_id = self.session_id
        if session_id is None:
            return
        if self.async_client is None:
            await asyncio.to_thread(self.close)
            return
        with contextlib.suppress(SessionNotFoundError):
            await self.async_client.close_session(session_id)
        self._session = self._async_session = None

    def _run(
        self,
        code: str,
        language: str = "python",
        timeout_s: float | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the code in the session through the sync client and return the text for the model.

        Raises:
            RuntimeError: the tool has no sync client (use ``ainvoke``), or the client is closed.
        """
        client = self.client
        if client is None:
            raise RuntimeError("this SandboxSessionTool has only an async_client: call ainvoke, or give it client=")

        def held() -> Session:
            if self._session is None:
                if self._async_session is not None:  # started by ainvoke: the same session, through this client
                    self._session = client.attach_session(self._async_session.id)
                else:
                    self._session = client.session(languages=self.languages, limits=self.limits,
                                                   idle_timeout_s=self.idle_timeout_s, labels=self.labels,
                                                   network=self.network)
            return self._session

        def run(session: Session) -> ExecutionResult:
            limits, timeout = _session_call(None, timeout_s, session.info)
            return session.run(code, language=language, limits=limits, timeout=timeout)

        with self._lock:
            note = ""
            try:
                try:
                    result = run(held())
                except SessionNotFoundError as error:  # it closed on its own: nothing ran; start a new one
                    self._session = self._async_session = None
                    note = _restarted_note(error)
                    result = run(held())
            except SandboxError as error:
                return self._error_text(error)
        return self._result_text(result, note)

    async def _arun(
        self,
        code: str,
        language: str = "python",
        timeout_s: float | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the code in the session through the asyncio client (or, without one, the sync client in a worker
        thread).

        Raises:
            RuntimeError: the client is closed.
        """
        client = self.async_client
        if client is None:
            return await asyncio.to_thread(self._run, code, language, timeout_s)

        async def held() -> AsyncSession:
            if self._async_session is None:
                if self._session is not None:  # started by invoke: the same session, through this client
                    self._async_session = await client.attach_session(self._session.id)
                else:
                    self._async_session = await client.session(
                        languages=self.languages, limits=self.limits, idle_timeout_s=self.idle_timeout_s,
                        labels=self.labels, network=self.network)
            return self._async_session

        async def run(session: AsyncSession) -> ExecutionResult:
            limits, timeout = _session_call(None, timeout_s, session.info)
            return await session.run(code, language=language, limits=limits, timeout=timeout)

        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            note = ""
            try:
                try:
                    result = await run(await held())
                except SessionNotFoundError as error:
                    self._session = self._async_session = None
                    note = _restarted_note(error)
                    result = await run(await held())
            except SandboxError as error:
                return self._error_text(error)
        return self._result_text(result, note)

    def _result_text(self, result: ExecutionResult, note: str) -> str:
        text = format_session_result(result, max_output_chars=self.max_output_chars, tool_name=self.name)
        return f"{note}\n{text}" if note else text

    def _error_text(self, error: SandboxError) -> str:
        return format_session_error(error, tool_name=self.name, session_id=self.session_id or "", create_tool="",
                                    files_tool="")
