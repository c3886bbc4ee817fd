"""The warm Python path: Python executions forked from a zygote, with the cold path's isolation, in a few ms.

A cold jail spends most of its ~30 ms starting nsjail, perl and a Python interpreter. Here one zygote per
backend (zygote.py: the host's /usr/bin/python3 with the runtime's own flags, an empty environment, no server
code, in a read-only file-system view of exactly what a jail sees) forks the sandboxes: PID 1 of fresh PID,
mount, network, IPC, UTS and cgroup namespaces, in a fresh cgroup of its own, with the scratch, /tmp, /dev/shm
and /proc mounts, hostname, rlimits, nice level, seccomp filter and environment the cold path gives
(nsjail.host_view, jail_env, seccomp.libseccomp_config, ...); the code then runs in the already-started
interpreter as ``python3 -B -s main.py`` would. Sandboxes are forked ahead of requests, set up as far as no
request decides, as many as the recent load ran at once (pool_sizer.py: between ``warm_python_pool`` and
``warm_python_pool_max``, bounded by the host's available memory); a request takes one, gets its limits written into
the sandbox's cgroup, and sends it its scratch, stdio, environment and rlimits. NsjailBackend does everything
around it (scratch, watchdog, output, result, teardown) the same way for both paths; this module starts,
recycles and restarts the zygote, keeps the pool, and launches one warm sandbox.

Eligible: the python runtime, no rootfs, cgroups usable, a ready zygote, no network (egress: its proxy is made
before the program starts, which only the cold path waits for), and no environment variable the interpreter reads
while it starts (PYTHON*, LC_*, LANG, LANGUAGE, SETUPTOOLS_USE_DISTUTILS): the zygote's start-up already happened,
with the base environment. Every limit can be set per request, so limits never make
a request ineligible. Anything else, and any request the warm path could not take before anything of it ran
(ZygoteUnavailable), runs cold.

Trade-offs (docs/warm-path.md has the measurements and the reasoning):
- No user namespace. The sandbox's PID 1 is root in the initial user namespace while it mounts, then it and
  the program drop to the sandbox uid/gid with no capability in any set, no_new_privs and the seccomp filter.
  Seen from inside: the same uid, gid, mounts, processes and limits; /proc/self/uid_map shows the identity map,
  and host files owned by root show as root, not as the overflow id.
- Two modes (``warm_python_mode``). "fresh" (the default): the program process execs a fresh interpreter ahead
  of its request, so every execution has its own ASLR layout and hash seed, as a cold start does. "fork": the
  program process stays a fork of the zygote, with PRELOAD imported already: faster, but the hash seed and
  ASLR layout belong to the zygote, so every sandbox it forks shares them. Neither is a channel between
  sandboxes (no shared memory, ptrace denied, separate PID namespaces); the zygote is replaced after
  ``warm_python_recycle_after`` forks to bound how many share them.
- In the fork mode, modules the zygote imported (PRELOAD, and what it needs itself) are already in
  ``sys.modules``, with state reset where they keep any (``random`` reseeded from os.urandom, TZ re-read,
  warnings and linecache caches dropped). The zygote never runs user code, so a program cannot leave state
  behind for the next one: each sandbox is a fresh fork of the same pristine zygote.
- Pooled sandboxes exist before their request: a few idle processes each (uid 0 until a request makes them the
  sandbox user), in cgroups under ``<cgroup_parent>.warm``; their set-up CPU (about 2 ms) is counted in the
  execution's cpu_time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import marshal
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_server.backends import native
from sandbox_server.backends import zygote as proto
from sandbox_server.backends.cgroups import Cgroup, CgroupLimits, CgroupManager, available_memory
from sandbox_server.backends.jail import Jail, pipe_reader, pipe_writer
from sandbox_server.backends.nsjail import (
    NICE_LEVEL,
    RLIMIT_NOFILE,
    JailLayout,
    cpu_rlimit_s,
    host_view,
    jail_env,
    time_limit_s,
    tmpfs_bytes,
)
from sandbox_server.backends.pool_sizer import PoolSizer
from sandbox_server.backends.sandbox_init import INIT_PIDS, parse_status
from sandbox_server.backends.scratch import DetachedScratch
from sandbox_server.backends.seccomp import libseccomp_config
from sandbox_server.errors import SandboxFailure
from sandbox_server.execution.runtimes import BASE_ENV, HOSTNAME, WORKDIR, Runtime, find_runtime
from sandbox_server.execution.spec import ExecutionSpec, Limits
from sandbox_server.settings import Settings, WarmPythonMode

log = logging.getLogger(__name__)

ZYGOTE_PROGRAM = Path(proto.__file__)
# Imported once by the zygote so that programs find them loaded (each costs a cold start 1-10 ms). Only modules
# without request-visible state, or whose state is reset in every fork (random).
PRELOAD = ("json", "re", "collections", "datetime", "typing", "dataclasses", "random", "math", "functools",
           "itertools", "string", "textwrap", "enum", "copy", "struct", "base64", "heapq", "bisect", "fractions",
           "decimal", "statistics")
# nsjail's defaults for the limits the cold path does not set: the hard limit lowered to the current soft one.
SOFT_RLIMITS = ("NPROC", "STACK", "MEMLOCK", "RTPRIO", "MSGQUEUE")
# Read by the interpreter while it starts: the zygote started without them, so requests that set them run cold.
STARTUP_ENV_PREFIXES = ("PYTHON", "LC_")
STARTUP_ENV_NAMES = frozenset({"LANG", "LANGUAGE", "SETUPTOOLS_USE_DISTUTILS"})
# What node reads while it starts (options, libuv, OpenSSL, ICU, locale): a request setting any runs cold
NODE_STARTUP_ENV_PREFIXES = ("NODE_", "UV_", "OPENSSL_", "SSL_", "LC_")
NODE_STARTUP_ENV_NAMES = frozenset({"LANG", "LANGUAGE", "ICU_DATA"})
# Run by a pooled node (``node -e``) when PID 1 lets it go: read the request (environment, argv) from fd 3,
# then become ``node main.js`` in /work, the program loaded as the main module as node itself loads it.
NODE_STUB = """\
'use strict';
const fs = require('fs');
const chunks = [];
const buffer = Buffer.alloc(65536);
for (let n; (n = fs.readSync(3, buffer, 0, buffer.length, null)) > 0;) chunks.push(Buffer.from(buffer.subarray(0, n)));
fs.closeSync(3);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
for (const name of Object.keys(process.env)) delete process.env[name];
for (const [name, value] of request.env) process.env[name] = value;
process.chdir('/work');
process.argv = [process.execPath, require('path').resolve(request.argv[request.argv.length - 1])];
process.execArgv = [];
require('module').runMain();
"""
# Pooled sandboxes' cgroups: a sibling of the executions' parent (see WarmPython).
POOL_CGROUP_SUFFIX = ".warm"
READY_TIMEOUT_S = 30.0
FORK_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = 1.0  # between zygote starts; doubled after each failed one, up to the maximum
RESTART_BACKOFF_MAX_S = 60.0
REPORT_CAP = 256
REPLY_BYTES = 8192  # the longest message a zygote or sandbox sends the server (an error text)
CONN_DRAIN_S = 1.0
POOL_TEND_S = 1.0  # how often the pool is resized when no request does it (growing back, shrinking after load)


class ZygoteUnavailable(Exception):
    """The warm path could not take this request, and no process of its sandbox ran: run it cold."""


# ---- the zygote process -----------------------------------------------------------------------------------
class Zygote:
    """One running zygote and the server's end of its control socket."""

    def __init__(self, proc: asyncio.subprocess.Process, ctl: socket.socket, generation: int) -> None:
        self.proc = proc
        self.ctl = ctl
        self.generation = generation
        self.forks = 0
        self.init = "python"  # what its sandboxes' PID 1 runs: "native" (zygote_native.c) or "python"
        self.closing = False
        self.exited: asyncio.Task[int] = asyncio.get_running_loop().create_task(proc.wait())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.closing and self.proc.returncode is None

    @classmethod
    async def start(cls, config: dict[str, Any], generation: int) -> Zygote:
        """Start a zygote and wait until it is ready; raise ZygoteUnavailable (nothing left running)."""
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            bootstrap = json.dumps({**config, "ctl_fd": theirs.fileno()})
            proc = await asyncio.create_subprocess_exec(
                config["python"][0], "-I", "-S", str(ZYGOTE_PROGRAM), "--bootstrap", bootstrap,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env={}, start_new_session=True,
            )
        except OSError as exc:
            ctl.close()
            raise ZygoteUnavailable(f"could not start the zygote: {exc}") from exc
        finally:
            theirs.close()
        ctl.setblocking(False)
        zygote = cls(proc, ctl, generation)
        try:
            await _sendmsg(ctl, json.dumps(config).encode())
            msg, fds = await asyncio.wait_for(_recvmsg(ctl), READY_TIMEOUT_S)
            _close_all(fds)
            if msg.startswith(proto.MSG_READY):
                with contextlib.suppress(ValueError, TypeError):
                    zygote.init = str(json.loads(msg[1:]).get("init", "python"))
                return zygote
            if msg.startswith(proto.MSG_ERROR):
                raise ZygoteUnavailable(f"the zygote failed to start: {msg[1:].decode(errors='replace')}")
            raise ZygoteUnavailable(f"the zygote exited before it was ready (exit {await zygote.exited})")
        except TimeoutError:
            await zygote.close(kill=True)
            raise ZygoteUnavailable(f"the zygote was not ready within {READY_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            await zygote.close(kill=True)
            raise ZygoteUnavailable(f"the zygote failed to start: {exc}") from exc
        except BaseException:
            await zygote.close(kill=True)
            raise

    async def fork(self, conn: socket.socket) -> None:
        """Ask for one sandbox, to be set up over ``conn``. Raises ZygoteUnavailable if the zygote is gone."""
        if not self.alive():
            raise ZygoteUnavailable(f"zygote pid {self.pid} is gone")
        try:
            await _sendmsg(self.ctl, proto.MSG_FORK, [conn.fileno()])
        except OSError as exc:
            raise ZygoteUnavailable(f"zygote pid {self.pid} is gone: {exc}") from exc
        self.forks += 1

    async def close(self, kill: bool = False, timeout_s: float | None = CLOSE_TIMEOUT_S) -> None:
        """Close the control socket: the zygote exits once its sandboxes have ended (they end by their wall-time
        backstop at the latest). Killed after ``timeout_s`` (None: never), or at once with ``kill``."""
        self.closing = True
        self.ctl.close()
        if not kill:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), timeout_s)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # our own child, by the pid we hold
        await self.exited


