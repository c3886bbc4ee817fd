"""The sandbox as an MCP server (``pip install 'sandbox-client[mcp]'``): the ``sandbox-mcp`` command.

    sandbox-mcp --target 127.0.0.1:50051          # API key from SANDBOX_API_KEY; serves MCP over stdio

The server keeps one sandbox session for the client it serves (started on the first call that needs it, closed
when the client disconnects or the server is stopped): ``execute_code`` runs in it, so Python's variables and
imports and the working directory's files persist from one call to the next, and figures come back as MCP image
content. Its tools: ``execute_code`` (``ToolDispatcher``'s arguments; the result text of ``run_in_session``;
``isError`` when the code did not run to a successful end), ``session_files`` (upload, download, list or delete
the session's files), ``reset_session`` (close it and start a fresh one) and ``list_runtimes``. A session that
closed on its own (idle too long) is replaced by a new one at the next call, which says so.

``--no-session`` serves the one-shot tools instead: ``execute_code`` in a fresh sandbox every call (nothing
persists) and ``list_runtimes``.

It speaks MCP on stdin/stdout, the way MCP clients launch servers, and opens no connection but the gRPC channel
to the configured sandbox server.

Every option has an environment variable (the flag wins): ``--target`` SANDBOX_TARGET, ``--api-key``
SANDBOX_API_KEY, ``--tls`` SANDBOX_TLS, ``--ca-cert`` SANDBOX_CA_CERT, ``--client-cert`` SANDBOX_CLIENT_CERT,
``--client-key`` SANDBOX_CLIENT_KEY, ``--session-id`` SANDBOX_SESSION_ID, ``--wall-time-s`` SANDBOX_WALL_TIME_S,
``--cpu-time-s`` SANDBOX_CPU_TIME_S, ``--memory-mb`` SANDBOX_MEMORY_MB, ``--max-output-chars``
SANDBOX_MAX_OUTPUT_CHARS, ``--no-session`` SANDBOX_NO_SESSION, ``--idle-timeout-s`` SANDBOX_IDLE_TIMEOUT_S,
``--network`` SANDBOX_NETWORK (``none``, or ``host:port`` entries separated by commas: the sandboxes' network,
narrowing the tenant's), ``--log-level`` SANDBOX_MCP_LOG_LEVEL. Logs go to stderr (stdout is the protocol).

Exit codes: 0 when the client closes the connection; 2 for a usage error (a bad option, an unreadable file).
Built on the low-level ``mcp.server.Server`` of the mcp 2.x SDK.
"""

from __future__ import annotations

import argparse
import base64
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import grpc
import mcp.types as mcp_types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._aio_session import AsyncSession
from sandbox_client._common import DEFAULT_TIMEOUT
from sandbox_client._errors import SandboxError, SessionNotFoundError
from sandbox_client._models import EgressRule, ExecutionResult, Limits, Network, Runtime
from sandbox_client.adapters._calls import _session_call, _workspace_action
from sandbox_client.adapters._dispatch_core import check_network
from sandbox_client.adapters._session_text import _restarted_note
from sandbox_client.adapters._specs import _allowed_hosts, _kept_session_description
from sandbox_client.adapters.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    LANGUAGES,
    SESSION_FILES,
    SESSION_LABEL,
    TOOL_NAME,
    AsyncToolDispatcher,
    SessionFilesArguments,
    ToolArgumentError,
    format_error,
    format_session_error,
    format_session_result,
    image_outputs,
    parameters_schema,
    parse_arguments,
    parse_tool_arguments,
    session_tool_specs,
    tool_description,
)

__all__ = [
    "DEFAULT_TARGET",
    "LIST_RUNTIMES",
    "RESET_SESSION",
    "SERVER_NAME",
    "SESSION_CLIENT_LABEL",
    "ServerConfig",
    "create_server",
    "main",
    "parse_config",
    "serve_stdio",
    "session_tool_description",
]

logger = logging.getLogger(__name__)

