"""The session tools of the function-calling adapter: their schemas for both providers, their arguments, the
dispatchers' round trip through a real server's sessions (sync and asyncio), the texts a model sees (values,
errors, rich outputs, files, a session that is gone), and the image helpers."""

from __future__ import annotations

import base64
import json
import struct
import uuid
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from adapter_helpers import NARROWED, WIDER, WIDER_REFUSAL, network_probe, sandbox_network

from sandbox_client import (
    AsyncSandboxClient,
    DisplayData,
    ExecutionResult,
    Limits,
    Network,
    PermissionDeniedError,
    SandboxClient,
    SessionNotFoundError,
    Status,
)
from sandbox_client._errors import ErrorDetails
from sandbox_client._models import ResourceUsage
from sandbox_client.adapters.tool import (
    CLOSE_SESSION,
    CREATE_SESSION,
    FILE_ACTIONS,
    LANGUAGES,
    RUN_IN_SESSION,
    SESSION_FILES,
    SESSION_LABEL,
    SESSION_TOOL_NAMES,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    AsyncToolDispatcher,
    CloseSessionArguments,
    CreateSessionArguments,
    RunInSessionArguments,
    SessionFilesArguments,
    ToolArgumentError,
    ToolDispatcher,
    anthropic_image_blocks,
    anthropic_tool,
    anthropic_tools,
    format_session_error,
    format_session_result,
    image_outputs,
    openai_image_parts,
    openai_responses_image_parts,
    openai_responses_tool,
    openai_responses_tools,
    openai_tool,
    openai_tools,
    parameters_schema,
    parse_tool_arguments,
    session_tool_specs,
    tool_specs,
)
from sandbox_server.testing import RunningServer

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
NEVER_EXISTED = "ses_" + "a" * 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _label() -> str:
    return f"adapter-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conversation(adapter_client: SandboxClient) -> Iterator[str]:
    """A conversation label of its own; the test must leave none of its sessions open."""
    label = _label()
    yield label
    assert list(adapter_client.list_sessions(labels={SESSION_LABEL: label})) == [], "a test left a session open"


def _session_id(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("session_id: ")]
    return line.removeprefix("session_id: ")


def _assert_png(data: bytes) -> tuple[int, int]:
    """A well-formed PNG (signature, and an IHDR chunk whose CRC holds): its width and height."""
    assert data.startswith(PNG_SIGNATURE)
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    body = data[16:16 + length]
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert zlib.crc32(kind + body) == crc
    width, height = struct.unpack(">II", body[:8])
    return width, height


# -- the schemas -----------------------------------------------------------------------------------------------------


def test_every_tool_has_a_name_a_description_and_a_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    specs = tool_specs()
    assert [spec.name for spec in specs] == [TOOL_NAME, *SESSION_TOOL_NAMES]
    assert SESSION_TOOL_NAMES == ("create_session", "run_in_session", "session_files", "close_session")
    for spec in specs:
        assert spec.name
        assert len(spec.description) > 100, spec.name
        jsonschema.Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["type"] == "object"
        assert spec.parameters["additionalProperties"] is False
        for name, prop in spec.parameters["properties"].items():
            assert prop.get("description"), (spec.name, name)
        assert set(spec.parameters.get("required", [])) <= set(spec.parameters["properties"])
    assert tool_specs(sessions=False) == (specs[0],)
    json.dumps([openai_tools(), openai_responses_tools(), anthropic_tools()])  # what the SDKs send


