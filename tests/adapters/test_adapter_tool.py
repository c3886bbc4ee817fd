"""The function-calling tool: its schema for both providers, and the dispatcher end to end against a real server
(results, kills, truncation, refusals, bad arguments), and the provider message builders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from adapter_helpers import NARROWED, WIDER, WIDER_REFUSAL, network_probe, sandbox_network, server_with_policy

import sandbox_client.adapters.tool as tool_module
from sandbox_client import (
    AsyncSandboxClient,
    AuthenticationError,
    EgressRule,
    ErrorDetails,
    ExecutionResult,
    Limits,
    Network,
    PermissionDeniedError,
    QuotaViolation,
    ResourceExhaustedError,
    SandboxClient,
    ServerError,
    Status,
    UnavailableError,
)
from sandbox_client.adapters.tool import (
    LANGUAGES,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    AsyncToolDispatcher,
    ExecuteCodeArguments,
    ToolArgumentError,
    ToolDispatcher,
    anthropic_tool,
    anthropic_tool_result,
    anthropic_tools,
    format_error,
    openai_responses_tool,
    openai_responses_tool_output,
    openai_responses_tools,
    openai_tool,
    openai_tool_message,
    openai_tools,
    parameters_schema,
    parse_arguments,
    tool_description,
    tool_specs,
    truncate_middle,
)
from sandbox_server.testing import RunningServer

PUBLIC_NAMES = [
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


def test_the_public_names_are_pinned() -> None:
    assert sorted(tool_module.__all__) == sorted(PUBLIC_NAMES)
    for name in PUBLIC_NAMES:
        assert hasattr(tool_module, name), name


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("sandbox_client.adapters.tool", ["langchain_core", "mcp", "pydantic", "jsonschema"]),
        ("sandbox_client.adapters.langchain", ["mcp"]),
        ("sandbox_client.adapters.mcp", ["langchain_core"]),
    ],
)
def test_each_adapter_imports_without_the_others_dependencies(module: str, blocked: list[str]) -> None:
    # A None entry in sys.modules makes the import fail, as if the package were not installed.
    code = f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\nimport {module}\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


# -- the schema ------------------------------------------------------------------------------------------------------


def test_the_parameters_are_a_valid_json_schema_that_says_what_a_call_may_send() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # installed with the mcp extra; not a dependency of its own
    schema = parameters_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert schema["required"] == ["code"]
    assert schema["properties"]["language"]["enum"] == ["python", "javascript", "bash"]
    assert schema["properties"]["language"]["default"] == "python"
    assert set(schema["properties"]) == {"code", "language", "stdin", "timeout_s"}
    assert validator.is_valid({"code": "print(1)"})
    assert validator.is_valid({"code": "echo hi", "language": "bash", "stdin": "x", "timeout_s": 2.5})
    assert not validator.is_valid({"language": "python"})  # no code
    assert not validator.is_valid({"code": "x", "language": "cobol"})
    assert not validator.is_valid({"code": "x", "timeout_s": 0})
    assert not validator.is_valid({"code": "x", "timeout": 3})  # additionalProperties: false


def test_each_call_returns_a_fresh_schema() -> None:
    first = parameters_schema()
    first["properties"]["language"]["enum"].append("cobol")
    assert parameters_schema()["properties"]["language"]["enum"] == list(LANGUAGES)


def test_openai_shapes() -> None:
    chat = openai_tool()
    assert chat == {
        "type": "function",
        "function": {"name": "execute_code", "description": TOOL_DESCRIPTION, "parameters": parameters_schema()},
    }
    responses = openai_responses_tool()
    assert responses == {"type": "function", "name": "execute_code", "description": TOOL_DESCRIPTION,
                         "parameters": parameters_schema()}
    json.dumps([chat, responses])  # what the SDKs send


def test_anthropic_shape_and_renaming() -> None:
    tool = anthropic_tool()
    assert tool == {"name": "execute_code", "description": TOOL_DESCRIPTION, "input_schema": parameters_schema()}
    renamed = anthropic_tool(name="run", description="Run code.")
    assert (renamed["name"], renamed["description"]) == ("run", "Run code.")
    json.dumps(tool)


def test_the_description_tells_the_model_what_the_sandbox_is() -> None:
    text = TOOL_DESCRIPTION.lower()
    for fact in ("no network", "fresh sandbox", "nothing persists", "working directory", "limits", "timeout_s",
                 "killed", "python", "javascript", "bash"):
        assert fact in text, fact


# -- arguments -------------------------------------------------------------------------------------------------------


def test_arguments_from_a_dict_or_a_json_string() -> None:
    assert parse_arguments({"code": "print(1)"}) == ExecuteCodeArguments(code="print(1)")
    assert parse_arguments('{"code": "echo", "language": "SH", "stdin": null, "timeout_s": "2.5"}') == (
        ExecuteCodeArguments(code="echo", language="bash", stdin="", timeout_s=2.5))


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "'code' is required"),
        (None, "'code' is required"),
        ("", "'code' is required"),
        ({"code": "   "}, "'code' is empty"),
        ({"code": 42}, "'code' must be a string"),
        ({"code": "x", "language": "cobol"}, "'language' must be one of python, javascript, bash; got \"cobol\""),
        ({"code": "x", "timeout_s": -1}, "'timeout_s' must be a positive number of seconds"),
        ({"code": "x", "timeout_s": True}, "'timeout_s' must be a positive number of seconds"),
        ({"code": "x", "timeout_s": "soon"}, "'timeout_s' must be a positive number of seconds"),
        ({"code": "x", "stdin": ["a"]}, "'stdin' must be a string, not an array"),
        ({"code": "x", "timeout": 3}, "unknown argument 'timeout' (did you mean 'timeout_s'?)"),
        ('{"code": "print(1)"', "the arguments are not valid JSON"),
        ('["print(1)"]', "the arguments must be a JSON object with a 'code' field, not an array"),
        ({"code": "\ud800"}, "not valid Unicode"),
    ],
)
def test_bad_arguments_are_named(arguments: object, problem: str) -> None:
    with pytest.raises(ToolArgumentError) as info:
        parse_arguments(arguments)  # type: ignore[arg-type]
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ToolArgumentError) as info:
        parse_arguments({"language": "cobol", "timeout_s": 0})
    assert len(info.value.problems) == 3


# -- the dispatcher against a real server ----------------------------------------------------------------------------


def test_a_successful_run(adapter_client: SandboxClient) -> None:
    outcome = ToolDispatcher(adapter_client).dispatch_outcome("execute_code", {"code": "print(6*7)"})
    assert not outcome.is_error
    assert outcome.result is not None
    assert outcome.result.status is Status.OK
    assert outcome.text.startswith("Status: succeeded\nExit code: 0\nTime: ")
    assert outcome.text.endswith("<stdout>\n42\n</stdout>\n<stderr></stderr>")


def test_dispatch_returns_the_text(adapter_client: SandboxClient) -> None:
    text = ToolDispatcher(adapter_client).dispatch("execute_code", '{"code": "console.log(1+1)", "language": "js"}')
    assert "Status: succeeded" in text
    assert "<stdout>\n2\n</stdout>" in text


def test_stdin_and_other_languages(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client)
    text = dispatcher.dispatch("execute_code", {"code": "read x; echo \"got $x\"", "language": "bash",
                                                "stdin": "hello\n"})
    assert "<stdout>\ngot hello\n</stdout>" in text


def test_a_non_zero_exit(adapter_client: SandboxClient) -> None:
    code = "import sys\nprint('partial')\nprint('boom', file=sys.stderr)\nsys.exit(3)"
    outcome = ToolDispatcher(adapter_client).dispatch_outcome("execute_code", {"code": code})
    assert outcome.is_error
    assert outcome.text.startswith("Status: failed (the program exited with a non-zero code)\n")
    assert "\nExit code: 3\n" in outcome.text
    assert "<stdout>\npartial\n</stdout>\n<stderr>\nboom\n</stderr>" in outcome.text


def test_a_traceback_reaches_the_model(adapter_client: SandboxClient) -> None:
    text = ToolDispatcher(adapter_client).dispatch("execute_code", {"code": "1/0"})
    assert "Exit code: 1" in text
    assert "ZeroDivisionError: division by zero" in text


def test_a_timeout_says_it_was_killed_and_why(adapter_client: SandboxClient) -> None:
    outcome = ToolDispatcher(adapter_client).dispatch_outcome(
        "execute_code", {"code": "while True: pass", "timeout_s": 1})
    assert outcome.is_error
    assert outcome.result is not None
    assert outcome.result.status is Status.TIMEOUT
    lines = outcome.text.splitlines()
    assert lines[0] == "Status: killed: timed out (it ran past the wall-time limit of 1 s)"
    assert lines[1] == "Reason: killed at the wall-time limit of 1000 ms"
    assert lines[2].startswith("What to do: make the program faster")
    assert "pass a larger timeout_s" in lines[2]
    assert lines[3] == "Exit code: none (killed by SIGKILL, signal 9)"


def test_the_output_and_memory_limits_are_explained(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client, limits=Limits(output_bytes=4096, memory_bytes=64 * 2**20))
    text = dispatcher.dispatch("execute_code", {"code": "while True: print('x' * 100)"})
    assert text.startswith("Status: killed: stdout and stderr together passed the output limit of 4 KiB\n")
    assert "What to do: print less" in text
    text = dispatcher.dispatch("execute_code", {"code": "x = bytearray(2**30)"})
    assert text.startswith("Status: killed: it ran out of memory (limit 64 MiB)\n")
    assert "OOM killer" in text


def test_long_output_keeps_its_head_and_tail(adapter_client: SandboxClient) -> None:
    full = "\n".join(str(i) for i in range(5000)) + "\n"
    dispatcher = ToolDispatcher(adapter_client, max_output_chars=1000)
    outcome = dispatcher.dispatch_outcome("execute_code", {
        "code": "import sys\nprint('\\n'.join(str(i) for i in range(5000)))\nprint('E' * 3000, file=sys.stderr)"})
    assert outcome.result is not None
    assert outcome.result.stdout == full
    stdout = outcome.text.split("<stdout>\n", 1)[1].split("</stdout>", 1)[0]
    assert stdout.startswith("0\n1\n2\n3\n")
    assert stdout.endswith("4997\n4998\n4999\n")
    assert f"\n[... {len(full) - 1000} more characters truncated ...]\n" in stdout
    assert stdout == truncate_middle(full, 1000) + ("" if full.endswith("\n") else "\n")
    assert "\n[... 2001 more characters truncated ...]\n" in outcome.text  # stderr: 3001 characters
    assert len(outcome.text) < 2600


def test_a_statically_refused_program(adapter_client: SandboxClient) -> None:
    outcome = ToolDispatcher(adapter_client).dispatch_outcome("execute_code", {"code": "import ctypes"})
    assert outcome.is_error
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.text == (
        "Status: refused: the sandbox's checks rejected the code before running it (nothing ran)\n"
        "- code: line 1, column 8: import of 'ctypes' is denied [denied_import]\n"
        "What to do: rewrite the program without what is listed above (the same code will be refused again); "
        "some modules, calls and commands are not allowed in this sandbox."
    )


def test_a_timeout_above_the_ceiling_is_named_in_the_tools_terms(adapter_client: SandboxClient) -> None:
    text = ToolDispatcher(adapter_client).dispatch("execute_code", {"code": "print(1)", "timeout_s": 100_000})
    assert text.startswith("Status: refused: the request was invalid (nothing ran)\n")
    assert "- timeout_s (sent as limits.wall_time_ms, in milliseconds): 100000000 is above the server's ceiling" in text


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"language": "python"}, "- 'code' is required: the program to run, as a string"),
        ({"code": "print(1)", "language": "cobol"},
         "- 'language' must be one of python, javascript, bash; got \"cobol\""),
        ('{"code": "print(1)", ', "- the arguments are not valid JSON (Expecting property name enclosed in "
                                   "double quotes"),
    ],
    ids=["missing-code", "unknown-language", "unparsable-json"],
)
def test_bad_arguments_come_back_as_text(adapter_client: SandboxClient, arguments: object, expected: str) -> None:
    outcome = ToolDispatcher(adapter_client).dispatch_outcome("execute_code", arguments)  # type: ignore[arg-type]
    assert outcome.is_error
    assert outcome.result is None
    assert outcome.error is None
    assert outcome.text.startswith("Status: invalid arguments for execute_code (nothing ran)\n")
    assert expected in outcome.text
    assert outcome.text.endswith("What to do: call execute_code again with corrected arguments.")


def test_an_unknown_tool_name_comes_back_as_text(adapter_client: SandboxClient) -> None:
    outcome = ToolDispatcher(adapter_client).dispatch_outcome("run_python", {"code": "print(1)"})
    assert outcome.is_error
    assert outcome.text == ("Status: unknown tool 'run_python' (nothing ran)\n"
                            "What to do: the tool that runs code is 'execute_code'; call it instead.")


def test_session_and_limits_come_from_the_dispatcher(adapter_server: RunningServer,
                                                     adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client, session_id="agent-7", limits=Limits(wall_time_s=4, cpu_time_s=3))
    assert (dispatcher.session_id, dispatcher.limits, dispatcher.name) == (
        "agent-7", Limits(wall_time_s=4, cpu_time_s=3), TOOL_NAME)
    outcome = dispatcher.dispatch_outcome("execute_code", {"code": "print(1)"})
    assert outcome.result is not None
    assert (outcome.result.limits.wall_time_s, outcome.result.limits.cpu_time_s) == (4.0, 3.0)
    # timeout_s replaces the wall-time limit only.
    outcome = dispatcher.dispatch_outcome("execute_code", {"code": "print(1)", "timeout_s": 2})
    assert outcome.result is not None
    assert (outcome.result.limits.wall_time_s, outcome.result.limits.cpu_time_s) == (2.0, 3.0)
    assert adapter_server.app.stores is not None
    record = adapter_server.app.stores.audit.get(outcome.result.execution_id)
    assert record is not None
    assert record.session_id == "agent-7"


def test_invalid_dispatcher_settings_are_refused(adapter_client: SandboxClient) -> None:
    with pytest.raises(ValueError, match="max_output_chars"):
        ToolDispatcher(adapter_client, max_output_chars=0)
    with pytest.raises(TypeError, match="limits"):
        ToolDispatcher(adapter_client, limits={"wall_time_s": 1})  # type: ignore[arg-type]


def test_the_hosts_own_mistake_still_raises(adapter_server: RunningServer) -> None:
    client = SandboxClient(adapter_server.target)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        ToolDispatcher(client).dispatch("execute_code", {"code": "print(1)"})


async def test_the_async_dispatcher(adapter_server: RunningServer) -> None:
    async with AsyncSandboxClient(adapter_server.target, timeout=60) as client:
        dispatcher = AsyncToolDispatcher(client, session_id="async-agent")
        ok = await dispatcher.dispatch_outcome("execute_code", '{"code": "print(40 + 2)"}')
        assert not ok.is_error
        assert "<stdout>\n42\n</stdout>" in ok.text
        refused = await dispatcher.dispatch("execute_code", {"code": "import ctypes"})
        assert refused.startswith("Status: refused: the sandbox's checks rejected the code")
        bad = await dispatcher.dispatch("execute_code", {})
        assert "'code' is required" in bad
        message = await dispatcher.handle_anthropic_tool_use(
            {"type": "tool_use", "id": "toolu_1", "name": "execute_code", "input": {"code": "exit(4)"}})
        assert message["is_error"] is True
        assert "Exit code: 4" in message["content"]


# -- refusals from the server's policy -------------------------------------------------------------------------------


def test_a_rate_limit_is_explained_with_when_to_retry(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "rate: {session_requests_per_minute: 1}") as srv, \
            SandboxClient(srv.target) as client:
        dispatcher = ToolDispatcher(client, session_id="chatty")
        assert not dispatcher.dispatch_outcome("execute_code", {"code": "print(1)"}).is_error
        outcome = dispatcher.dispatch_outcome("execute_code", {"code": "print(2)"})
    assert outcome.is_error
    assert isinstance(outcome.error, ResourceExhaustedError)
    lines = outcome.text.splitlines()
    assert lines[0] == "Status: refused: a rate limit or quota was reached (nothing ran)"
    assert lines[1].startswith("Reason: rate limit exceeded")
    assert any(line.startswith("- ") and "chatty" in line for line in lines)
    assert lines[-1].startswith("What to do: wait ")
    assert "before calling execute_code again" in lines[-1]


def test_a_spent_budget_is_explained(tmp_path: Path) -> None:
    policy = "pricing: {per_execution: 1.0}\nbudget: {per_session: 1}"
    with server_with_policy(tmp_path, policy) as srv, SandboxClient(srv.target) as client:
        dispatcher = ToolDispatcher(client, session_id="spender")
        assert not dispatcher.dispatch_outcome("execute_code", {"code": "print(1)"}).is_error
        outcome = dispatcher.dispatch_outcome("execute_code", {"code": "print(2)"})
    assert outcome.is_error
    lines = outcome.text.splitlines()
    assert lines[0] == "Status: refused: the spending budget for running code is used up (nothing ran)"
    assert "- session:default/spender/budget.per_session: " in outcome.text
    assert lines[-1] == ("What to do: do not retry: no more code can run in this session. "
                         "Finish without running code.")


def test_quarantine_is_explained(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "") as srv, SandboxClient(srv.target) as client:
        dispatcher = ToolDispatcher(client, session_id="attacker")
        for code in ("import ctypes", "import socket", "__import__('os')"):
            assert "checks rejected the code" in dispatcher.dispatch("execute_code", {"code": code})
        outcome = None
        for _ in range(100):  # the incident is opened asynchronously
            outcome = dispatcher.dispatch_outcome("execute_code", {"code": "print('harmless')"})
            if outcome.error is not None:
                break
    assert outcome is not None
    assert isinstance(outcome.error, PermissionDeniedError)
    lines = outcome.text.splitlines()
    assert lines[0] == "Status: refused: quarantined by the sandbox's incident response (nothing ran)"
    assert "quarantined by incident response" in lines[1]
    assert lines[2].startswith("What to do: do not retry")


@pytest.mark.parametrize(
    ("error", "first", "last"),
    [
        (ResourceExhaustedError("the queue is full", code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                                details=ErrorDetails(reason="QUEUE_FULL", retry_after=1.5)),
         "Status: refused: the sandbox is busy (nothing ran)", "What to do: retry after 1.5 s."),
        (ResourceExhaustedError("budget", code=grpc.StatusCode.RESOURCE_EXHAUSTED, details=ErrorDetails(
            reason="BUDGET_EXCEEDED", retry_after=7200.0,
            quota_violations=(QuotaViolation("tenant:t/budget.per_day", "5 spent or held of 5"),))),
         "Status: refused: the spending budget for running code is used up (nothing ran)",
         "What to do: no more code can run until the budget renews in 2.0 h; finish the task without running "
         "code, or tell the user."),
        (PermissionDeniedError("language 'bash' is disabled", code=grpc.StatusCode.PERMISSION_DENIED,
                               details=ErrorDetails(reason="LANGUAGE_DISABLED")),
         "Status: refused: this language is disabled for now (nothing ran)", "What to do: use another language."),
        (UnavailableError("backend down", code=grpc.StatusCode.UNAVAILABLE, details=ErrorDetails(retry_after=2.0)),
         "Status: not run: the sandbox is unavailable right now",
         "What to do: retry after 2.0 s; if it keeps failing, tell the user the code-execution tool is down."),
        (AuthenticationError("unknown key", code=grpc.StatusCode.UNAUTHENTICATED),
         "Status: refused: the sandbox did not accept this application's credentials (nothing ran)",
         "What to do: do not retry; this is a configuration problem only the user can fix. Tell the user the "
         "code-execution tool is not set up correctly."),
        (ServerError("internal error", code=grpc.StatusCode.INTERNAL),
         "Status: error: the sandbox failed to handle the request",
         "What to do: retry once; if it fails again, tell the user the code-execution tool has a problem."),
    ],
    ids=["queue-full", "day-budget", "language-disabled", "unavailable", "unauthenticated", "internal"],
)
def test_other_refusals_say_what_to_do(error: Exception, first: str, last: str) -> None:
    assert isinstance(error, ServerError | ResourceExhaustedError | PermissionDeniedError | UnavailableError
                      | AuthenticationError)
    lines = format_error(error).splitlines()
    assert (lines[0], lines[-1]) == (first, last)


# -- provider messages -----------------------------------------------------------------------------------------------


def test_the_openai_tool_message(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client)
    call = {"id": "call_abc", "type": "function",
            "function": {"name": "execute_code", "arguments": '{"code": "print(5)"}'}}
    message = dispatcher.handle_openai_tool_call(call)
    assert set(message) == {"role", "tool_call_id", "content"}
    assert (message["role"], message["tool_call_id"]) == ("tool", "call_abc")
    assert "<stdout>\n5\n</stdout>" in message["content"]
    # The SDK's objects carry the same fields as attributes.
    sdk_call = SimpleNamespace(id="call_def", type="function",
                               function=SimpleNamespace(name="execute_code", arguments='{"code": "print(6)"}'))
    message = dispatcher.handle_openai_tool_call(sdk_call)
    assert message["tool_call_id"] == "call_def"
    assert "<stdout>\n6\n</stdout>" in message["content"]
    assert openai_tool_message(sdk_call, "text") == {"role": "tool", "tool_call_id": "call_def", "content": "text"}


def test_the_openai_responses_output(adapter_client: SandboxClient) -> None:
    item = {"type": "function_call", "call_id": "call_1", "name": "execute_code", "arguments": '{"code": "x"}'}
    output = ToolDispatcher(adapter_client).handle_openai_responses_call(item)
    assert set(output) == {"type", "call_id", "output"}
    assert (output["type"], output["call_id"]) == ("function_call_output", "call_1")
    assert "NameError" in output["output"]
    assert openai_responses_tool_output(item, "t") == {"type": "function_call_output", "call_id": "call_1",
                                                       "output": "t"}


def test_the_anthropic_tool_result(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client)
    block = {"type": "tool_use", "id": "toolu_01", "name": "execute_code", "input": {"code": "print('hi')"}}
    result = dispatcher.handle_anthropic_tool_use(block)
    assert set(result) == {"type", "tool_use_id", "content", "is_error"}
    assert (result["type"], result["tool_use_id"], result["is_error"]) == ("tool_result", "toolu_01", False)
    assert "<stdout>\nhi\n</stdout>" in result["content"]
    refused = dispatcher.handle_anthropic_tool_use(
        SimpleNamespace(type="tool_use", id="toolu_02", name="execute_code", input={"code": "import ctypes"}))
    assert (refused["tool_use_id"], refused["is_error"]) == ("toolu_02", True)
    assert refused["content"].startswith("Status: refused")
    assert anthropic_tool_result(block, "t", is_error=True) == {
        "type": "tool_result", "tool_use_id": "toolu_01", "content": "t", "is_error": True}


def test_a_tool_call_without_an_id_is_the_hosts_mistake(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client)
    with pytest.raises(ValueError, match="'id'"):
        dispatcher.handle_openai_tool_call({"function": {"name": "execute_code", "arguments": "{}"}})
    with pytest.raises(ValueError, match="'id'"):
        anthropic_tool_result({"name": "execute_code"}, "text")
    with pytest.raises(ValueError, match="'call_id'"):
        openai_responses_tool_output({"id": "fc_1"}, "text")


# -- truncation ------------------------------------------------------------------------------------------------------


def test_truncate_middle() -> None:
    assert truncate_middle("abc", 3) == "abc"
    assert truncate_middle("", 1) == ""
    assert truncate_middle("0123456789", 4) == "01\n[... 6 more characters truncated ...]\n89"
    assert truncate_middle("0123456789", 5) == "012\n[... 5 more characters truncated ...]\n89"


# -- the network the host gives the sandboxes ------------------------------------------------------------------------


def test_the_description_says_what_the_network_allows() -> None:
    assert tool_description(network=None) == TOOL_DESCRIPTION
    assert openai_tool(network=None) == openai_tool()
    offline = tool_description(network=Network.none())
    assert "The sandbox has no network access, and nothing can be installed" in offline
    assert tool_description(network=Network.allowlist()) == offline  # an allow-list without rules reaches nothing
    two = Network.allowlist(EgressRule("api.example.com", [443]), ("*.example.org", [443, 80]))
    allowed = tool_description(network=two)
    assert ("The sandbox's network reaches only api.example.com (port 443) and *.example.org (ports 80 and 443), "
            "over HTTP and HTTPS through the proxy set in its environment, and nothing can be installed") in allowed
    assert "unless its operator" not in allowed
    for shaped in (openai_tool(network=two)["function"], openai_responses_tool(network=two),
                   anthropic_tool(network=two)):
        assert shaped["description"] == allowed
    assert anthropic_tool(description="Run code.", network=two)["description"] == "Run code."  # the host's own wins
    for tools in (openai_tools(network=two), openai_responses_tools(network=two), anthropic_tools(network=two)):
        text = json.dumps(tools)
        assert text.count("api.example.com (port 443)") == 2  # execute_code and create_session
        assert "unless its operator" not in text


def test_a_dispatcher_offers_its_tools_described_for_its_network(adapter_client: SandboxClient) -> None:
    default = ToolDispatcher(adapter_client)
    assert default.network is None
    assert default.tool_specs() == tool_specs()
    assert default.openai_tools() == openai_tools()
    assert default.openai_responses_tools() == openai_responses_tools()
    assert default.anthropic_tools() == anthropic_tools()
    dispatcher = ToolDispatcher(adapter_client, network=NARROWED, name="run", session_tools=False)
    assert dispatcher.network == NARROWED
    (spec,) = dispatcher.tool_specs()
    assert (spec.name, spec.description) == ("run", tool_description(network=NARROWED))
    assert "api.example.test (port 443)" in spec.description
    # The model cannot choose the network: no tool takes it, and an argument naming it runs nothing.
    for each in ToolDispatcher(adapter_client, network=NARROWED).tool_specs():
        assert "network" not in each.parameters["properties"]
    outcome = dispatcher.dispatch_outcome("run", {"code": "print(1)", "network": {"mode": "allowlist"}})
    assert outcome.is_error
    assert outcome.result is None
    assert "unknown argument 'network'" in outcome.text


def test_a_client_of_the_hosts_own_without_network_works_as_before(adapter_client: SandboxClient) -> None:
    # An Executor written before network existed: the dispatcher passes it only when it has one.
    def execute(code: str, *, language: str, stdin: str, limits: Limits | None, session_id: str,
                timeout: float | None) -> ExecutionResult:
        return adapter_client.execute(code, language=language, stdin=stdin, limits=limits, session_id=session_id,
                                      timeout=timeout)

    dispatcher = ToolDispatcher(SimpleNamespace(execute=execute))
    assert "<stdout>\n42\n</stdout>" in dispatcher.dispatch("execute_code", {"code": "print(6*7)"})


def test_invalid_network_settings_are_refused(adapter_client: SandboxClient) -> None:
    with pytest.raises(TypeError, match="network must be a Network"):
        ToolDispatcher(adapter_client, network={"mode": "none"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a session's network is set when it is created"):
        ToolDispatcher(adapter_client, session_id="ses_" + "a" * 32, network=Network.none())
    ToolDispatcher(adapter_client, session_id="ses_" + "a" * 32)  # without a network, as before


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed"), (Network.none(), "none")],
                         ids=["default", "narrowed", "none"])
def test_the_dispatchers_network_is_every_executions(network_server: RunningServer, network_client: SandboxClient,
                                                     upstream_port: int, network: Network | None,
                                                     seen: str) -> None:
    dispatcher = ToolDispatcher(network_client, session_id="net-sync", network=network)
    outcome = dispatcher.dispatch_outcome("execute_code", {"code": network_probe(upstream_port), "language": "bash"})
    assert not outcome.is_error, outcome.text
    assert sandbox_network(outcome.text) == seen
    assert outcome.result is not None
    assert network_server.app.stores is not None
    record = network_server.app.stores.audit.get(outcome.result.execution_id)
    assert record is not None
    assert record.session_id == "net-sync"


def test_a_network_outside_the_tenants_is_refused_naming_the_rule(network_client: SandboxClient,
                                                                  upstream_port: int) -> None:
    outcome = ToolDispatcher(network_client, network=WIDER).dispatch_outcome(
        "execute_code", {"code": network_probe(upstream_port), "language": "bash"})
    assert outcome.is_error
    assert outcome.result is None
    assert isinstance(outcome.error, PermissionDeniedError)
    assert outcome.text.splitlines()[:2] == [
        "Status: refused: the sandbox's policy does not allow this request (nothing ran)", f"Reason: {WIDER_REFUSAL}"]


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed"), (Network.none(), "none")],
                         ids=["default", "narrowed", "none"])
async def test_the_async_dispatchers_network_is_every_executions(network_server: RunningServer,
                                                                 upstream_port: int, network: Network | None,
                                                                 seen: str) -> None:
    async with AsyncSandboxClient(network_server.target, timeout=60) as client:
        dispatcher = AsyncToolDispatcher(client, network=network)
        assert dispatcher.network == network
        outcome = await dispatcher.dispatch_outcome(
            "execute_code", {"code": network_probe(upstream_port), "language": "bash"})
        assert not outcome.is_error, outcome.text
        assert sandbox_network(outcome.text) == seen
        refused = await AsyncToolDispatcher(client, network=WIDER).dispatch_outcome(
            "execute_code", {"code": "echo hi", "language": "bash"})
        assert isinstance(refused.error, PermissionDeniedError)
        assert WIDER_REFUSAL in refused.text
