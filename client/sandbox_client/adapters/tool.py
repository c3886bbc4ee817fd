"""The ``execute_code`` function-calling tool for OpenAI- and Anthropic-style APIs (no extra dependency).

    from sandbox_client import SandboxClient
    from sandbox_client.adapters.tool import ToolDispatcher, anthropic_tool, openai_tool

    tools = [openai_tool()]                       # or [anthropic_tool()] for the Messages API
    with SandboxClient("127.0.0.1:50051") as sbx:
        dispatcher = ToolDispatcher(sbx, session_id="conversation-1")
        # for each tool call the model makes:
        message = dispatcher.handle_openai_tool_call(tool_call)   # {"role": "tool", "tool_call_id", "content"}

The dispatcher turns whatever the model sent into text the model can act on: a result (status in words, exit
code, stdout and stderr cut to a size, why it was killed), a refusal (what the sandbox objected to and what to do
about it), or the problems with its arguments. A model's mistake never raises; only the host's own (a closed
client, a malformed provider object) does.

``AsyncToolDispatcher`` is the asyncio twin, over ``AsyncSandboxClient``.

Sessions: ``openai_tools()``, ``openai_responses_tools()`` and ``anthropic_tools()`` give ``execute_code`` and the
session tools together: ``create_session`` (a sandbox kept across calls: a stateful Python kernel and a workspace
of files), ``run_in_session``, ``session_files`` and ``close_session``. The same dispatchers run them:

    tools = anthropic_tools()
    with SandboxClient("127.0.0.1:50051") as sbx, ToolDispatcher(sbx, session_id="conversation-1") as dispatcher:
        block = dispatcher.handle_anthropic_tool_use(tool_use, images=True)   # figures as image blocks too
    # leaving the block closes the sessions the model left open

A dispatcher uses only the sessions it created (or was given with ``adopt_session``, or that carry its
``session_id`` as their ``conversation`` label); ``image_outputs``, ``anthropic_image_blocks``,
``openai_image_parts`` and ``openai_responses_image_parts`` turn a result's figures into provider image content.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import difflib
import html
import json
import logging
import math
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

from sandbox_client._errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    SessionBusyError,
    SessionNotFoundError,
    UnavailableError,
)
from sandbox_client._models import DisplayData, ExecutionResult, FileInfo, Limits, SessionInfo, Status

if TYPE_CHECKING:
    from sandbox_client._aio_session import AsyncSession, AsyncSessionFiles
    from sandbox_client._session import Session, SessionFiles

__all__ = [
    "CALL_DEADLINE_MARGIN_S",
    "CLOSE_SESSION",
    "CREATE_SESSION",
    "DEFAULT_MAX_OUTPUT_CHARS",
    "DEFAULT_MAX_SESSIONS",
    "FILE_ACTIONS",
    "IMAGE_MIME_TYPES",
    "LANGUAGES",
    "LANGUAGE_ALIASES",
    "RUN_IN_SESSION",
    "SESSION_FILES",
    "SESSION_LABEL",
    "SESSION_TOOL_NAMES",
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "AsyncExecutor",
    "AsyncSessionClient",
    "AsyncToolDispatcher",
    "CloseSessionArguments",
    "CreateSessionArguments",
    "ExecuteCodeArguments",
    "Executor",
    "RunInSessionArguments",
    "SessionClient",
    "SessionFilesArguments",
    "SessionToolArguments",
    "ToolArgumentError",
    "ToolDispatcher",
    "ToolOutcome",
    "ToolSpec",
    "anthropic_image_blocks",
    "anthropic_tool",
    "anthropic_tool_result",
    "anthropic_tools",
    "format_error",
    "format_result",
    "format_session_error",
    "format_session_result",
    "image_outputs",
    "openai_image_parts",
    "openai_responses_image_parts",
    "openai_responses_tool",
    "openai_responses_tool_output",
    "openai_responses_tools",
    "openai_tool",
    "openai_tool_message",
    "openai_tools",
    "parameters_schema",
    "parse_arguments",
    "parse_tool_arguments",
    "session_tool_specs",
    "tool_description",
    "tool_specs",
    "truncate_middle",
]

logger = logging.getLogger(__name__)

TOOL_NAME: Final = "execute_code"
LANGUAGES: Final = ("python", "javascript", "bash")
"""The languages the tool offers a model, canonical names (the ``language`` enum)."""

DEFAULT_MAX_OUTPUT_CHARS: Final = 10_000
"""Characters of stdout, and as many of stderr, a model sees of one run (head and tail kept)."""

CALL_DEADLINE_MARGIN_S: Final = 30.0
"""Seconds the call's deadline allows past the wall-time limit: queueing, sandbox set-up and teardown."""

LANGUAGE_ALIASES: Final[Mapping[str, str]] = {
    "python3": "python", "py": "python",
    "js": "javascript", "node": "javascript", "nodejs": "javascript",
    "sh": "bash", "shell": "bash",
}
"""Other names a model may give a language (the server accepts them too), lower case: the canonical name."""
_LANGUAGE_LABELS: Final[Mapping[str, str]] = {"python": "Python 3", "javascript": "Node.js"}
_ARGUMENT_NAMES: Final = ("code", "language", "stdin", "timeout_s")
# Request fields the server may name in a refusal, in terms of the tool's own arguments.
_FIELD_ARGUMENTS: Final[Mapping[str, str]] = {
    "code": "code", "language": "language", "stdin": "stdin",
    "limits.wall_time_ms": "timeout_s (sent as limits.wall_time_ms, in milliseconds)",
}
_MAX_LISTED_FILES: Final = 20

CREATE_SESSION: Final = "create_session"
RUN_IN_SESSION: Final = "run_in_session"
SESSION_FILES: Final = "session_files"
CLOSE_SESSION: Final = "close_session"
SESSION_TOOL_NAMES: Final = (CREATE_SESSION, RUN_IN_SESSION, SESSION_FILES, CLOSE_SESSION)
"""The session tools, in the order the tool lists give them (after ``execute_code``)."""
FILE_ACTIONS: Final = ("upload", "download", "list", "delete")
"""The ``action`` values of ``session_files``."""
DEFAULT_MAX_SESSIONS: Final = 4
"""Sessions a dispatcher lets the model hold open at once (``create_session`` is refused past it)."""
SESSION_LABEL: Final = "conversation"
"""The label a dispatcher gives the sessions it creates: its ``session_id``, when it has one."""
IMAGE_MIME_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
"""The image types the providers take in a tool result (and MCP clients show): what ``image_outputs`` picks."""


def tool_description(languages: tuple[str, ...] = LANGUAGES) -> str:
    """What a model is told about the tool: what the sandbox is, what persists (nothing), its limits."""
    names = ", ".join(f"{lang} ({_LANGUAGE_LABELS[lang]})" if lang in _LANGUAGE_LABELS else lang for lang in languages)
    return (
        f"Run a program in an isolated sandbox and get back its exit status, stdout and stderr. Languages: {names}. "
        "Every call starts a fresh sandbox: nothing persists between calls (no variables, files or installed "
        "packages), so send a complete, self-contained program each time. The sandbox has no network access and "
        "nothing can be installed: use the language's standard library. The program runs as an unprivileged user "
        "in a private, writable working directory (discarded after the call); write any files there. "
        "Limits apply to wall time (timeout_s, in seconds; the sandbox's default when omitted), CPU time, "
        "memory, processes and output size: a program that exceeds one is killed and the result says which. "
        "Print what you need to see; long output is cut in the middle. Code that tries to get around the sandbox "
        "(e.g. importing ctypes) is refused before it runs."
    )


TOOL_DESCRIPTION: Final = tool_description()


def parameters_schema(languages: tuple[str, ...] = LANGUAGES) -> dict[str, Any]:
    """The JSON schema (draft 2020-12 compatible) of the tool's arguments; a new dict on every call."""
    return {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "The complete program to run (source code)."},
            "language": {
                "type": "string",
                "enum": list(languages),
                "default": "python",
                "description": "The program's language.",
            },
            "stdin": {"type": "string", "description": "Text given to the program on its standard input."},
            "timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Wall-time limit in seconds: the program is killed if it runs longer. "
                "Omit it for the sandbox's default.",
            },
        },
        "required": ["code"],
        "additionalProperties": False,
    }


def openai_tool(*, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION) -> dict[str, Any]:
    """The tool for OpenAI Chat Completions (and compatible APIs): ``{"type": "function", "function": {...}}``."""
    return _openai_shape(ToolSpec(name, description, parameters_schema()))


def openai_responses_tool(*, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION) -> dict[str, Any]:
    """The tool for the OpenAI Responses API, which takes it flat: ``{"type": "function", "name", ...}``."""
    return _openai_responses_shape(ToolSpec(name, description, parameters_schema()))


def anthropic_tool(*, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION) -> dict[str, Any]:
    """The tool for the Anthropic Messages API: ``{"name", "description", "input_schema"}``."""
    return _anthropic_shape(ToolSpec(name, description, parameters_schema()))


