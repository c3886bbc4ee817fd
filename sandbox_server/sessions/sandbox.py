"""A session's sandbox as the session layer sees it, whichever backend made it: the agent's channel, the
sandbox's counters, and how to end it. Backends make them (``Backend.open_session``); everything about calls,
files and lifecycle is the session layer's, on top of the channel, the same on every backend."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from sandbox_server.backends.cgroups import Cgroup
from sandbox_server.errors import SandboxFailure
from sandbox_server.sessions.channel import AgentChannel, ChannelClosed

if TYPE_CHECKING:
    from sandbox_server.egress.gateway import EgressLink

log = logging.getLogger(__name__)

AGENT_LOG_CAP = 16 * 1024
SHUTDOWN_GRACE_S = 2.0  # the agent's own orderly stop, before the sandbox is killed


class SessionSandbox(abc.ABC):
    """One started session sandbox whose agent has answered ``init``. ``cgroup`` holds the whole sandbox (the
    agent, the kernel, every process of every call): its counters are the session's."""

    backend: str
    channel: AgentChannel
    cgroup: Cgroup | None = None
    egress: EgressLink | None = None  # its proxy, when the session has network (the session layer opens it)

    def __init__(self) -> None:
        self._log: deque[bytes] = deque()
        self._log_size = 0
        self._closing: asyncio.Task[None] | None = None

    # ---- counters (0 without a cgroup) ---------------------------------------------------------------------
    def cpu_time_ns(self) -> int:
        return self.cgroup.cpu_time_ns() if self.cgroup is not None else 0

    def memory_bytes(self) -> int:
        return self.cgroup.memory_bytes() if self.cgroup is not None else 0

    def peak_memory_bytes(self) -> int:
        return self.cgroup.peak_memory_bytes() if self.cgroup is not None else 0

    def reset_peak_memory(self) -> None:
        """Start measuring the peak anew (cgroup v1 only; v2 keeps the session's peak)."""
        if self.cgroup is not None:
            self.cgroup.reset_peak_memory()

    def oom_kills(self) -> int:
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    # ---- the agent's own stderr, kept for diagnostics --------------------------------------------------------
    def note_log(self, chunk: bytes) -> None:
        self._log.append(chunk)
        self._log_size += len(chunk)
        while self._log_size > AGENT_LOG_CAP and len(self._log) > 1:
            self._log_size -= len(self._log.popleft())

    def log_tail(self) -> str:
        return b"".join(self._log).decode("utf-8", "replace")[-AGENT_LOG_CAP:]

    # ---- the end ---------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop the agent (it ends the kernel and every process), then kill and remove everything the sandbox
        held. Idempotent; concurrent callers wait for the same close. Raises SandboxFailure when something
        could not be removed."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def netns_pid(self) -> int:
        """A host pid of a process inside the sandbox, for its network namespace (where its proxy listens)."""
        raise SandboxFailure(f"the {self.backend} backend's sessions have no network")

    async def _close(self) -> None:
        if self.egress is not None:
            await self.egress.aclose()
        if not self.channel.closed.done():
            with contextlib.suppress(ChannelClosed):
                await self.channel.send("shutdown")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.channel.closed), SHUTDOWN_GRACE_S)
        await self.channel.aclose()
        await self.destroy()

    @abc.abstractmethod
    async def destroy(self) -> None:
        """Kill whatever is left of the sandbox and remove it (cgroup, workspace, container). Raises
        SandboxFailure."""

    def alive(self) -> bool:
        return not self.channel.closed.done()
