"""The sandbox as an MCP server (``pip install 'sandbox-client[mcp]'``): the ``sandbox-mcp`` command.

    sandbox-mcp --target 127.0.0.1:50051          # API key from SANDBOX_API_KEY; serves MCP over stdio

Tools: ``execute_code`` (the arguments and result text of ``ToolDispatcher``; ``isError`` when the code did not
run to a successful end) and ``list_runtimes``. It speaks MCP on stdin/stdout, the way MCP clients launch
servers, and opens no connection but the gRPC channel to the configured sandbox server.

Every option has an environment variable (the flag wins): ``--target`` SANDBOX_TARGET, ``--api-key``
SANDBOX_API_KEY, ``--tls`` SANDBOX_TLS, ``--ca-cert`` SANDBOX_CA_CERT, ``--client-cert`` SANDBOX_CLIENT_CERT,
``--client-key`` SANDBOX_CLIENT_KEY, ``--session-id`` SANDBOX_SESSION_ID, ``--wall-time-s`` SANDBOX_WALL_TIME_S,
``--cpu-time-s`` SANDBOX_CPU_TIME_S, ``--memory-mb`` SANDBOX_MEMORY_MB, ``--max-output-chars``
SANDBOX_MAX_OUTPUT_CHARS, ``--log-level`` SANDBOX_MCP_LOG_LEVEL. Logs go to stderr (stdout is the protocol).

Exit codes: 0 when the client closes the connection; 2 for a usage error (a bad option, an unreadable file).
Built on the low-level ``mcp.server.Server`` of the mcp 2.x SDK.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import anyio
import grpc
import mcp.types as mcp_types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._common import DEFAULT_TIMEOUT
from sandbox_client._errors import SandboxError
from sandbox_client._models import Limits, Runtime
from sandbox_client.adapters.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    AsyncToolDispatcher,
    format_error,
    parameters_schema,
)

__all__ = [
    "DEFAULT_TARGET",
    "LIST_RUNTIMES",
    "SERVER_NAME",
    "ServerConfig",
    "create_server",
    "main",
    "parse_config",
    "serve_stdio",
]

logger = logging.getLogger(__name__)

DEFAULT_TARGET: Final = "127.0.0.1:50051"
SERVER_NAME: Final = "sandbox"
LIST_RUNTIMES: Final = "list_runtimes"
_INSTRUCTIONS: Final = (
    f"Use {TOOL_NAME} to run Python, JavaScript or bash code in a fresh, isolated sandbox without network "
    f"access; {LIST_RUNTIMES} tells which interpreter versions it has."
)

# Handlers get this lifespan context: the default lifespan's empty dict.
_Context = ServerRequestContext[dict[str, Any]]


def create_server(
    client: AsyncSandboxClient,
    *,
    session_id: str = "",
    limits: Limits | None = None,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    name: str = SERVER_NAME,
) -> Server[dict[str, Any]]:
    """An MCP server whose tools run through ``client`` (used as is, not closed here). ``session_id``,
    ``limits`` and ``max_output_chars`` are ``AsyncToolDispatcher``'s.

    Raises:
        ValueError, TypeError: a setting is invalid.
    """
    dispatcher = AsyncToolDispatcher(client, session_id=session_id, limits=limits,
                                     max_output_chars=max_output_chars)
    tools = [
        mcp_types.Tool(
            name=TOOL_NAME,
            title="Execute code in a sandbox",
            description=TOOL_DESCRIPTION,
            input_schema=parameters_schema(),
            # Each call gets a throwaway sandbox with no network: it changes nothing outside it.
            annotations=mcp_types.ToolAnnotations(
                title="Execute code in a sandbox", read_only_hint=False, destructive_hint=False,
                idempotent_hint=False, open_world_hint=False),
        ),
        mcp_types.Tool(
            name=LIST_RUNTIMES,
            title="List the sandbox's languages",
            description="List the languages the sandbox can run, with their interpreter versions.",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            annotations=mcp_types.ToolAnnotations(
                title="List the sandbox's languages", read_only_hint=True, idempotent_hint=True,
                open_world_hint=False),
        ),
    ]

    async def on_list_tools(
        ctx: _Context, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=tools)

    async def on_call_tool(ctx: _Context, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        if params.name == TOOL_NAME:
            outcome = await dispatcher.dispatch_outcome(TOOL_NAME, params.arguments)
            return _text_result(outcome.text, is_error=outcome.is_error)
        if params.name == LIST_RUNTIMES:
            try:
                runtimes = await client.runtimes()
            except SandboxError as error:
                return _text_result(format_error(error), is_error=True)
            return _text_result(_runtimes_text(runtimes), is_error=False)
        text = (f"Status: unknown tool {params.name!r} (nothing ran)\n"
                f"What to do: this server's tools are {TOOL_NAME} and {LIST_RUNTIMES}.")
        return _text_result(text, is_error=True)

    return Server(name, version=_version(), title="Code-execution sandbox", instructions=_INSTRUCTIONS,
                  on_list_tools=on_list_tools, on_call_tool=on_call_tool)


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
        limits=limits, max_output_chars=args.max_output_chars, log_level=args.log_level)


async def serve_stdio(config: ServerConfig) -> None:
    """Serve MCP on this process's stdin/stdout until the client closes them, then close the sandbox client."""
    async with AsyncSandboxClient(config.target, api_key=config.api_key, credentials=config.credentials(),
                                  timeout=DEFAULT_TIMEOUT) as client:
        server = create_server(client, session_id=config.session_id, limits=config.limits,
                               max_output_chars=config.max_output_chars)
        async with stdio_server() as (read_stream, write_stream):
            logger.info("serving MCP on stdio for the sandbox at %s", config.target)
            await server.run(read_stream, write_stream, server.create_initialization_options())


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
