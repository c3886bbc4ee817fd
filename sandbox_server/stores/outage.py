"""Writes that must not be lost to a short store outage: an execution that has run must get its cost and its
audit record, so those writes wait through a database failover (a few seconds) instead of failing the call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sandbox_server.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_RETRY_S = 30.0
"""How long a write for an execution that has run keeps trying while the store is unavailable."""
RETRY_INTERVAL_S = 0.5


async def through_outage(write: Callable[[], T], what: str, within_s: float = OUTAGE_RETRY_S) -> T:
    """``write`` in a worker thread; while it raises StoreUnavailable, again every RETRY_INTERVAL_S for up to
    ``within_s``, then the last StoreUnavailable. ``write`` must be safe to repeat (an attempt cut off by the
    outage may have committed)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await asyncio.to_thread(write)
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s: %s; trying again", what, exc.message)
        await asyncio.sleep(RETRY_INTERVAL_S)