def test_the_provider_variants_agree() -> None:
    chat, responses, anthropic = openai_tools(), openai_responses_tools(), anthropic_tools()
    assert len(chat) == len(responses) == len(anthropic) == 5
    for spec, c, r, a in zip(tool_specs(), chat, responses, anthropic, strict=True):
        assert c == {"type": "function",
                     "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters}}
        assert r == {"type": "function", "name": spec.name, "description": spec.description,
                     "parameters": spec.parameters}
        assert a == {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}
    # execute_code is the very tool the single-tool functions give, unchanged.
    assert chat[0] == openai_tool()
    assert responses[0] == openai_responses_tool()
    assert anthropic[0] == anthropic_tool()
    assert anthropic[0]["input_schema"] == parameters_schema()
    assert anthropic[0]["description"] == TOOL_DESCRIPTION
    assert [t["name"] for t in anthropic_tools(sessions=False)] == [TOOL_NAME]


def test_each_call_returns_fresh_schemas() -> None:
    first = session_tool_specs()
    first[1].parameters["properties"]["language"]["enum"].append("cobol")
    assert session_tool_specs()[1].parameters["properties"]["language"]["enum"] == list(LANGUAGES)


def test_the_schemas_say_what_a_call_may_send() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schemas = {spec.name: jsonschema.Draft202012Validator(spec.parameters) for spec in session_tool_specs()}
    sid = NEVER_EXISTED
    assert schemas[CREATE_SESSION].is_valid({})
    assert schemas[CREATE_SESSION].is_valid({"languages": ["python", "bash"], "idle_timeout_s": 300})
    assert not schemas[CREATE_SESSION].is_valid({"languages": ["cobol"]})
    assert not schemas[CREATE_SESSION].is_valid({"idle_timeout_s": 0})
    assert schemas[RUN_IN_SESSION].is_valid({"session_id": sid, "code": "x = 1"})
    assert schemas[RUN_IN_SESSION].is_valid({"session_id": sid, "code": "ls", "language": "bash", "timeout_s": 2})
    assert not schemas[RUN_IN_SESSION].is_valid({"code": "x = 1"})  # no session_id
    assert not schemas[RUN_IN_SESSION].is_valid({"session_id": sid, "code": "x", "timeout": 3})
    for action in FILE_ACTIONS:
        assert schemas[SESSION_FILES].is_valid({"session_id": sid, "action": action, "path": "a.txt"})
    assert not schemas[SESSION_FILES].is_valid({"session_id": sid, "action": "move"})
    assert schemas[CLOSE_SESSION].is_valid({"session_id": sid})
    assert not schemas[CLOSE_SESSION].is_valid({})


def test_the_descriptions_tell_the_model_how_sessions_behave() -> None:
    descriptions = {spec.name: spec.description.lower() for spec in session_tool_specs()}
    for fact in ("session_id", "persist", "closes by itself", "close_session", "no network", "execute_code"):
        assert fact in descriptions[CREATE_SESSION], fact
    for fact in ("state persists", "only the new code", "interrupted", "kernel was restarted", "create_session",
                 "out[n]", "traceback"):
        assert fact in descriptions[RUN_IN_SESSION], fact
    for fact in ("upload", "download", "list", "delete", "relative", "recursive"):
        assert fact in descriptions[SESSION_FILES], fact
    assert "discarded" in descriptions[CLOSE_SESSION]


# -- arguments -------------------------------------------------------------------------------------------------------


def test_arguments_of_the_session_tools() -> None:
    sid = NEVER_EXISTED
    assert parse_tool_arguments(CREATE_SESSION, None) == CreateSessionArguments()
    assert parse_tool_arguments(CREATE_SESSION, '{"languages": ["PY", "sh", "python"], "idle_timeout_s": "60"}') == (
        CreateSessionArguments(languages=("python", "bash"), idle_timeout_s=60))
    assert parse_tool_arguments(RUN_IN_SESSION, {"session_id": f" {sid} ", "code": "1", "language": "js",
                                                 "timeout_s": 2}) == (
        RunInSessionArguments(session_id=sid, code="1", language="javascript", timeout_s=2.0))
    assert parse_tool_arguments(SESSION_FILES, {"session_id": sid, "action": "LIST", "path": "/work/data",
                                                "recursive": "true"}) == (
        SessionFilesArguments(session_id=sid, action="list", path="data", recursive=True))
    assert parse_tool_arguments(SESSION_FILES, {"session_id": sid, "action": "upload", "path": "./a.txt",
                                                "content": ""}) == (
        SessionFilesArguments(session_id=sid, action="upload", path="a.txt", content=""))
    assert parse_tool_arguments(CLOSE_SESSION, {"session_id": sid}) == CloseSessionArguments(session_id=sid)
    with pytest.raises(ValueError, match="not a tool"):
        parse_tool_arguments("rm_rf", {})


@pytest.mark.parametrize(
    ("name", "arguments", "problem"),
    [
        (CREATE_SESSION, {"languages": []}, "'languages' must be a non-empty array"),
        (CREATE_SESSION, {"languages": ["cobol"]}, "'languages' may hold only python, javascript, bash"),
        (CREATE_SESSION, {"idle_timeout_s": 1.5}, "'idle_timeout_s' must be a whole, positive number"),
        (CREATE_SESSION, {"idle_timeout": 3}, "unknown argument 'idle_timeout' (did you mean 'idle_timeout_s'?)"),
        (RUN_IN_SESSION, {"code": "x"}, "'session_id' is required"),
        (RUN_IN_SESSION, {"session_id": "chat-1", "code": "x"}, "'session_id' must be a session id"),
        (RUN_IN_SESSION, {"session_id": NEVER_EXISTED}, "'code' is required"),
        (RUN_IN_SESSION, {"session_id": NEVER_EXISTED, "code": "x", "timeout_s": -1}, "'timeout_s' must be"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED}, "'action' is required"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "move"}, "'action' must be one of"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "download"}, "'path' is required for download"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "upload", "path": "a"}, "'content' is required"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "list", "content": "x"}, "'content' is for action"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "delete", "path": "/work"}, "must name a file"),
        (SESSION_FILES, {"session_id": NEVER_EXISTED, "action": "list", "recursive": 2}, "'recursive' must be"),
        (CLOSE_SESSION, '["ses_x"]', "the arguments must be a JSON object, not an array"),
        (CLOSE_SESSION, '{"session_id": ', "the arguments are not valid JSON"),
    ],
)
def test_bad_session_arguments_are_named(name: str, arguments: object, problem: str) -> None:
    with pytest.raises(ToolArgumentError) as info:
        parse_tool_arguments(name, arguments)  # type: ignore[arg-type]
    assert any(problem in p for p in info.value.problems), info.value.problems