# ---- the warm path of one backend -------------------------------------------------------------------------
@dataclass(eq=False)
class _Ready:
    """A pooled sandbox: PID 1 and the program process of fresh namespaces in a fresh cgroup, set up as far as
    no request decides, both waiting for one. Nothing has ever run in it."""

    zygote: Zygote
    cgroup: Cgroup
    conn: socket.socket           # PID 1's
    program: socket.socket | None  # the Python program process's (None for node, which PID 1 starts and feeds)
    pidfd: int                    # of PID 1: killing it ends every process of the sandbox
    init_pid: int
    stdio: list[int]              # node's: its stdin's write end, its stdout's and stderr's read ends

    def kill(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        """Release the sockets, the pidfd and any stdio not handed on (idempotent; does not kill)."""
        self.conn.close()
        if self.program is not None:
            self.program.close()
        _close_all(self.stdio)
        self.stdio = []
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class WarmPython:
    """The warm path of one NsjailBackend: its zygote (started, recycled after N forks, restarted when it
    dies), a few sandboxes forked ahead of requests, which requests may take the path, and the launch of one.

    Pooled sandboxes live in cgroups of their own under ``<cgroup_parent>.warm`` (each fresh, used by one
    execution, removed by its teardown), so that nothing under the executions' parent exists between
    executions."""

    def __init__(self, settings: Settings, layout: JailLayout, cgroups: CgroupManager,
                 language: str = "python") -> None:
        runtime = find_runtime(language)
        if runtime is None:
            raise SandboxFailure(f"no {language} runtime in the runtime table")
        self.runtime: Runtime = runtime
        self.node = runtime.language == "javascript"  # PID 1 starts node and feeds it (zygote._node_sandbox)
        python = find_runtime("python")
        if python is None:
            raise SandboxFailure("no python runtime in the runtime table (the zygote is a Python program)")
        self.python: Runtime = python
        self.layout = layout
        self.cgroups = cgroups
        self.recycle_after = settings.warm_python_recycle_after
        self.mode = settings.warm_python_mode
        self.sizer = PoolSizer(settings.warm_python_pool, settings.warm_python_pool_max,
                               settings.warm_python_pool_memory_fraction,
                               available_bytes=lambda: available_memory(cgroups.hierarchy)[0])
        d = settings.defaults  # a pooled cgroup's limits until its request's own replace them (mostly the same)
        self._pool_limits = CgroupLimits(d.memory_bytes, d.max_pids + INIT_PIDS, settings.cpu_cores)
        self.root = settings.state_dir / "warm-root"
        self.state_dir = settings.state_dir
        self.native: Path | None = None  # the built zygote_native.c (Python zygotes only)
        self.native_problem = "" if not self.node else "node's PID 1 is Python"
        self.zygote: Zygote | None = None
        self.problem = "not started"
        self.generation = 0
        self._pool: collections.deque[_Ready] = collections.deque()
        self._filling: set[asyncio.Task[None]] = set()
        self._fill_failed = 0.0
        self._replacing: asyncio.Task[None] | None = None
        self._retired: dict[Zygote, asyncio.Task[None]] = {}  # old zygotes draining in the background
        self._cleanups: set[asyncio.Task[None]] = set()
        self._tending: asyncio.Task[None] | None = None
        self._closed = False
        self._last_start = 0.0
        self._backoff = RESTART_BACKOFF_S
        self.launched = 0  # executions that took the warm path

    def config(self) -> dict[str, Any]:
        """What the zygote is told: its file-system view, interpreter, seccomp filter, users and defaults."""
        return {
            "root": str(self.root),
            "plan": [[view.kind.value, view.source, view.target] for view in host_view(self.layout)],
            "mount_points": [WORKDIR, "/tmp", "/dev/shm", "/proc"],  # noqa: S108 - the sandbox's own tmpfs
            "python": [self.python.interpreter, *self.python.args],  # the zygote's own interpreter
            "fresh": self.mode is WarmPythonMode.FRESH,
            "node": {"interpreter": self.runtime.interpreter, "stub": NODE_STUB} if self.node else None,
            "program_env": [list(kv) for kv in BASE_ENV],  # a fresh interpreter or node starts as a cold one
            "preload": list(PRELOAD),
            "seccomp": libseccomp_config(),  # the filter of every sandbox, for this machine's architecture
            "uid": self.layout.uid,
            "gid": self.layout.gid,
            "workdir": WORKDIR,
            "file": self.runtime.file_name,
            "hostname": HOSTNAME,
            "nice": NICE_LEVEL,
            "soft_rlimits": list(SOFT_RLIMITS),
            "native": str(self.native) if self.native is not None else None,
        }

    async def start(self) -> None:
        """Start the first zygote; on failure the path stays off (requests run cold) and ``problem`` says why."""
        self.root.mkdir(mode=0o700, exist_ok=True)  # a mount point inside the zygote's own mount namespace only
        if not self.node:
            self.native, self.native_problem = await native.build(self.state_dir)
            if self.native is None:
                log.warning("warm Python path: sandboxes get the Python PID 1 (%s)", self.native_problem)
        await self._replace()
        self._tending = asyncio.get_running_loop().create_task(self._tend())

    # ---- the zygote's life ------------------------------------------------------------------------------
    async def _replace(self) -> None:
        self._last_start = time.monotonic()
        self.generation += 1
        try:
            new = await Zygote.start(self.config(), self.generation)
        except ZygoteUnavailable as exc:
            self.problem = str(exc)
            log.error("warm Python path unavailable (requests run cold; next attempt in %.0f s): %s",
                      self._backoff, exc)
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF_MAX_S)
            return
        self._backoff = RESTART_BACKOFF_S
        if self._closed:
            await new.close(kill=True)
            return
        old, self.zygote, self.problem = self.zygote, new, ""
        new.exited.add_done_callback(lambda _: self._exited(new))
        if old is not None:
            self._retire(old)
        log.info("warm Python zygote pid %d ready (generation %d)", new.pid, new.generation)
        self._refill()

    def _exited(self, zygote: Zygote) -> None:
        if zygote is not self.zygote or self._closed:
            return
        self.zygote = None
        self.problem = f"zygote pid {zygote.pid} exited with {zygote.proc.returncode}; restarting it"
        log.error("warm Python %s (requests run cold meanwhile)", self.problem)
        self._schedule_replace()

    def _schedule_replace(self) -> None:
        """Start a replacement in the background, unless one is starting (at most one attempt per backoff)."""
        if self._closed or (self._replacing is not None and not self._replacing.done()):
            return
        delay = max(0.0, self._last_start + self._backoff - time.monotonic()) if self.zygote is None else 0.0

        async def replace() -> None:
            await asyncio.sleep(delay)
            await self._replace()

        self._replacing = asyncio.get_running_loop().create_task(replace())

    def _retire(self, zygote: Zygote) -> None:
        """Let an old zygote drain in the background: it exits once the sandboxes it forked have ended."""
        task = asyncio.get_running_loop().create_task(zygote.close(timeout_s=None))
        self._retired[zygote] = task
        task.add_done_callback(lambda _: self._retired.pop(zygote, None))

    # ---- the pool -----------------------------------------------------------------------------------------
    async def _tend(self) -> None:
        """Resize the pool now and then: the load's window moves on even when no request comes."""
        while not self._closed:
            await asyncio.sleep(POOL_TEND_S)
            try:
                self._refill()
            except Exception:  # a failed resize must not end the tending (the next one retries)
                log.exception("could not resize the warm pool")

    def _refill(self) -> None:
        """Fork sandboxes in the background until the sizer's target are ready or being made; end the ready
        ones beyond it (after a burst, or when the host's memory runs short)."""
        target = self.sizer.target(len(self._pool))
        while len(self._pool) > target:
            self._discard(self._pool.pop())
        z = self.zygote
        if self._closed or z is None or not z.alive() or time.monotonic() < self._fill_failed + RESTART_BACKOFF_S:
            return
        loop = asyncio.get_running_loop()
        while len(self._pool) + len(self._filling) < target:
            task = loop.create_task(self._fill_one(z))
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self, zygote: Zygote) -> None:
        try:
            ready = await self._fork(zygote)
        except (ZygoteUnavailable, SandboxFailure) as exc:
            self._fill_failed = time.monotonic()
            log.warning("could not fork a sandbox ahead of requests: %s", exc)
            return
        if self._closed:
            self._discard(ready)
        else:
            self._pool.append(ready)

    async def _fork(self, zygote: Zygote) -> _Ready:
        """One sandbox forked and set up up to its request, in a fresh cgroup. Raises ZygoteUnavailable."""
        if not zygote.alive():
            raise ZygoteUnavailable(f"zygote pid {zygote.pid} is gone")
        try:
            cgroup = self.cgroups.create(f"pool-{uuid.uuid4().hex}", self._pool_limits)
        except OSError as exc:
            raise SandboxFailure(f"could not create a cgroup for a warm sandbox: {exc}") from exc
        conn, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        procs: list[int] = []
        pidfd, init_pid, program, stdio = -1, 0, None, None
        waiting = 3 if self.node else 1
        try:
            # PID 1 joins while it is single-threaded (it always is: a fork of the zygote, which has no threads)
            procs = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cgroup.single_thread_join_files()]
            conn.setblocking(False)
            proto.send(conn, b"{}", procs)  # PREPARE: queued for PID 1, which reads it first thing
            _close_all(procs)
            try:
                await zygote.fork(child)
            finally:
                child.close()
            async with asyncio.timeout(FORK_TIMEOUT_S):
                while stdio is None or pidfd < 0:  # the zygote's FORKED and PID 1's WAITING, in any order
                    msg, fds = await _recvmsg(conn)
                    kind = msg[:1]
                    if kind == proto.MSG_FORKED and fds and pidfd < 0:
                        pidfd, init_pid = fds.pop(0), struct.unpack("i", msg[1:5])[0]
                    elif kind == proto.MSG_WAITING and len(fds) == waiting and stdio is None:
                        if self.node:
                            stdio, fds = fds, []
                        else:
                            program, stdio = socket.socket(fileno=fds.pop(0)), []
                    elif kind == proto.MSG_ERROR:
                        raise ZygoteUnavailable(f"a sandbox could not be set up: {msg[1:].decode(errors='replace')}")
                    elif not msg:
                        raise ZygoteUnavailable("the zygote dropped the sandbox (did it exit?)")
                    _close_all(fds)
            if program is not None:
                program.setblocking(False)
            return _Ready(zygote, cgroup, conn, program, pidfd, init_pid, stdio)
        except BaseException as exc:
            _close_all(procs)
            if pidfd >= 0:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
            if program is not None:
                program.close()
            _close_all(stdio or [])
            conn.close()
            self._remove_later(cgroup)
            if isinstance(exc, TimeoutError):
                raise ZygoteUnavailable(f"no sandbox was ready within {FORK_TIMEOUT_S:.0f} s") from None
            if isinstance(exc, OSError):
                raise ZygoteUnavailable(f"could not fork a sandbox: {exc}") from exc
            raise

    def _discard(self, ready: _Ready) -> None:
        """End a pooled sandbox that will never run anything, and remove its cgroup once it is empty."""
        ready.kill()
        ready.close()
        self._remove_later(ready.cgroup)

    def _remove_later(self, cgroup: Cgroup) -> None:
        async def remove() -> None:
            for _ in range(500):
                cgroup.kill_all()
                if cgroup.try_remove():
                    return
                await asyncio.sleep(0.01)
            log.error("could not remove the cgroup of a discarded warm sandbox: %s", cgroup.dirs())

        task = asyncio.get_running_loop().create_task(remove())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    # ---- requests -----------------------------------------------------------------------------------------
    def eligible(self, spec: ExecutionSpec) -> bool:
        """Whether ``spec`` can take the warm path now (else it runs cold)."""
        if spec.runtime != self.runtime or spec.egress is not None:
            return False  # a sandbox with network runs cold: its proxy is made before its program starts
        prefixes, names = ((NODE_STARTUP_ENV_PREFIXES, NODE_STARTUP_ENV_NAMES) if self.node
                           else (STARTUP_ENV_PREFIXES, STARTUP_ENV_NAMES))
        if any(name.startswith(prefixes) or name in names for name, _ in spec.env):
            return False
        if self._pool:
            return True
        if self.zygote is None or not self.zygote.alive():
            self._schedule_replace()
            return False
        return True

    def describe(self) -> str:
        z = self.zygote
        if z is not None and z.alive():
            mode = "node started ahead" if self.node else f"{self.mode.value} mode"
            return (f"on, {mode}: zygote pid {z.pid} "
                    f"(generation {z.generation}, {z.forks}/{self.recycle_after} forks), "
                    f"{len(self._pool)} sandboxes ready (target {self.sizer.target(len(self._pool))}), "
                    f"{self.launched} runs; PID 1 {z.init}"
                    f"{f' ({self.native_problem})' if z.init != 'native' and self.native_problem else ''}; "
                    "no user namespace")
        return f"on, but {self.problem}: Python runs cold meanwhile"

    async def launch(self, spec: ExecutionSpec, limits: Limits, scratch: DetachedScratch) -> WarmJail:
        """Run ``spec`` in a pooled sandbox (or one forked now if none is ready) with ``scratch`` (ready, with
        the code in it; PID 1 moves the mount to its /work); the sandbox's cgroup, with this execution's limits,
        is the jail's.

        Raises ZygoteUnavailable when no sandbox could take the request before anything of it ran (the
        caller then runs it cold), SandboxFailure for a failure of this server."""
        self.sizer.started()
        try:
            jail = await self._launch(spec, limits, scratch)
        except BaseException:
            self.sizer.finished()
            raise
        # In flight until PID 1's report, not until the teardown after the reply: a burst right after another
        # must not find the last one's teardowns counted and lift the pool's target above the real load.
        if jail.reported():  # it ended while it was being handed over
            self.sizer.finished()
        else:
            jail.on_report = self.sizer.finished
        jail.on_close = self._ended
        return jail

    def _ended(self) -> None:
        """An execution's jail is closed: the pool made whole (see _launch)."""
        if not self._closed:
            self._refill()

    async def _launch(self, spec: ExecutionSpec, limits: Limits, scratch: DetachedScratch) -> WarmJail:
        if self._pool:
            ready = self._pool.popleft()
        else:
            z = self.zygote
            if z is None or not z.alive():
                raise ZygoteUnavailable("no zygote is ready")
            ready = await self._fork(z)
        # The replacement waits for this execution's end (_ended), unless the pool is empty (requests are
        # waiting): started now, it would compete with this execution for the cores and the event loop (a fresh
        # interpreter's start is ~10 ms of CPU; even a fork's set-up here, cgroups and sockets, cost an agent's
        # paced call ~2.5 ms of its latency)
        if not self._pool:
            self._refill()
        if ready.zygote.forks >= self.recycle_after and ready.zygote is self.zygote:
            self._schedule_replace()
        with contextlib.suppress(OSError, ValueError):
            # What a ready sandbox holds, its interpreter started (a fresh one or node starts after WAITING)
            self.sizer.measured(ready.cgroup.peak_memory_bytes())
        try:
            ready.cgroup.update(self._pool_limits,
                                CgroupLimits(limits.memory_bytes, limits.max_pids + INIT_PIDS, spec.cpu_cores))
        except OSError as exc:
            self._discard(ready)
            raise SandboxFailure(f"could not set the limits of a warm sandbox's cgroup: {exc}") from exc
        tmp, shm = tmpfs_bytes(limits)
        init_run: dict[str, Any] = {"time_limit_s": time_limit_s(limits), "tmp_bytes": tmp, "shm_bytes": shm}
        program_run = {
            "argv": list(self.runtime.argv()),
            "env": [list(kv) for kv in jail_env(spec)],
            "rlimits": {"CPU": cpu_rlimit_s(limits, use_cgroups=True), "FSIZE": limits.file_size_bytes,
                        "NOFILE": RLIMIT_NOFILE, "CORE": 0, "AS": -1},
        }
        ours: list[int] = []
        theirs: list[int] = []
        try:
            if ready.program is None:  # node: its stdio exists already; PID 1 hands it the rest of the request
                ours, ready.stdio = ready.stdio, []
                init_run["program"] = program_run
                r, w = os.pipe()
                ours.append(r)
                theirs.append(w)
            else:
                for _ in range(4):
                    r, w = os.pipe()
                    ours.append(r)
                    theirs.append(w)
                ours[0], theirs[0] = theirs[0], ours[0]  # the program reads stdin; we read the other three
            theirs.append(os.dup(scratch.fd))  # the mount itself: PID 1 attaches it, ours stays for the results
            # PID 1 first: if it is gone, nothing can have run, and the request may still go cold
            message = (json.dumps(init_run).encode() if self.node else
                       proto.INIT_RUN.pack(init_run["time_limit_s"], init_run["tmp_bytes"], init_run["shm_bytes"]))
            proto.send(ready.conn, message, theirs[-2:])
            if ready.program is not None:
                proto.send(ready.program, marshal.dumps(program_run), theirs[:3])  # marshal: see zygote.py
        except OSError as exc:
            self._discard(ready)
            _close_all(ours)
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise ZygoteUnavailable(f"a pooled sandbox had died: {exc}") from exc
            if exc.errno == errno.EMSGSIZE:  # an environment beyond a socket buffer: a cold jail takes it
                raise ZygoteUnavailable(f"the request is too large for the warm path: {exc}") from exc
            raise SandboxFailure(f"could not start a warm sandbox: {exc}") from exc
        finally:
            _close_all(theirs)
        try:
            jail = await WarmJail.open(ready, *ours)
        except BaseException:  # cancelled, most likely: the sandbox may have started, so it is killed
            self._discard(ready)
            raise
        self.launched += 1
        return jail

    async def aclose(self) -> None:
        """Stop everything: pooled sandboxes, the zygotes (the backend has waited for every execution first)."""
        self._closed = True
        background = [*self._filling, *(t for t in (self._replacing, self._tending) if t is not None)]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        while self._pool:
            self._discard(self._pool.popleft())
        if self.zygote is not None:
            await self.zygote.close()
            self.zygote = None
        for old, task in list(self._retired.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await old.close()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        self.problem = "closed"


# ---- one warm sandbox -------------------------------------------------------------------------------------
class WarmJail(Jail):
    """One warm sandbox running a request, as the server sees it: the program's pipes; the status pipe its
    PID 1 reports on (and holds until it exits: EOF means the whole sandbox has ended); a pidfd of PID 1; and
    the two sockets on which the sandbox says how far its set-up got."""

    def __init__(self, ready: _Ready) -> None:
        self.cgroup = ready.cgroup
        self.init_pid = ready.init_pid
        self._ready = ready
        self._killed = False
        self._started = False
        self._error = ""
        self._report = bytearray()
        self._transports: list[asyncio.BaseTransport] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reports: asyncio.Task[None] | None = None
        self._reported = asyncio.Event()  # PID 1's report is in (or the status pipe's EOF came without one)
        self.on_close: Callable[[], None] | None = None  # told once, when the jail is closed
        self.on_report: Callable[[], None] | None = None  # told once, at PID 1's report or the close before it

    def __str__(self) -> str:
        return f"warm sandbox (PID 1 = host pid {self.init_pid})"

    @classmethod
    async def open(cls, ready: _Ready, stdin_w: int, stdout_r: int, stderr_r: int, status_r: int) -> WarmJail:
        """Takes ownership of the four fds, and (once it returns) of the pooled sandbox's sockets and pidfd."""
        jail = cls(ready)
        fds = [stdin_w, stdout_r, stderr_r, status_r]
        try:
            jail.stdin = await pipe_writer(fds.pop(0))
            jail._transports.append(jail.stdin.transport)
            for name in ("stdout", "stderr"):
                reader, transport = await pipe_reader(fds.pop(0))
                setattr(jail, name, reader)
                jail._transports.append(transport)
            status, transport = await pipe_reader(fds.pop(0))
            jail._transports.append(transport)
        except BaseException:  # the caller discards the sandbox itself
            _close_all(fds)
            for transport in jail._transports:
                transport.close()
            raise
        loop = asyncio.get_running_loop()
        jail._reports = loop.create_task(jail._read_status(status))
        jail._tasks = [jail._reports, loop.create_task(jail._read(ready.conn))]
        if ready.program is not None:
            jail._tasks.append(loop.create_task(jail._read(ready.program)))
        return jail

    async def _read(self, sock: socket.socket) -> None:
        while msg := (await _recvmsg(sock))[0]:
            if msg[:1] == proto.MSG_STARTED:
                self._started = True
            elif msg[:1] == proto.MSG_ERROR:
                self._error = self._error or msg[1:].decode(errors="replace")

    async def _read_status(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(REPORT_CAP):
                if len(self._report) < REPORT_CAP:
                    self._report += chunk[: REPORT_CAP - len(self._report)]
                if b"\n" in self._report:  # one short write, so whole: "<code> <signal>\n"
                    self._report_in()
        finally:
            self._report_in()

    def _report_in(self) -> None:
        self._reported.set()
        self._tell_report()

    def _tell_report(self) -> None:
        on_report, self.on_report = self.on_report, None
        if on_report is not None:
            on_report()

    def running(self) -> bool:
        return self._reports is not None and not self._reports.done()

    def kill(self) -> None:
        self._killed = True
        self._ready.kill()  # PID 1 of the sandbox's PID namespace: the kernel kills every process in it with it

    async def wait(self) -> None:
        if self._reports is None:
            return
        # PID 1 reports only once it has killed and reaped every other process of its PID namespace
        # (zygote._init), and then exits at once: from the report on, only its own exit is left (ended()).
        await self._reported.wait()
        await asyncio.wait(self._tasks[1:], timeout=CONN_DRAIN_S)  # a set-up error sent just before that

    def reported(self) -> bool:
        return self._reports is None or self._reported.is_set()

    async def ended(self) -> None:
        await self.wait()
        if self._reports is not None:
            await asyncio.wait({self._reports})  # the status pipe's EOF: PID 1, its last holder, is exiting
        await self._exited()

    async def _exited(self) -> None:
        """Until PID 1 has exited. Its pidfd turns readable only after the kernel has killed and reaped every
        other process of its PID namespace, so nothing of the sandbox runs any more; the zygote reaps PID 1's
        own zombie a moment later. (Polling for that reap cost ~1 ms per execution.)"""
        if self._ready.pidfd < 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                _ready(asyncio.get_running_loop(), self._ready.pidfd, "read"), CONN_DRAIN_S)

    def outcome(self, killed: bool) -> tuple[int | None, int | None]:
        reported = parse_status(bytes(self._report))
        if reported is not None:
            return reported
        if killed:
            return None, signal.SIGKILL  # killed by us before PID 1 could report
        if self._error:
            raise SandboxFailure(f"the warm sandbox could not be set up: {self._error}")
        if self._started:
            # PID 1 ended without reporting after the program started: it can only have been killed (the
            # program may, as in a cold jail, lower its init's RLIMIT_CPU): as cold jails say then, SIGKILL.
            return None, signal.SIGKILL
        raise SandboxFailure("the warm sandbox ended before its program started")

    async def aclose(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._transports:
            transport.close()
        self._ready.close()
        self._tell_report()  # closed without a report (a set-up failure, a kill before it): told now
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def reap_abandoned_pools(pool: CgroupManager) -> int:
    """Remove the pool cgroups a crashed server left next to ``pool``'s parent once its own parent was removed
    (by whoever cleaned up after it), so that nothing would ever reap them. Only rmdir: a cgroup that still has
    a process or a child cannot be removed, so nothing live is touched. Returns how many parents went."""
    removed = 0
    for own in pool.hierarchy.dirs():
        with contextlib.suppress(OSError):
            for sibling in own.parent.iterdir():
                name = sibling.name
                if (sibling == own or not name.endswith(POOL_CGROUP_SUFFIX) or not sibling.is_dir()
                        or (own.parent / name[: -len(POOL_CGROUP_SUFFIX)]).exists()):
                    continue
                for sub in sibling.iterdir():
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    sibling.rmdir()
                    removed += 1
    return removed


# ---- sockets with fds, on the event loop ------------------------------------------------------------------
async def _recvmsg(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it (b"" at EOF)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            msg, anc, _, _ = sock.recvmsg(REPLY_BYTES, socket.CMSG_SPACE(proto.MAX_FDS * 4))
            return msg, proto.received_fds(anc)
        except (BlockingIOError, InterruptedError):
            pass
        await _ready(loop, sock.fileno(), "read")


async def _sendmsg(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            proto.send(sock, data, fds or [])
            return
        except (BlockingIOError, InterruptedError):
            pass
        await _ready(loop, sock.fileno(), "write")


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, way: str) -> None:
    """Until ``fd`` is readable (``way`` "read") or writable ("write")."""
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add, remove = (loop.add_reader, loop.remove_reader) if way == "read" else (loop.add_writer, loop.remove_writer)
    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