DEFAULT_TARGET: Final = "127.0.0.1:50051"
SERVER_NAME: Final = "sandbox"
LIST_RUNTIMES: Final = "list_runtimes"
RESET_SESSION: Final = "reset_session"
SESSION_CLIENT_LABEL: Final = ("client", "sandbox-mcp")
"""The label (key, value) of the sessions the server starts."""
_CLOSE_TIMEOUT_S: Final = 3.0
"""How long closing the session may take when the client goes (an MCP client kills a server 2 s after closing
its stdin, and 2 s after its SIGTERM)."""


def _instructions(session: bool, network: Network | None) -> str:
    """What the server tells the client about itself: its tools, and the sandbox's network (what ``network``
    allows, when the host set one)."""
    if network is None:  # the tenant's policy decides, as the tool's description says
        where = "without network access unless its operator allows specific hosts"
    elif network.allow:
        where = f"whose network reaches only {_allowed_hosts(network)}"
    else:
        where = "without network access"
    if not session:
        return (f"Use {TOOL_NAME} to run Python, JavaScript or bash code in a fresh, isolated sandbox {where}; "
                f"{LIST_RUNTIMES} tells which interpreter versions it has.")
    return (
        f"Use {TOOL_NAME} to run Python, JavaScript or bash code in an isolated sandbox {where}, kept "
        "for this conversation: Python runs in a stateful kernel, so variables, imports and functions persist from "
        f"one call to the next, and files persist in the working directory. {SESSION_FILES} uploads, downloads, "
        f"lists and deletes those files; {RESET_SESSION} starts afresh; {LIST_RUNTIMES} tells which interpreter "
        "versions the sandbox has."
    )


_NO_ARGUMENTS: Final[Mapping[str, Any]] = {"type": "object", "properties": {}, "additionalProperties": False}
_T = TypeVar("_T")


def session_tool_description(languages: tuple[str, ...] = LANGUAGES, *, network: Network | None = None) -> str:
    """What a model is told about ``execute_code`` when it runs in the connection's session (``network``: the
    session's, as ``create_server`` was given it)."""
    return _kept_session_description(
        languages, figures=True,
        more=f"{RESET_SESSION} starts afresh on purpose; {SESSION_FILES} moves files in and out.", network=network)


def _session_files_tool() -> mcp_types.Tool:
    """``session_files`` of ``tool.py`` without its session_id: the connection has one session."""
    (spec,) = [spec for spec in session_tool_specs() if spec.name == SESSION_FILES]
    schema = spec.parameters
    del schema["properties"]["session_id"]
    schema["required"] = [name for name in schema["required"] if name != "session_id"]
    description = (
        "Manage the files in this conversation's sandbox session: its working directory, which is the current "
        f"directory of the code {TOOL_NAME} runs (files your code writes appear here too). action 'upload' "
        "writes `content` (text) to `path`, making missing directories; 'download' returns a text file's content "
        "(a long file is cut in the middle; a binary file is described, not shown); 'list' lists the directory "
        "`path` (omit it for the top directory; `recursive` to include subdirectories); 'delete' removes a "
        "file, or a directory with `recursive`: true. Paths are relative to the working directory, e.g. "
        "'data/input.csv'."
    )
    return mcp_types.Tool(
        name=SESSION_FILES, title="Manage the session's files", description=description, input_schema=schema,
        annotations=mcp_types.ToolAnnotations(title="Manage the session's files", read_only_hint=False,
                                              destructive_hint=True, idempotent_hint=False, open_world_hint=False))


