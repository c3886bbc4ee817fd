"""Per-tenant counts of executions in flight, for the ``concurrent_executions`` limit: in this process (the
embedded default), or in Redis, shared by every replica on it.

In Redis, a tenant's executions are the members of one sorted set, each scored with the end of its lease (the
Redis server's clock, so replicas' clocks do not matter). Taking a slot is one script: drop expired leases,
count, add if under the limit; so replicas never admit one execution over the limit. A replica renews the leases
of what it runs every LEASE_S / 3 and removes a slot when its execution ends; the slots of a replica that died
expire after LEASE_S at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_PREFIX = "sandbox:concurrency:"
LEASE_S = 30.0
OP_TIMEOUT_S = 2.0

# KEYS[1]: the tenant's set; ARGV: limit ("" for none), member, lease ms. Returns {admitted, count}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if ARGV[1] ~= '' and n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, n + 1}
"""
# KEYS: the sets; ARGV[1]: lease ms, then one member per key. Renews the leases still there.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2)
end
return #KEYS
"""


class Slot(Protocol):
    def release(self) -> None:
        """Idempotent."""


class Concurrency(Protocol):
    async def acquire(self, tenant: str, limit: int | None) -> tuple[Slot | None, int]:
        """A slot for one more execution of ``tenant`` unless ``limit`` are running; (None, count) when refused,
        else (slot, count including it). Raises when the count cannot be consulted."""
        ...

    def running(self, tenant: str) -> int:
        """Executions of ``tenant`` admitted here and not yet ended."""
        ...

    async def aclose(self) -> None: ...


class NoSlot:
    """The place of a call that is not an execution: nothing to release."""

    def release(self) -> None:
        pass


class _LocalSlot:
    def __init__(self, running: dict[str, int], tenant: str) -> None:
        self._running = running
        self._tenant = tenant
        self._released = False
        running[tenant] = running.get(tenant, 0) + 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        left = self._running[self._tenant] - 1
        if left:
            self._running[self._tenant] = left
        else:
            del self._running[self._tenant]


class InProcessConcurrency:
    """Counts in this process; exact, since the caller holds the tenant's lock around acquire."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}

    async def acquire(self, tenant: str, limit: int | None) -> tuple[Slot | None, int]:
        count = self._running.get(tenant, 0)
        if limit is not None and count >= limit:
            return None, count
        return _LocalSlot(self._running, tenant), count + 1

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    async def aclose(self) -> None:
        pass


class _RedisSlot:
    def __init__(self, owner: RedisConcurrency, tenant: str, member: str) -> None:
        self._owner = owner
        self.tenant = tenant
        self.member = member
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self)


class RedisConcurrency:
    """Counts in Redis (see the module docstring). ``client``: a redis.asyncio.Redis."""

    def __init__(self, client: Any, prefix: str = KEY_PREFIX) -> None:
        """``prefix``: the keys' namespace (one per kind of slot: executions in flight, live sessions)."""
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, _RedisSlot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, tenant: str, limit: int | None) -> tuple[Slot | None, int]:
        member = uuid.uuid4().hex
        async with asyncio.timeout(OP_TIMEOUT_S):
            admitted, count = await self._acquire(keys=[self._prefix + tenant],
                                                  args=["" if limit is None else limit, member, int(LEASE_S * 1000)])
        if not admitted:
            return None, int(count)
        slot = _RedisSlot(self, tenant, member)
        self._held[member] = slot
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever())
        return slot, int(count)

    def running(self, tenant: str) -> int:
        return sum(1 for slot in self._held.values() if slot.tenant == tenant)

    def _release(self, slot: _RedisSlot) -> None:
        self._held.pop(slot.member, None)
        task = asyncio.get_running_loop().create_task(self._remove(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, slot: _RedisSlot) -> None:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                await self._client.zrem(self._prefix + slot.tenant, slot.member)
        except Exception as exc:  # its lease ends it anyway, LEASE_S at most
            log.warning("could not free a concurrency slot of tenant %r in Redis (its lease expires): %r",
                        slot.tenant, exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            held = list(self._held.values())
            if not held:
                continue
            try:
                async with asyncio.timeout(OP_TIMEOUT_S):
                    await self._renew(keys=[self._prefix + s.tenant for s in held],
                                      args=[int(LEASE_S * 1000), *(s.member for s in held)])
            except Exception as exc:
                log.warning("could not renew %d concurrency leases in Redis: %r", len(held), exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
