"""A moving-window limiter with one asyncio interface over ``limits``' stores.

In-process (``memory://``), the synchronous store is used directly: its calls take microseconds, and ``limits``'
asyncio memory store hands each key's expiry sweep to a worker thread on every hit, several thread hops per
request. Shared stores (``redis://`` ...) use ``limits``' asyncio stores, since they wait on the network.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from limits import RateLimitItem
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

MEMORY_URIS = ("memory://", "async+memory://")
SWEEP_INTERVAL_S = 1.0


class Limiter(Protocol):
    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool: ...
    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats: ...


class _SweptMemoryStorage(MemoryStorage):
    """``limits``' memory store, with its expiry sweep run inline at most once per SWEEP_INTERVAL_S instead of
    on a ``threading.Timer`` it starts afresh (a new thread) whenever the previous 10 ms timer has fired: with
    calls a few ms apart, that was a thread created for every third call. The sweep only bounds memory (a
    moving window counts unexpired entries itself), so a coarser one changes no decision."""

    def __init__(self) -> None:
        super().__init__()
        self._swept = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:  # overrides the name-mangled hook
        now = time.monotonic()
        if now - self._swept >= SWEEP_INTERVAL_S:
            self._swept = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class _InProcess:
    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(_SweptMemoryStorage())

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        return self._limiter.hit(item, *identifiers)

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        return self._limiter.get_window_stats(item, *identifiers)


def moving_window(storage_uri: str = "memory://") -> Limiter:
    """A moving-window limiter over the store at ``storage_uri``.

    Raises:
        ValueError: the URI names no asyncio-capable store (or limits' ConfigurationError for a bad one).
    """
    if storage_uri in MEMORY_URIS:
        return _InProcess()
    uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
    # redis-py (a dependency already) rather than limits' default Redis client, coredis.
    options: dict[str, Any] = {"implementation": "redispy", "socket_timeout": 2, "socket_connect_timeout": 2} \
        if uri.startswith(("async+redis://", "async+rediss://", "async+redis+unix://")) else {}
    storage = storage_from_string(uri, wrap_exceptions=True, **options)
    if not isinstance(storage, AsyncStorage):
        raise ValueError(f"rate limit storage {storage_uri!r} is not an asyncio storage")
    return AsyncMovingWindow(storage)
