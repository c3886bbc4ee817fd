"""The LangChain tool end to end against a real server: invoke (sync client), ainvoke (asyncio client, or the
sync one in a thread), tool calls from a model, and bad arguments turned into text."""

from __future__ import annotations

import pydantic
import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

import sandbox_client.adapters.langchain as langchain_module
from sandbox_client import AsyncSandboxClient, Limits, SandboxClient
from sandbox_client.adapters.langchain import ExecuteCodeInput, SandboxTool
from sandbox_client.adapters.tool import TOOL_DESCRIPTION, ToolDispatcher
from sandbox_server.testing import RunningServer


def test_the_public_names_are_pinned() -> None:
    assert sorted(langchain_module.__all__) == ["ExecuteCodeInput", "SandboxTool", "validation_error_text"]


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
