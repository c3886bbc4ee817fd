"""The ``execute_code`` function-calling tool for OpenAI- and Anthropic-style APIs (no extra dependency).

    from sandbox_client import SandboxClient
    from sandbox_client.adapters.tool import ToolDispatcher, anthropic_tool, openai_tool

    tools = [openai_tool()]                       # or [anthropic_tool()] for the Messages API
    with SandboxClient("127.0.0.1:50051") as sbx:
        dispatcher = ToolDispatcher(sbx, session_id="conversation-1")
        # for each tool call the model makes:
        message = dispatcher.handle_openai_tool_call(tool_call)   # {"role": "tool", "tool_call_id", "content"}

The dispatcher turns whatever the model sent into text the model can act on: a result (status in words, exit
code, stdout and stderr cut to a size, why it was killed), a refusal (what the sandbox objected to and what to do
about it), or the problems with its arguments. A model's mistake never raises; only the host's own (a closed
client, a malformed provider object) does.

``AsyncToolDispatcher`` is the asyncio twin, over ``AsyncSandboxClient``.

Sessions: ``openai_tools()``, ``openai_responses_tools()`` and ``anthropic_tools()`` give ``execute_code`` and the
session tools together: ``create_session`` (a sandbox kept across calls: a stateful Python kernel and a workspace
of files), ``run_in_session``, ``session_files`` and ``close_session``. The same dispatchers run them:

    tools = anthropic_tools()
    with SandboxClient("127.0.0.1:50051") as sbx, ToolDispatcher(sbx, session_id="conversation-1") as dispatcher:
        block = dispatcher.handle_anthropic_tool_use(tool_use, images=True)   # figures as image blocks too
    # leaving the block closes the sessions the model left open

A dispatcher uses only the sessions it created (or was given with ``adopt_session``, or that carry its
``session_id`` as their ``conversation`` label); ``image_outputs``, ``anthropic_image_blocks``,
``openai_image_parts`` and ``openai_responses_image_parts`` turn a result's figures into provider image content.

The sandboxes' network is the host's setting, never the model's: ``ToolDispatcher(sbx, network=Network.allowlist(
EgressRule("pypi.org", [443])))`` gives it to every execution and to the sessions the dispatcher starts, and
``dispatcher.anthropic_tools()`` (``openai_tools()``, ...) describes the tools with the hosts it allows.
"""

from __future__ import annotations

# The public names, each from the private module that owns it: _specs (the tools' definitions), _arguments
# (checking them), _text and _session_text (the text a model sees), _images, _messages (the providers' calls and
# answers), _clients (what a client must have), _calls, _dispatch_core, _sync_bridge and _dispatchers.
from sandbox_client.adapters._arguments import (
    LANGUAGE_ALIASES,
    CloseSessionArguments,
    CreateSessionArguments,
    ExecuteCodeArguments,
    RunInSessionArguments,
    SessionFilesArguments,
    SessionToolArguments,
    ToolArgumentError,
    parse_arguments,
    parse_tool_arguments,
)
from sandbox_client.adapters._calls import CALL_DEADLINE_MARGIN_S
from sandbox_client.adapters._clients import AsyncExecutor, AsyncSessionClient, Executor, SessionClient
from sandbox_client.adapters._dispatch_core import DEFAULT_MAX_SESSIONS, SESSION_LABEL, ToolOutcome
from sandbox_client.adapters._dispatchers import AsyncToolDispatcher, ToolDispatcher
from sandbox_client.adapters._images import (
    IMAGE_MIME_TYPES,
    anthropic_image_blocks,
    image_outputs,
    openai_image_parts,
    openai_responses_image_parts,
)
from sandbox_client.adapters._messages import (
    anthropic_tool_result,
    openai_responses_tool_output,
    openai_tool_message,
)
from sandbox_client.adapters._session_text import format_session_error, format_session_result
from sandbox_client.adapters._specs import (
    CLOSE_SESSION,
    CREATE_SESSION,
    FILE_ACTIONS,
    LANGUAGES,
    RUN_IN_SESSION,
    SESSION_FILES,
    SESSION_TOOL_NAMES,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    ToolSpec,
    anthropic_tool,
    anthropic_tools,
    openai_responses_tool,
    openai_responses_tools,
    openai_tool,
    openai_tools,
    parameters_schema,
    session_tool_specs,
    tool_description,
    tool_specs,
)
from sandbox_client.adapters._text import DEFAULT_MAX_OUTPUT_CHARS, format_error, format_result, truncate_middle

__all__ = [
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
