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
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from sandbox_client._errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    UnavailableError,
)
from sandbox_client._models import ExecutionResult, Limits, Status

__all__ = [
    "CALL_DEADLINE_MARGIN_S",
    "DEFAULT_MAX_OUTPUT_CHARS",
    "LANGUAGES",
    "LANGUAGE_ALIASES",
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "AsyncExecutor",
    "AsyncToolDispatcher",
    "ExecuteCodeArguments",
    "Executor",
    "ToolArgumentError",
    "ToolDispatcher",
    "ToolOutcome",
    "anthropic_tool",
    "anthropic_tool_result",
    "format_error",
    "format_result",
    "openai_responses_tool",
    "openai_responses_tool_output",
    "openai_tool",
    "openai_tool_message",
    "parameters_schema",
    "parse_arguments",
    "tool_description",
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
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters_schema()},
    }


def openai_responses_tool(*, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION) -> dict[str, Any]:
    """The tool for the OpenAI Responses API, which takes it flat: ``{"type": "function", "name", ...}``."""
    return {"type": "function", "name": name, "description": description, "parameters": parameters_schema()}


def anthropic_tool(*, name: str = TOOL_NAME, description: str = TOOL_DESCRIPTION) -> dict[str, Any]:
    """The tool for the Anthropic Messages API: ``{"name", "description", "input_schema"}``."""
    return {"name": name, "description": description, "input_schema": parameters_schema()}


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
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            raise ToolArgumentError(
                [f"the arguments are not valid JSON ({error}); send a JSON object such as "
                 '{"code": "print(1)", "language": "python"}']) from None
    if not isinstance(arguments, Mapping):
        raise ToolArgumentError(
            [f"the arguments must be a JSON object with a 'code' field, not {_json_type(arguments)}"])
    problems: list[str] = []
    for key in arguments:
        if key not in _ARGUMENT_NAMES:
            close = difflib.get_close_matches(str(key), _ARGUMENT_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown argument {str(key)!r}{hint}; the arguments are {', '.join(_ARGUMENT_NAMES)}")
    code = _parse_code(arguments.get("code"), problems)
    language = _parse_language(arguments.get("language"), problems)
    stdin = _parse_stdin(arguments.get("stdin"), problems)
    timeout_s = _parse_timeout(arguments.get("timeout_s"), problems)
    if problems:
        raise ToolArgumentError(problems)
    return ExecuteCodeArguments(code=code, language=language, stdin=stdin, timeout_s=timeout_s)


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


# -- provider messages -----------------------------------------------------------------------------------------------


def openai_tool_message(tool_call: object, content: str) -> dict[str, Any]:
    """The Chat Completions message answering ``tool_call`` (the SDK object or its dict form):
    ``{"role": "tool", "tool_call_id", "content"}``.

    Raises:
        ValueError: the tool call has no id.
    """
    return {"role": "tool", "tool_call_id": _require(tool_call, "id"), "content": content}


def openai_responses_tool_output(function_call: object, content: str) -> dict[str, Any]:
    """The Responses API input item answering a ``function_call`` output item (SDK object or dict):
    ``{"type": "function_call_output", "call_id", "output"}``.

    Raises:
        ValueError: the function call has no call_id.
    """
    return {"type": "function_call_output", "call_id": _require(function_call, "call_id"), "output": content}


def anthropic_tool_result(tool_use: object, content: str, *, is_error: bool = False) -> dict[str, Any]:
    """The content block answering a ``tool_use`` block (SDK object or dict), to send in a user message:
    ``{"type": "tool_result", "tool_use_id", "content", "is_error"}``.

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


@dataclass(frozen=True)
class _Run:
    """One execution to make, from checked arguments and the dispatcher's settings."""

    code: str
    language: str
    stdin: str
    limits: Limits | None
    session_id: str
    timeout: float | None


class _Settings:
    """The settings and the client-free steps shared by both dispatchers."""

    def __init__(self, *, name: str, session_id: str, limits: Limits | None, max_output_chars: int) -> None:
        if isinstance(max_output_chars, bool) or not isinstance(max_output_chars, int) or max_output_chars < 1:
            raise ValueError(f"max_output_chars must be a positive int, got {max_output_chars!r}")
        if not name:
            raise ValueError("name must not be empty")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, not {type(limits).__name__}")
        self.name = name
        self.session_id = session_id
        self.limits = limits
        self.max_output_chars = max_output_chars

    def prepare(self, name: str, arguments: Mapping[str, object] | str | None) -> _Run | ToolOutcome:
        """The execution to make, or the outcome of a call that cannot make one (unknown tool, bad arguments)."""
        if name != self.name:
            text = (f"Status: unknown tool {name!r} (nothing ran)\n"
                    f"What to do: the tool that runs code is {self.name!r}; call it instead.")
            return ToolOutcome(text=text, is_error=True)
        try:
            args = parse_arguments(arguments)
        except ToolArgumentError as error:
            problems = "\n".join(f"- {p}" for p in error.problems)
            text = (f"Status: invalid arguments for {self.name} (nothing ran)\n{problems}\n"
                    f"What to do: call {self.name} again with corrected arguments.")
            return ToolOutcome(text=text, is_error=True)
        limits = self.limits
        if args.timeout_s is not None:
            limits = replace(limits or Limits(), wall_time_s=args.timeout_s)
        wall = limits.wall_time_s if limits is not None else None
        return _Run(code=args.code, language=args.language, stdin=args.stdin, limits=limits,
                    session_id=self.session_id, timeout=wall + CALL_DEADLINE_MARGIN_S if wall else None)

    def ran(self, result: ExecutionResult) -> ToolOutcome:
        return ToolOutcome(text=format_result(result, max_output_chars=self.max_output_chars),
                           is_error=not result.ok, result=result)

    def refused(self, error: SandboxError) -> ToolOutcome:
        if _for_the_host(error):
            # The model is told too, but only the host can fix this one: make sure someone sees it.
            logger.warning("%s: the sandbox refused or failed the call: %s", self.name, error)
        return ToolOutcome(text=format_error(error, tool_name=self.name), is_error=True, error=error)


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


class ToolDispatcher(_Configured):
    """Runs ``execute_code`` tool calls through a ``SandboxClient`` and answers with text for the model.

    Args:
        client: a ``SandboxClient`` (or anything with its ``execute``); used as is, never closed here.
        session_id: sent with every execution (the server's per-session budgets, rate limits and audit).
        limits: the limits of every execution; a call's ``timeout_s`` replaces ``wall_time_s``. None: the
            server's defaults.
        max_output_chars: characters of stdout, and as many of stderr, the model sees (head and tail kept).
        name: the tool's name, if the host gave it another one in its tool definition.

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
    ) -> None:
        self._client = client
        self._settings = _Settings(name=name, session_id=session_id, limits=limits,
                                   max_output_chars=max_output_chars)

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
        run = self._settings.prepare(name, arguments)
        if isinstance(run, ToolOutcome):
            return run
        try:
            result = self._client.execute(run.code, language=run.language, stdin=run.stdin, limits=run.limits,
                                          session_id=run.session_id, timeout=run.timeout)
        except SandboxError as error:
            return self._settings.refused(error)
        return self._settings.ran(result)

    def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """Run a Chat Completions tool call (SDK object or dict) and return the ``{"role": "tool", ...}`` message
        that answers it.

        Raises:
            ValueError: the tool call has no id.
        """
        _require(tool_call, "id")
        name, arguments = _openai_call_parts(tool_call)
        return openai_tool_message(tool_call, self.dispatch(name, arguments))

    def handle_openai_responses_call(self, function_call: object) -> dict[str, Any]:
        """Run a Responses API ``function_call`` item and return the ``function_call_output`` item answering it.

        Raises:
            ValueError: the function call has no call_id.
        """
        _require(function_call, "call_id")
        name, arguments = _call_parts(function_call, "arguments")
        return openai_responses_tool_output(function_call, self.dispatch(name, arguments))

    def handle_anthropic_tool_use(self, tool_use: object) -> dict[str, Any]:
        """Run an Anthropic ``tool_use`` block and return the ``tool_result`` block answering it (``is_error``
        set as in ``ToolOutcome``).

        Raises:
            ValueError: the block has no id.
        """
        _require(tool_use, "id")
        name, arguments = _call_parts(tool_use, "input")
        outcome = self.dispatch_outcome(name, arguments)
        return anthropic_tool_result(tool_use, outcome.text, is_error=outcome.is_error)


class AsyncToolDispatcher(_Configured):
    """The asyncio twin of ``ToolDispatcher``, over an ``AsyncSandboxClient``; same arguments and texts."""

    def __init__(
        self,
        client: AsyncExecutor,
        *,
        session_id: str = "",
        limits: Limits | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        name: str = TOOL_NAME,
    ) -> None:
        self._client = client
        self._settings = _Settings(name=name, session_id=session_id, limits=limits,
                                   max_output_chars=max_output_chars)

    async def dispatch(self, name: str, arguments: Mapping[str, object] | str | None) -> str:
        """See ``ToolDispatcher.dispatch``."""
        return (await self.dispatch_outcome(name, arguments)).text

    async def dispatch_outcome(self, name: str, arguments: Mapping[str, object] | str | None) -> ToolOutcome:
        """See ``ToolDispatcher.dispatch_outcome``."""
        run = self._settings.prepare(name, arguments)
        if isinstance(run, ToolOutcome):
            return run
        try:
            result = await self._client.execute(run.code, language=run.language, stdin=run.stdin,
                                                limits=run.limits, session_id=run.session_id, timeout=run.timeout)
        except SandboxError as error:
            return self._settings.refused(error)
        return self._settings.ran(result)

    async def handle_openai_tool_call(self, tool_call: object) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_tool_call``."""
        _require(tool_call, "id")
        name, arguments = _openai_call_parts(tool_call)
        return openai_tool_message(tool_call, await self.dispatch(name, arguments))

    async def handle_openai_responses_call(self, function_call: object) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_openai_responses_call``."""
        _require(function_call, "call_id")
        name, arguments = _call_parts(function_call, "arguments")
        return openai_responses_tool_output(function_call, await self.dispatch(name, arguments))

    async def handle_anthropic_tool_use(self, tool_use: object) -> dict[str, Any]:
        """See ``ToolDispatcher.handle_anthropic_tool_use``."""
        _require(tool_use, "id")
        name, arguments = _call_parts(tool_use, "input")
        outcome = await self.dispatch_outcome(name, arguments)
        return anthropic_tool_result(tool_use, outcome.text, is_error=outcome.is_error)
