"""Periodic: a step run every ``interval_s`` in a worker thread, from start() until aclose().

The one poll loop of the server's watchers (the policy directory's watcher, the policy sync across replicas).
A step is never cancelled half-way: aclose() sets an event the loop waits on between steps, then waits for the
step in progress to finish, so nothing of the watcher runs once aclose() returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Periodic:
    def __init__(self, name: str, interval_s: float, step: Callable[[], object],
                 on_error: Callable[[Exception, bool], None]) -> None:
        """``on_error(exc, first)``: a step raised; ``first`` is false while the steps before it failed too (so a
        lasting outage can be logged once)."""
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.name = name
        self.interval_s = interval_s
        self._step = step
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        await task

    async def _run(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            if self._stop.is_set():
                return
            try:
                await asyncio.to_thread(self._step)
                failing = False
            except Exception as exc:
                self._on_error(exc, not failing)
                failing = True
