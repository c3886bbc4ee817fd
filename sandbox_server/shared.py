"""The Redis client of a server that shares its fast state with replicas (``redis_url``)."""

from __future__ import annotations

from typing import Any

import redis.asyncio

SOCKET_TIMEOUT_S = 2.0


def shared_redis(url: str) -> Any:
    """A redis.asyncio client (a lazily connecting pool) with short timeouts: a Redis that does not answer makes
    the call fail closed quickly instead of waiting."""
    return redis.asyncio.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
                                        health_check_interval=30)
