"""The sandbox as a LangChain tool (``pip install 'sandbox-client[langchain]'``).

    from sandbox_client import SandboxClient
    from sandbox_client.adapters.langchain import SandboxTool

    tool = SandboxTool(client=SandboxClient("127.0.0.1:50051"), session_id="conversation-1")
    print(tool.invoke({"code": "print(6*7)"}))
    model_with_tools = chat_model.bind_tools([tool])

``invoke`` runs through the sync client, ``ainvoke`` through the asyncio one (``async_client=``; with only a sync
client it runs in a worker thread). The text is ``ToolDispatcher``'s: a model's mistake or the sandbox's refusal
comes back as text for the model, not as an exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool
from langchain_core.tools.base import ArgsSchema
from pydantic import BaseModel, ConfigDict, Field, SkipValidation, ValidationError, field_validator, model_validator
from pydantic.v1 import ValidationError as ValidationErrorV1

from sandbox_client._aio import AsyncSandboxClient
from sandbox_client._models import Limits
from sandbox_client._sync import SandboxClient
from sandbox_client.adapters.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    LANGUAGE_ALIASES,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    AsyncToolDispatcher,
    ToolDispatcher,
    parameters_schema,
)

__all__ = ["ExecuteCodeInput", "SandboxTool", "validation_error_text"]

_SCHEMA = parameters_schema()["properties"]


class ExecuteCodeInput(BaseModel):
    """The arguments of ``execute_code``, as LangChain validates them (the JSON schema of ``tool.py``)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, description=_SCHEMA["code"]["description"])
    language: Literal["python", "javascript", "bash"] = Field(
        default="python", description=_SCHEMA["language"]["description"]
    )
    stdin: str | None = Field(default=None, description=_SCHEMA["stdin"]["description"])
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                    description=_SCHEMA["timeout_s"]["description"])

    @field_validator("language", mode="before")
    @classmethod
    def _canonical_language(cls, value: object) -> object:
        if isinstance(value, str):
            name = value.strip().lower()
            return LANGUAGE_ALIASES.get(name, name)
        return value if value is not None else "python"


def validation_error_text(error: ValidationError | ValidationErrorV1) -> str:
    """The tool-result text for arguments LangChain's validation refused (the layout ``ToolDispatcher`` uses)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        problems.append(f"- {where}: {item['msg']}")
    return (f"Status: invalid arguments for {TOOL_NAME} (nothing ran)\n" + "\n".join(problems)
            + f"\nWhat to do: call {TOOL_NAME} again with corrected arguments.")


class SandboxTool(BaseTool):
    """``execute_code``: runs a program in a fresh sandbox and answers with its status, exit code and output.

    Give it ``client`` (a ``SandboxClient``), ``async_client`` (an ``AsyncSandboxClient``) or both; they are used
    as is and never closed here. ``session_id``, ``limits`` and ``max_output_chars`` are ``ToolDispatcher``'s.

    Raises (at construction):
        pydantic.ValidationError: no client, or an invalid setting.
    """

    name: str = TOOL_NAME
    description: str = TOOL_DESCRIPTION
    args_schema: Annotated[ArgsSchema | None, SkipValidation()] = ExecuteCodeInput
    handle_validation_error: bool | str | Callable[[ValidationError | ValidationErrorV1], str] | None = (
        validation_error_text
    )
    """Bad arguments from the model become text for it (set it as in ``BaseTool`` to change that)."""

    client: SandboxClient | None = None
    async_client: AsyncSandboxClient | None = None
    session_id: str = ""
    limits: Limits | None = None
    max_output_chars: int = Field(default=DEFAULT_MAX_OUTPUT_CHARS, gt=0)

    @model_validator(mode="after")
    def _has_a_client(self) -> SandboxTool:
        if self.client is None and self.async_client is None:
            raise ValueError("SandboxTool needs client= (a SandboxClient), async_client= (an AsyncSandboxClient) "
                             "or both")
        return self

    def _run(
        self,
        code: str,
        language: str = "python",
        stdin: str | None = None,
        timeout_s: float | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the program through the sync client and return the text for the model.

        Raises:
            RuntimeError: the tool has no sync client (use ``ainvoke``), or the client is closed.
        """
        if self.client is None:
            raise RuntimeError("this SandboxTool has only an async_client: call ainvoke, or give it client=")
        dispatcher = ToolDispatcher(self.client, session_id=self.session_id, limits=self.limits,
                                    max_output_chars=self.max_output_chars, name=self.name)
        return dispatcher.dispatch(self.name, _arguments(code, language, stdin, timeout_s))

    async def _arun(
        self,
        code: str,
        language: str = "python",
        stdin: str | None = None,
        timeout_s: float | None = None,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
    ) -> str:
        """Run the program through the asyncio client (or, without one, the sync client in a worker thread).

        Raises:
            RuntimeError: the client is closed.
        """
        if self.async_client is None:
            return await asyncio.to_thread(self._run, code, language, stdin, timeout_s)
        dispatcher = AsyncToolDispatcher(self.async_client, session_id=self.session_id, limits=self.limits,
                                         max_output_chars=self.max_output_chars, name=self.name)
        return await dispatcher.dispatch(self.name, _arguments(code, language, stdin, timeout_s))


def _arguments(code: str, language: str, stdin: str | None, timeout_s: float | None) -> dict[str, object]:
    return {"code": code, "language": language, "stdin": stdin, "timeout_s": timeout_s}