# -- the dispatcher's round trip against a real server ---------------------------------------------------------------


def test_a_session_round_trip(adapter_client: SandboxClient, conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as dispatcher:
        assert dispatcher.session_tools
        created = dispatcher.dispatch_outcome("create_session", {})
        assert not created.is_error
        sid = created.session_id
        assert created.text.startswith("Status: session started\n")
        assert _session_id(created.text) == sid
        assert f'pass session_id "{sid}" to run_in_session' in created.text
        assert dispatcher.sessions == (sid,)
        assert adapter_client.get_session(sid).labels[SESSION_LABEL] == conversation

        first = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "x = 41"})
        assert not first.is_error
        assert first.text.startswith("Status: succeeded\n")
        assert "Out[" not in first.text
        second = dispatcher.dispatch_outcome("run_in_session", json.dumps({"session_id": sid, "code": "x + 1"}))
        assert not second.is_error
        assert "\nOut[2]: 42\n" in second.text
        assert second.result is not None
        assert second.result.value == "42"
        assert second.session_id == sid

        uploaded = dispatcher.dispatch("session_files", {"session_id": sid, "action": "upload",
                                                         "path": "notes/todo.txt", "content": "first\nsecond\n"})
        assert uploaded.startswith("Status: uploaded notes/todo.txt (13 bytes)\n")
        read = dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "open('notes/todo.txt').read()"})
        assert "Out[3]: 'first\\nsecond\\n'" in read
        dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "echo $((6*7)) > answer.txt",
                                               "language": "bash"})
        listing = dispatcher.dispatch("session_files", {"session_id": sid, "action": "list", "recursive": True})
        assert listing.splitlines() == [
            "Status: listed the top of the working directory (recursively): 3 entries",
            "- answer.txt (3 bytes)", "- notes/ (directory)", "- notes/todo.txt (13 bytes)"]
        downloaded = dispatcher.dispatch("session_files", {"session_id": sid, "action": "download",
                                                           "path": "answer.txt"})
        assert downloaded == ('Status: downloaded answer.txt (3 bytes, text)\n<file path="answer.txt">\n42\n</file>')
        deleted = dispatcher.dispatch("session_files", {"session_id": sid, "action": "delete", "path": "notes",
                                                        "recursive": True})
        assert deleted == "Status: deleted notes"
        missing = dispatcher.dispatch_outcome("session_files", {"session_id": sid, "action": "download",
                                                                "path": "notes/todo.txt"})
        assert missing.is_error
        assert missing.text.startswith("Status: not found: 'notes/todo.txt' is not in the session's working "
                                       "directory")

        closed = dispatcher.dispatch_outcome("close_session", {"session_id": sid})
        assert not closed.is_error
        assert closed.text.startswith(f"Status: closed the session {sid}: its sandbox, variables and files are "
                                      "gone\nUsage: ")
        assert not dispatcher.sessions

        gone = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "x"})
        assert gone.is_error
        assert isinstance(gone.error, SessionNotFoundError)
        assert gone.text == (
            f"Status: the session {sid} is gone: it was closed (nothing ran)\n"
            "What to do: its variables and files are lost; call create_session to start a new one, then set up "
            "again what you need (imports, variables, files).")
        again = dispatcher.dispatch_outcome("close_session", {"session_id": sid})
        assert not again.is_error
        assert again.text.startswith(f"Status: the session {sid} was already closed: it was closed\n")


