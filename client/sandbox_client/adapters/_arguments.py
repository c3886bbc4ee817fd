"""Checking the arguments a model sent: lenient where its intent is plain (a language alias, seconds sent as a
string), and otherwise every problem found, in words the model can act on (``ToolArgumentError``)."""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from sandbox_client.adapters._specs import (
    CLOSE_SESSION,
    CREATE_SESSION,
    FILE_ACTIONS,
    LANGUAGES,
    RUN_IN_SESSION,
    SESSION_FILES,
    SESSION_TOOL_NAMES,
    TOOL_NAME,
)

LANGUAGE_ALIASES: Final[Mapping[str, str]] = {
    "python3": "python", "py": "python",
    "js": "javascript", "node": "javascript", "nodejs": "javascript",
    "sh": "bash", "shell": "bash",
}
"""Other names a model may give a language (the server accepts them too), lower case: the canonical name."""
_ARGUMENT_NAMES: Final = ("code", "language", "stdin", "timeout_s")


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
    code = _text(value, "code", problems, " (the program's source)")
    if code is not None and not code.strip():
        problems.append("'code' is empty: send the program to run")
    return code or ""


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
    return _text(value, "stdin", problems) or ""


def _parse_timeout(value: object, problems: list[str]) -> float | None:
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None or seconds <= 0:
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
    seconds = _seconds(value)
    if seconds is None or seconds < 1 or seconds != int(seconds):
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
        else:
            content = _text(content_value, "content", problems, " (the file's text)") or ""
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
    path = _text(value, "path", problems)
    if path is None:
        return ""
    for prefix in ("/work/", "./"):  # the workspace's own name for itself: the intent is plain
        while path.startswith(prefix):
            path = path[len(prefix):]
    if path in ("/work", ".", "/"):
        path = ""
    if not path and action in ("upload", "download", "delete"):
        problems.append(f"'path' must name a file for {action}, not the working directory itself")
    return path


def _seconds(value: object) -> float | None:
    """A number of seconds as a model may send it (a number, or a string such as "30" or "2.5s"); None when it
    is not a finite number (a boolean is not one)."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip().removesuffix("s").strip())
        except ValueError:
            seconds = None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _text(value: object, name: str, problems: list[str], what: str = "") -> str | None:
    """``value`` when it is a string of valid Unicode; else None, and the problem added (``what`` says what the
    string holds, e.g. " (the file's text)")."""
    if not isinstance(value, str):
        problems.append(f"'{name}' must be a string{what}, not {_json_type(value)}")
        return None
    if not _encodable(value):
        problems.append(f"'{name}' contains characters that are not valid Unicode (lone surrogates)")
        return None
    return value


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
