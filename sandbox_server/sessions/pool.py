"""Session sandboxes started ahead of CreateSession, so that a new session waits for no jail, interpreter or
kernel start (about a second) when its shape is the common one.

A pooled sandbox is a session sandbox like any other, started with the server's default session limits, a
kernel, and the fixed environment; it has never run anything of anyone's. CreateSession takes one when the
request asks for exactly those limits and a kernel, and its variables are not read by an interpreter while it
starts (those are applied to the kernel's ``os.environ`` when it is handed over). Anything else starts a
sandbox of its own. The pool refills in the background after each take (not while the host sheds new work),
keeps ``session_pool_size`` ready, and replaces a sandbox that has waited longer than POOL_MAX_AGE_S (its
lifetime backstop counts from its own start). Its lifetime and CPU backstops (nsjail's time limit, RLIMIT_CPU)
are generous: the session layer enforces each session's own, which it measures from the handover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

from sandbox_server.backends.base import Backend
from sandbox_server.execution.runtimes import BASE_ENV
from sandbox_server.execution.spec import Limits, SessionSpec
from sandbox_server.sessions.requests import SessionParams
from sandbox_server.sessions.sandbox import SessionSandbox
from sandbox_server.settings import Settings

log = logging.getLogger(__name__)

POOL_PREFIX = "pool-"
POOL_MAX_AGE_S = 3600.0
POOL_LIFETIME_S = 25 * 3600.0  # a day's session after an hour in the pool
POOL_CPU_BACKSTOP_MS = 24 * 3600 * 1000
RETRY_S = 5.0
# Read while an interpreter or the kernel starts: a session setting one starts a sandbox of its own.
STARTUP_ENV_PREFIXES = ("PYTHON", "LC_", "JUPYTER", "IPYTHON", "MPL")
STARTUP_ENV_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "MKL_NUM_THREADS", "LD_PRELOAD", "LD_LIBRARY_PATH"})


class SessionPool:
    def __init__(self, settings: Settings, backend: Backend, pressed: Callable[[], bool] = lambda: False) -> None:
        """``pressed()``: whether the host sheds new work now (execution/pressure.py); the pool then starts none."""
        self.size = settings.session_pool_size
        self.backend = backend
        self._pressed = pressed
        self.limits = Limits(**settings.session_defaults.model_dump())
        self.cpu_cores = settings.cpu_cores
        self._ready: deque[tuple[SessionSandbox, float, str]] = deque()
        self._starting: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._discards: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._keep(), name="session-pool")
            self._wake.set()

    def eligible(self, params: SessionParams) -> bool:
        return (self.size > 0 and params.kernel and params.limits == self.limits
                and not any(name.startswith(STARTUP_ENV_PREFIXES) or name in STARTUP_ENV_NAMES
                            for name, _ in params.env))

    def take(self) -> SessionSandbox | None:
        """A ready sandbox, or None; the pool refills behind it."""
        while self._ready:
            sandbox, _, _ = self._ready.popleft()
            self._wake.set()
            if sandbox.alive():
                return sandbox
            self._discard(sandbox)
        self._wake.set()
        return None

    def names(self) -> set[str]:
        """The names of the pool's sandboxes (their cgroups and workspaces), started or starting."""
        return {name for _, _, name in self._ready} | set(self._starting)

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pooled = [sandbox for sandbox, _, _ in self._ready]
        self._ready.clear()
        await asyncio.gather(*(sandbox.close() for sandbox in pooled), *self._discards, return_exceptions=True)

    async def _keep(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            while self._ready and now - self._ready[0][1] > POOL_MAX_AGE_S:
                self._discard(self._ready.popleft()[0])
            while len(self._ready) < self.size and not self._closing:
                if self._pressed():
                    # A kernel started now would take the memory or tasks the host is short of, for no request:
                    # look again later (a take still wakes the pool at once).
                    asyncio.get_running_loop().call_later(RETRY_S, self._wake.set)
                    break
                name = POOL_PREFIX + secrets.token_hex(8)
                spec = SessionSpec(session_id=name, limits=self.limits, cpu_total_ms=POOL_CPU_BACKSTOP_MS,
                                   max_lifetime_s=POOL_LIFETIME_S, env=BASE_ENV, kernel=True,
                                   cpu_cores=self.cpu_cores)
                self._starting.add(name)
                try:
                    sandbox = await self.backend.open_session(spec)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not start a pooled session sandbox (%s); retrying in %.0f s", exc, RETRY_S)
                    await asyncio.sleep(RETRY_S)
                    continue
                finally:
                    self._starting.discard(name)
                self._ready.append((sandbox, time.monotonic(), name))
            # Wake again when the oldest would be too old.
            if self._ready:
                delay = POOL_MAX_AGE_S - (time.monotonic() - self._ready[0][1]) + 1
                asyncio.get_running_loop().call_later(max(1.0, delay), self._wake.set)

    def _discard(self, sandbox: SessionSandbox) -> None:
        task = asyncio.get_running_loop().create_task(sandbox.close())
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)