def test_a_python_error_and_its_traceback(adapter_client: SandboxClient, conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as dispatcher:
        sid = dispatcher.dispatch_outcome("create_session", {"languages": ["python"]}).session_id
        dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "def f(n):\n    return 1 / n"})
        outcome = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "print('before')\nf(0)"})
        assert outcome.is_error
        text = outcome.text
        assert text.startswith("Status: failed: the code raised ZeroDivisionError\n"
                               "What to do: read the error below, fix the code and run only the fixed part again")
        assert "\nError: ZeroDivisionError: division by zero\n<traceback>\n" in text
        traceback = text.split("<traceback>\n", 1)[1].split("\n</traceback>", 1)[0]
        assert "----> 2 f(0)" in traceback
        assert "return 1 / n" in traceback
        assert "-----------" not in traceback  # the rule lines are trimmed
        assert text.endswith("<stdout>\nbefore\n</stdout>\n<stderr></stderr>")  # the traceback is shown once
        # The kernel and its state survive the exception.
        assert "Out[3]: 3.0" in dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "3 / f(1)"})
        # Bash in a Python-only session is refused with the server's words.
        refused = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "ls",
                                                                 "language": "bash"})
        assert refused.is_error
        assert refused.text.startswith("Status: refused: the sandbox's policy does not allow this call (nothing "
                                       "ran)\nReason: language 'bash' is not one of this session's (python)\n")
        assert refused.text.endswith("or start a session that allows it with create_session.")
        # A path the workspace does not allow.
        bad_path = dispatcher.dispatch_outcome("session_files", {"session_id": sid, "action": "upload",
                                                                 "path": "../escape.txt", "content": "x"})
        assert bad_path.is_error
        assert bad_path.text.startswith("Status: refused: the path cannot be used (nothing was done)\n- path: ")


def test_an_interrupted_call_keeps_the_state(adapter_client: SandboxClient, conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as dispatcher:
        sid = dispatcher.dispatch_outcome("create_session", {}).session_id
        dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "kept = 'yes'"})
        outcome = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "while True: pass",
                                                                 "timeout_s": 1})
        assert outcome.is_error
        lines = outcome.text.splitlines()
        assert lines[0] == "Status: interrupted: timed out (it ran past the wall-time limit of 1 s)"
        assert lines[1].startswith("Reason: interrupted at the wall-time limit")
        assert "pass a larger timeout_s" in lines[2]
        assert "Interrupted at (the interrupt raised KeyboardInterrupt):" in outcome.text
        assert "Kernel: restarted" not in outcome.text
        assert "'yes'" in dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "kept"})


