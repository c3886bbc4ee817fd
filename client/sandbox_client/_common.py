"""Configuration shared by the sync and asyncio clients: defaults, deadlines, call metadata."""

from __future__ import annotations

import math

DEFAULT_TIMEOUT = 60.0
"""Seconds: the deadline of every call that passes no ``timeout`` of its own."""


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
