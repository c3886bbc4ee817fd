"""The tools a model is offered: their names, what the model is told about them, the JSON schemas of their
arguments, and the shapes each provider's API takes them in (OpenAI Chat Completions and Responses, Anthropic
Messages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sandbox_client._models import Network

TOOL_NAME: Final = "execute_code"
LANGUAGES: Final = ("python", "javascript", "bash")
"""The languages the tool offers a model, canonical names (the ``language`` enum)."""
_LANGUAGE_LABELS: Final[Mapping[str, str]] = {"python": "Python 3", "javascript": "Node.js"}

CREATE_SESSION: Final = "create_session"
RUN_IN_SESSION: Final = "run_in_session"
SESSION_FILES: Final = "session_files"
CLOSE_SESSION: Final = "close_session"
SESSION_TOOL_NAMES: Final = (CREATE_SESSION, RUN_IN_SESSION, SESSION_FILES, CLOSE_SESSION)
"""The session tools, in the order the tool lists give them (after ``execute_code``)."""
FILE_ACTIONS: Final = ("upload", "download", "list", "delete")
"""The ``action`` values of ``session_files``."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool, whatever the provider: its name, what the model is told, and the JSON schema of its arguments
    (a new dict for every spec made). ``openai_tools`` and the others shape these for each API."""

    name: str
    description: str
    parameters: dict[str, Any]


def _language_names(languages: tuple[str, ...]) -> str:
    return ", ".join(f"{lang} ({_LANGUAGE_LABELS[lang]})" if lang in _LANGUAGE_LABELS else lang for lang in languages)


def _network_words(network: Network | None) -> str:
    """What the model is told of the sandbox's network, starting a sentence: with ``network`` (the host's setting)
    what it is, else what holds whatever the tenant's policy says."""
    if network is None:
        return "The sandbox has no network access unless its operator allows specific hosts"
    if not network.allow:  # Network.none(), or an allow-list that reaches nothing
        return "The sandbox has no network access"
    return (f"The sandbox's network reaches only {_allowed_hosts(network)}, over HTTP and HTTPS through the proxy set "
            "in its environment")


