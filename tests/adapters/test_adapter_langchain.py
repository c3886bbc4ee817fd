"""The LangChain tool end to end against a real server: invoke (sync client), ainvoke (asyncio client, or the
sync one in a thread), tool calls from a model, and bad arguments turned into text."""

from __future__ import annotations

import pydantic
import pytest
from adapter_helpers import NARROWED, WIDER, WIDER_REFUSAL, network_probe, sandbox_network
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

import sandbox_client.adapters.langchain as langchain_module
from sandbox_client import AsyncSandboxClient, Limits, Network, SandboxClient, SessionNotFoundError
from sandbox_client.adapters._specs import _kept_session_description
from sandbox_client.adapters.langchain import (
    SESSION_TOOL_DESCRIPTION,
    ExecuteCodeInput,
    SandboxSessionTool,
    SandboxTool,
    SessionCodeInput,
)
from sandbox_client.adapters.tool import LANGUAGES, TOOL_DESCRIPTION, ToolDispatcher, tool_description
from sandbox_server.testing import RunningServer


def test_the_public_names_are_pinned() -> None:
    assert sorted(langchain_module.__all__) == [
        "ExecuteCodeInput", "SESSION_TOOL_DESCRIPTION", "SESSION_TOOL_NAME", "SandboxSessionTool", "SandboxTool",
        "SessionCodeInput", "validation_error_text"]


def test_it_is_a_langchain_tool_with_the_tools_schema(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client)
    assert isinstance(tool, BaseTool)
    assert (tool.name, tool.description) == ("execute_code", TOOL_DESCRIPTION)
    assert tool.args_schema is ExecuteCodeInput
    schema = tool.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    assert schema["required"] == ["code"]
    assert schema["properties"]["language"]["enum"] == ["python", "javascript", "bash"]
    assert set(schema["properties"]) == {"code", "language", "stdin", "timeout_s"}


def test_invoke_runs_the_code_and_returns_the_dispatchers_text(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client, session_id="lc-session")
    text = tool.invoke({"code": "print(input()[::-1])", "stdin": "olleh\n"})
    assert isinstance(text, str)
    assert text.startswith("Status: succeeded\nExit code: 0\n")
    assert "<stdout>\nhello\n</stdout>" in text
    same = ToolDispatcher(adapter_client).dispatch("execute_code", {"code": "import ctypes"})
    assert tool.invoke({"code": "import ctypes"}) == same


def test_limits_and_timeouts_reach_the_sandbox(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client, limits=Limits(wall_time_s=5))
    text = tool.invoke({"code": "while True: pass", "timeout_s": 0.5})
    assert text.startswith("Status: killed: timed out (it ran past the wall-time limit of 0.5 s)\n")


def test_a_model_tool_call_gets_a_tool_message(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client)
    message = tool.invoke({"type": "tool_call", "id": "call_42", "name": "execute_code",
                           "args": {"code": "echo $((6*7))", "language": "bash"}})
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "call_42"
    assert "<stdout>\n42\n</stdout>" in message.content


def test_bad_arguments_become_text_for_the_model(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client)
    text = tool.invoke({"language": "cobol", "timeout": 3})
    assert text.startswith("Status: invalid arguments for execute_code (nothing ran)\n")
    assert "- code: Field required" in text
    assert "- language: Input should be 'python', 'javascript' or 'bash'" in text
    assert "- timeout: Extra inputs are not permitted" in text
    assert text.endswith("What to do: call execute_code again with corrected arguments.")
    assert "Status: succeeded" in tool.invoke({"code": "print(1)", "language": "PY"})  # an alias is fine


async def test_ainvoke_uses_the_async_client(adapter_server: RunningServer) -> None:
    async with AsyncSandboxClient(adapter_server.target, timeout=60) as client:
        tool = SandboxTool(async_client=client, session_id="lc-async")
        text = await tool.ainvoke({"code": "console.log([1, 2, 3].map(x => x * 2).join(','))",
                                   "language": "javascript"})
        assert "<stdout>\n2,4,6\n</stdout>" in text
        refused = await tool.ainvoke({"code": "import ctypes"})
        assert refused.startswith("Status: refused: the sandbox's checks rejected the code")
        # Without a sync client, invoke cannot run: that is the host's mistake.
        with pytest.raises(RuntimeError, match="async_client"):
            tool.invoke({"code": "print(1)"})