def test_rich_outputs_are_noted_and_images_become_content_blocks(adapter_client: SandboxClient,
                                                                  conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as dispatcher:
        sid = dispatcher.dispatch_outcome("create_session", {}).session_id
        figure = dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": PLOT})
        assert not figure.is_error
        assert figure.result is not None
        assert [o.mime_type for o in figure.result.outputs] == ["image/png"]
        assert "Rich outputs (1):\n- [image/png output, " in figure.text
        assert "KiB] <Figure size 640x480 with 1 Axes>\n" in figure.text

        (block,) = anthropic_image_blocks(figure.result)
        assert set(block) == {"type", "source"}
        assert block["type"] == "image"
        assert (block["source"]["type"], block["source"]["media_type"]) == ("base64", "image/png")
        png = base64.b64decode(block["source"]["data"], validate=True)
        assert png == figure.result.outputs[0].data
        width, height = _assert_png(png)
        assert width > 100
        assert height > 100
        (part,) = openai_image_parts(figure.result)
        assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + block["source"]["data"]}}
        (item,) = openai_responses_image_parts(figure.result)
        assert item == {"type": "input_image", "image_url": "data:image/png;base64," + block["source"]["data"]}
        assert image_outputs(figure.result, max_bytes=100) == []  # too large for the caller: left out

        # The dispatcher's handlers put them in the tool result when asked.
        tool_use = {"type": "tool_use", "id": "toolu_9", "name": "run_in_session",
                    "input": {"session_id": sid, "code": PLOT}}
        result = dispatcher.handle_anthropic_tool_use(tool_use, images=True)
        assert result["is_error"] is False
        text_block, image_block = result["content"]
        assert text_block["type"] == "text"
        assert text_block["text"].startswith("Status: succeeded\n")
        assert image_block["type"] == "image"
        _assert_png(base64.b64decode(image_block["source"]["data"]))
        assert isinstance(dispatcher.handle_anthropic_tool_use(tool_use)["content"], str)  # images off by default
        call = {"type": "function_call", "call_id": "call_9", "name": "run_in_session",
                "arguments": json.dumps({"session_id": sid, "code": PLOT})}
        output = dispatcher.handle_openai_responses_call(call, images=True)["output"]
        assert [p["type"] for p in output] == ["input_text", "input_image"]
        assert output[1]["image_url"].startswith("data:image/png;base64,iVBORw0KGgo")

        html = dispatcher.dispatch("run_in_session", {
            "session_id": sid, "code": "import pandas as pd\npd.DataFrame({'a': [1, 2]})"})
        assert "]:\n   a\n0  1\n1  2\n" in html
        assert "- [text/html output, " in html
        assert "the value shown as Out above, as text/html" in html
        shown = dispatcher.dispatch("run_in_session", {
            "session_id": sid,
            "code": "from IPython.display import HTML, JSON, display\n"
                    "display(JSON({'answer': 42}))\ndisplay(HTML('<p>Total: <b>42</b> &amp; more</p>'))"})
        assert '- [application/json output, 14 bytes] preview: {"answer": 42}' in shown
        assert "- [text/html output, 34 bytes] preview: Total: 42 & more" in shown
        assert anthropic_image_blocks(None) == []


def test_long_files_and_binary_files(adapter_client: SandboxClient, conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation, max_output_chars=200) as dispatcher:
        sid = dispatcher.dispatch_outcome("create_session", {}).session_id
        dispatcher.dispatch("run_in_session", {"session_id": sid, "code": (
            "open('long.txt', 'w').write(''.join(f'{i}\\n' for i in range(1000)))\n"
            "open('blob.bin', 'wb').write(bytes(range(256)) * 4)")})
        long = dispatcher.dispatch("session_files", {"session_id": sid, "action": "download", "path": "long.txt"})
        assert long.startswith("Status: downloaded long.txt (3.8 KiB, text)\n"
                               "Note: the file is long: only part of it is shown")
        body = long.split('<file path="long.txt">\n', 1)[1]
        assert body.startswith("0\n1\n2\n")
        assert body.endswith("998\n999\n</file>")
        assert "more characters truncated ..." in body
        binary = dispatcher.dispatch("session_files", {"session_id": sid, "action": "download", "path": "blob.bin"})
        assert binary.startswith("Status: downloaded blob.bin: 1 KiB of binary data (not UTF-8 text), not shown\n")