def _allowed_hosts(network: Network) -> str:
    """An allow-list in words: ``api.example.com (port 443) and *.example.com (ports 80 and 443)``."""
    return _and([f"{rule.host} (port{'s' if len(rule.ports) > 1 else ''} {_and([str(p) for p in rule.ports])})"
                 for rule in network.allow])


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def tool_description(languages: tuple[str, ...] = LANGUAGES, *, network: Network | None = None) -> str:
    """What a model is told about the tool: what the sandbox is, what persists (nothing), its network (what the
    host's ``network`` allows, when it gives one), its limits."""
    return (
        "Run a program in an isolated sandbox and get back its exit status, stdout and stderr. Languages: "
        f"{_language_names(languages)}. "
        "Every call starts a fresh sandbox: nothing persists between calls (no variables, files or installed "
        f"packages), so send a complete, self-contained program each time. {_network_words(network)}, and "
        "nothing can be installed beyond what the operator provides: use "
        "the language's standard library. The program runs as an unprivileged user "
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


def openai_tool(*, name: str = TOOL_NAME, description: str | None = None, network: Network | None = None,
                ) -> dict[str, Any]:
    """The tool for OpenAI Chat Completions (and compatible APIs): ``{"type": "function", "function": {...}}``.
    ``description`` None: ``tool_description(network=network)`` (``network``: the dispatcher's)."""
    return _openai_shape(_execute_spec(name, description, network))


def openai_responses_tool(*, name: str = TOOL_NAME, description: str | None = None,
                          network: Network | None = None) -> dict[str, Any]:
    """The tool for the OpenAI Responses API, which takes it flat: ``{"type": "function", "name", ...}``
    (``description`` and ``network`` as in ``openai_tool``)."""
    return _openai_responses_shape(_execute_spec(name, description, network))


def anthropic_tool(*, name: str = TOOL_NAME, description: str | None = None, network: Network | None = None,
                   ) -> dict[str, Any]:
    """The tool for the Anthropic Messages API: ``{"name", "description", "input_schema"}`` (``description`` and
    ``network`` as in ``openai_tool``)."""
    return _anthropic_shape(_execute_spec(name, description, network))


def _execute_spec(name: str, description: str | None, network: Network | None) -> ToolSpec:
    text = tool_description(network=network) if description is None else description
    return ToolSpec(name, text, parameters_schema())


# -- the session tools ---------------------------------------------------------------------------------------------


def _session_descriptions(languages: tuple[str, ...], network: Network | None = None) -> dict[str, str]:
    return {
        CREATE_SESSION: (
            "Start a sandbox session (an isolated sandbox kept alive between calls) and get its session_id. Use a "
            "session for work in steps that build on each other: load data once and analyse it over several "
            "calls, define functions and reuse them, keep files between steps; for one self-contained program, "
            f"{TOOL_NAME} is simpler. Languages: {_language_names(languages)}. In a session, Python runs in a "
            "stateful kernel, like a Jupyter notebook: variables, imports and functions persist from one "
            f"{RUN_IN_SESSION} call to the next. Bash and JavaScript calls run as new processes in the same "
            f"working directory, so files persist for every language. {_network_words(network)}, and "
            "installs only what the operator provides. A session "
            "closes by itself after idle_timeout_s seconds without a call "
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


def _kept_session_description(languages: tuple[str, ...], *, figures: bool, more: str = "",
                              network: Network | None = None) -> str:
    """What a model is told about a tool that runs code in a session the host keeps for the conversation (the
    MCP server's ``execute_code``, the LangChain session tool): ``figures`` when images come back, ``more`` about
    the other tools, ``network`` the session's (the host's setting; None: the tenant's)."""
    images = ", and its figures as images" if figures else ""
    return (
        "Run code in this conversation's sandbox session and get back its status, the value of the last Python "
        "expression (Out[n], as in a notebook), stdout and stderr, the exception and its traceback if one was "
        f"raised{images}. Languages: {_language_names(languages)}. Python runs in a stateful kernel, like a "
        "Jupyter notebook: variables, imports and functions persist from one call to the next (even after an "
        "exception), so send only the new code each time, not what already ran. Bash and JavaScript run as new "
        "processes in the same working directory: files persist for every language, shell variables and the "
        f"current directory do not. {_network_words(network)}, and "
        "installs only what the operator provides: prefer the standard library and the packages "
        "already there. Limits apply to each call's wall time (timeout_s, in "
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


def session_tool_specs(languages: tuple[str, ...] = LANGUAGES, *, network: Network | None = None,
                       ) -> tuple[ToolSpec, ...]:
    """The four session tools (``SESSION_TOOL_NAMES``), provider-neutral; new dicts on every call. ``network``: the
    dispatcher's, so that ``create_session`` tells the model what its sessions can reach."""
    descriptions = _session_descriptions(languages, network)
    schemas = _session_schemas(languages)
    return tuple(ToolSpec(name, descriptions[name], schemas[name]) for name in SESSION_TOOL_NAMES)


def tool_specs(*, sessions: bool = True, name: str = TOOL_NAME, description: str | None = None,
               network: Network | None = None) -> tuple[ToolSpec, ...]:
    """``execute_code`` (as ``name``, told ``description``; None: ``tool_description(network=network)``) and, with
    ``sessions``, the four session tools. ``network``: the dispatcher's, for the descriptions (the model cannot
    choose it: no tool takes it as an argument)."""
    specs = (_execute_spec(name, description, network),)
    return specs + session_tool_specs(network=network) if sessions else specs


def openai_tools(*, sessions: bool = True, network: Network | None = None) -> list[dict[str, Any]]:
    """The tools for OpenAI Chat Completions: ``execute_code`` and (``sessions``) the session tools, described
    for the dispatcher's ``network``."""
    return [_openai_shape(spec) for spec in tool_specs(sessions=sessions, network=network)]


def openai_responses_tools(*, sessions: bool = True, network: Network | None = None) -> list[dict[str, Any]]:
    """The tools for the OpenAI Responses API: ``execute_code`` and (``sessions``) the session tools, described
    for the dispatcher's ``network``."""
    return [_openai_responses_shape(spec) for spec in tool_specs(sessions=sessions, network=network)]


def anthropic_tools(*, sessions: bool = True, network: Network | None = None) -> list[dict[str, Any]]:
    """The tools for the Anthropic Messages API: ``execute_code`` and (``sessions``) the session tools, described
    for the dispatcher's ``network``."""
    return [_anthropic_shape(spec) for spec in tool_specs(sessions=sessions, network=network)]


def _openai_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters}}


def _openai_responses_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"type": "function", "name": spec.name, "description": spec.description, "parameters": spec.parameters}


def _anthropic_shape(spec: ToolSpec) -> dict[str, Any]:
    return {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}
