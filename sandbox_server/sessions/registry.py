"""Which server holds which live session, in Redis (``redis_url``), so that replicas forward a session's calls
to the one that holds it (``interceptors/forward.py``).

One key per session, its value the holder's address (``advertise_address``), set when the session is created and
deleted when it closes; and a sorted set of the live servers, for the calls every server answers for its own
part (listings of sessions and running executions, an execution's lookup and kill). A server renews its own
place there and every session's key it holds every LEASE_S / 3; those of a server that died expire after LEASE_S, and a
call for one of its sessions then gets the ordinary answer for a session this server does not hold (the
record's close reason once the dead server's restart has closed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from sandbox_server.errors import SharedStateUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "sandbox:session-owner:"
# The live servers, for the calls every server answers for its own part: one sorted set, each address scored with
# the end of its lease in Redis's own clock (ms), so that listing them reads only them, not the whole keyspace.
SERVERS_KEY = "sandbox:servers"
_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_ANNOUNCE = (_NOW_MS + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
             "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) return 1")
_LIVE_SERVERS = (_NOW_MS + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
                 "return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')")
LEASE_S = 30.0
OP_TIMEOUT_S = 2.0
RETRY_S = 1.0
_DELETE_IF_OURS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_IF_OURS = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
                  "end return 0")


class SessionRegistry:
    """This server's entries in the registry, and lookups of other servers'."""

    def __init__(self, redis: Any, address: str) -> None:
        self.redis = redis
        self.address = address
        self._held: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._delete = redis.register_script(_DELETE_IF_OURS)
        self._renew = redis.register_script(_RENEW_IF_OURS)
        self._announce_script = redis.register_script(_ANNOUNCE)
        self._live_servers = redis.register_script(_LIVE_SERVERS)

    async def claim(self, session_id: str) -> None:
        """Record this server as the session's holder. Raises SharedStateUnavailable: a session other servers
        cannot find would be unreachable through a load balancer, so it is not handed out."""
        await _needed(f"could not record session {session_id}",
                      self.redis.set(KEY_PREFIX + session_id, self.address, px=int(LEASE_S * 1000)))
        self._held.add(session_id)

    async def release(self, session_id: str) -> None:
        """Forget the session (closed). Best effort: its lease ends the entry anyway."""
        self._held.discard(session_id)
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await self._delete(keys=[KEY_PREFIX + session_id], args=[self.address])
        except Exception as exc:
            log.warning("sessions registry: could not remove session %s (its lease ends it): %r", session_id, exc)

    async def owner(self, session_id: str) -> str | None:
        """The address of the server holding the session, or None. Raises SharedStateUnavailable."""
        value = await _needed(f"lookup of session {session_id} failed", self.redis.get(KEY_PREFIX + session_id))
        return None if value is None else _text(value)

    async def others(self) -> set[str]:
        """Every other live server (its lease not ended), for the calls every server answers for its own part.
        Raises SharedStateUnavailable."""
        values = await _needed("listing the servers failed", self._live_servers(keys=[SERVERS_KEY]))
        return {_text(v) for v in values if v is not None} - {self.address}

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="sessions-registry-renewer")

    async def aclose(self) -> None:
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:  # the other servers stop asking this one at once, rather than once its lease ends
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await self.redis.zrem(SERVERS_KEY, self.address)
            except Exception as exc:
                log.warning("sessions registry: could not remove this server's entry (its lease ends it): %r", exc)

    async def _announce(self) -> None:
        """This server's own entry: live, at this address (renewed with the sessions' leases)."""
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await self._announce_script(keys=[SERVERS_KEY], args=[self.address, int(LEASE_S * 1000)])
        except Exception as exc:  # the next round tries again; the lease covers two missed rounds
            log.warning("sessions registry: could not renew this server's entry: %r", exc)

    async def _renew_forever(self) -> None:
        while True:
            await self._announce()
            await asyncio.sleep(LEASE_S / 3)
            for session_id in list(self._held):
                try:
                    async with asyncio.timeout(OP_TIMEOUT_S):
                        await self._renew(keys=[KEY_PREFIX + session_id], args=[self.address, int(LEASE_S * 1000)])
                except Exception as exc:  # the next round tries again; the lease covers two missed rounds
                    log.warning("sessions registry: could not renew session %s: %r", session_id, exc)
                    break


async def _needed(failure: str, operation: Awaitable[Any]) -> Any:
    """``operation``'s result; SharedStateUnavailable (and an error logged) when Redis does not answer in time."""
    try:
        async with asyncio.timeout(OP_TIMEOUT_S):
            return await operation
    except Exception as exc:
        log.error("sessions registry: %s: %r", failure, exc)
        raise SharedStateUnavailable("the sessions registry is unavailable; retry later",
                                     retry_after_s=RETRY_S) from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