def test_bad_arguments_and_unknown_sessions_come_back_as_text(adapter_client: SandboxClient,
                                                              conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as dispatcher:
        bad = dispatcher.dispatch_outcome("run_in_session", {"session_id": "chat-1", "cod": "x"})
        assert bad.is_error
        assert bad.result is None
        assert bad.text.startswith("Status: invalid arguments for run_in_session (nothing ran)\n")
        assert "- unknown argument 'cod' (did you mean 'code'?)" in bad.text
        assert "- 'session_id' must be a session id as create_session returned it" in bad.text
        assert bad.text.endswith("What to do: call run_in_session again with corrected arguments.")
        bad = dispatcher.dispatch_outcome("session_files",
                                          json.dumps({"session_id": NEVER_EXISTED, "action": "rename"}))
        assert bad.text.startswith("Status: invalid arguments for session_files (nothing was done)\n")
        assert "'action' must be one of upload, download, list, delete" in bad.text
        bad = dispatcher.dispatch_outcome("create_session", {"languages": ["cobol"]})
        assert bad.is_error
        assert "'languages' may hold only python, javascript, bash" in bad.text
        typo = dispatcher.dispatch_outcome("run_in_sesion", {})
        assert typo.text == ("Status: unknown tool 'run_in_sesion' (nothing ran)\n"
                             "What to do: did you mean 'run_in_session'? Call it by that name.")
        # An id the server does not know: gone, in the server's words.
        unknown = dispatcher.dispatch_outcome("run_in_session", {"session_id": NEVER_EXISTED, "code": "1"})
        assert unknown.is_error
        assert unknown.text.startswith(f"Status: the session {NEVER_EXISTED} is gone: it does not exist")
        # A refusal of the tenant's policy, with advice of its own.
        too_long = dispatcher.dispatch_outcome("create_session", {"idle_timeout_s": 10**7})
        assert too_long.is_error
        assert too_long.text.startswith("Status: refused: the sandbox's policy does not allow this session")
        assert "idle_timeout_s=10000000 is above the sessions.idle_timeout_s.max" in too_long.text
        assert dispatcher.sessions == ()


def test_a_dispatcher_uses_only_its_conversations_sessions(adapter_client: SandboxClient,
                                                           conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation) as first:
        sid = first.dispatch_outcome("create_session", {}).session_id
        first.dispatch("run_in_session", {"session_id": sid, "code": "shared = 7"})
        # Another dispatcher of the same conversation (e.g. the next request's) can use it ...
        later = ToolDispatcher(adapter_client, session_id=conversation)
        assert "Out[2]: 7" in later.dispatch("run_in_session", {"session_id": sid, "code": "shared"})
        later.close_sessions()  # it did not start it: it leaves it open
        assert adapter_client.get_session(sid).id == sid
        # ... one of another conversation, or without one, cannot.
        for other in (ToolDispatcher(adapter_client, session_id=_label()), ToolDispatcher(adapter_client)):
            outcome = other.dispatch_outcome("run_in_session", {"session_id": sid, "code": "shared"})
            assert outcome.is_error
            assert outcome.text.startswith(f"Status: unknown session {sid} (nothing was done): it is not one of "
                                           "this conversation's sessions\n")
        # A session of the host's own, handed over.
        with adapter_client.session(labels={SESSION_LABEL: conversation}) as own:
            stranger = ToolDispatcher(adapter_client)
            stranger.adopt_session(own)
            assert "Out[1]: 2" in stranger.dispatch("run_in_session", {"session_id": own.id, "code": "1 + 1"})
            stranger.close_sessions()
            assert own.refresh().id == own.id  # adopted sessions are the host's to close
    # Leaving the first dispatcher's block closed the session it started.
    with pytest.raises(SessionNotFoundError):
        adapter_client.get_session(sid)


def test_the_number_of_open_sessions_is_capped(adapter_client: SandboxClient, conversation: str) -> None:
    with ToolDispatcher(adapter_client, session_id=conversation, max_sessions=1,
                        session_limits=Limits(wall_time_s=5)) as dispatcher:
        sid = dispatcher.dispatch_outcome("create_session", {"idle_timeout_s": 120}).session_id
        info = adapter_client.get_session(sid)
        assert (info.idle_timeout_s, info.limits.wall_time_s) == (120, 5.0)
        refused = dispatcher.dispatch_outcome("create_session", {})
        assert refused.is_error
        assert refused.text.startswith("Status: refused: you already have 1 open sessions, as many as this tool "
                                       f"allows (no session was started): {sid}\n")
        # One closed behind the dispatcher's back no longer counts.
        adapter_client.close_session(sid)
        replacement = dispatcher.dispatch_outcome("create_session", {})
        assert not replacement.is_error
        assert dispatcher.sessions == (replacement.session_id,)


def test_session_tools_can_be_turned_off(adapter_client: SandboxClient) -> None:
    dispatcher = ToolDispatcher(adapter_client, session_tools=False)
    assert not dispatcher.session_tools
    outcome = dispatcher.dispatch_outcome("create_session", {})
    assert outcome.text == ("Status: unknown tool 'create_session' (nothing ran)\n"
                            "What to do: the tool that runs code is 'execute_code'; call it instead.")
    # A client without sessions (anything with execute) gets the same.
    executor = SimpleNamespace(execute=adapter_client.execute)
    assert not ToolDispatcher(executor).session_tools
    with pytest.raises(ValueError, match="max_sessions"):
        ToolDispatcher(adapter_client, max_sessions=0)
    with pytest.raises(ValueError, match="session tool"):
        ToolDispatcher(adapter_client, name="run_in_session")


async def test_the_async_dispatcher_round_trip(adapter_server: RunningServer, conversation: str) -> None:
    async with AsyncSandboxClient(adapter_server.target, timeout=60) as client, \
            AsyncToolDispatcher(client, session_id=conversation) as dispatcher:
        created = await dispatcher.dispatch_outcome("create_session", {"languages": ["python", "bash"]})
        assert not created.is_error
        sid = created.session_id
        await dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "x = 41"})
        assert "\nOut[2]: 42\n" in await dispatcher.dispatch("run_in_session", {"session_id": sid, "code": "x + 1"})
        uploaded = await dispatcher.dispatch("session_files", {"session_id": sid, "action": "upload",
                                                               "path": "in.txt", "content": "hello"})
        assert uploaded.startswith("Status: uploaded in.txt (5 bytes)")
        listing = await dispatcher.dispatch("session_files", {"session_id": sid, "action": "list"})
        assert "- in.txt (5 bytes)" in listing
        downloaded = await dispatcher.dispatch("session_files", {"session_id": sid, "action": "download",
                                                                 "path": "in.txt"})
        assert downloaded.endswith('<file path="in.txt">\nhello\n</file>')
        message = await dispatcher.handle_anthropic_tool_use(
            {"type": "tool_use", "id": "toolu_2", "name": "run_in_session",
             "input": {"session_id": sid, "code": PLOT}}, images=True)
        assert [block["type"] for block in message["content"]] == ["text", "image"]
        closed = await dispatcher.dispatch("close_session", {"session_id": sid})
        assert closed.startswith(f"Status: closed the session {sid}")
        gone = await dispatcher.dispatch_outcome("run_in_session", {"session_id": sid, "code": "x"})
        assert gone.is_error
        assert gone.text.startswith(f"Status: the session {sid} is gone: it was closed (nothing ran)\n")
        bad = await dispatcher.dispatch("close_session", {})
        assert "'session_id' is required" in bad
        # One left open is closed by leaving the block.
        left_open = (await dispatcher.dispatch_outcome("create_session", {})).session_id
        assert dispatcher.sessions == (left_open,)


