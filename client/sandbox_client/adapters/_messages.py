"""The providers' side of a tool call: reading the name and arguments out of a call (the SDK's object or its
dict form) and building the message or block that answers it (OpenAI Chat Completions and Responses, Anthropic
Messages)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sandbox_client.adapters._dispatch_core import ToolOutcome
from sandbox_client.adapters._images import anthropic_image_blocks, openai_responses_image_parts

_Call = tuple[str, Mapping[str, object] | str | None]
"""A call's tool name ("" when it has none) and its arguments, as ``dispatch`` takes them."""


def openai_tool_message(tool_call: object, content: str) -> dict[str, Any]:
    """The Chat Completions message answering ``tool_call`` (the SDK object or its dict form):
    ``{"role": "tool", "tool_call_id", "content"}``.

    Raises:
        ValueError: the tool call has no id.
    """
    return {"role": "tool", "tool_call_id": _require(tool_call, "id"), "content": content}


def openai_responses_tool_output(function_call: object, content: str | list[dict[str, Any]]) -> dict[str, Any]:
    """The Responses API input item answering a ``function_call`` output item (SDK object or dict):
    ``{"type": "function_call_output", "call_id", "output"}``. ``content``: the text, or a list of input parts
    (``input_text``, ``input_image``: see ``openai_responses_image_parts``).

    Raises:
        ValueError: the function call has no call_id.
    """
    return {"type": "function_call_output", "call_id": _require(function_call, "call_id"), "output": content}


def anthropic_tool_result(
    tool_use: object, content: str | list[dict[str, Any]], *, is_error: bool = False,
) -> dict[str, Any]:
    """The content block answering a ``tool_use`` block (SDK object or dict), to send in a user message:
    ``{"type": "tool_result", "tool_use_id", "content", "is_error"}``. ``content``: the text, or a list of
    content blocks (text, and images: see ``anthropic_image_blocks``).

    Raises:
        ValueError: the tool_use block has no id.
    """
    return {"type": "tool_result", "tool_use_id": _require(tool_use, "id"), "content": content, "is_error": is_error}


def _field(obj: object, name: str) -> object:
    """A field of a provider object: its dict form or the SDK's (pydantic) object."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _require(obj: object, name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"the provider's tool call has no {name!r}: {_short_repr(obj)}")
    return value


def _short_repr(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 200 else text[:197] + "..."


def _call_parts(call: object, arguments_field: str) -> _Call:
    name = _field(call, "name")
    arguments = _field(call, arguments_field)
    if not (arguments is None or isinstance(arguments, str | Mapping)):
        arguments = json.dumps(arguments, default=str)  # parse_arguments names what it is
    return (name if isinstance(name, str) else ""), arguments


# -- each API's call read (its id checked first: the answer needs it), and answered: the dispatchers' handle_* -----


def _openai_call(tool_call: object) -> _Call:
    _require(tool_call, "id")
    function = _field(tool_call, "function")
    return _call_parts(function if function is not None else tool_call, "arguments")


def _responses_call(function_call: object) -> _Call:
    _require(function_call, "call_id")
    return _call_parts(function_call, "arguments")


def _anthropic_call(tool_use: object) -> _Call:
    _require(tool_use, "id")
    return _call_parts(tool_use, "input")


def _openai_answer(tool_call: object, outcome: ToolOutcome) -> dict[str, Any]:
    return openai_tool_message(tool_call, outcome.text)


def _responses_answer(function_call: object, outcome: ToolOutcome, images: bool) -> dict[str, Any]:
    parts = openai_responses_image_parts(outcome.result) if images else []
    return openai_responses_tool_output(function_call, _content(outcome.text, "input_text", parts))


def _anthropic_answer(tool_use: object, outcome: ToolOutcome, images: bool) -> dict[str, Any]:
    blocks = anthropic_image_blocks(outcome.result) if images else []
    return anthropic_tool_result(tool_use, _content(outcome.text, "text", blocks), is_error=outcome.is_error)


def _content(text: str, text_type: str, images: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The text alone, or with images: a list of a text part (of ``text_type``) and the image parts."""
    return [{"type": text_type, "text": text}, *images] if images else text
