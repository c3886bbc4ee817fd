"""Periodic: the poll loop the policy watcher and the policy sync share."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sandbox_server.periodic import Periodic


async def test_a_failure_streak_is_reported_first_then_as_a_continuation_and_a_success_ends_it() -> None:
    outcomes = iter([ValueError("a"), ValueError("b"), None, ValueError("c")])
    reports: list[tuple[str, bool]] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def step() -> None:
        outcome = next(outcomes, None)
        if outcome is None and not reports[2:]:
            return
        if outcome is None:
            loop.call_soon_threadsafe(done.set)
            return
        raise outcome

    periodic = Periodic("test", 0.01, step, lambda exc, first: reports.append((str(exc), first)))
    periodic.start()
    await asyncio.wait_for(done.wait(), 10)
    await periodic.aclose()
    assert reports == [("a", True), ("b", False), ("c", True)]


async def test_aclose_waits_for_the_step_in_progress_and_nothing_runs_after_it() -> None:
    entered, release = threading.Event(), threading.Event()
    steps: list[int] = []

    def step() -> None:
        steps.append(1)
        entered.set()
        release.wait(10)

    periodic = Periodic("test", 0.01, step, lambda exc, first: None)
    periodic.start()
    await asyncio.to_thread(entered.wait, 10)
    closing = asyncio.create_task(periodic.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()  # the step is not cancelled half-way
    release.set()
    await asyncio.wait_for(closing, 10)
    count = len(steps)
    await asyncio.sleep(0.05)
    assert len(steps) == count == 1
    assert not periodic.running


async def test_it_cannot_run_twice_and_needs_a_positive_interval() -> None:
    periodic = Periodic("twice", 1.0, lambda: None, lambda exc, first: None)
    periodic.start()
    with pytest.raises(RuntimeError, match="already running"):
        periodic.start()
    await periodic.aclose()
    with pytest.raises(ValueError, match="interval_s"):
        Periodic("zero", 0, lambda: None, lambda exc, first: None)