# -- the network of the sessions a dispatcher starts -----------------------------------------------------------------


def test_create_session_says_what_the_network_allows() -> None:
    assert session_tool_specs(network=None) == session_tool_specs()
    (create, *others) = session_tool_specs(network=NARROWED)
    assert ("The sandbox's network reaches only api.example.test (port 443), over HTTP and HTTPS through the proxy "
            "set in its environment, and installs only what the operator provides.") in create.description
    assert [spec.description for spec in others] == [spec.description for spec in session_tool_specs()[1:]]
    (offline, *_) = session_tool_specs(network=Network.none())
    assert "The sandbox has no network access, and installs only" in offline.description
    assert all("network" not in spec.parameters["properties"] for spec in session_tool_specs(network=NARROWED))


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed"), (Network.none(), "none")],
                         ids=["default", "narrowed", "none"])
def test_the_sessions_a_dispatcher_starts_get_its_network(network_client: SandboxClient, upstream_port: int,
                                                          network: Network | None, seen: str) -> None:
    label = _label()
    with ToolDispatcher(network_client, session_id=label, network=network) as dispatcher:
        created = dispatcher.dispatch_outcome(CREATE_SESSION, {"languages": ["bash"]})
        assert not created.is_error, created.text
        ran = dispatcher.dispatch_outcome(RUN_IN_SESSION, {"session_id": created.session_id, "language": "bash",
                                                           "code": network_probe(upstream_port)})
        assert not ran.is_error, ran.text
        assert sandbox_network(ran.text) == seen
    assert list(network_client.list_sessions(labels={SESSION_LABEL: label})) == []


def test_a_session_network_outside_the_tenants_is_refused_naming_the_rule(network_client: SandboxClient) -> None:
    label = _label()
    with ToolDispatcher(network_client, session_id=label, network=WIDER) as dispatcher:
        created = dispatcher.dispatch_outcome(CREATE_SESSION, {})
        assert created.is_error
        assert isinstance(created.error, PermissionDeniedError)
        assert created.text.splitlines()[:2] == [
            "Status: refused: the sandbox's policy does not allow this session (nothing was started)",
            f"Reason: {WIDER_REFUSAL}"]
        assert dispatcher.sessions == ()
    assert list(network_client.list_sessions(labels={SESSION_LABEL: label})) == []


