"""The ``sandbox-mcp`` server, started as MCP clients start it (a subprocess over stdio) and driven with the mcp
client library against a real sandbox server: one-shot (``--no-session``) and with the session it keeps for its
client; and its configuration from flags and environment."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import mcp.types as mcp_types
import pytest
from adapter_helpers import NARROWED, WIDER_REFUSAL, network_probe, sandbox_network
from mcp import ClientSession, StdioServerParameters, stdio_client

import sandbox_client.adapters.mcp as mcp_module
from sandbox_client import EgressRule, Limits, Network, SandboxClient, SessionInfo
from sandbox_client.adapters.mcp import DEFAULT_TARGET, ServerConfig, parse_config, session_tool_description
from sandbox_client.adapters.tool import SESSION_LABEL, TOOL_DESCRIPTION, parameters_schema, tool_description
from sandbox_server.testing import RunningServer

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"

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
        "DEFAULT_TARGET", "LIST_RUNTIMES", "RESET_SESSION", "SERVER_NAME", "SESSION_CLIENT_LABEL", "ServerConfig",
        "create_server", "main", "parse_config", "serve_stdio", "session_tool_description"])


# -- one-shot: --no-session --------------------------------------------------------------------------------------------


async def test_list_tools_shows_execute_code_with_its_schema(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path, "--no-session") as session:
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
    async with mcp_session(adapter_server.target, tmp_path, "--no-session", "--session-id", "mcp-session") as session:
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
    async with mcp_session(adapter_server.target, tmp_path, "--no-session") as session:
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
    async with mcp_session(adapter_server.target, tmp_path, "--no-session", "--wall-time-s", "0.5",
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
        # In session mode, starting the session is what fails: said the same way.
        result = await session.call_tool("execute_code", {"code": "print(1)"})
        assert isinstance(result, mcp_types.CallToolResult)
        assert result.is_error
        assert _text(result).startswith("Status: not run: the sandbox is unavailable right now\n")


# -- the session the server keeps for its client ---------------------------------------------------------------------


def _label() -> str:
    return f"mcp-{uuid.uuid4().hex[:12]}"


def _live(client: SandboxClient, label: str) -> list[SessionInfo]:
    return list(client.list_sessions(labels={SESSION_LABEL: label}))


async def _call(session: ClientSession, name: str, arguments: dict[str, object]) -> mcp_types.CallToolResult:
    result = await session.call_tool(name, arguments)
    assert isinstance(result, mcp_types.CallToolResult)
    return result


async def test_session_mode_lists_the_session_tools(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path) as session:
        listing = await session.list_tools()
        initialized = session.initialize_result
    tools = {tool.name: tool for tool in listing.tools}
    assert list(tools) == ["execute_code", "session_files", "reset_session", "list_runtimes"]
    execute = tools["execute_code"]
    assert execute.input_schema == parameters_schema()  # the same arguments as one-shot
    assert execute.description == session_tool_description()
    assert "persist" in execute.description
    files = tools["session_files"]
    assert set(files.input_schema["properties"]) == {"action", "path", "content", "recursive"}
    assert files.input_schema["required"] == ["action"]
    reset = tools["reset_session"]
    assert reset.input_schema == {"type": "object", "properties": {}, "additionalProperties": False}
    assert reset.annotations is not None
    assert reset.annotations.destructive_hint
    if initialized is not None and initialized.instructions is not None:
        assert "persist" in initialized.instructions


async def test_execute_code_calls_share_one_session(adapter_server: RunningServer, adapter_client: SandboxClient,
                                                    tmp_path: Path) -> None:
    label = _label()
    async with mcp_session(adapter_server.target, tmp_path, "--session-id", label) as session:
        first = await _call(session, "execute_code", {"code": "x = 41"})
        assert not first.is_error
        (live,) = _live(adapter_client, label)
        assert live.labels["client"] == "sandbox-mcp"
        second = await _call(session, "execute_code", {"code": "x + 1"})
        assert not second.is_error
        assert "\nOut[2]: 42\n" in _text(second)
        # Bash runs in the same working directory.
        shell = await _call(session, "execute_code", {"code": "echo $((6*7)) > answer.txt", "language": "bash"})
        assert not shell.is_error

        # session_files: upload, list, download, delete; the code sees the uploaded file.
        uploaded = await _call(session, "session_files", {"action": "upload", "path": "data/in.csv",
                                                          "content": "a,b\n1,2\n"})
        assert not uploaded.is_error
        assert _text(uploaded).startswith("Status: uploaded data/in.csv (8 bytes)\n")
        listing = await _call(session, "session_files", {"action": "list", "recursive": True})
        assert _text(listing).splitlines()[1:] == ["- answer.txt (3 bytes)", "- data/ (directory)",
                                                   "- data/in.csv (8 bytes)"]
        read = await _call(session, "execute_code", {"code": "open('data/in.csv').read().splitlines()"})
        assert "['a,b', '1,2']" in _text(read)
        downloaded = await _call(session, "session_files", {"action": "download", "path": "answer.txt"})
        assert _text(downloaded).endswith('<file path="answer.txt">\n42\n</file>')
        deleted = await _call(session, "session_files", {"action": "delete", "path": "data", "recursive": True})
        assert _text(deleted) == "Status: deleted data"
        missing = await _call(session, "session_files", {"action": "download", "path": "data/in.csv"})
        assert missing.is_error
        assert "list the files with session_files (action 'list')" in _text(missing)
        bad = await _call(session, "session_files", {"action": "upload", "path": "x.txt", "session_id": "s"})
        assert bad.is_error
        assert _text(bad).startswith("Status: invalid arguments for session_files (nothing was done)\n")

        # A figure comes back as image content, after the text.
        figure = await _call(session, "execute_code", {"code": PLOT})
        assert not figure.is_error
        text, image = figure.content
        assert isinstance(text, mcp_types.TextContent)
        assert "- [image/png output, " in text.text
        assert isinstance(image, mcp_types.ImageContent)
        assert image.mime_type == "image/png"
        assert base64.b64decode(image.data, validate=True).startswith(b"\x89PNG\r\n\x1a\n")

        # An exception is an error result; the state survives it.
        failed = await _call(session, "execute_code", {"code": "1 / 0"})
        assert failed.is_error
        assert "Error: ZeroDivisionError: division by zero" in _text(failed)
        assert "Out[" in _text(await _call(session, "execute_code", {"code": "x"}))

        # reset_session: a fresh session, nothing left.
        (before,) = _live(adapter_client, label)
        reset = await _call(session, "reset_session", {})
        assert not reset.is_error
        assert _text(reset).startswith(f"Status: closed the session {before.id} and started a fresh session (")
        (after,) = _live(adapter_client, label)
        assert after.id != before.id
        gone = await _call(session, "execute_code", {"code": "x"})
        assert gone.is_error
        assert "NameError: name 'x' is not defined" in _text(gone)
        empty = await _call(session, "session_files", {"action": "list"})
        assert _text(empty) == "Status: the top of the working directory is empty"
        bad_reset = await _call(session, "reset_session", {"hard": True})
        assert bad_reset.is_error

        unknown = await _call(session, "rm_rf", {})
        assert unknown.is_error
        assert ("this server's tools are execute_code, session_files, reset_session and list_runtimes"
                in _text(unknown))
    # The client went: its session went with it.
    assert _live(adapter_client, label) == []


async def test_a_session_that_closed_on_its_own_is_replaced(adapter_server: RunningServer,
                                                            adapter_client: SandboxClient, tmp_path: Path) -> None:
    label = _label()
    async with mcp_session(adapter_server.target, tmp_path, "--session-id", label) as session:
        await _call(session, "execute_code", {"code": "x = 1"})
        (old,) = _live(adapter_client, label)
        adapter_client.close_session(old.id)  # as its idle timeout would
        result = await _call(session, "execute_code", {"code": "x"})
        assert result.is_error
        assert _text(result).startswith("Note: the session had closed (it was closed), so this ran in a new "
                                        "session: the variables, imports and files from before are gone")
        assert "NameError" in _text(result)
        (new,) = _live(adapter_client, label)
        assert new.id != old.id
    assert _live(adapter_client, label) == []


async def test_session_limits_from_the_command_line(adapter_server: RunningServer, adapter_client: SandboxClient,
                                                    tmp_path: Path) -> None:
    label = _label()
    async with mcp_session(adapter_server.target, tmp_path, "--session-id", label, "--wall-time-s", "1",
                           "--idle-timeout-s", "120", "--max-output-chars", "100") as session:
        await _call(session, "execute_code", {"code": "kept = True"})
        (info,) = _live(adapter_client, label)
        assert (info.idle_timeout_s, info.limits.wall_time_s) == (120, 1.0)
        killed = await _call(session, "execute_code", {"code": "while True: pass"})
        assert killed.is_error
        assert _text(killed).startswith("Status: interrupted: timed out (it ran past the wall-time limit of 1 s)\n")
        longer = await _call(session, "execute_code", {"code": "import time; time.sleep(1.5); kept",
                                                       "timeout_s": 5})
        assert not longer.is_error
        assert "Out[3]: True" in _text(longer)
        long = await _call(session, "execute_code", {"code": "print('y' * 1000)"})
        assert "\n[... 901 more characters truncated ...]\n" in _text(long)


async def test_no_session_shares_no_state(adapter_server: RunningServer, adapter_client: SandboxClient,
                                          tmp_path: Path) -> None:
    label = _label()
    async with mcp_session(adapter_server.target, tmp_path, "--no-session", "--session-id", label) as session:
        listing = await session.list_tools()
        assert [tool.name for tool in listing.tools] == ["execute_code", "list_runtimes"]
        first = await _call(session, "execute_code", {"code": "x = 41\nopen('f.txt', 'w').write('hi')"})
        assert not first.is_error
        second = await _call(session, "execute_code", {"code": "print(x)"})
        assert second.is_error
        assert "NameError: name 'x' is not defined" in _text(second)
        third = await _call(session, "execute_code", {"code": "cat f.txt", "language": "bash"})
        assert third.is_error  # no file either
        files = await _call(session, "session_files", {"action": "list"})
        assert files.is_error
        assert _text(files).startswith("Status: unknown tool 'session_files' (nothing ran)\n")
        assert _live(adapter_client, label) == []  # no session was started


def test_sigterm_closes_the_session(adapter_server: RunningServer, adapter_client: SandboxClient,
                                    tmp_path: Path) -> None:
    """A server stopped with SIGTERM while its client still holds stdin (a supervisor's stop) closes its session on
    the way out, then dies of the signal."""
    label = _label()
    with (tmp_path / "stderr").open("w") as errlog:
        process = subprocess.Popen([str(SANDBOX_MCP), "--target", adapter_server.target, "--session-id", label],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True)
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            def send(message: dict[str, object]) -> None:
                assert process.stdin is not None
                process.stdin.write(json.dumps(message) + "\n")
                process.stdin.flush()

            send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
            assert json.loads(process.stdout.readline())["id"] == 1
            send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "execute_code", "arguments": {"code": "x = 1"}}})
            reply = json.loads(process.stdout.readline())
            assert reply["result"]["isError"] is False
            assert len(_live(adapter_client, label)) == 1
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == -signal.SIGTERM
            assert time.monotonic() - started < 5
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert _live(adapter_client, label) == []


# -- the network the host gives the sandboxes ------------------------------------------------------------------------

NARROWED_OPTION = ["--network", "api.example.test:443"]  # NARROWED, as the command line says it


@pytest.mark.parametrize("mode", [[], ["--no-session"]], ids=["session", "one-shot"])
async def test_the_tools_and_instructions_say_what_the_network_allows(adapter_server: RunningServer,
                                                                      tmp_path: Path, mode: list[str]) -> None:
    async with mcp_session(adapter_server.target, tmp_path, *mode, *NARROWED_OPTION) as session:
        listing = await session.list_tools()
        initialized = session.initialize_result
    execute = {tool.name: tool for tool in listing.tools}["execute_code"]
    expected = session_tool_description(network=NARROWED) if not mode else tool_description(network=NARROWED)
    assert execute.description == expected
    assert "api.example.test (port 443)" in expected
    assert execute.input_schema == parameters_schema()  # the model cannot choose the network
    assert execute.annotations is not None
    assert execute.annotations.open_world_hint  # it can reach hosts outside the sandbox
    assert initialized is not None
    assert initialized.instructions is not None
    assert "whose network reaches only api.example.test (port 443)" in initialized.instructions
    assert "without network access" not in initialized.instructions


async def test_no_network_keeps_the_closed_world(adapter_server: RunningServer, tmp_path: Path) -> None:
    async with mcp_session(adapter_server.target, tmp_path, "--network", "none") as session:
        listing = await session.list_tools()
    execute = {tool.name: tool for tool in listing.tools}["execute_code"]
    assert execute.description == session_tool_description(network=Network.none())
    assert "The sandbox has no network access, and installs only" in execute.description
    assert execute.annotations is not None
    assert execute.annotations.open_world_hint is False


@pytest.mark.parametrize(("options", "seen"), [([], "tenant"), (NARROWED_OPTION, "narrowed"),
                                               (["--network", "none"], "none")], ids=["default", "narrowed", "none"])
@pytest.mark.parametrize("mode", [[], ["--no-session"]], ids=["session", "one-shot"])
async def test_the_network_option_reaches_the_sandboxes(network_server: RunningServer, upstream_port: int,
                                                         tmp_path: Path, mode: list[str], options: list[str],
                                                         seen: str) -> None:
    async with mcp_session(network_server.target, tmp_path, *mode, *options) as session:
        result = await _call(session, "execute_code", {"code": network_probe(upstream_port), "language": "bash"})
    assert not result.is_error, _text(result)
    assert sandbox_network(_text(result)) == seen


@pytest.mark.parametrize("mode", [[], ["--no-session"]], ids=["session", "one-shot"])
async def test_a_network_outside_the_tenants_is_refused_naming_the_rule(network_server: RunningServer,
                                                                        tmp_path: Path, mode: list[str]) -> None:
    async with mcp_session(network_server.target, tmp_path, *mode, "--network", "pypi.org:443") as session:
        result = await _call(session, "execute_code", {"code": "echo hi", "language": "bash"})
    assert result.is_error
    assert _text(result).startswith("Status: refused: the sandbox's policy does not allow this request (nothing ran)\n"
                                    f"Reason: {WIDER_REFUSAL}\n")


# -- configuration ---------------------------------------------------------------------------------------------------


def test_the_configuration_defaults() -> None:
    assert parse_config([], {}) == ServerConfig()
    assert ServerConfig().target == DEFAULT_TARGET
    assert ServerConfig().credentials() is None
    assert ServerConfig().session
    assert ServerConfig().idle_timeout_s is None
    assert ServerConfig().network is None


def test_the_session_options() -> None:
    assert parse_config(["--no-session"], {}).session is False
    assert parse_config([], {"SANDBOX_NO_SESSION": "1"}).session is False
    assert parse_config([], {"SANDBOX_IDLE_TIMEOUT_S": "300"}).idle_timeout_s == 300
    assert parse_config(["--idle-timeout-s", "60"], {"SANDBOX_IDLE_TIMEOUT_S": "300"}).idle_timeout_s == 60


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


def test_the_network_option() -> None:
    assert parse_config(["--network", "none"], {}).network == Network.none()
    assert parse_config(["--network", "NONE"], {}).network == Network.none()
    assert parse_config([], {"SANDBOX_NETWORK": "pypi.org:443, files.pythonhosted.org:443"}).network == (
        Network.allowlist(EgressRule("pypi.org", [443]), EgressRule("files.pythonhosted.org", [443])))
    # A host named again adds ports; an IPv6 address goes in brackets; the flag wins over the environment.
    assert parse_config(["--network", "*.example.com:80,*.example.com:443,[::1]:8080"],
                        {"SANDBOX_NETWORK": "none"}).network == Network.allowlist(
        EgressRule("*.example.com", [80, 443]), EgressRule("::1", [8080]))
    assert parse_config([], {"SANDBOX_NETWORK": ""}).network is None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--network", "pypi.org"], {}, "not none or host:port entries separated by commas: 'pypi.org'"),
        (["--network", "pypi.org:443,"], {}, "not none or host:port entries"),
        ([], {"SANDBOX_NETWORK": ":443"}, "not none or host:port entries"),
        (["--network", "pypi.org:0"], {}, "a port is 1 to 65535"),
        (["--client-cert", "c.pem"], {}, "--client-cert and --client-key go together"),
        (["--wall-time-s", "0"], {}, "must be positive"),
        ([], {"SANDBOX_MEMORY_MB": "lots"}, "not a whole number"),
        (["--ca-cert", "/nonexistent/ca.pem"], {}, "cannot read /nonexistent/ca.pem"),
        (["--api-key", ""], {}, "--api-key is empty"),
        (["--idle-timeout-s", "1.5"], {}, "not a whole number"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], environ: dict[str, str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