async def test_ainvoke_with_only_a_sync_client_runs_in_a_thread(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client)
    text = await tool.ainvoke({"code": "print(sum(range(10)))"})
    assert "<stdout>\n45\n</stdout>" in text


def test_a_tool_needs_a_client() -> None:
    with pytest.raises(pydantic.ValidationError, match="needs client"):
        SandboxTool()
    with pytest.raises(pydantic.ValidationError):
        SandboxTool(client=None, async_client=None, max_output_chars=0)


# -- the session tool ------------------------------------------------------------------------------------------------


def test_the_session_tool_is_a_langchain_tool(adapter_client: SandboxClient) -> None:
    tool = SandboxSessionTool(client=adapter_client)
    assert isinstance(tool, BaseTool)
    assert (tool.name, tool.description) == ("run_code_in_session", SESSION_TOOL_DESCRIPTION)
    assert tool.args_schema is SessionCodeInput
    schema = tool.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    assert schema["required"] == ["code"]
    assert set(schema["properties"]) == {"code", "language", "timeout_s"}
    for fact in ("persist", "send only the new code", "closes by itself", "no network"):
        assert fact in tool.description, fact
    assert tool.session_id is None  # nothing is started before the first call


def test_the_session_tool_keeps_state_across_invocations(adapter_client: SandboxClient) -> None:
    with SandboxSessionTool(client=adapter_client, languages=("python", "bash"), labels={"test": "lc"}) as tool:
        first = tool.invoke({"code": "x = 41"})
        assert first.startswith("Status: succeeded\n")
        sid = tool.session_id
        assert sid is not None
        assert sid.startswith("ses_")
        second = tool.invoke({"code": "x + 1"})
        assert "\nOut[2]: 42\n" in second
        assert "run_code_in_session" in second  # the advice names this tool
        assert tool.session_id == sid
        # Files persist for bash too; a model's tool call gets a ToolMessage.
        tool.invoke({"code": "open('from_python.txt', 'w').write('hi')"})
        message = tool.invoke({"type": "tool_call", "id": "call_7", "name": "run_code_in_session",
                               "args": {"code": "cat from_python.txt", "language": "sh"}})
        assert isinstance(message, ToolMessage)
        assert "<stdout>\nhi\n</stdout>" in message.content
        info = adapter_client.get_session(sid)
        assert (info.languages, info.labels["test"]) == (("python", "bash"), "lc")
    # Leaving the block closed it.
    assert tool.session_id is None
    with pytest.raises(SessionNotFoundError):
        adapter_client.get_session(sid)


def test_the_session_tool_starts_afresh_when_its_session_closed(adapter_client: SandboxClient) -> None:
    tool = SandboxSessionTool(client=adapter_client)
    try:
        tool.invoke({"code": "x = 1"})
        old = tool.session_id
        assert old is not None
        adapter_client.close_session(old)  # as its idle timeout would
        text = tool.invoke({"code": "x"})
        assert text.startswith("Note: the session had closed (it was closed), so this ran in a new session: the "
                               "variables, imports and files from before are gone; set up again what you need.\n"
                               "Status: failed: the code raised NameError\n")
        assert tool.session_id not in (None, old)
    finally:
        tool.close()
    tool.close()  # idempotent


def test_the_session_tools_bad_arguments_become_text(adapter_client: SandboxClient) -> None:
    tool = SandboxSessionTool(client=adapter_client, name="python_session")
    text = tool.invoke({"language": "cobol", "session_id": "x"})
    assert text.startswith("Status: invalid arguments for python_session (nothing ran)\n")
    assert "- code: Field required" in text
    assert "- session_id: Extra inputs are not permitted" in text
    assert tool.session_id is None