# -- the session tools ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """One tool, whatever the provider: its name, what the model is told, and the JSON schema of its arguments
    (a new dict for every spec made). ``openai_tools`` and the others shape these for each API."""

    name: str
    description: str
    parameters: dict[str, Any]


def _language_names(languages: tuple[str, ...]) -> str:
    return ", ".join(f"{lang} ({_LANGUAGE_LABELS[lang]})" if lang in _LANGUAGE_LABELS else lang for lang in languages)


def _session_descriptions(languages: tuple[str, ...]) -> dict[str, str]:
    return {
        CREATE_SESSION: (
            "Start a sandbox session (an isolated sandbox kept alive between calls) and get its session_id. Use a "
            "session for work in steps that build on each other: load data once and analyse it over several "
            "calls, define functions and reuse them, keep files between steps; for one self-contained program, "
            f"{TOOL_NAME} is simpler. Languages: {_language_names(languages)}. In a session, Python runs in a "
            "stateful kernel, like a Jupyter notebook: variables, imports and functions persist from one "
            f"{RUN_IN_SESSION} call to the next. Bash and JavaScript calls run as new processes in the same "
            "working directory, so files persist for every language. The sandbox has no network access and "
            "nothing can be installed. A session closes by itself after idle_timeout_s seconds without a call "
            "(the sandbox's default when omitted) and everything in it is lost; call "
            f"{CLOSE_SESSION} when you are done with it."
        ),
        RUN_IN_SESSION: (
            f"Run code in a session that {CREATE_SESSION} started and get the result: the status, the value of "
            "the last Python expression (Out[n], as in a notebook), stdout and stderr, the exception and its "
            "traceback if one was raised, and a note for each rich output (figures, HTML tables, JSON). State "
            "persists between calls in the same session: Python variables, imports and functions stay defined, "
            "even after an exception, so send only the new code each time, not what already ran. Bash and "
            "JavaScript run as new processes in the session's working directory: its files persist, shell "
            "variables and the current directory do not. A call that runs past its time limit (timeout_s, or "
            "the session's default) is interrupted, and Python's state survives unless the result says the "
            "kernel was restarted. Sessions close by themselves when idle for a while; if the result says the "
            f"session is gone, start a new one with {CREATE_SESSION} and set up its state again. Code that "
            "tries to get around the sandbox (e.g. importing ctypes) is refused before it runs."
        ),
        SESSION_FILES: (
            "Manage the files in a session's working directory, which is the current directory of the code "
            f"{RUN_IN_SESSION} runs (files your code writes appear here too). action 'upload' writes `content` "
            "(text) to `path`, making missing directories; 'download' returns a text file's content (a long file "
            "is cut in the middle; a binary file is described, not shown); 'list' lists the directory `path` "
            "(omit it for the top directory; `recursive` to include subdirectories); 'delete' removes a file, or "
            "a directory with `recursive`: true. Paths are relative to the working directory, e.g. "
            "'data/input.csv'."
        ),
        CLOSE_SESSION: (
            f"Close a session that {CREATE_SESSION} started, once you no longer need it: its sandbox, Python "
            "state and files are discarded and its session_id stops working. Sessions also close by themselves "
            "when idle, but closing frees the sandbox at once."
        ),
    }


def _kept_session_description(languages: tuple[str, ...], *, figures: bool, more: str = "") -> str:
    """What a model is told about a tool that runs code in a session the host keeps for the conversation (the
    MCP server's ``execute_code``, the LangChain session tool): ``figures`` when images come back, ``more`` about
    the other tools."""
    images = ", and its figures as images" if figures else ""
    return (
        "Run code in this conversation's sandbox session and get back its status, the value of the last Python "
        "expression (Out[n], as in a notebook), stdout and stderr, the exception and its traceback if one was "
        f"raised{images}. Languages: {_language_names(languages)}. Python runs in a stateful kernel, like a "
        "Jupyter notebook: variables, imports and functions persist from one call to the next (even after an "
        "exception), so send only the new code each time, not what already ran. Bash and JavaScript run as new "
        "processes in the same working directory: files persist for every language, shell variables and the "
        "current directory do not. The sandbox has no network access and nothing can be installed: use the "
        "standard library and the packages already there. Limits apply to each call's wall time (timeout_s, in "
        "seconds; the sandbox's default when omitted), CPU time and output size: past one the code is "
        "interrupted, and Python's state survives unless the result says the kernel was restarted; memory is "
        "limited for the whole session. The session closes by itself after a while without calls: the next "
        "call then starts a new one and says so. " + (f"{more} " if more else "")
        + "Code that tries to get around the sandbox (e.g. importing ctypes) is refused before it runs."
    )


def _session_id_property() -> dict[str, Any]:
    return {"type": "string",
            "description": f"The session_id {CREATE_SESSION} returned (\"ses_\" and 32 letters and digits)."}


def _session_schemas(languages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {
        CREATE_SESSION: {
            "type": "object",
            "properties": {
                "languages": {
                    "type": "array",
                    "items": {"type": "string", "enum": list(languages)},
                    "minItems": 1,
                    "uniqueItems": True,
                    "description": "The languages the session may run; omit it for all of them.",
                },
                "idle_timeout_s": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Seconds without a call after which the session closes by itself (everything "
                    "in it is then lost). Omit it for the sandbox's default.",
                },
            },
            "additionalProperties": False,
        },
        RUN_IN_SESSION: {
            "type": "object",
            "properties": {
                "session_id": _session_id_property(),
                "code": {"type": "string", "description": "The code to run: only the new code, since what ran "
                         "before in the session is still defined."},
                "language": {
                    "type": "string",
                    "enum": list(languages),
                    "default": "python",
                    "description": "The code's language. Python runs in the session's kernel (its state "
                    "persists); bash and javascript run as new processes in the working directory.",
                },
                "stdin": {"type": "string", "description": "Text the code reads on its standard input (Python's "
                          "input())."},
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Wall-time limit of this call in seconds: past it the code is interrupted. "
                    "Omit it for the session's default.",
                },
            },
            "required": ["session_id", "code"],
            "additionalProperties": False,
        },
        SESSION_FILES: {
            "type": "object",
            "properties": {
                "session_id": _session_id_property(),
                "action": {"type": "string", "enum": list(FILE_ACTIONS),
                           "description": "upload, download, list or delete."},
                "path": {"type": "string", "description": "The file or directory, relative to the session's "
                         "working directory, e.g. 'data/input.csv'. Required for upload, download and delete; "
                         "for list, omit it for the top directory."},
                "content": {"type": "string", "description": "For upload: the file's content, as text."},
                "recursive": {"type": "boolean", "description": "For list: include what is in subdirectories. "
                              "For delete: needed to delete a directory and everything in it."},
            },
            "required": ["session_id", "action"],
            "additionalProperties": False,
        },
        CLOSE_SESSION: {
            "type": "object",
            "properties": {"session_id": _session_id_property()},
            "required": ["session_id"],
            "additionalProperties": False,
        },
    }


def session_tool_specs(languages: tuple[str, ...] = LANGUAGES) -> tuple[ToolSpec, ...]:
    """The four session tools (``SESSION_TOOL_NAMES``), provider-neutral; new dicts on every call."""
    descriptions = _session_descriptions(languages)
    schemas = _session_schemas(languages)
    return tuple(ToolSpec(name, descriptions[name], schemas[name]) for name in SESSION_TOOL_NAMES)


def tool_specs(*, sessions: bool = True, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION,
               ) -> tuple[ToolSpec, ...]:
    """``execute_code`` (as ``name``, told ``description``) and, with ``sessions``, the four session tools."""
    specs = (ToolSpec(name, description, parameters_schema()),)
    return specs + session_tool_specs() if sessions else specs


def openai_tools(*, sessions: bool = True) -> list[dict[str, Any]]:
    """The tools for OpenAI Chat Completions: ``execute_code`` and (``sessions``) the session tools."""
    return [_openai_shape(spec) for spec in tool_specs(sessions=sessions)]


def openai_responses_tools(*, sessions: bool = True) -> list[dict[str, Any]]:
    """The tools for the OpenAI Responses API: ``execute_code`` and (``sessions``) the session tools."""
    return [_openai_responses_shape(spec) for spec in tool_specs(sessions=sessions)]


def anthropic_tools(*, sessions: bool = True) -> list[dict[str, Any]]:
    """The tools for the Anthropic Messages API: ``execute_code`` and (``sessions``) the session tools."""
    return [_anthropic_shape(spec) for spec in tool_specs(sessions=sessions)]


def _openai_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters}}


def _openai_responses_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function", "name": spec.name, "description": spec.description, "parameters": spec.parameters}


def _anthropic_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}


# -- arguments -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecuteCodeArguments:
    """The tool's arguments, checked: what ``parse_arguments`` returns."""

    code: str
    language: str = "python"
    """A canonical name, one of ``LANGUAGES``."""
    stdin: str = ""
    timeout_s: float | None = None
    """The wall-time limit asked for, seconds; None keeps the dispatcher's (or the server's) default."""


class ToolArgumentError(ValueError):
    """The model's arguments cannot be used; ``problems`` says why, one line each, in words for the model."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def parse_arguments(arguments: Mapping[str, object] | str | None) -> ExecuteCodeArguments:
    """Check the arguments of an ``execute_code`` call: a mapping (Anthropic's ``input``) or a JSON object in a
    string (OpenAI's ``arguments``). Lenient where the intent is plain: a language alias or another case, a
    number of seconds sent as a string, null for an optional argument.

    Raises:
        ToolArgumentError: every problem found (not only the first), for the model to fix in one go.
    """
    arguments = _arguments_object(arguments, example='{"code": "print(1)", "language": "python"}',
                                  wanted=" with a 'code' field")
    problems: list[str] = []
    _check_names(arguments, _ARGUMENT_NAMES, problems)
    code = _parse_code(arguments.get("code"), problems)
    language = _parse_language(arguments.get("language"), problems)
    stdin = _parse_stdin(arguments.get("stdin"), problems)
    timeout_s = _parse_timeout(arguments.get("timeout_s"), problems)
    if problems:
        raise ToolArgumentError(problems)
    return ExecuteCodeArguments(code=code, language=language, stdin=stdin, timeout_s=timeout_s)


def _arguments_object(arguments: Mapping[str, object] | str | None, *, example: str,
                      wanted: str = "") -> Mapping[str, object]:
    """The arguments as a mapping: None and "" are no arguments, a string is parsed as JSON.

    Raises:
        ToolArgumentError: not JSON, or not a JSON object (``wanted`` says what it should have, ``example`` shows
            one).
    """
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ToolArgumentError(
                [f"the arguments are not valid JSON ({error}); send a JSON object such as {example}"]) from None
    if not isinstance(arguments, Mapping):
        raise ToolArgumentError([f"the arguments must be a JSON object{wanted}, not {_json_type(arguments)}"])
    return arguments


def _check_names(arguments: Mapping[str, object], names: tuple[str, ...], problems: list[str]) -> None:
    for key in arguments:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = f"the arguments are {', '.join(names)}" if names else "this tool takes no arguments"
            problems.append(f"unknown argument {str(key)!r}{hint}; {listed}")


def _parse_code(value: object, problems: list[str]) -> str:
    if value is None:
        problems.append("'code' is required: the program to run, as a string")
        return ""
    if not isinstance(value, str):
        problems.append(f"'code' must be a string (the program's source), not {_json_type(value)}")
        return ""
    if not value.strip():
        problems.append("'code' is empty: send the program to run")
    elif not _encodable(value):
        problems.append("'code' contains characters that are not valid Unicode (lone surrogates)")
    return value


def _parse_language(value: object, problems: list[str]) -> str:
    if value is None:
        return "python"
    if isinstance(value, str):
        name = value.strip().lower()
        name = LANGUAGE_ALIASES.get(name, name)
        if name in LANGUAGES:
            return name
    problems.append(f"'language' must be one of {', '.join(LANGUAGES)}; got {_short_json(value)}")
    return "python"


def _parse_stdin(value: object, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"'stdin' must be a string, not {_json_type(value)}")
        return ""
    if not _encodable(value):
        problems.append("'stdin' contains characters that are not valid Unicode (lone surrogates)")
    return value


def _parse_timeout(value: object, problems: list[str]) -> float | None:
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip().removesuffix("s").strip())
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        problems.append(f"'timeout_s' must be a positive number of seconds; got {_short_json(value)}")
        return None
    return seconds


# -- the session tools' arguments -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateSessionArguments:
    """``create_session``'s arguments, checked."""

    languages: tuple[str, ...] | None = None
    """Canonical names; None: every language the sandbox allows."""
    idle_timeout_s: int | None = None
    """None: the sandbox's default."""


@dataclass(frozen=True)
class RunInSessionArguments:
    """``run_in_session``'s arguments, checked."""

    session_id: str
    code: str
    language: str = "python"
    stdin: str = ""
    timeout_s: float | None = None


_FileAction = Literal["upload", "download", "list", "delete"]
_ACTIONS: Final[Mapping[str, _FileAction]] = {"upload": "upload", "download": "download", "list": "list",
                                              "delete": "delete"}


@dataclass(frozen=True)
class SessionFilesArguments:
    """``session_files``'s arguments, checked. ``path`` is relative to the workspace ("" its top directory, for
    list); a leading "/work/" or "./" is taken off (the workspace is /work)."""

    session_id: str
    action: _FileAction
    path: str = ""
    content: str = ""
    recursive: bool = False


@dataclass(frozen=True)
class CloseSessionArguments:
    """``close_session``'s arguments, checked."""

    session_id: str


SessionToolArguments = CreateSessionArguments | RunInSessionArguments | SessionFilesArguments | CloseSessionArguments
"""What ``parse_tool_arguments`` gives for a session tool."""

_SESSION_ID_RE: Final = re.compile(r"ses_[a-z2-7]{32}")
_CREATE_NAMES: Final = ("languages", "idle_timeout_s")
_RUN_NAMES: Final = ("session_id", "code", "language", "stdin", "timeout_s")
_FILES_NAMES: Final = ("session_id", "action", "path", "content", "recursive")
_CLOSE_NAMES: Final = ("session_id",)
_EXAMPLES: Final[Mapping[str, str]] = {
    TOOL_NAME: '{"code": "print(1)", "language": "python"}',
    CREATE_SESSION: '{"languages": ["python", "bash"]}',
    RUN_IN_SESSION: '{"session_id": "ses_...", "code": "x = 1"}',
    SESSION_FILES: '{"session_id": "ses_...", "action": "list"}',
    CLOSE_SESSION: '{"session_id": "ses_..."}',
}


def parse_tool_arguments(
    name: str, arguments: Mapping[str, object] | str | None, *, with_session_id: bool = True,
) -> ExecuteCodeArguments | SessionToolArguments:
    """Check the arguments of a call of ``execute_code`` (``TOOL_NAME``) or of a session tool
    (``SESSION_TOOL_NAMES``), as ``parse_arguments`` does: a mapping or a JSON object in a string, lenient where
    the intent is plain. ``with_session_id=False`` is for a host that keeps the session itself (the MCP server):
    ``session_id`` is then neither asked for nor accepted, and comes back "".

    Raises:
        ToolArgumentError: every problem found.
        ValueError: ``name`` is not one of those tools (the host's mistake).
    """
    if name == TOOL_NAME:
        return parse_arguments(arguments)
    return _parse_session_arguments(name, arguments, with_session_id=with_session_id)


def _parse_session_arguments(
    name: str, arguments: Mapping[str, object] | str | None, *, with_session_id: bool = True,
) -> SessionToolArguments:
    if name not in SESSION_TOOL_NAMES:
        raise ValueError(f"not a tool of this module: {name!r}")
    args = _arguments_object(arguments, example=_EXAMPLES[name])
    problems: list[str] = []
    parsed: SessionToolArguments
    if name == CREATE_SESSION:
        _check_names(args, _CREATE_NAMES, problems)
        parsed = CreateSessionArguments(languages=_parse_languages(args.get("languages"), problems),
                                        idle_timeout_s=_parse_idle_timeout(args.get("idle_timeout_s"), problems))
    else:
        names = {RUN_IN_SESSION: _RUN_NAMES, SESSION_FILES: _FILES_NAMES, CLOSE_SESSION: _CLOSE_NAMES}[name]
        if not with_session_id:
            names = tuple(n for n in names if n != "session_id")
        _check_names(args, names, problems)
        session_id = _parse_session_id(args.get("session_id"), problems) if with_session_id else ""
        if name == RUN_IN_SESSION:
            parsed = RunInSessionArguments(
                session_id=session_id, code=_parse_code(args.get("code"), problems),
                language=_parse_language(args.get("language"), problems),
                stdin=_parse_stdin(args.get("stdin"), problems),
                timeout_s=_parse_timeout(args.get("timeout_s"), problems))
        elif name == SESSION_FILES:
            parsed = _parse_files(session_id, args, problems)
        else:
            parsed = CloseSessionArguments(session_id=session_id)
    if problems:
        raise ToolArgumentError(problems)
    return parsed


def _parse_session_id(value: object, problems: list[str]) -> str:
    if value is None:
        problems.append(f"'session_id' is required: the id {CREATE_SESSION} returned (\"ses_...\")")
        return ""
    if not isinstance(value, str):
        problems.append(f"'session_id' must be a string, not {_json_type(value)}")
        return ""
    session_id = value.strip()
    if not _SESSION_ID_RE.fullmatch(session_id):
        problems.append(f"'session_id' must be a session id as {CREATE_SESSION} returned it (\"ses_\" and 32 "
                        f"lowercase letters and digits); got {_short_json(value)}")
    return session_id


def _parse_languages(value: object, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value  # one name for a list of one: the intent is plain
    if not isinstance(items, list | tuple) or not items:
        problems.append(f"'languages' must be a non-empty array of language names ({', '.join(LANGUAGES)}); "
                        f"got {_short_json(value)}")
        return None
    languages: list[str] = []
    for item in items:
        name = LANGUAGE_ALIASES.get(item.strip().lower(), item.strip().lower()) if isinstance(item, str) else None
        if name not in LANGUAGES:
            problems.append(f"'languages' may hold only {', '.join(LANGUAGES)}; got {_short_json(item)}")
        elif name not in languages:
            languages.append(name)
    return tuple(languages)


def _parse_idle_timeout(value: object, problems: list[str]) -> int | None:
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip().removesuffix("s").strip())
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        problems.append(f"'idle_timeout_s' must be a whole, positive number of seconds; got {_short_json(value)}")
        return None
    return int(seconds)


def _parse_files(session_id: str, args: Mapping[str, object], problems: list[str]) -> SessionFilesArguments:
    action_value = args.get("action")
    action = action_value.strip().lower() if isinstance(action_value, str) else ""
    if action not in FILE_ACTIONS:
        problems.append(f"'action' must be one of {', '.join(FILE_ACTIONS)}; got {_short_json(action_value)}"
                        if action_value is not None else
                        f"'action' is required: one of {', '.join(FILE_ACTIONS)}")
    path = _parse_path(args.get("path"), action, problems)
    content_value = args.get("content")
    content = ""
    if action == "upload":
        if content_value is None:
            problems.append("'content' is required for upload: the file's text (\"\" for an empty file)")
        elif not isinstance(content_value, str):
            problems.append(f"'content' must be a string (the file's text), not {_json_type(content_value)}")
        elif not _encodable(content_value):
            problems.append("'content' contains characters that are not valid Unicode (lone surrogates)")
        else:
            content = content_value
    elif content_value is not None and action in FILE_ACTIONS:
        problems.append(f"'content' is for action 'upload' only, not {action!r}")
    recursive_value = args.get("recursive")
    recursive = False
    if isinstance(recursive_value, bool):
        recursive = recursive_value
    elif isinstance(recursive_value, str) and recursive_value.strip().lower() in ("true", "false"):
        recursive = recursive_value.strip().lower() == "true"
    elif recursive_value is not None:
        problems.append(f"'recursive' must be true or false; got {_short_json(recursive_value)}")
    return SessionFilesArguments(session_id=session_id, action=_ACTIONS.get(action, "list"), path=path,
                                 content=content, recursive=recursive)


def _parse_path(value: object, action: str, problems: list[str]) -> str:
    if value is None or value == "":
        if action in ("upload", "download", "delete"):
            problems.append(f"'path' is required for {action}: a path relative to the working directory, "
                            "e.g. 'data/input.csv'")
        return ""
    if not isinstance(value, str):
        problems.append(f"'path' must be a string, not {_json_type(value)}")
        return ""
    if not _encodable(value):
        problems.append("'path' contains characters that are not valid Unicode (lone surrogates)")
        return ""
    path = value
    for prefix in ("/work/", "./"):  # the workspace's own name for itself: the intent is plain
        while path.startswith(prefix):
            path = path[len(prefix):]
    if path in ("/work", ".", "/"):
        path = ""
    if not path and action in ("upload", "download", "delete"):
        problems.append(f"'path' must name a file for {action}, not the working directory itself")
    return path


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short_json(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the text a model sees -----------------------------------------------------------------------------------------


def truncate_middle(text: str, max_chars: int) -> str:
    """``text`` unchanged when it has at most ``max_chars`` characters; else its head and tail (about half of
    ``max_chars`` each) around a line ``[... N more characters truncated ...]``, N being the characters left out.
    The tail is kept because that is where errors and final results usually are."""
    if len(text) <= max_chars:
        return text
    head = max_chars - max_chars // 2
    tail = max_chars - head
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[... {left_out} more characters truncated ...]\n{text[len(text) - tail:]}"


def format_result(result: ExecutionResult, *, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """The tool-result text for a program that ran: status in words, why it was killed and what to do about it,
    exit code, time and memory, then stdout and stderr, each cut to ``max_output_chars`` (head and tail)."""
    headline, advice = _status_words(result)
    lines = [f"Status: {headline}"]
    if result.status not in (Status.OK, Status.NONZERO_EXIT) and result.message:
        lines.append(f"Reason: {result.message}")
    if advice:
        lines.append(f"What to do: {advice}.")
    lines.append(f"Exit code: {_exit_code_words(result)}")
    usage = result.usage
    lines.append(
        f"Time: {usage.wall_time_s:.2f} s wall, {usage.cpu_time_s:.2f} s CPU; "
        f"peak memory {_size(usage.peak_memory_bytes)}"
    )
    if result.redactions:
        lines.append(f"Note: the sandbox redacted {result.redactions} secret(s) found in the output.")
    for stream, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut and result.status is not Status.OUTPUT_LIMIT:
            lines.append(f"Note: the sandbox kept only the first part of {stream} (its output limit).")
    if result.files:
        listed = ", ".join(f"{f.path} ({_size(f.size)})" for f in result.files[:_MAX_LISTED_FILES])
        more = len(result.files) - _MAX_LISTED_FILES
        listed += f" and {more} more" if more > 0 else ""
        lines.append(f"Files the program left in its working directory: {listed}")
    lines.append(_stream_block("stdout", result.stdout, max_output_chars))
    lines.append(_stream_block("stderr", result.stderr, max_output_chars))
    return "\n".join(lines)


def _stream_block(name: str, text: str, max_chars: int) -> str:
    if not text:
        return f"<{name}></{name}>"
    body = truncate_middle(text, max_chars)
    closing = f"</{name}>" if body.endswith("\n") else f"\n</{name}>"  # the closing tag on a line of its own
    return f"<{name}>\n{body}{closing}"


def _status_words(result: ExecutionResult) -> tuple[str, str]:
    """(the status in words, advice for the model or "")."""
    limits = result.limits
    match result.status:
        case Status.OK:
            return "succeeded", ""
        case Status.NONZERO_EXIT:
            return ("failed (the program exited with a non-zero code)",
                    "read stderr and stdout below, fix the program and run it again")
        case Status.TIMEOUT:
            limit = f" of {_seconds(limits.wall_time_s)}" if limits.wall_time_s else ""
            return (f"killed: timed out (it ran past the wall-time limit{limit})",
                    "make the program faster or do less per call, or pass a larger timeout_s")
        case Status.CPU_LIMIT:
            limit = f" of {_seconds(limits.cpu_time_s)}" if limits.cpu_time_s else ""
            return (f"killed: it used up the CPU-time limit{limit}",
                    "make the program do less computation per call")
        case Status.MEMORY_LIMIT:
            limit = f" (limit {_size(limits.memory_bytes)})" if limits.memory_bytes else ""
            return (f"killed: it ran out of memory{limit}",
                    "use less memory, e.g. process the data in pieces or use smaller data structures")
        case Status.OUTPUT_LIMIT:
            limit = f" of {_size(limits.output_bytes)}" if limits.output_bytes else ""
            return (f"killed: stdout and stderr together passed the output limit{limit}",
                    "print less: a summary, a count or the first lines instead of everything")
        case Status.FILE_SIZE_LIMIT:
            limit = f" of {_size(limits.file_size_bytes)}" if limits.file_size_bytes else ""
            return (f"killed: it wrote a file larger than the file-size limit{limit}", "write smaller files")
        case Status.KILLED:
            return (f"killed by {_signal_name(result.signal)}",
                    "the program crashed or was stopped (e.g. too many processes or threads); simplify it")
        case Status.REJECTED:
            return ("rejected by the sandbox after it ran (an output check refused the result)",
                    "do not print secrets or credentials")
        case _:
            return "ended with a status this client does not know", ""


def _exit_code_words(result: ExecutionResult) -> str:
    if result.signal:
        return f"none (killed by {_signal_name(result.signal)})"
    return str(result.exit_code)


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name}, signal {number}"
    except ValueError:
        return f"signal {number}"


def _seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def format_error(error: SandboxError, *, tool_name: str = TOOL_NAME) -> str:
    """The tool-result text for a call the sandbox refused or could not serve (nothing ran, or it is unknown
    whether it did): what happened, the server's details (field violations, quota violations, when to retry),
    and what the model can do (``tool_name``: what the advice calls the tool)."""
    lines: list[str]
    match error:
        case InvalidRequestError():
            lines = _invalid_request_lines(error, tool_name)
        case ResourceExhaustedError():
            lines = _exhausted_lines(error, tool_name)
        case PermissionDeniedError():
            lines = _permission_lines(error)
        case UnavailableError():
            wait = f"retry after {_retry(error.retry_after)}" if error.retry_after is not None else "retry shortly"
            lines = ["Status: not run: the sandbox is unavailable right now", f"Reason: {error.message}",
                     f"What to do: {wait}; if it keeps failing, tell the user the code-execution tool is down."]
        case DeadlineExceededError():
            lines = ["Status: unknown: the sandbox did not answer before the call's deadline",
                     f"Reason: {error.message}",
                     "What to do: the program may or may not have run; run a program that does less, "
                     "or pass a smaller timeout_s."]
        case AuthenticationError():
            lines = ["Status: refused: the sandbox did not accept this application's credentials (nothing ran)",
                     f"Reason: {error.message}",
                     "What to do: do not retry; this is a configuration problem only the user can fix. "
                     "Tell the user the code-execution tool is not set up correctly."]
        case RequestCancelledError():
            lines = ["Status: cancelled before it completed", f"Reason: {error.message}",
                     "What to do: run it again if you still need the result."]
        case _:
            lines = ["Status: error: the sandbox failed to handle the request", f"Reason: {error.message}",
                     "What to do: retry once; if it fails again, tell the user the code-execution tool has a "
                     "problem."]
    return "\n".join(lines)


def _invalid_request_lines(error: InvalidRequestError, tool_name: str) -> list[str]:
    violations = error.field_violations
    if any(v.field == "code" for v in violations):
        lines = ["Status: refused: the sandbox's checks rejected the code before running it (nothing ran)"]
        advice = ("rewrite the program without what is listed above (the same code will be refused again); "
                  "some modules, calls and commands are not allowed in this sandbox.")
    else:
        lines = ["Status: refused: the request was invalid (nothing ran)"]
        advice = f"call {tool_name} again with corrected arguments."
    if not violations:
        lines.append(f"Reason: {error.message}")
    for v in violations:
        where = _FIELD_ARGUMENTS.get(v.field, v.field)
        rule = f" [{v.reason}]" if v.reason else ""
        lines.append(f"- {where}: {v.description}{rule}")
    lines.append(f"What to do: {advice}")
    return lines


def _exhausted_lines(error: ResourceExhaustedError, tool_name: str) -> list[str]:
    if error.reason == "BUDGET_EXCEEDED":
        lines = ["Status: refused: the spending budget for running code is used up (nothing ran)"]
        if error.retry_after is not None:
            advice = (f"no more code can run until the budget renews in {_retry(error.retry_after)}; "
                      "finish the task without running code, or tell the user.")
        else:
            advice = "do not retry: no more code can run in this session. Finish without running code."
    elif error.reason == "QUEUE_FULL":
        lines = ["Status: refused: the sandbox is busy (nothing ran)"]
        advice = f"retry after {_retry(error.retry_after)}." if error.retry_after is not None else "retry shortly."
    else:
        lines = ["Status: refused: a rate limit or quota was reached (nothing ran)"]
        advice = (f"wait {_retry(error.retry_after)} before calling {tool_name} again; batch work into fewer "
                  "calls." if error.retry_after is not None else f"call {tool_name} less often.")
    lines.append(f"Reason: {error.message}")
    lines.extend(f"- {v.subject}: {v.description}" for v in error.quota_violations)
    lines.append(f"What to do: {advice}")
    return lines


def _permission_lines(error: PermissionDeniedError) -> list[str]:
    if error.reason == "QUARANTINED":
        return ["Status: refused: quarantined by the sandbox's incident response (nothing ran)",
                f"Reason: {error.message}",
                "What to do: do not retry and do not try to get around it; no code will run until an operator "
                "lifts the quarantine. Tell the user."]
    if error.reason == "LANGUAGE_DISABLED":
        return ["Status: refused: this language is disabled for now (nothing ran)", f"Reason: {error.message}",
                "What to do: use another language."]
    return ["Status: refused: the sandbox's policy does not allow this request (nothing ran)",
            f"Reason: {error.message}",
            "What to do: change the request (another language, a smaller timeout_s), or tell the user."]


def _retry(seconds: float | None) -> str:
    if seconds is None:
        return "a while"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"


# -- the text of a session's results -------------------------------------------------------------------------------

_MAX_TRACEBACK_CHARS: Final = 4000
_TRACEBACK_HEAD_LINES: Final = 6
_TRACEBACK_TAIL_LINES: Final = 30
_MAX_OUTPUT_NOTES: Final = 20
_PREVIEW_CHARS: Final = 400
_MAX_LISTED_ENTRIES: Final = 200
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RULE_RE: Final = re.compile(r"-{10,}")
_TAG_RE: Final = re.compile(r"<[^>]*>")
_INTERRUPTIBLE: Final = frozenset({Status.TIMEOUT, Status.CPU_LIMIT, Status.OUTPUT_LIMIT})
_TEXT_MIME_TYPES: Final = ("text/html", "application/json", "text/markdown", "text/latex")


def format_session_result(
    result: ExecutionResult,
    *,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    tool_name: str = RUN_IN_SESSION,
    timeout_argument: str = "timeout_s",
) -> str:
    """The tool-result text for code that ran in a session: the status in words and what to do next, whether
    the kernel was restarted (its state lost) and the server's warnings, the value of the last expression
    (``Out[n]``), the exception with a trimmed traceback, a note for each rich output (its type and size; a short
    preview of HTML and JSON), then stdout and stderr cut to ``max_output_chars`` (head and tail). The traceback
    is shown once: stderr leaves it out when it ends with it. ``tool_name`` is what the advice calls the tool
    that runs code in the session, ``timeout_argument`` its wall-time argument ("": it has none)."""
    python = result.language == "python"
    headline, advice = _session_status_words(result, python, tool_name, timeout_argument)
    lines = [f"Status: {headline}"]
    if result.status not in (Status.OK, Status.NONZERO_EXIT) and result.message:
        lines.append(f"Reason: {result.message}")
    if result.kernel_restarted:
        lines.append("Kernel: restarted during this call, so every Python variable, import and function of the "
                     "session is gone (the files in its working directory are kept).")
        advice += "; run the set-up code again (imports, variables) before going on"
    lines.extend(f"Warning: {warning}" for warning in result.warnings)
    lines.append(f"What to do: {advice}.")
    if not python or result.signal:
        lines.append(f"Exit code: {_exit_code_words(result)}")
    usage = result.usage
    lines.append(f"Time: {usage.wall_time_s:.2f} s wall, {usage.cpu_time_s:.2f} s CPU; "
                 f"peak memory {_size(usage.peak_memory_bytes)}")
    if result.redactions:
        lines.append(f"Note: the sandbox redacted {result.redactions} secret(s) found in the output.")
    for stream, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut and result.status is not Status.OUTPUT_LIMIT:
            lines.append(f"Note: the sandbox kept only the first part of {stream} (its output limit).")
    if result.value:
        label = f"Out[{result.execution_count}]" if result.execution_count else "Out"
        value = truncate_middle(result.value, max_output_chars)
        lines.append(f"{label}:\n{value}" if "\n" in value else f"{label}: {value}")
    stderr = result.stderr
    if result.error is not None:
        error = result.error
        interrupted = result.status in _INTERRUPTIBLE and error.name == "KeyboardInterrupt"
        lines.append("Interrupted at (the interrupt raised KeyboardInterrupt):" if interrupted
                     else f"Error: {_error_line(error.name, error.value)}")
        if error.traceback:
            lines.append(f"<traceback>\n{_trim_traceback(error.traceback, max_output_chars)}\n</traceback>")
        stderr = _without_traceback(stderr, error.traceback)
    notes = [_output_note(output, result.value) for output in result.outputs[:_MAX_OUTPUT_NOTES]]
    if len(result.outputs) > _MAX_OUTPUT_NOTES:
        notes.append(f"[... and {len(result.outputs) - _MAX_OUTPUT_NOTES} more rich outputs]")
    if notes:
        lines.append(f"Rich outputs ({len(result.outputs)}):")
        lines.extend(f"- {note}" for note in notes)
    if result.files:
        listed = ", ".join(f"{f.path} ({_size(f.size)})" for f in result.files[:_MAX_LISTED_FILES])
        more = len(result.files) - _MAX_LISTED_FILES
        lines.append(f"Files the call reported: {listed}" + (f" and {more} more" if more > 0 else ""))
    lines.append(_stream_block("stdout", result.stdout, max_output_chars))
    lines.append(_stream_block("stderr", stderr, max_output_chars))
    return "\n".join(lines)


def _session_status_words(result: ExecutionResult, python: bool, tool_name: str,
                          timeout_argument: str) -> tuple[str, str]:
    """(the status in words, what to do next) for a call in a session."""
    limits = result.limits
    # The kernel is interrupted at a time or output limit and keeps its state; a bash or JavaScript process is
    # killed, as a kernel that did not stop in time is (and then restarted).
    verb = "interrupted" if python and not result.kernel_restarted else "killed"
    larger = f", or pass a larger {timeout_argument}" if timeout_argument else ""
    match result.status:
        case Status.OK if python:
            return "succeeded", f"go on in this session: what this call defined stays there for the next {tool_name}"
        case Status.OK:
            return "succeeded", (f"go on in this session: the files this call wrote stay in the working directory "
                                 f"for the next {tool_name} (its shell or JavaScript variables do not)")
        case Status.NONZERO_EXIT if result.error is not None:
            return (f"failed: the code raised {result.error.name}",
                    "read the error below, fix the code and run only the fixed part again (the session kept "
                    "everything defined before)")
        case Status.NONZERO_EXIT:
            return ("failed (the program exited with a non-zero code)",
                    "read stderr and stdout below, fix the program and run it again")
        case Status.TIMEOUT:
            limit = f" of {_seconds(limits.wall_time_s)}" if limits.wall_time_s else ""
            return (f"{verb}: timed out (it ran past the wall-time limit{limit})",
                    "make the code faster, or do less per call: the session keeps its state, so long work can "
                    f"be split over several calls{larger}")
        case Status.CPU_LIMIT:
            limit = f" of {_seconds(limits.cpu_time_s)}" if limits.cpu_time_s else ""
            return (f"{verb}: it used up the CPU-time limit{limit}",
                    "do less computation per call: the session keeps its state, so split the work over calls")
        case Status.OUTPUT_LIMIT:
            limit = f" of {_size(limits.output_bytes)}" if limits.output_bytes else ""
            return (f"{verb}: its output (stdout, stderr and rich outputs) passed the output limit{limit}",
                    "print less: a summary, a count or the first lines instead of everything")
        case Status.MEMORY_LIMIT:
            limit = f" (limit {_size(limits.memory_bytes)})" if limits.memory_bytes else ""
            return (f"killed: the session ran out of memory{limit}",
                    "use less memory: the limit is the whole session's, so what earlier calls keep counts too "
                    "(delete large variables you no longer need), or process the data in pieces")
        case _:
            return _status_words(result)


def _error_line(name: str, value: str) -> str:
    value = _ANSI_RE.sub("", value).strip()
    return f"{name}: {truncate_middle(value, _PREVIEW_CHARS)}" if value else name


def _trim_traceback(frames: Sequence[str], max_chars: int) -> str:
    """The traceback without colour codes and rule lines, its first and last lines kept when it is long."""
    text = "\n".join(_ANSI_RE.sub("", frame).rstrip("\n") for frame in frames)
    lines = [line for line in text.splitlines() if not _RULE_RE.fullmatch(line.strip())]
    if len(lines) > _TRACEBACK_HEAD_LINES + _TRACEBACK_TAIL_LINES + 1:
        left_out = len(lines) - _TRACEBACK_HEAD_LINES - _TRACEBACK_TAIL_LINES
        lines = [*lines[:_TRACEBACK_HEAD_LINES], f"[... {left_out} lines of the traceback left out ...]",
                 *lines[-_TRACEBACK_TAIL_LINES:]]
    return truncate_middle("\n".join(lines).strip("\n"), min(max_chars, _MAX_TRACEBACK_CHARS))


def _without_traceback(stderr: str, frames: Sequence[str]) -> str:
    """stderr without the traceback the kernel printed at its end (shown once, under Error)."""
    if not frames:
        return stderr
    printed = "\n".join(frames)
    for ending in (printed + "\n", printed):
        if stderr.endswith(ending):
            return stderr[:len(stderr) - len(ending)]
    return stderr


def _output_note(output: DisplayData, value: str) -> str:
    """One line about a rich output: "[image/png output, 15.7 KiB] <Figure size 640x480 with 1 Axes>"."""
    note = f"[{output.mime_type} output, {_size(len(output.data))}]"
    if output.update:
        note += " (replaces an earlier output)"
    plain = output.alternatives.get("text/plain")
    plain_text = plain.decode("utf-8", errors="replace").strip() if plain else ""
    if output.mime_type.startswith("image/") and output.mime_type != "image/svg+xml":
        return f"{note} {_one_line(plain_text)}" if plain_text else note
    if output.is_result and value and plain_text == value.strip():
        return f"{note} the value shown as Out above, as {output.mime_type}"
    if output.mime_type == "application/json":
        try:
            preview = json.dumps(json.loads(output.data), ensure_ascii=False)
        except ValueError:
            preview = output.text
    elif output.mime_type in _TEXT_MIME_TYPES or output.mime_type.startswith("text/"):
        preview = _html_text(output.text) if output.mime_type == "text/html" else output.text
    else:
        preview = plain_text
    preview = preview.strip()
    return f"{note} preview: {_short(preview, _PREVIEW_CHARS)}" if preview else note


def _html_text(markup: str) -> str:
    return " ".join(html.unescape(_TAG_RE.sub(" ", markup)).split())


def _one_line(text: str) -> str:
    return _short(" ".join(text.split()), 200)


def _short(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


_CLOSE_REASONS: Final[Mapping[str, str]] = {
    "closed": "it was closed",
    "idle_timeout": "it was idle (no call) for longer than its idle timeout",
    "max_lifetime": "it reached its maximum lifetime",
    "cpu_limit": "it used up its total CPU time",
    "budget_exceeded": "the spending budget for running code ran out",
    "sandbox_failed": "its sandbox failed",
    "admin": "an operator closed it",
    "server_shutdown": "the sandbox server shut down",
    "server_restart": "the sandbox server restarted",
}


def _gone_reason(error: SessionNotFoundError) -> str:
    """Why a session is gone, in words ("it was idle (no call) for longer than its idle timeout")."""
    return _CLOSE_REASONS.get(error.close_reason, f"it closed ({error.close_reason})" if error.close_reason
                              else "it does not exist, or it closed")


def format_session_error(
    error: SandboxError,
    *,
    tool_name: str = RUN_IN_SESSION,
    session_id: str = "",
    create_tool: str = CREATE_SESSION,
    files_tool: str = SESSION_FILES,
) -> str:
    """The tool-result text for a session tool's call the sandbox refused or could not serve: a session that is
    gone (why, and that its state is lost), a workspace path that is not there, a busy session, a full
    workspace, too many sessions; anything else as ``format_error`` words it. ``create_tool`` and ``files_tool``
    are what the advice calls the tools that start a session and list its files ("": there is none)."""
    if isinstance(error, SessionNotFoundError):
        name = session_id or error.session_id or "named"
        lines = [f"Status: the session {name} is gone: {_gone_reason(error)} (nothing ran)"]
        if error.close_reason == "budget_exceeded":
            lines.append("What to do: do not start another session: no more code can run. Finish without running "
                         "code, or tell the user.")
        else:
            start = f"call {create_tool} to start a new one" if create_tool else "a new session starts afresh"
            lines.append(f"What to do: its variables and files are lost; {start}, then set up again what you "
                         "need (imports, variables, files).")
        return "\n".join(lines)
    if isinstance(error, NotFoundError) and error.resource_type == "file":
        where = error.resource_name or "the path"
        look = (f"list the files with {files_tool} (action 'list')" if files_tool
                else "list the files with code (e.g. os.listdir() in Python)")
        return (f"Status: not found: {where!r} is not in the session's working directory (nothing was done)\n"
                f"What to do: check the path: {look}.")
    if isinstance(error, SessionBusyError):
        wait = f"retry after {_retry(error.retry_after)}" if error.retry_after is not None else "retry shortly"
        return (f"Status: refused: the session is busy with other calls (nothing ran)\nReason: {error.message}\n"
                f"What to do: calls to one session run one at a time; {wait}, and do not send several calls to "
                "the same session at once.")
    if isinstance(error, InvalidRequestError) and any(v.field == "path" for v in error.field_violations):
        lines = ["Status: refused: the path cannot be used (nothing was done)"]
        for v in error.field_violations:
            rule = f" [{v.reason}]" if v.reason else ""
            lines.append(f"- {v.field}: {v.description}{rule}")
        lines.append(f"What to do: call {tool_name} again with a path relative to the working directory, e.g. "
                     "'data/input.csv' (a file for upload, download and delete; a directory for list).")
        return "\n".join(lines)
    if isinstance(error, PermissionDeniedError) and error.reason == "POLICY_DENIED" and tool_name == RUN_IN_SESSION:
        return (f"Status: refused: the sandbox's policy does not allow this call (nothing ran)\nReason: {error.message}"
                "\nWhat to do: change the call (a language the session has, a smaller timeout_s), or start a "
                f"session that allows it with {create_tool or CREATE_SESSION}.")
    if isinstance(error, PermissionDeniedError) and error.reason == "SESSIONS_DISABLED":
        return (f"Status: refused: this sandbox does not allow sessions (nothing was started)\nReason: {error.message}"
                f"\nWhat to do: use {TOOL_NAME} instead: each call runs a complete program in a fresh sandbox.")
    if isinstance(error, PermissionDeniedError) and error.reason == "POLICY_DENIED" and tool_name == CREATE_SESSION:
        return (f"Status: refused: the sandbox's policy does not allow this session (nothing was started)\n"
                f"Reason: {error.message}\nWhat to do: ask for less (a smaller idle_timeout_s, other languages), "
                f"or call {CREATE_SESSION} without those arguments to take the defaults.")
    if isinstance(error, ResourceExhaustedError):
        subjects = " ".join(v.subject for v in error.quota_violations)
        if "file_size_bytes" in subjects or "scratch_bytes" in subjects:
            return ("Status: refused: the file does not fit: it is over the session's file size limit, or the "
                    f"working directory is full (nothing was written)\nReason: {error.message}\n"
                    "What to do: write less data, or delete files you no longer need.")
        if "max_active" in subjects or "max_sessions" in subjects:
            return (f"Status: refused: too many sessions are open (no session was started)\nReason: {error.message}"
                    "\nWhat to do: go on in a session you already have, or close one you no longer need first.")
    return format_error(error, tool_name=tool_name)


def _created_text(info: SessionInfo, *, run_tool: str = RUN_IN_SESSION) -> str:
    lifetime = f", and at the latest {info.max_lifetime_s} s after it started" if info.max_lifetime_s else ""
    return "\n".join([
        "Status: session started",
        f"session_id: {info.id}",
        f"Languages: {', '.join(info.languages) or 'the sandbox default'}",
        f"It closes by itself after {info.idle_timeout_s} s without a call{lifetime}.",
        f"What to do: pass session_id \"{info.id}\" to {run_tool} to run code in it (Python state persists from "
        f"one call to the next) and to {SESSION_FILES} to manage its files; call {CLOSE_SESSION} when you are "
        "done.",
    ])


def _closed_text(session_id: str, final: SessionInfo | None, gone: SessionNotFoundError | None = None) -> str:
    if gone is not None:
        return (f"Status: the session {session_id} was already closed: {_gone_reason(gone)}\n"
                "What to do: nothing; its state is gone.")
    lines = [f"Status: closed the session {session_id}: its sandbox, variables and files are gone"]
    if final is not None:
        usage = final.usage
        lines.append(f"Usage: {usage.calls} call(s), {usage.cpu_time_s:.2f} s CPU, peak memory "
                     f"{_size(usage.peak_memory_bytes)}")
    lines.append(f"What to do: call {CREATE_SESSION} if you need a session again.")
    return "\n".join(lines)


def _uploaded_text(info: FileInfo, run_tool: str) -> str:
    return (f"Status: uploaded {info.path} ({_size(info.size)})\n"
            f"What to do: the code {run_tool} runs can open it by this path (relative to its working directory).")


def _deleted_text(path: str) -> str:
    return f"Status: deleted {path}"


def _listing_text(path: str, entries: Sequence[FileInfo], recursive: bool) -> str:
    where = f"'{path}'" if path else "the top of the working directory"
    how = " (recursively)" if recursive else ""
    if not entries:
        return f"Status: {where} is empty{how}"
    lines = [f"Status: listed {where}{how}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"]
    for entry in entries[:_MAX_LISTED_ENTRIES]:
        match entry.type:
            case "file":
                lines.append(f"- {entry.path} ({_size(entry.size)})")
            case "directory":
                lines.append(f"- {entry.path}/ (directory)")
            case _:
                lines.append(f"- {entry.path} ({entry.type})")
    if len(entries) > _MAX_LISTED_ENTRIES:
        lines.append(f"[... and {len(entries) - _MAX_LISTED_ENTRIES} more entries]")
    return "\n".join(lines)


def _download_text(path: str, data: bytes, complete: bool, size: int | None, max_chars: int, run_tool: str) -> str:
    """A downloaded file for the model: its text (cut to ``max_chars``), or a note when it is not UTF-8 text.
    ``complete``: ``data`` is the whole file (else its first part, of ``size`` bytes in all when known)."""
    if complete:
        total = _size(len(data))
    elif size is not None:
        total = _size(size)
    else:
        total = f"more than {_size(len(data))}"
    text = _utf8_text(data, final=complete)
    if text is None:
        return (f"Status: downloaded {path}: {total} of binary data (not UTF-8 text), not shown\n"
                f"What to do: look into it with code in {run_tool} (e.g. read it in Python).")
    if complete:
        body = truncate_middle(text, max_chars)
        cut = len(body) != len(text)
    else:
        body = text[:max_chars] + f"\n[... the rest of the file is not shown ({total} in all) ...]"
        cut = True
    lines = [f"Status: downloaded {path} ({total}, text)"]
    if cut:
        lines.append(f"Note: the file is long: only part of it is shown; read the rest with code in {run_tool}.")
    closing = "</file>" if body.endswith("\n") else "\n</file>"
    lines.append(f"<file path={json.dumps(path, ensure_ascii=False)}>\n{body}{closing}")
    return "\n".join(lines)


def _utf8_text(data: bytes, *, final: bool) -> str | None:
    """``data`` as UTF-8 text, or None for binary data (NUL bytes, or not UTF-8). A first part (``final``
    False) may end in the middle of a character."""
    if b"\0" in data:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError:
        return None


# -- images --------------------------------------------------------------------------------------------------------

_MAX_IMAGES: Final = 8
_MAX_IMAGE_BYTES: Final = 5 * 2**20


def image_outputs(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[tuple[str, bytes]]:
    """The images among a result's rich outputs (figures, ``display()``ed images), as (MIME type, raw bytes),
    in order: an output of one of ``IMAGE_MIME_TYPES`` (PNG, JPEG, GIF, WebP), or else such an alternative of it
    (e.g. the PNG of an SVG figure). At most ``max_images``; an image over ``max_bytes`` is left out (the
    providers refuse large ones; 5 MiB by default). None (nothing ran) or a one-shot result: none."""
    images: list[tuple[str, bytes]] = []
    for output in () if result is None else result.outputs:
        candidates = [(output.mime_type, output.data), *output.alternatives.items()]
        for mime_type, data in candidates:
            if mime_type in IMAGE_MIME_TYPES and data:
                if len(data) <= max_bytes:
                    images.append((mime_type, data))
                break
        if len(images) >= max_images:
            break
    return images


def anthropic_image_blocks(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Anthropic content blocks, ``{"type": "image", "source": {"type": "base64",
    "media_type", "data"}}``: a ``tool_result``'s content may hold them after its text (``handle_anthropic_tool_use
    (..., images=True)`` puts them there). ``max_images`` and ``max_bytes`` are ``image_outputs``'s."""
    return [{"type": "image", "source": {"type": "base64", "media_type": mime_type, "data": _b64(data)}}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def openai_image_parts(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Chat Completions content parts, ``{"type": "image_url", "image_url": {"url":
    "data:image/png;base64,..."}}``. A ``tool`` message takes text only: send these in a ``user`` message after
    the tool messages. ``max_images`` and ``max_bytes`` are ``image_outputs``'s."""
    return [{"type": "image_url", "image_url": {"url": _data_url(mime_type, data)}}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def openai_responses_image_parts(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Responses API input parts, ``{"type": "input_image", "image_url": "data:..."}``: a
    ``function_call_output``'s output may be a list of them after an ``input_text`` part
    (``handle_openai_responses_call(..., images=True)`` builds it). ``max_images`` and ``max_bytes`` are
    ``image_outputs``'s."""
    return [{"type": "input_image", "image_url": _data_url(mime_type, data)}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{_b64(data)}"


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


# -- provider messages -----------------------------------------------------------------------------------------------


def openai_tool_message(tool_call: object, content: str) -> dict[str, Any]:
    """The Chat Completions message answering ``tool_call`` (the SDK object or its dict form):
    ``{"role": "tool", "tool_call_id", "content"}``.

    Raises:
        ValueError: the tool call has no id.
    """
    return {"role": "tool", "tool_call_id": _require(tool_call, "id"), "content": content}


def openai_responses_tool_output(function_call: object, content: str | list[dict[str, Any]]) -> dict[str, Any]:
    """The Responses API input item answering a ``function_call`` output item (SDK object or dict):
    ``{"type": "function_call_output", "call_id", "output"}``. ``content``: the text, or a list of input parts
    (``input_text``, ``input_image``: see ``openai_responses_image_parts``).

    Raises:
        ValueError: the function call has no call_id.
    """
    return {"type": "function_call_output", "call_id": _require(function_call, "call_id"), "output": content}


def anthropic_tool_result(
    tool_use: object, content: str | list[dict[str, Any]], *, is_error: bool = False,
) -> dict[str, Any]:
    """The content block answering a ``tool_use`` block (SDK object or dict), to send in a user message:
    ``{"type": "tool_result", "tool_use_id", "content", "is_error"}``. ``content``: the text, or a list of
    content blocks (text, and images: see ``anthropic_image_blocks``).

    Raises:
        ValueError: the tool_use block has no id.
    """
    return {"type": "tool_result", "tool_use_id": _require(tool_use, "id"), "content": content, "is_error": is_error}


def _field(obj: object, name: str) -> object:
    """A field of a provider object: its dict form or the SDK's (pydantic) object."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _require(obj: object, name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"the provider's tool call has no {name!r}: {_short_repr(obj)}")
    return value


def _short_repr(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 200 else text[:197] + "..."


def _openai_call_parts(tool_call: object) -> tuple[str, Mapping[str, object] | str | None]:
    function = _field(tool_call, "function")
    return _call_parts(function if function is not None else tool_call, "arguments")


def _call_parts(call: object, arguments_field: str) -> tuple[str, Mapping[str, object] | str | None]:
    name = _field(call, "name")
    arguments = _field(call, arguments_field)
    if not (arguments is None or isinstance(arguments, str | Mapping)):
        arguments = json.dumps(arguments, default=str)  # parse_arguments names what it is
    return (name if isinstance(name, str) else ""), arguments


# -- dispatchers ---------------------------------------------------------------------------------------------------


class Executor(Protocol):
    """What ``ToolDispatcher`` needs of a client: ``SandboxClient.execute`` (the client itself fits)."""

    def execute(
        self, code: str, *, language: str = ..., stdin: str | bytes = ..., limits: Limits | None = ...,
        session_id: str = ..., timeout: float | None = ...,
    ) -> ExecutionResult: ...


class AsyncExecutor(Protocol):
    """What ``AsyncToolDispatcher`` needs of a client: ``AsyncSandboxClient.execute``."""

    async def execute(
        self, code: str, *, language: str = ..., stdin: str | bytes = ..., limits: Limits | None = ...,
        session_id: str = ..., timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> ExecutionResult: ...


class SessionClient(Executor, Protocol):
    """What the session tools need of a client besides ``execute``: ``SandboxClient`` fits. A dispatcher over a
    client without ``session`` answers the session tools as unknown tools."""

    def session(
        self, language: str = ..., *, languages: Sequence[str] | None = ..., limits: Limits | None = ...,
        idle_timeout_s: int | None = ..., labels: Mapping[str, str] | None = ..., timeout: float | None = ...,
    ) -> Session: ...

    def attach_session(self, session_id: str, language: str = ..., *, timeout: float | None = ...) -> Session: ...

    def close_session(self, session_id: str, *, timeout: float | None = ...) -> SessionInfo: ...


class AsyncSessionClient(AsyncExecutor, Protocol):
    """``SessionClient`` for ``AsyncToolDispatcher``: ``AsyncSandboxClient`` fits."""

    def session(
        self, language: str = ..., *, languages: Sequence[str] | None = ..., limits: Limits | None = ...,
        idle_timeout_s: int | None = ..., labels: Mapping[str, str] | None = ..., timeout: float | None = ...,
    ) -> Awaitable[AsyncSession]: ...

    async def attach_session(
        self, session_id: str, language: str = ..., *,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> AsyncSession: ...

    async def close_session(
        self, session_id: str, *,
        timeout: float | None = ...,  # noqa: ASYNC109 (the gRPC deadline)
    ) -> SessionInfo: ...


@dataclass(frozen=True)
class _Run:
    """One execution to make, from checked arguments and the dispatcher's settings."""

    code: str
    language: str
    stdin: str
    limits: Limits | None
    session_id: str
    timeout: float | None


_PER_CALL_LIMITS: Final = ("wall_time_s", "cpu_time_s", "output_bytes")
"""The limits a call in a session may set (the others hold for the session's life)."""
_DOWNLOAD_CAP_BYTES: Final = 2**20
"""Bytes of a file ``session_files`` downloads at most (more of a long text file is never shown anyway)."""
_MAX_LABEL_VALUE: Final = 256


class _Settings:
    """The settings and the client-free steps shared by both dispatchers."""

    def __init__(
        self, *, name: str, session_id: str, limits: Limits | None, max_output_chars: int, sessions: bool = False,
        session_limits: Limits | None = None, session_labels: Mapping[str, str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
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
        self.name = name
        self.session_id = session_id
        self.limits = limits
        self.max_output_chars = max_output_chars
        self.sessions = sessions
        self.session_limits = session_limits
        self.max_sessions = max_sessions
        self.labels = dict(session_labels or {})
        if session_id and len(session_id) <= _MAX_LABEL_VALUE and session_id.isprintable():
            self.labels.setdefault(SESSION_LABEL, session_id)
        self.conversation = self.labels.get(SESSION_LABEL, "")

    def prepare(
        self, name: str, arguments: Mapping[str, object] | str | None,
    ) -> _Run | SessionToolArguments | ToolOutcome:
        """What to do (an execution, a session tool's checked arguments), or the outcome of a call that cannot do
        anything (unknown tool, bad arguments)."""
        if self.sessions and name in SESSION_TOOL_NAMES:
            try:
                return _parse_session_arguments(name, arguments)
            except ToolArgumentError as error:
                return self._invalid(name, error, "nothing was done" if name != RUN_IN_SESSION else "nothing ran")
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
            return self._invalid(self.name, error, "nothing ran")
        limits = self.limits
        if args.timeout_s is not None:
            limits = replace(limits or Limits(), wall_time_s=args.timeout_s)
        wall = limits.wall_time_s if limits is not None else None
        return _Run(code=args.code, language=args.language, stdin=args.stdin, limits=limits,
                    session_id=self.session_id, timeout=wall + CALL_DEADLINE_MARGIN_S if wall else None)

    @staticmethod
    def _invalid(name: str, error: ToolArgumentError, nothing: str) -> ToolOutcome:
        problems = "\n".join(f"- {p}" for p in error.problems)
        text = (f"Status: invalid arguments for {name} ({nothing})\n{problems}\n"
                f"What to do: call {name} again with corrected arguments.")
        return ToolOutcome(text=text, is_error=True)

    def ran(self, result: ExecutionResult) -> ToolOutcome:
        return ToolOutcome(text=format_result(result, max_output_chars=self.max_output_chars),
                           is_error=not result.ok, result=result)

    def refused(self, error: SandboxError) -> ToolOutcome:
        if _for_the_host(error):
            # The model is told too, but only the host can fix this one: make sure someone sees it.
            logger.warning("%s: the sandbox refused or failed the call: %s", self.name, error)
        return ToolOutcome(text=format_error(error, tool_name=self.name), is_error=True, error=error)

    # -- the session tools' steps --

    def session_call(self, timeout_s: float | None, info: SessionInfo) -> tuple[Limits | None, float | None]:
        return _session_call(self.limits, timeout_s, info)

    def ran_in_session(self, result: ExecutionResult, session_id: str) -> ToolOutcome:
        return ToolOutcome(text=format_session_result(result, max_output_chars=self.max_output_chars),
                           is_error=not result.ok, result=result, session_id=session_id)

    def session_refused(self, error: SandboxError, tool: str, session_id: str = "") -> ToolOutcome:
        if _for_the_host(error) and not isinstance(error, NotFoundError):
            logger.warning("%s: the sandbox refused or failed the call: %s", tool, error)
        text = format_session_error(error, tool_name=tool, session_id=session_id)
        return ToolOutcome(text=text, is_error=True, error=error, session_id=session_id)

    def created(self, info: SessionInfo) -> ToolOutcome:
        return ToolOutcome(text=_created_text(info), is_error=False, session_id=info.id)

    def too_many(self, open_ids: Sequence[str]) -> ToolOutcome:
        text = (f"Status: refused: you already have {len(open_ids)} open sessions, as many as this tool allows "
                f"(no session was started): {', '.join(open_ids)}\n"
                f"What to do: go on in one of them with {RUN_IN_SESSION}, or call {CLOSE_SESSION} on one you no "
                "longer need first.")
        return ToolOutcome(text=text, is_error=True)

    @staticmethod
    def unknown_session(session_id: str) -> ToolOutcome:
        text = (f"Status: unknown session {session_id} (nothing was done): it is not one of this conversation's "
                f"sessions\nWhat to do: use a session_id that {CREATE_SESSION} returned in this conversation, or "
                f"call {CREATE_SESSION} to start a session.")
        return ToolOutcome(text=text, is_error=True, session_id=session_id)

    def closed(self, session_id: str, final: SessionInfo | None,
               gone: SessionNotFoundError | None = None) -> ToolOutcome:
        return ToolOutcome(text=_closed_text(session_id, final, gone), is_error=False, error=gone,
                           session_id=session_id)

    def files_done(self, text: str, session_id: str) -> ToolOutcome:
        return ToolOutcome(text=text, is_error=False, session_id=session_id)

    @property
    def download_cap(self) -> int:
        return max(_DOWNLOAD_CAP_BYTES, 4 * self.max_output_chars)


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


class _SessionLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def info(self) -> SessionInfo: ...


_S = TypeVar("_S", bound=_SessionLike)


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


# -- the session tools' calls, sync and asyncio (the dispatchers, the LangChain tool and the MCP server) ------------


def _session_call(
    limits: Limits | None, timeout_s: float | None, info: SessionInfo,
) -> tuple[Limits | None, float | None]:
    """The limits of a call in a session (the per-call ones of ``limits``, ``timeout_s`` over its wall time) and
    its deadline (its wall time, else the session's, plus the margin)."""
    per_call = {name: getattr(limits, name) for name in _PER_CALL_LIMITS
                if limits is not None and getattr(limits, name) is not None}
    if timeout_s is not None:
        per_call["wall_time_s"] = timeout_s
    wall = per_call.get("wall_time_s") or info.limits.wall_time_s
    return (Limits(**per_call) if per_call else None), (wall + CALL_DEADLINE_MARGIN_S if wall else None)


def _file_size(entries: Iterable[FileInfo], path: str) -> int | None:
    return next((entry.size for entry in entries if entry.path == path), None)


def _session_files_sync(files: SessionFiles, args: SessionFilesArguments, *, max_chars: int, cap: int,
                        run_tool: str = RUN_IN_SESSION) -> str:
    """Do ``args.action`` in a session's workspace and say how it went.

    Raises:
        SandboxError: the call failed (``format_session_error`` words it).
    """
    match args.action:
        case "upload":
            return _uploaded_text(files.upload(args.path, args.content), run_tool)
        case "download":
            chunks = files.iter_download(args.path)
            data, complete = _take(chunks, cap)
            with contextlib.suppress(AttributeError):
                chunks.close()  # type: ignore[attr-defined]  # the generator: cancels the rest of the download
            size = None
            if not complete:
                with contextlib.suppress(SandboxError):
                    size = _file_size(files.list(args.path.rpartition("/")[0]), args.path)
            return _download_text(args.path, data, complete, size, max_chars, run_tool)
        case "list":
            return _listing_text(args.path, files.list(args.path, recursive=args.recursive), args.recursive)
        case _:
            files.delete(args.path, recursive=args.recursive)
            return _deleted_text(args.path)


async def _session_files_async(files: AsyncSessionFiles, args: SessionFilesArguments, *, max_chars: int, cap: int,
                               run_tool: str = RUN_IN_SESSION) -> str:
    """``_session_files_sync`` for an asyncio session."""
    match args.action:
        case "upload":
            return _uploaded_text(await files.upload(args.path, args.content), run_tool)
        case "download":
            chunks = files.iter_download(args.path)
            data, complete = await _atake(chunks, cap)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # cancels the rest of the download
            size = None
            if not complete:
                with contextlib.suppress(SandboxError):
                    size = _file_size(await files.list(args.path.rpartition("/")[0]), args.path)
            return _download_text(args.path, data, complete, size, max_chars, run_tool)
        case "list":
            return _listing_text(args.path, await files.list(args.path, recursive=args.recursive), args.recursive)
        case _:
            await files.delete(args.path, recursive=args.recursive)
            return _deleted_text(args.path)


def _take(chunks: Iterator[bytes], cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the chunks, and whether that is all of them."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(parts)[:cap], False
    return b"".join(parts), True


async def _atake(chunks: AsyncIterator[bytes], cap: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        parts.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(parts)[:cap], False
    return b"".join(parts), True


def _restarted_note(error: SessionNotFoundError) -> str:
    """The line that opens a result run in a new session because the one before was gone."""
    return (f"Note: the session had closed ({_gone_reason(error)}), so this ran in a new session: the "
            "variables, imports and files from before are gone; set up again what you need.")


# -- the dispatchers ---------------------------------------------------------------------------------------------------


class _Configured:
    """The settings both dispatchers expose, read-only."""

    _settings: _Settings

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def session_id(self) -> str:
        return self._settings.session_id

    @property
    def limits(self) -> Limits | None:
        return self._settings.limits

    @property
    def max_output_chars(self) -> int:
        return self._settings.max_output_chars

    @property
    def session_tools(self) -> bool:
        """The dispatcher runs the session tools (asked for, and the client has sessions)."""
        return self._settings.sessions


def _anthropic_content(outcome: ToolOutcome, images: bool) -> str | list[dict[str, Any]]:
    blocks = anthropic_image_blocks(outcome.result) if images else []
    return [{"type": "text", "text": outcome.text}, *blocks] if blocks else outcome.text


def _responses_content(outcome: ToolOutcome, images: bool) -> str | list[dict[str, Any]]:
    parts = openai_responses_image_parts(outcome.result) if images else []
    return [{"type": "input_text", "text": outcome.text}, *parts] if parts else outcome.text


class ToolDispatcher(_Configured):
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

    The model can use only the sessions this dispatcher started or adopted (``adopt_session``), and those that
    carry its ``session_id`` as their ``conversation`` label (started by another dispatcher of the same
    conversation). ``close_sessions()``, or leaving a ``with`` block, closes the ones it started and the model
    left open; others close at their idle timeout.

    Raises:
        ValueError, TypeError: a setting is invalid.
    """

    def __init__(
        self,
        client: Executor,
        *,
        session_id: str = "",
        limits: Limits | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        name: str = TOOL_NAME,
        session_tools: bool = True,
        session_limits: Limits | None = None,
        session_labels: Mapping[str, str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._client = client
        sessions = session_tools and callable(getattr(client, "session", None))
        self._settings = _Settings(name=name, session_id=session_id, limits=limits,
                                   max_output_chars=max_output_chars, sessions=sessions,
                                   session_limits=session_limits, session_labels=session_labels,
                                   max_sessions=max_sessions)
        self._sessions: _Registry[Session] = _Registry()
        self._create_lock = threading.Lock()

    def __enter__(self) -> ToolDispatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        self.close_sessions()

    @property
    def sessions(self) -> tuple[str, ...]:
        """The ids of the sessions the model can use that are not known to be closed."""
        return tuple(s.id for s in self._sessions.open_sessions())

    def adopt_session(self, session: Session) -> None:
        """Let the model use a session of your own (``sbx.session(...)``, ``sbx.attach_session(id)``) by its id;
        ``close_sessions`` leaves it open (it is yours to close)."""
        self._sessions.add(session, owned=False)

    def close_sessions(self) -> None:
        """Close the sessions this dispatcher started that are still open. A failure is logged, not raised."""
        for session in self._sessions.open_sessions(owned_only=True):
            try:
                self._session_client.close_session(session.id)
            except SessionNotFoundError:
                pass
            except SandboxError as error:
                logger.warning("could not close session %s: %s", session.id, error)
                continue
            self._sessions.gone(session.id)

    @property
    def _session_client(self) -> SessionClient:
        return self._client  # type: ignore[return-value]  # checked: it has session()

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
        planned = self._settings.prepare(name, arguments)
        match planned:
            case ToolOutcome():
                return planned
            case _Run():
                return self._execute(planned)
            case CreateSessionArguments():
                return self._create(planned)
            case RunInSessionArguments():
                return self._run_in_session(planned)
            case SessionFilesArguments():
                return self._files(planned)
            case CloseSessionArguments():
                return self._close(planned)

    def _execute(self, run: _Run) -> ToolOutcome:
        try:
            result = self._client.execute(run.code, language=run.language, stdin=run.stdin, limits=run.limits,
                                          session_id=run.session_id, timeout=run.timeout)
        except SandboxError as error:
            return self._settings.refused(error)
        return self._settings.ran(result)

    def _create(self, args: CreateSessionArguments) -> ToolOutcome:
        settings = self._settings
        with self._create_lock:
            open_sessions = self._sessions.open_sessions(owned_only=True)
            if len(open_sessions) >= settings.max_sessions:
                for session in open_sessions:  # some may have closed on their own since
                    try:
                        session.refresh()
                    except SessionNotFoundError:
                        self._sessions.gone(session.id)
                    except SandboxError:
                        pass
                open_sessions = self._sessions.open_sessions(owned_only=True)
                if len(open_sessions) >= settings.max_sessions:
                    return settings.too_many([s.id for s in open_sessions])
            try:
                session = self._session_client.session(
                    languages=args.languages, limits=settings.session_limits, idle_timeout_s=args.idle_timeout_s,
                    labels=settings.labels or None)
            except SandboxError as error:
                return settings.session_refused(error, CREATE_SESSION)
            self._sessions.add(session, owned=True)
        return settings.created(session.info)

    def _session(self, session_id: str, tool: str) -> Session | ToolOutcome:
        """The session the model named, or why it cannot use it."""
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        if not self._settings.conversation:
            return self._settings.unknown_session(session_id)
        try:
            session = self._session_client.attach_session(session_id)
        except SandboxError as error:
            return self._settings.session_refused(error, tool, session_id)
        if session.info.labels.get(SESSION_LABEL) != self._settings.conversation:
            return self._settings.unknown_session(session_id)
        self._sessions.add(session, owned=False)
        return session

    def _run_in_session(self, args: RunInSessionArguments) -> ToolOutcome:
        session = self._session(args.session_id, RUN_IN_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        limits, timeout = self._settings.session_call(args.timeout_s, session.info)
        try:
            result = session.run(args.code, language=args.language, stdin=args.stdin, limits=limits,
                                 timeout=timeout)
        except SandboxError as error:
            return self._session_failed(error, RUN_IN_SESSION, args.session_id)
        return self._settings.ran_in_session(result, session.id)

    def _files(self, args: SessionFilesArguments) -> ToolOutcome:
        session = self._session(args.session_id, SESSION_FILES)
        if isinstance(session, ToolOutcome):
            return session
        try:
            text = _session_files_sync(session.files, args, max_chars=self._settings.max_output_chars,
                                       cap=self._settings.download_cap)
        except SandboxError as error:
            return self._session_failed(error, SESSION_FILES, args.session_id)
        return self._settings.files_done(text, session.id)

    def _close(self, args: CloseSessionArguments) -> ToolOutcome:
        session = self._session(args.session_id, CLOSE_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        try:
            final = self._session_client.close_session(session.id)
        except SessionNotFoundError as error:
            self._sessions.gone(session.id)
            return self._settings.closed(session.id, None, error)
        except SandboxError as error:
            return self._settings.session_refused(error, CLOSE_SESSION, session.id)
        self._sessions.gone(session.id)
        return self._settings.closed(session.id, final)

    def _session_failed(self, error: SandboxError, tool: str, session_id: str) -> ToolOutcome:
        if isinstance(error, SessionNotFoundError):
            self._sessions.gone(session_id)
        return self._settings.session_refused(error, tool, session_id)

    def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """Run a Chat Completions tool call (SDK object or dict) and return the ``{"role": "tool", ...}`` message
        that answers it (text only: a tool message takes no images; see ``openai_image_parts``).

        Raises:
            ValueError: the tool call has no id.
        """
        _require(tool_call, "id")
        name, arguments = _openai_call_parts(tool_call)
        return openai_tool_message(tool_call, self.dispatch(name, arguments))

    def handle_openai_responses_call(self, function_call: object, *, images: bool = False) -> dict[str, Any]:
        """Run a Responses API ``function_call`` item and return the ``function_call_output`` item answering it.
        With ``images``, a result's figures come too: the output is then a list, an ``input_text`` part and
        ``input_image`` parts.

        Raises:
            ValueError: the function call has no call_id.
        """
        _require(function_call, "call_id")
        name, arguments = _call_parts(function_call, "arguments")
        outcome = self.dispatch_outcome(name, arguments)
        return openai_responses_tool_output(function_call, _responses_content(outcome, images))

    def handle_anthropic_tool_use(self, tool_use: object, *, images: bool = False) -> dict[str, Any]:
        """Run an Anthropic ``tool_use`` block and return the ``tool_result`` block answering it (``is_error``
        set as in ``ToolOutcome``). With ``images``, a result's figures come too: the content is then a list, a
        text block and image blocks.

        Raises:
            ValueError: the block has no id.
        """
        _require(tool_use, "id")
        name, arguments = _call_parts(tool_use, "input")
        outcome = self.dispatch_outcome(name, arguments)
        return anthropic_tool_result(tool_use, _anthropic_content(outcome, images), is_error=outcome.is_error)


class AsyncToolDispatcher(_Configured):
    """The asyncio twin of ``ToolDispatcher``, over an ``AsyncSandboxClient``; same arguments and texts
    (``async with`` closes the sessions it started; ``await close_sessions()`` too)."""

    def __init__(
        self,
        client: AsyncExecutor,
        *,
        session_id: str = "",
        limits: Limits | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        name: str = TOOL_NAME,
        session_tools: bool = True,
        session_limits: Limits | None = None,
        session_labels: Mapping[str, str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._client = client
        sessions = session_tools and callable(getattr(client, "session", None))
        self._settings = _Settings(name=name, session_id=session_id, limits=limits,
                                   max_output_chars=max_output_chars, sessions=sessions,
                                   session_limits=session_limits, session_labels=session_labels,
                                   max_sessions=max_sessions)
        self._sessions: _Registry[AsyncSession] = _Registry()
        self._create_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncToolDispatcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None,
    ) -> None:
        await self.close_sessions()

    @property
    def sessions(self) -> tuple[str, ...]:
        """See ``ToolDispatcher.sessions``."""
        return tuple(s.id for s in self._sessions.open_sessions())

    def adopt_session(self, session: AsyncSession) -> None:
        """See ``ToolDispatcher.adopt_session``."""
        self._sessions.add(session, owned=False)

    async def close_sessions(self) -> None:
        """See ``ToolDispatcher.close_sessions``."""
        for session in self._sessions.open_sessions(owned_only=True):
            try:
                await self._session_client.close_session(session.id)
            except SessionNotFoundError:
                pass
            except SandboxError as error:
                logger.warning("could not close session %s: %s", session.id, error)
                continue
            self._sessions.gone(session.id)

    @property
    def _session_client(self) -> AsyncSessionClient:
        return self._client  # type: ignore[return-value]  # checked: it has session()

    async def dispatch(self, name: str, arguments: Mapping[str, object] | str | None) -> str:
        """See ``ToolDispatcher.dispatch``."""
        return (await self.dispatch_outcome(name, arguments)).text

    async def dispatch_outcome(self, name: str, arguments: Mapping[str, object] | str | None) -> ToolOutcome:
        """See ``ToolDispatcher.dispatch_outcome``."""
        planned = self._settings.prepare(name, arguments)
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

    async def _execute(self, run: _Run) -> ToolOutcome:
        try:
            result = await self._client.execute(run.code, language=run.language, stdin=run.stdin,
                                                limits=run.limits, session_id=run.session_id, timeout=run.timeout)
        except SandboxError as error:
            return self._settings.refused(error)
        return self._settings.ran(result)

    async def _create(self, args: CreateSessionArguments) -> ToolOutcome:
        settings = self._settings
        async with self._create_lock:
            open_sessions = self._sessions.open_sessions(owned_only=True)
            if len(open_sessions) >= settings.max_sessions:
                for session in open_sessions:
                    try:
                        await session.refresh()
                    except SessionNotFoundError:
                        self._sessions.gone(session.id)
                    except SandboxError:
                        pass
                open_sessions = self._sessions.open_sessions(owned_only=True)
                if len(open_sessions) >= settings.max_sessions:
                    return settings.too_many([s.id for s in open_sessions])
            try:
                session = await self._session_client.session(
                    languages=args.languages, limits=settings.session_limits, idle_timeout_s=args.idle_timeout_s,
                    labels=settings.labels or None)
            except SandboxError as error:
                return settings.session_refused(error, CREATE_SESSION)
            self._sessions.add(session, owned=True)
        return settings.created(session.info)

    async def _session(self, session_id: str, tool: str) -> AsyncSession | ToolOutcome:
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        if not self._settings.conversation:
            return self._settings.unknown_session(session_id)
        try:
            session = await self._session_client.attach_session(session_id)
        except SandboxError as error:
            return self._settings.session_refused(error, tool, session_id)
        if session.info.labels.get(SESSION_LABEL) != self._settings.conversation:
            return self._settings.unknown_session(session_id)
        self._sessions.add(session, owned=False)
        return session

    async def _run_in_session(self, args: RunInSessionArguments) -> ToolOutcome:
        session = await self._session(args.session_id, RUN_IN_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        limits, timeout = self._settings.session_call(args.timeout_s, session.info)
        try:
            result = await session.run(args.code, language=args.language, stdin=args.stdin, limits=limits,
                                       timeout=timeout)
        except SandboxError as error:
            return self._session_failed(error, RUN_IN_SESSION, args.session_id)
        return self._settings.ran_in_session(result, session.id)

    async def _files(self, args: SessionFilesArguments) -> ToolOutcome:
        session = await self._session(args.session_id, SESSION_FILES)
        if isinstance(session, ToolOutcome):
            return session
        try:
            text = await _session_files_async(session.files, args, max_chars=self._settings.max_output_chars,
                                              cap=self._settings.download_cap)
        except SandboxError as error:
            return self._session_failed(error, SESSION_FILES, args.session_id)
        return self._settings.files_done(text, session.id)

    async def _close(self, args: CloseSessionArguments) -> ToolOutcome:
        session = await self._session(args.session_id, CLOSE_SESSION)
        if isinstance(session, ToolOutcome):
            return session
        try:
            final = await self._session_client.close_session(session.id)
        except SessionNotFoundError as error:
            self._sessions.gone(session.id)
            return self._settings.closed(session.id, None, error)
        except SandboxError as error:
            return self._settings.session_refused(error, CLOSE_SESSION, session.id)
        self._sessions.gone(session.id)
        return self._settings.closed(session.id, final)

    def _session_failed(self, error: SandboxError, tool: str, session_id: str) -> ToolOutcome:
        if isinstance(error, SessionNotFoundError):
            self._sessions.gone(session_id)
        return self._settings.session_refused(error, tool, session_id)

    async def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_tool_call``."""
        _require(tool_call, "id")
        name, arguments = _openai_call_parts(tool_call)
        return openai_tool_message(tool_call, await self.dispatch(name, arguments))

    async def handle_openai_responses_call(self, function_call: object, *, images: bool = False) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_responses_call``."""
        _require(function_call, "call_id")
        name, arguments = _call_parts(function_call, "arguments")
        outcome = await self.dispatch_outcome(name, arguments)
        return openai_responses_tool_output(function_call, _responses_content(outcome, images))

    async def handle_anthropic_tool_use(self, tool_use: object, *, images: bool = False) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_anthropic_tool_use``."""
        _require(tool_use, "id")
        name, arguments = _call_parts(tool_use, "input")
        outcome = await self.dispatch_outcome(name, arguments)
        return anthropic_tool_result(tool_use, _anthropic_content(outcome, images), is_error=outcome.is_error)
