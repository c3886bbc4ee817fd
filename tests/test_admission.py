"""Admission control: bounded running, bounded queue, FIFO hand-over, cancellation never leaks a slot."""

from __future__ import annotations

import asyncio

import pytest

from sandbox_server.errors import QueueFull
from sandbox_server.execution.admission import Admission


async def _hold(adm: Admission, started: list[int], release: asyncio.Event, n: int) -> None:
    async with adm.slot():
        started.append(n)
        await release.wait()


async def test_runs_up_to_the_limit_then_queues_then_refuses() -> None:
    adm = Admission(max_running=2, max_queued=1)
    release = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(_hold(adm, started, release, i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert started == [0, 1]
    assert (adm.running, adm.queued) == (2, 1)
    with pytest.raises(QueueFull) as info:
        async with adm.slot():
            pass
    assert info.value.retry_after_s is not None
    assert info.value.retry_after_s > 0
    release.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2]
    assert (adm.running, adm.queued) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue_and_no_slot_is_lost() -> None:
    adm = Admission(max_running=1, max_queued=4)
    release = asyncio.Event()
    started: list[int] = []
    holder = asyncio.create_task(_hold(adm, started, release, 0))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(adm, started, release, 1))
    later = asyncio.create_task(_hold(adm, started, release, 2))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert adm.queued == 1
    release.set()
    await asyncio.gather(holder, later)
    assert started == [0, 2]
    assert (adm.running, adm.queued) == (0, 0)


async def test_closed_admission_refuses_new_work() -> None:
    adm = Admission(max_running=1, max_queued=1)
    adm.close()
    with pytest.raises(QueueFull, match="shutting down"):
        async with adm.slot():
            pass