class _Conversation:
    """The session of one MCP connection: started by the first call that needs it, replaced when it closed on its
    own, closed when the connection ends (the server's lifespan)."""

    def __init__(self, client: AsyncSandboxClient, *, limits: Limits | None, labels: Mapping[str, str],
                 idle_timeout_s: int | None, max_output_chars: int, network: Network | None = None) -> None:
        self._client = client
        self._limits = limits
        self._network = network
        self._labels = dict(labels)
        self._idle_timeout_s = idle_timeout_s
        self.max_output_chars = max_output_chars
        self._session: AsyncSession | None = None
        self._lock = anyio.Lock()  # one session start at a time (requests are served concurrently)

    @property
    def session_id(self) -> str:
        return self._session.id if self._session is not None else ""

    async def _ensure(self) -> AsyncSession:
        async with self._lock:
            if self._session is None:
                self._session = await self._client.session(limits=self._limits, idle_timeout_s=self._idle_timeout_s,
                                                           labels=self._labels, network=self._network)
                logger.info("started session %s", self._session.id)
            return self._session

    async def _forget(self, session: AsyncSession) -> None:
        async with self._lock:
            if self._session is session:
                self._session = None

    async def call(self, op: Callable[[AsyncSession], Awaitable[_T]]) -> tuple[_T, str]:
        """``op`` in the session (started if need be), and a note when the session had closed and a new one ran
        it (else "").

        Raises:
            SandboxError: starting the session, or ``op``, failed.
        """
        session = await self._ensure()
        try:
            return await op(session), ""
        except SessionNotFoundError as error:  # it closed on its own: nothing ran; start afresh and say so
            logger.info("session %s is gone (%s): starting a new one", session.id, error.close_reason)
            await self._forget(session)
            note = _restarted_note(error)
        return await op(await self._ensure()), note

    async def reset(self) -> tuple[str, str]:
        """Close the session (if any) and start a new one: (the old id or "", the new id).

        Raises:
            SandboxError: starting the new session failed.
        """
        async with self._lock:
            old, self._session = self._session, None
        if old is not None:
            try:
                await old.close()
            except SandboxError as error:
                logger.warning("could not close session %s: %s", old.id, error)
        return (old.id if old is not None else ""), (await self._ensure()).id

    async def close(self) -> None:
        """Close the session, if one was started. A failure is logged."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            await session.close(timeout=_CLOSE_TIMEOUT_S)
            logger.info("closed session %s", session.id)
        except SandboxError as error:
            logger.warning("could not close session %s: %s", session.id, error)


# Handlers get this lifespan context: the connection's session.
_Context = ServerRequestContext[_Conversation]


def create_server(
    client: AsyncSandboxClient,
    *,
    session_id: str = "",
    limits: Limits | None = None,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    name: str = SERVER_NAME,
    session: bool = True,
    idle_timeout_s: int | None = None,
    network: Network | None = None,
) -> Server[_Conversation]:
    """An MCP server whose tools run through ``client`` (used as is, not closed here).

    With ``session`` (the default), each connection the server serves (each ``Server.run``) gets one sandbox
    session, started by its first call that needs it and closed when the connection ends: ``limits`` are then
    the session's (wall and CPU time per call, memory for the session), ``idle_timeout_s`` its idle timeout (None:
    the tenant's), and it carries the labels ``client=sandbox-mcp`` and, with a ``session_id``,
    ``conversation=<session_id>``. Without, ``execute_code`` runs each call in a fresh sandbox, ``session_id``
    labelling every execution. ``session_id``, ``limits`` and ``max_output_chars`` are ``AsyncToolDispatcher``'s.

    ``network`` is the sandboxes' network (``Network.none()``, ``Network.allowlist(...)``: narrowing the tenant's;
    None: the tenant's): every one-shot execution's, or each session's from its start. The tools' descriptions
    and the server's instructions say what it allows; no tool argument lets the model change it.

    Raises:
        ValueError, TypeError: a setting is invalid.
    """
    # The dispatcher runs only the one-shot calls: in session mode session_id is a label, never sent with a
    # network, so it is not checked against one.
    dispatcher = AsyncToolDispatcher(client, session_id=session_id, limits=limits,
                                     max_output_chars=max_output_chars, session_tools=False,
                                     network=None if session else network)
    if session:
        check_network(network, "")
    labels = dict([SESSION_CLIENT_LABEL])
    if session_id and len(session_id) <= 256 and session_id.isprintable():
        labels[SESSION_LABEL] = session_id
    session_limits = None if limits is None else Limits(
        wall_time_s=limits.wall_time_s, cpu_time_s=limits.cpu_time_s, memory_bytes=limits.memory_bytes)
    tools = [
        mcp_types.Tool(
            name=TOOL_NAME,
            title="Execute code in a sandbox",
            description=(session_tool_description(network=network) if session
                         else tool_description(network=network)),
            input_schema=parameters_schema(),
            # The sandbox has no network unless its operator lists hosts it may reach: by default a call
            # changes nothing outside it. With hosts allowed, a call can reach beyond it (an open world).
            annotations=mcp_types.ToolAnnotations(
                title="Execute code in a sandbox", read_only_hint=False, destructive_hint=False,
                idempotent_hint=False, open_world_hint=network is not None and bool(network.allow)),
        ),
    ]
    if session:
        tools += [
            _session_files_tool(),
            mcp_types.Tool(
                name=RESET_SESSION,
                title="Start a fresh sandbox session",
                description="Close this conversation's sandbox session and start a fresh one: every Python "
                "variable, import and function and every file in its working directory is discarded. Use it to "
                "start over from a clean state.",
                input_schema=dict(_NO_ARGUMENTS),
                annotations=mcp_types.ToolAnnotations(
                    title="Start a fresh sandbox session", read_only_hint=False, destructive_hint=True,
                    idempotent_hint=False, open_world_hint=False),
            ),
        ]
    tools.append(
        mcp_types.Tool(
            name=LIST_RUNTIMES,
            title="List the sandbox's languages",
            description="List the languages the sandbox can run, with their interpreter versions.",
            input_schema=dict(_NO_ARGUMENTS),
            annotations=mcp_types.ToolAnnotations(
                title="List the sandbox's languages", read_only_hint=True, idempotent_hint=True,
                open_world_hint=False),
        ))
    names = [tool.name for tool in tools]
    tool_names = f"{', '.join(names[:-1])} and {names[-1]}"

    @asynccontextmanager
    async def lifespan(_: Server[_Conversation]) -> AsyncIterator[_Conversation]:
        conversation = _Conversation(client, limits=session_limits, labels=labels, idle_timeout_s=idle_timeout_s,
                                     max_output_chars=max_output_chars, network=network)
        try:
            yield conversation
        finally:
            # The connection ended (or the server is stopping): its session goes with it, even when cancelled.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S + 1):
                await conversation.close()

    async def on_list_tools(
        ctx: _Context, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=tools)

    async def on_call_tool(ctx: _Context, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        if params.name == TOOL_NAME and session:
            return await _run_in_session(ctx.lifespan_context, params.arguments)
        if params.name == TOOL_NAME:
            outcome = await dispatcher.dispatch_outcome(TOOL_NAME, params.arguments)
            return _text_result(outcome.text, is_error=outcome.is_error)
        if params.name == SESSION_FILES and session:
            return await _session_files(ctx.lifespan_context, params.arguments)
        if params.name == RESET_SESSION and session:
            return await _reset_session(ctx.lifespan_context, params.arguments)
        if params.name == LIST_RUNTIMES:
            try:
                runtimes = await client.runtimes()
            except SandboxError as error:
                return _text_result(format_error(error), is_error=True)
            return _text_result(_runtimes_text(runtimes), is_error=False)
        text = (f"Status: unknown tool {params.name!r} (nothing ran)\n"
                f"What to do: this server's tools are {tool_names}.")
        return _text_result(text, is_error=True)

    return Server(name, version=_version(), title="Code-execution sandbox",
                  instructions=_instructions(session, network), lifespan=lifespan,
                  on_list_tools=on_list_tools, on_call_tool=on_call_tool)


def _invalid(name: str, error: ToolArgumentError, nothing: str) -> mcp_types.CallToolResult:
    problems = "\n".join(f"- {p}" for p in error.problems)
    return _text_result(f"Status: invalid arguments for {name} ({nothing})\n{problems}\n"
                        f"What to do: call {name} again with corrected arguments.", is_error=True)


def _session_error(error: SandboxError) -> mcp_types.CallToolResult:
    text = format_session_error(error, tool_name=TOOL_NAME, create_tool=RESET_SESSION, files_tool=SESSION_FILES)
    return _text_result(text, is_error=True)


def _with_note(note: str, text: str) -> str:
    return f"{note}\n{text}" if note else text


async def _run_in_session(conversation: _Conversation, arguments: Mapping[str, Any] | None,
                          ) -> mcp_types.CallToolResult:
    try:
        args = parse_arguments(arguments)
    except ToolArgumentError as error:
        return _invalid(TOOL_NAME, error, "nothing ran")

    async def run(session: AsyncSession) -> ExecutionResult:
        limits, timeout = _session_call(None, args.timeout_s, session.info)
        return await session.run(args.code, language=args.language, stdin=args.stdin, limits=limits,
                                 timeout=timeout)

    try:
        result, note = await conversation.call(run)
    except SandboxError as error:
        return _session_error(error)
    text = format_session_result(result, max_output_chars=conversation.max_output_chars, tool_name=TOOL_NAME)
    content: list[mcp_types.ContentBlock] = [mcp_types.TextContent(type="text", text=_with_note(note, text))]
    content += [mcp_types.ImageContent(type="image", data=base64.b64encode(data).decode("ascii"),
                                       mime_type=mime_type)
                for mime_type, data in image_outputs(result)]
    return mcp_types.CallToolResult(content=content, is_error=not result.ok)


async def _session_files(conversation: _Conversation, arguments: Mapping[str, Any] | None,
                         ) -> mcp_types.CallToolResult:
    try:
        args = parse_tool_arguments(SESSION_FILES, arguments, with_session_id=False)
    except ToolArgumentError as error:
        return _invalid(SESSION_FILES, error, "nothing was done")
    if not isinstance(args, SessionFilesArguments):  # pragma: no cover - the parser's type for this name
        raise TypeError(type(args).__name__)
    cap = max(2**20, 4 * conversation.max_output_chars)

    async def files(session: AsyncSession) -> str:
        return await _workspace_action(session.files, args, max_chars=conversation.max_output_chars, cap=cap,
                                       run_tool=TOOL_NAME)

    try:
        text, note = await conversation.call(files)
    except SandboxError as error:
        return _session_error(error)
    return _text_result(_with_note(note, text), is_error=False)


async def _reset_session(conversation: _Conversation, arguments: Mapping[str, Any] | None,
                         ) -> mcp_types.CallToolResult:
    if arguments:
        listed = ", ".join(repr(name) for name in arguments)
        return _text_result(f"Status: invalid arguments for {RESET_SESSION} (nothing was done)\n"
                            f"- {RESET_SESSION} takes no arguments; got {listed}\n"
                            f"What to do: call {RESET_SESSION} again without arguments.", is_error=True)
    try:
        old, new = await conversation.reset()
    except SandboxError as error:
        return _session_error(error)
    closed = f"closed the session {old} and " if old else ""
    return _text_result(f"Status: {closed}started a fresh session ({new}): no variables, imports or files are "
                        f"left from before\nWhat to do: set up again what you need with {TOOL_NAME}.",
                        is_error=False)


def _text_result(text: str, *, is_error: bool) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)], is_error=is_error)


def _runtimes_text(runtimes: Sequence[Runtime]) -> str:
    if not runtimes:
        return "The sandbox reports no languages."
    lines = ["The sandbox can run (pass the name as execute_code's language):"]
    for runtime in runtimes:
        also = f" (also called {', '.join(runtime.aliases)})" if runtime.aliases else ""
        lines.append(f"- {runtime.language}: {runtime.version}{also}")
    return "\n".join(lines)


def _version() -> str:
    try:
        return metadata.version("sandbox-client")
    except metadata.PackageNotFoundError:
        return ""


# -- configuration and the command -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """What ``sandbox-mcp`` runs with, from its flags and environment (``parse_config``)."""

    target: str = DEFAULT_TARGET
    api_key: str | None = None
    tls: bool = False
    """Connect with TLS (implied by any certificate below); the system's roots unless ``ca_cert``."""
    ca_cert: bytes | None = None
    """PEM roots to verify the server with."""
    client_cert: bytes | None = None
    """PEM certificate chain for mutual TLS (with ``client_key``)."""
    client_key: bytes | None = None
    session_id: str = ""
    limits: Limits | None = None
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    log_level: str = "WARNING"
    session: bool = True
    """Keep one sandbox session for the client (``--no-session``: a fresh sandbox every call)."""
    idle_timeout_s: int | None = None
    """The session's idle timeout, seconds; None: the tenant's default."""
    network: Network | None = None
    """The sandboxes' network (``create_server``'s); None: the tenant's."""

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for a plaintext channel."""
        if not (self.tls or self.ca_cert or self.client_cert or self.client_key):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert, private_key=self.client_key, certificate_chain=self.client_cert)


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


# argparse converts string defaults with type= too, so a value from the environment is checked like a flag's.
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _network(text: str) -> Network:
    """``none``, or ``host:port`` entries separated by commas (a host named again adds ports; an IPv6 address in
    brackets: ``[::1]:8080``)."""
    if text.strip().lower() == "none":
        return Network.none()
    ports: dict[str, list[int]] = {}
    for entry in (part.strip() for part in text.split(",")):
        host, _, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"not none or host:port entries separated by commas: {entry!r} in "
                                             f"{text!r}")
        ports.setdefault(host, []).append(int(port))
    try:
        return Network.allowlist(*(EgressRule(host, numbers) for host, numbers in ports.items()))
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    env = environ.get
    parser = argparse.ArgumentParser(
        prog="sandbox-mcp",
        description="Serve the sandbox's execute_code tool over MCP (stdio). Every option also reads the "
        "environment variable named in its help.",
    )
    parser.add_argument("--target", default=env("SANDBOX_TARGET", DEFAULT_TARGET),
                        help=f"the sandbox server, host:port [SANDBOX_TARGET; default {DEFAULT_TARGET}]")
    parser.add_argument("--api-key", default=env("SANDBOX_API_KEY") or None,
                        help="the API key [SANDBOX_API_KEY; prefer it: a command line is visible to other users]")
    parser.add_argument("--tls", action="store_true", default=_env_flag(env("SANDBOX_TLS")),
                        help="connect with TLS, verifying with the system's roots [SANDBOX_TLS=1]")
    parser.add_argument("--ca-cert", type=Path, default=env("SANDBOX_CA_CERT") or None,
                        help="PEM roots to verify the server with; implies --tls [SANDBOX_CA_CERT]")
    parser.add_argument("--client-cert", type=Path, default=env("SANDBOX_CLIENT_CERT") or None,
                        help="PEM client certificate for mutual TLS; implies --tls [SANDBOX_CLIENT_CERT]")
    parser.add_argument("--client-key", type=Path, default=env("SANDBOX_CLIENT_KEY") or None,
                        help="PEM key of --client-cert [SANDBOX_CLIENT_KEY]")
    parser.add_argument("--session-id", default=env("SANDBOX_SESSION_ID", ""),
                        help="session id sent with every execution (budgets, rate limits, audit) "
                        "[SANDBOX_SESSION_ID]")
    parser.add_argument("--wall-time-s", type=_positive_float, default=env("SANDBOX_WALL_TIME_S"),
                        help="default wall-time limit, seconds (a call's timeout_s replaces it) "
                        "[SANDBOX_WALL_TIME_S; default: the server's]")
    parser.add_argument("--cpu-time-s", type=_positive_float, default=env("SANDBOX_CPU_TIME_S"),
                        help="CPU-time limit, seconds [SANDBOX_CPU_TIME_S; default: the server's]")
    parser.add_argument("--memory-mb", type=_positive_int, default=env("SANDBOX_MEMORY_MB"),
                        help="memory limit, MiB [SANDBOX_MEMORY_MB; default: the server's]")
    parser.add_argument("--max-output-chars", type=_positive_int,
                        default=env("SANDBOX_MAX_OUTPUT_CHARS", str(DEFAULT_MAX_OUTPUT_CHARS)),
                        help="characters of stdout, and of stderr, a model sees (head and tail kept) "
                        f"[SANDBOX_MAX_OUTPUT_CHARS; default {DEFAULT_MAX_OUTPUT_CHARS}]")
    parser.add_argument("--no-session", action="store_true", default=_env_flag(env("SANDBOX_NO_SESSION")),
                        help="run every execute_code call in a fresh sandbox (nothing persists) instead of one "
                        "session kept for the client [SANDBOX_NO_SESSION=1]")
    parser.add_argument("--idle-timeout-s", type=_positive_int, default=env("SANDBOX_IDLE_TIMEOUT_S"),
                        help="seconds without a call after which the session closes (the next call starts a new "
                        "one) [SANDBOX_IDLE_TIMEOUT_S; default: the tenant's]")
    parser.add_argument("--network", type=_network, default=env("SANDBOX_NETWORK") or None,
                        help="the sandboxes' network, narrowing the tenant's: 'none', or host:port entries "
                        "separated by commas, e.g. 'pypi.org:443,files.pythonhosted.org:443'; the tools' "
                        "descriptions name them [SANDBOX_NETWORK; default: the tenant's]")
    parser.add_argument("--log-level", default=env("SANDBOX_MCP_LOG_LEVEL", "WARNING").upper(),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging on stderr [SANDBOX_MCP_LOG_LEVEL; default WARNING]")
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> ServerConfig:
    """The configuration from command-line arguments over environment variables: the one place either is read.

    Raises:
        SystemExit: a usage error (status 2, with the message on stderr), or ``--help``.
    """
    parser = _parser(environ)
    args = parser.parse_args(list(argv))
    if (args.client_cert is None) != (args.client_key is None):
        parser.error("--client-cert and --client-key go together")
    if args.api_key == "":
        parser.error("--api-key is empty")

    def read(path: Path | str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as error:
            parser.error(f"cannot read {path}: {error.strerror}")

    limits = None
    if args.wall_time_s is not None or args.cpu_time_s is not None or args.memory_mb is not None:
        limits = Limits(wall_time_s=args.wall_time_s, cpu_time_s=args.cpu_time_s,
                        memory_bytes=None if args.memory_mb is None else args.memory_mb * 2**20)
    return ServerConfig(
        target=args.target, api_key=args.api_key, tls=args.tls, ca_cert=read(args.ca_cert),
        client_cert=read(args.client_cert), client_key=read(args.client_key), session_id=args.session_id,
        limits=limits, max_output_chars=args.max_output_chars, log_level=args.log_level,
        session=not args.no_session, idle_timeout_s=args.idle_timeout_s, network=args.network)


async def serve_stdio(config: ServerConfig) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes them, then close the session and the
    sandbox client. At SIGTERM, close the session, then die of the signal."""
    async with AsyncSandboxClient(config.target, api_key=config.api_key, credentials=config.credentials(),
                                  timeout=DEFAULT_TIMEOUT) as client:
        server = create_server(client, session_id=config.session_id, limits=config.limits,
                               max_output_chars=config.max_output_chars, session=config.session,
                               idle_timeout_s=config.idle_timeout_s, network=config.network)
        async with stdio_server() as (read_stream, write_stream):
            terminated = anyio.Event()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_stop_on_sigterm, tasks.cancel_scope, terminated)
                logger.info("serving MCP on stdio for the sandbox at %s", config.target)
                await server.run(read_stream, write_stream, server.create_initialization_options())
                tasks.cancel_scope.cancel()
            if terminated.is_set():
                # The session is closed. The transport's stdin reader may be blocked in a thread reading a pipe
                # that stays open: leave the way SIGTERM would have made us leave.
                for handler in logging.getLogger().handlers:
                    handler.flush()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)


async def _stop_on_sigterm(scope: anyio.CancelScope, terminated: anyio.Event) -> None:
    """Stop serving at SIGTERM (how an MCP client or a supervisor stops a server), so that the session is closed
    on the way out rather than left to its idle timeout."""
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            logger.info("SIGTERM: closing the session and stopping")
            terminated.set()
            scope.cancel()
            return


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sandbox-mcp`` command. Returns the exit status (``SystemExit(2)`` for a usage error)."""
    config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(stream=sys.stderr, level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        anyio.run(serve_stdio, config)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
