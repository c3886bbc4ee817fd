"""Configuration shared by the sync and asyncio clients: defaults, deadlines, call metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc

DEFAULT_TIMEOUT = 60.0
"""Seconds: the deadline of every call that passes no ``timeout`` of its own."""


# A result carries up to the server's output ceiling plus its output files (64 MiB + 8 MiB by default), well
# past gRPC's 4 MiB default; the server caps what it sends, so the client need not cap it lower.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The caller's channel options, after our defaults (so a caller's own setting wins)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *options,
    ]


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.Channel:
    """A sync channel with our default options: TLS when ``credentials`` are given, plaintext otherwise."""
    if credentials is None:
        return grpc.insecure_channel(target, options=channel_options(options))
    return grpc.secure_channel(target, credentials, options=channel_options(options))


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float of seconds. Raises ValueError unless it is positive and finite."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be positive and finite, got {timeout!r}")
    return float(timeout)


def call_timeout(timeout: float | None, default: float) -> float:
    """The deadline of one call: its own ``timeout`` or the client's. A deadline is always sent."""
    return default if timeout is None else check_timeout(timeout)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: ``authorization: Bearer <key>`` when there is a key."""
    if api_key is None:
        return ()
    if not api_key:
        # Most often an unset environment variable: say so rather than send an empty credential.
        raise ValueError("api_key is empty; pass None to send no key")
    return (("authorization", f"Bearer {api_key}"),)