@pytest.mark.parametrize(("network", "seen"), [(None, "tenant"), (NARROWED, "narrowed")], ids=["default", "narrowed"])
async def test_the_sessions_the_async_dispatcher_starts_get_its_network(
        network_server: RunningServer, upstream_port: int, network: Network | None, seen: str) -> None:
    async with AsyncSandboxClient(network_server.target, timeout=60) as client, \
            AsyncToolDispatcher(client, network=network) as dispatcher:
        created = await dispatcher.dispatch_outcome(CREATE_SESSION, {"languages": ["bash"]})
        assert not created.is_error, created.text
        ran = await dispatcher.dispatch_outcome(RUN_IN_SESSION, {
            "session_id": created.session_id, "language": "bash", "code": network_probe(upstream_port)})
        assert not ran.is_error, ran.text
        assert sandbox_network(ran.text) == seen
        refused = await AsyncToolDispatcher(client, network=WIDER).dispatch_outcome(CREATE_SESSION, {})
        assert isinstance(refused.error, PermissionDeniedError)
        assert WIDER_REFUSAL in refused.text


# -- the texts, from results the server would give ---------------------------------------------------------------------


def _result(**fields: Any) -> ExecutionResult:
    base: dict[str, Any] = {
        "execution_id": "exe_1", "status": Status.OK, "exit_code": 0, "signal": 0, "stdout_bytes": b"",
        "stderr_bytes": b"", "stdout_truncated": False, "stderr_truncated": False, "files": (),
        "files_truncated": False, "usage": ResourceUsage(1.0, 1.0, 2**20), "message": "", "limits": Limits(),
        "language": "python", "backend": "nsjail"}
    base.update(fields)
    return ExecutionResult(**base)


def test_a_restarted_kernel_and_warnings_are_stated_plainly() -> None:
    result = _result(status=Status.TIMEOUT, exit_code=1, limits=Limits(wall_time_s=2), kernel_restarted=True,
                     message="the kernel did not stop at the interrupt and was restarted",
                     warnings=("the same failing call ran 3 times in a row",), execution_count=7)
    lines = format_session_result(result).splitlines()
    assert lines[0] == "Status: killed: timed out (it ran past the wall-time limit of 2 s)"
    assert lines[1] == "Reason: the kernel did not stop at the interrupt and was restarted"
    assert lines[2] == ("Kernel: restarted during this call, so every Python variable, import and function of the "
                        "session is gone (the files in its working directory are kept).")
    assert lines[3] == "Warning: the same failing call ran 3 times in a row"
    assert lines[4].startswith("What to do: make the code faster")
    assert lines[4].endswith("; run the set-up code again (imports, variables) before going on.")


def test_rich_output_notes_are_short() -> None:
    svg = DisplayData("image/svg+xml", b"<svg/>" * 100, {"image/png": PNG_SIGNATURE + b"rest"})
    big_json = DisplayData("application/json", json.dumps({"k": "v" * 2000}).encode())
    result = _result(outputs=(svg, big_json), value="'x' * 3", execution_count=2)
    text = format_session_result(result)
    assert "Out[2]: 'x' * 3\n" in text
    assert "- [image/svg+xml output, 600 bytes]\n" in text
    note = next(line for line in text.splitlines() if line.startswith("- [application/json"))
    assert len(note) < 500
    assert note.endswith("...")
    # The PNG alternative of an SVG is the image a provider can take.
    assert image_outputs(result) == [("image/png", PNG_SIGNATURE + b"rest")]


def test_session_errors_in_words() -> None:
    idle = SessionNotFoundError("session is closed", code=grpc.StatusCode.NOT_FOUND, details=ErrorDetails(
        reason="SESSION_CLOSED", metadata={"close_reason": "idle_timeout", "resource_type": "session",
                                           "resource_name": NEVER_EXISTED}))
    text = format_session_error(idle)
    assert text.startswith(f"Status: the session {NEVER_EXISTED} is gone: it was idle (no call) for longer than its "
                           "idle timeout (nothing ran)\n")
    assert "call create_session to start a new one" in text
    spent = SessionNotFoundError("closed", code=grpc.StatusCode.NOT_FOUND, details=ErrorDetails(
        metadata={"close_reason": "budget_exceeded", "resource_type": "session"}))
    assert "do not start another session" in format_session_error(spent)
