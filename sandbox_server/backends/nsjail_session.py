"""A session's sandbox on the nsjail backend: one long-lived jail, isolated exactly as a one-shot jail is
(nsjail.jail_args), whose PID 1 is the session agent (sessions/agent.py) instead of the perl init.

The jail's stdin and stdout are the agent's channel, its stderr the agent's log. Its scratch (the workspace) is
a size-capped tmpfs of its own, and its cgroup holds memory and pids for the session's whole life. It ends
when the agent does: on ``shutdown``, when the server's end of the pipe closes (a crashed server takes its
sessions with it), or at nsjail's own time limit past the session's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_server.backends.cgroups import CgroupLimits
from sandbox_server.backends.jail import READ_CHUNK, pipe_reader
from sandbox_server.backends.nsjail import TIME_LIMIT_GRACE_S, applied_limits, jail_args, jail_pid, launcher
from sandbox_server.errors import SandboxFailure
from sandbox_server.execution.runtimes import BASE_ENV
from sandbox_server.execution.spec import SessionSpec
from sandbox_server.sessions.channel import AgentChannel
from sandbox_server.sessions.sandbox import SessionSandbox
from sandbox_server.sessions.start import AGENT_ARGV, SESSION_RUN_MOUNT, SYSTEM_PIDS, start_agent

if TYPE_CHECKING:
    from sandbox_server.backends.nsjail import NsjailBackend

log = logging.getLogger(__name__)

EXIT_GRACE_S = 2.0  # nsjail's own exit once its PID 1 has ended


class NsjailSession(SessionSandbox):
    backend = "nsjail"

    def __init__(self, owner: NsjailBackend, spec: SessionSpec) -> None:
        super().__init__()
        self.owner = owner
        self.spec = spec
        self.scratch: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.nsjail_log = bytearray()

    async def start(self) -> None:
        """Make the workspace and cgroup, start the jail and its agent, and wait for the agent's ``init``
        reply (the kernel answering, when asked for). Raises SandboxFailure; nothing is left behind then."""
        owner, spec = self.owner, self.spec
        layout = owner.layout
        if layout is None:
            raise SandboxFailure("backend not started")
        lim = applied_limits(spec.limits)
        try:
            try:
                self.scratch = owner.scratch.create(spec.session_id, lim.scratch_bytes)
            except OSError as exc:
                raise SandboxFailure(f"could not make the session's workspace: {exc}") from exc
            if owner.cgroups is not None:
                try:
                    self.cgroup = owner.cgroups.create(spec.session_id, CgroupLimits(
                        lim.memory_bytes, lim.max_pids + SYSTEM_PIDS, spec.cpu_cores))
                except OSError as exc:
                    raise SandboxFailure(f"could not make the session's cgroup: {exc}") from exc
            log_r, log_w = os.pipe()
            try:
                # The agent gets the fixed environment only: the session's variables are its processes', never
                # its own (LD_PRELOAD and the like cannot reach it).
                args = jail_args(
                    layout, lim, BASE_ENV, self.scratch, log_fd=log_w,
                    time_limit=math.ceil(spec.max_lifetime_s) + TIME_LIMIT_GRACE_S,
                    rlimit_cpu=math.ceil(spec.cpu_total_ms / 1000) + 1, extra_pids=SYSTEM_PIDS,
                    extra_mounts=(SESSION_RUN_MOUNT,))
                # /proc read-write (one-shot jails keep it read-only): the agent's processes raise their own
                # oom_score_adj, so that at the memory limit the OOM killer takes them, never the agent.
                argv = launcher([*args, "--proc_rw", "--", *AGENT_ARGV], lim, self.cgroup)
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, pass_fds=(log_w,), env={}, start_new_session=True,
                    limit=READ_CHUNK)
            except OSError as exc:
                os.close(log_r)
                raise SandboxFailure(f"could not start nsjail: {exc}") from exc
            finally:
                os.close(log_w)
            proc = self.proc
            if proc.stdin is None or proc.stdout is None or proc.stderr is None:
                raise SandboxFailure("nsjail started without its pipes")
            stdin = proc.stdin

            async def write(data: bytes) -> None:
                stdin.write(data)
                await stdin.drain()

            self.channel = AgentChannel(proc.stdout, write, spec.session_id)
            self.channel.start()
            self._readers = [asyncio.create_task(self._read_stderr(proc.stderr)),
                             asyncio.create_task(self._read_nsjail_log(log_r))]
            await start_agent(self, spec)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy()
            raise

    async def netns_pid(self) -> int:
        if self.proc is None:
            raise SandboxFailure("the session's jail has not started")
        return await jail_pid(self.proc.pid)

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while chunk := await stderr.read(READ_CHUNK):
            self.note_log(chunk)

    async def _read_nsjail_log(self, fd: int) -> None:
        reader, transport = await pipe_reader(fd)
        try:
            while chunk := await reader.read(READ_CHUNK):
                if len(self.nsjail_log) < 16384:
                    self.nsjail_log.extend(chunk[: 16384 - len(self.nsjail_log)])
        finally:
            transport.close()

    def channel_ended(self) -> bool:
        return hasattr(self, "channel") and self.channel.closed.done()

    def log_tail(self) -> str:
        own = super().log_tail()
        jail = bytes(self.nsjail_log).decode("utf-8", "replace").strip().splitlines()[-5:]
        return own + ("\nnsjail: " + " | ".join(jail) if jail else "")

    async def destroy(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and self.channel_ended():
            # The agent has gone (shutdown): nsjail follows it at once. Killing a process that has exited but is
            # not reaped yet would reap it under asyncio's watcher (Popen.send_signal polls first).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), EXIT_GRACE_S)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)  # PID 1 dies with nsjail (PDEATHSIG), and with it the jail
        if self.cgroup is not None:
            self.cgroup.kill_all()
        if proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        problems = await asyncio.get_running_loop().run_in_executor(self.owner._teardown_threads, self._remove)
        if problems:
            log.error("teardown of session %s left: %s", self.spec.session_id, "; ".join(problems))
            raise SandboxFailure("session teardown failed: " + "; ".join(problems),
                                 metadata={"phase": "teardown", "backend": self.backend})

    def _remove(self) -> list[str]:
        problems: list[str] = []
        cgroup, self.cgroup = self.cgroup, None
        if cgroup is not None:
            for _ in range(200):
                cgroup.kill_all()
                if cgroup.try_remove():
                    break
                time.sleep(0.01)
            else:
                problems.append(f"cgroup {self.spec.session_id} still busy")
        scratch, self.scratch = self.scratch, None
        if scratch is not None:
            try:
                self.owner.scratch.destroy(scratch)
            except OSError as exc:
                problems.append(f"workspace {scratch}: {exc}")
        return problems

