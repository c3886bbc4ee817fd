"""The sessions registry's list of live servers (sessions/registry.py), on the tests' own redis-server: what the
calls every server answers for its own part ask."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis_server import Redis

from sandbox_server.sessions.registry import _ANNOUNCE, SERVERS_KEY, SessionRegistry


async def _run(redis_server: Redis) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        first = SessionRegistry(client, "10.0.0.1:50051")
        second = SessionRegistry(client, "10.0.0.2:50051")
        first.start()
        second.start()
        for _ in range(100):  # each announces itself at its start
            if await first.others() == {"10.0.0.2:50051"}:
                break
            await asyncio.sleep(0.02)
        assert await first.others() == {"10.0.0.2:50051"}
        assert await second.others() == {"10.0.0.1:50051"}
        # A server whose lease ended (a crash: it never said goodbye) is not listed, and is pruned.
        await client.register_script(_ANNOUNCE)(keys=[SERVERS_KEY], args=["10.0.0.3:50051", 1])
        await asyncio.sleep(0.05)
        assert await first.others() == {"10.0.0.2:50051"}
        # A server that stops says so at once.
        await second.aclose()
        assert await first.others() == set()
        await first.aclose()
        assert await client.zcard(SERVERS_KEY) == 0
    finally:
        await client.aclose()


def test_the_live_servers_are_those_whose_lease_runs(redis_server: Redis) -> None:
    redis_server.flush()
    asyncio.run(_run(redis_server))