async def test_the_session_tool_over_asyncio(adapter_server: RunningServer, adapter_client: SandboxClient) -> None:
    async with AsyncSandboxClient(adapter_server.target, timeout=60) as client:
        tool = SandboxSessionTool(async_client=client, client=adapter_client)
        try:
            await tool.ainvoke({"code": "y = 20"})
            assert "Out[2]: 40" in await tool.ainvoke({"code": "y * 2"})
            # The sync path uses the same session.
            assert "Out[3]: 20" in tool.invoke({"code": "y"})
            refused = await tool.ainvoke({"code": "import ctypes"})
            assert refused.startswith("Status: refused: the sandbox's checks rejected the code")
        finally:
            await tool.aclose()
        assert tool.session_id is None
        only_async = SandboxSessionTool(async_client=client)
        with pytest.raises(RuntimeError, match="async_client"):
            only_async.invoke({"code": "print(1)"})
        await only_async.aclose()  # nothing started: nothing to do


def test_the_session_tool_needs_a_client() -> None:
    with pytest.raises(pydantic.ValidationError, match="needs client"):
        SandboxSessionTool()


# -- the network the host gives the sandboxes ------------------------------------------------------------------------


def test_the_tools_describe_their_network(adapter_client: SandboxClient) -> None:
    tool = SandboxTool(client=adapter_client, network=NARROWED)
    assert tool.network == NARROWED
    assert tool.description == tool_description(network=NARROWED)
    assert "api.example.test (port 443)" in tool.description
    assert SandboxTool(client=adapter_client, network=NARROWED, description="Run code.").description == "Run code."
    session_tool = SandboxSessionTool(client=adapter_client, network=Network.none())
    assert session_tool.description == _kept_session_description(LANGUAGES, figures=False, network=Network.none())
    assert "The sandbox has no network access, and installs only" in session_tool.description
    # The model cannot choose it: neither tool takes it as an argument.
    for each in (tool, session_tool):
        schema = each.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
        assert "network" not in schema["properties"]
    text = tool.invoke({"code": "print(1)", "network": {"mode": "allowlist"}})
    assert text.startswith("Status: invalid arguments for execute_code (nothing ran)\n")
    assert "- network: Extra inputs are not permitted" in text


def test_invalid_network_settings_are_refused_at_construction(adapter_client: SandboxClient) -> None:
    with pytest.raises(pydantic.ValidationError):
        SandboxTool(client=adapter_client, network="pypi.org")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="a session's network is set when it is created"):
        SandboxTool(client=adapter_client, session_id="ses_" + "a" * 32, network=Network.none())


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed"), (Network.none(), "none")],
                         ids=["default", "narrowed", "none"])
async def test_the_tools_network_is_every_executions(network_server: RunningServer, network_client: SandboxClient,
                                                     upstream_port: int, network: Network | None,
                                                     seen: str) -> None:
    probe = {"code": network_probe(upstream_port), "language": "bash"}
    assert sandbox_network(SandboxTool(client=network_client, network=network).invoke(probe)) == seen
    async with AsyncSandboxClient(network_server.target, timeout=60) as client:
        assert sandbox_network(await SandboxTool(async_client=client, network=network).ainvoke(probe)) == seen
    refused = SandboxTool(client=network_client, network=WIDER).invoke(probe)
    assert refused.startswith("Status: refused: the sandbox's policy does not allow this request (nothing ran)\n")
    assert WIDER_REFUSAL in refused


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed"), (Network.none(), "none")],
                         ids=["default", "narrowed", "none"])
def test_the_session_tools_network_is_its_sessions(network_client: SandboxClient, upstream_port: int,
                                                   network: Network | None, seen: str) -> None:
    with SandboxSessionTool(client=network_client, network=network) as tool:
        assert sandbox_network(tool.invoke({"code": network_probe(upstream_port), "language": "bash"})) == seen


async def test_the_session_tools_network_over_asyncio(network_server: RunningServer, upstream_port: int) -> None:
    async with AsyncSandboxClient(network_server.target, timeout=60) as client:
        tool = SandboxSessionTool(async_client=client, network=NARROWED)
        try:
            text = await tool.ainvoke({"code": network_probe(upstream_port), "language": "bash"})
            assert sandbox_network(text) == "narrowed"
        finally:
            await tool.aclose()
        refused = SandboxSessionTool(async_client=client, network=WIDER)
        text = await refused.ainvoke({"code": "echo hi", "language": "bash"})
        assert text.startswith("Status: refused: the sandbox's policy does not allow this request (nothing ran)\n")
        assert WIDER_REFUSAL in text
        assert refused.session_id is None
