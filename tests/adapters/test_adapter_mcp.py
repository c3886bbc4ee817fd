"""The ``sandbox-mcp`` server, started as MCP clients start it (a subprocess over stdio) and driven with the mcp
client library against a real sandbox server; and its configuration from flags and environment."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import mcp.types as mcp_types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

import sandbox_client.adapters.mcp as mcp_module
from sandbox_client import Limits
from sandbox_client.adapters.mcp import DEFAULT_TARGET, ServerConfig, parse_config
from sandbox_client.adapters.tool import TOOL_DESCRIPTION, parameters_schema
from sandbox_server.testing import RunningServer

SANDBOX_MCP = Path(sys.executable).parent / "sandbox-mcp"  # the console script, installed with the client


@asynccontextmanager
async def mcp_session(target: str, tmp_path: Path, *args: str) -> AsyncIterator[ClientSession]:
    """A session with a ``sandbox-mcp`` subprocess serving ``target`` (its stderr kept in a file)."""
    assert SANDBOX_MCP.exists(), "sandbox-mcp is not installed: pip install -e ./client"
    params = StdioServerParameters(command=str(SANDBOX_MCP), args=["--target", target, *args])
    with (tmp_path / "sandbox-mcp.stderr").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def _text(result: mcp_types.CallToolResult) -> str:
    (content,) = result.content
    assert isinstance(content, mcp_types.TextContent)
    return content.text


def test_the_public_names_are_pinned() -> None:
    assert sorted(mcp_module.__all__) == sorted([
        "DEFAULT_TARGET", "LIST_RUNTIMES", "SERVER_NAME", "ServerConfig", "create_server", "main", "parse_config",
        "serve_stdio"])


async def test_list_tools_shows_execute_code_with_its_schema(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path) as session:
        listing = await session.list_tools()
    tools = {tool.name: tool for tool in listing.tools}
    assert set(tools) == {"execute_code", "list_runtimes"}
    execute = tools["execute_code"]
    assert execute.input_schema == parameters_schema()
    assert execute.description == TOOL_DESCRIPTION
    assert execute.annotations is not None
    assert (execute.annotations.destructive_hint, execute.annotations.open_world_hint) == (False, False)
    assert tools["list_runtimes"].annotations is not None
    assert tools["list_runtimes"].annotations.read_only_hint


async def test_call_tool_runs_code_and_returns_the_text(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path, "--session-id", "mcp-session") as session:
        ok = await session.call_tool("execute_code", {"code": "print(6*7)"})
        assert isinstance(ok, mcp_types.CallToolResult)
        assert not ok.is_error
        text = _text(ok)
        assert text.startswith("Status: succeeded\nExit code: 0\n")
        assert text.endswith("<stdout>\n42\n</stdout>\n<stderr></stderr>")

        failed = await session.call_tool("execute_code", {"code": "exit 3", "language": "bash"})
        assert isinstance(failed, mcp_types.CallToolResult)
        assert failed.is_error
        assert "\nExit code: 3\n" in _text(failed)

        runtimes = await session.call_tool("list_runtimes", {})
        assert isinstance(runtimes, mcp_types.CallToolResult)
        assert not runtimes.is_error
        assert "- python: Python 3." in _text(runtimes)
        assert "- javascript: v" in _text(runtimes)
    # The session id reached the sandbox with the execution.
    assert adapter_server.app.stores is not None
    records = [r for r in adapter_server.app.stores.audit.list(limit=100) if r.session_id == "mcp-session"]
    assert {r.outcome for r in records} == {"OK", "NONZERO_EXIT"}


async def test_refusals_and_bad_arguments_are_errors(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path) as session:
        refused = await session.call_tool("execute_code", {"code": "import ctypes"})
        assert isinstance(refused, mcp_types.CallToolResult)
        assert refused.is_error
        assert _text(refused).startswith(
            "Status: refused: the sandbox's checks rejected the code before running it (nothing ran)\n"
            "- code: line 1, column 8: import of 'ctypes' is denied [denied_import]\n")

        bad = await session.call_tool("execute_code", {"language": "cobol"})
        assert isinstance(bad, mcp_types.CallToolResult)
        assert bad.is_error
        assert "'code' is required" in _text(bad)

        unknown = await session.call_tool("rm_rf", {})
        assert isinstance(unknown, mcp_types.CallToolResult)
        assert unknown.is_error
        assert "this server's tools are execute_code and list_runtimes" in _text(unknown)


async def test_default_limits_come_from_the_command_line(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path, "--wall-time-s", "0.5",
                           "--max-output-chars", "100") as session:
        killed = await session.call_tool("execute_code", {"code": "while True: pass"})
        assert isinstance(killed, mcp_types.CallToolResult)
        assert killed.is_error
        assert _text(killed).startswith("Status: killed: timed out (it ran past the wall-time limit of 0.5 s)\n")
        long = await session.call_tool("execute_code", {"code": "print('y' * 1000)"})
        assert isinstance(long, mcp_types.CallToolResult)
        assert "\n[... 901 more characters truncated ...]\n" in _text(long)  # 1001 with the newline


async def test_an_unreachable_sandbox_is_reported_to_the_model(tmp_path: Path) -> None:
    # A loopback port nobody listens on (the sandbox client connects lazily, so the server starts anyway).
    async with mcp_session("127.0.0.1:9", tmp_path) as session:
        result = await session.call_tool("list_runtimes", {})
    assert isinstance(result, mcp_types.CallToolResult)
    assert result.is_error
    assert _text(result).startswith("Status: not run: the sandbox is unavailable right now\n")


# -- configuration ---------------------------------------------------------------------------------------------------


def test_the_configuration_defaults() -> None:
    assert parse_config([], {}) == ServerConfig()
    assert ServerConfig().target == DEFAULT_TARGET
    assert ServerConfig().credentials() is None


def test_the_environment_configures_and_flags_win(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    environ = {"SANDBOX_TARGET": "127.0.0.1:7000", "SANDBOX_API_KEY": "sk-env", "SANDBOX_CA_CERT": str(ca),
               "SANDBOX_SESSION_ID": "s-env", "SANDBOX_WALL_TIME_S": "3", "SANDBOX_MEMORY_MB": "128",
               "SANDBOX_MAX_OUTPUT_CHARS": "500"}
    config = parse_config([], environ)
    assert config == ServerConfig(target="127.0.0.1:7000", api_key="sk-env", ca_cert=b"-----BEGIN CERTIFICATE-----\n",
                                  session_id="s-env", limits=Limits(wall_time_s=3.0, memory_bytes=128 * 2**20),
                                  max_output_chars=500)
    assert config.credentials() is not None  # a CA certificate implies TLS
    flagged = parse_config(["--target", "127.0.0.1:8000", "--cpu-time-s", "2", "--wall-time-s", "4"], environ)
    assert flagged.target == "127.0.0.1:8000"
    assert flagged.limits == Limits(wall_time_s=4.0, cpu_time_s=2.0, memory_bytes=128 * 2**20)
    assert parse_config([], {"SANDBOX_TLS": "1"}).credentials() is not None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--client-cert", "c.pem"], {}, "--client-cert and --client-key go together"),
        (["--wall-time-s", "0"], {}, "must be positive"),
        ([], {"SANDBOX_MEMORY_MB": "lots"}, "not a whole number"),
        (["--ca-cert", "/nonexistent/ca.pem"], {}, "cannot read /nonexistent/ca.pem"),
        (["--api-key", ""], {}, "--api-key is empty"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], environ: dict[str, str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
