"""A result's figures as the image content each provider takes in a tool result (or beside it)."""

from __future__ import annotations

import base64
from typing import Any, Final

from sandbox_client._models import ExecutionResult

IMAGE_MIME_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
"""The image types the providers take in a tool result (and MCP clients show): what ``image_outputs`` picks."""
_MAX_IMAGES: Final = 8
_MAX_IMAGE_BYTES: Final = 5 * 2**20


def image_outputs(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[tuple[str, bytes]]:
    """The images among a result's rich outputs (figures, ``display()``ed images), as (MIME type, raw bytes),
    in order: an output of one of ``IMAGE_MIME_TYPES`` (PNG, JPEG, GIF, WebP), or else such an alternative of it
    (e.g. the PNG of an SVG figure). At most ``max_images``; an image over ``max_bytes`` is left out (the
    providers refuse large ones; 5 MiB by default). None (nothing ran) or a one-shot result: none."""
    images: list[tuple[str, bytes]] = []
    for output in () if result is None else result.outputs:
        candidates = [(output.mime_type, output.data), *output.alternatives.items()]
        for mime_type, data in candidates:
            if mime_type in IMAGE_MIME_TYPES and data:
                if len(data) <= max_bytes:
                    images.append((mime_type, data))
                break
        if len(images) >= max_images:
            break
    return images


def anthropic_image_blocks(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Anthropic content blocks, ``{"type": "image", "source": {"type": "base64",
    "media_type", "data"}}``: a ``tool_result``'s content may hold them after its text (``handle_anthropic_tool_use
    (..., images=True)`` puts them there). ``max_images`` and ``max_bytes`` are ``image_outputs``'s."""
    return [{"type": "image", "source": {"type": "base64", "media_type": mime_type, "data": _b64(data)}}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def openai_image_parts(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Chat Completions content parts, ``{"type": "image_url", "image_url": {"url":
    "data:image/png;base64,..."}}``. A ``tool`` message takes text only: send these in a ``user`` message after
    the tool messages. ``max_images`` and ``max_bytes`` are ``image_outputs``'s."""
    return [{"type": "image_url", "image_url": {"url": _data_url(mime_type, data)}}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def openai_responses_image_parts(
    result: ExecutionResult | None, *, max_images: int = _MAX_IMAGES, max_bytes: int = _MAX_IMAGE_BYTES,
) -> list[dict[str, Any]]:
    """A result's images as Responses API input parts, ``{"type": "input_image", "image_url": "data:..."}``: a
    ``function_call_output``'s output may be a list of them after an ``input_text`` part
    (``handle_openai_responses_call(..., images=True)`` builds it). ``max_images`` and ``max_bytes`` are
    ``image_outputs``'s."""
    return [{"type": "input_image", "image_url": _data_url(mime_type, data)}
            for mime_type, data in image_outputs(result, max_images=max_images, max_bytes=max_bytes)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{_b64(data)}"
