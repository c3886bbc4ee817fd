"""The Docker backend: each execution in a fresh container that is force-removed in every outcome.

A container runs with network mode none, uid/gid 65534, a read-only root, size-capped tmpfs for /work and /tmp,
every capability dropped, no-new-privileges, our seccomp profile (seccomp.py: the same allow-list as nsjail's),
memory with swap equal to memory,
a CPU quota, a pids limit, ulimits (nofile, fsize, cpu), no logging driver and labels that mark it as ours.

Code and input files never come from a host path: the container's first process is the sandbox init (see
sandbox_init.DOCKER_INIT), which reads a byte count from stdin, feeds exactly that many bytes of tar to a tar
that extracts them into /work, runs the program on the rest of stdin (the request's stdin), relays its stdout
in frames, and at the end sends the program's wait status and a tar of /work (the tmpfs dies with the
container). The server parses that tar in memory, never extracting it, and keeps only regular files.

Because nothing request-specific is in the container's configuration but its limits, containers for the default
limits are created and started ahead of time, each waiting on its stdin: the warm pool. In each, the init has
started tar and the program's process before the request: a Python program's interpreter is already up, waiting
for /work to be complete (sandbox_init.DOCKER_PYTHON_STUB). A pooled container is used for exactly one request,
then destroyed.

Each container's cgroup is placed under a per-execution cgroup of ours (``--cgroup-parent``), so CPU time and
peak memory can still be read after the container's own cgroup is gone, as on the nsjail backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import socket
import struct
import tarfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Ulimit

from sandbox_server.backends.base import Backend, with_egress
from sandbox_server.backends.cgroups import (
    Cgroup,
    CgroupLimits,
    CgroupManager,
    CgroupsUnavailable,
    detect,
    remove_empty_below,
    unmanaged_dirs,
)
from sandbox_server.backends.outcome import finish, watchdog
from sandbox_server.backends.sandbox_init import (
    DOCKER_INIT,
    DOCKER_PYTHON_STUB,
    FRAME_DATA,
    FRAME_STATUS,
    FRAME_STDERR,
    INIT_PIDS,
    parse_status,
)
from sandbox_server.backends.seccomp import docker_security_opt
from sandbox_server.egress.env import WHEELHOUSE
from sandbox_server.errors import BackendUnavailable, SandboxFailure
from sandbox_server.execution.output import OutputCapture, select_outputs
from sandbox_server.execution.runtimes import BASE_ENV, HOSTNAME, RUNTIMES, WORKDIR, Runtime
from sandbox_server.execution.spec import (
    ExecutionResult,
    ExecutionSpec,
    Limits,
    OutputCallback,
    OutputFile,
    SessionSpec,
    Status,
    StreamName,
    Usage,
)
from sandbox_server.settings import Settings
from sandbox_server.telemetry import record_phase

if TYPE_CHECKING:
    from sandbox_server.egress.gateway import EgressLink
    from sandbox_server.sessions.sandbox import SessionSandbox

log = logging.getLogger(__name__)
# Sessions run in the python image: its agent and kernel are Python, and it holds node and bash too.
SESSION_RUNTIME = next(rt for rt in RUNTIMES if rt.language == "python")
MAX_DATA_FRAME = 65536  # the init's sysread size (sandbox_init.DOCKER_INIT): no real frame is larger

LABEL_MANAGED = "org.sandbox-server.managed"
LABEL_OWNER = "org.sandbox-server.owner"
LABEL_RUNTIME = "org.sandbox-server.runtime"
READ_CHUNK = 64 * 1024
PERL = "/usr/bin/perl"  # perl-base is essential on Debian: in every runtime image
REMOVE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8, None)  # seconds before each retry; None: the last attempt
# Our per-execution cgroup's pids headroom over the container's own limit (see _create): runc's init and its
# threads, counted there while it sets the container up. The container's cgroup still holds the exact limit.
RUNC_PIDS = 64
AHEAD_PIDS = 3  # the init, tar and the program, when both are started before the request (DOCKER_INIT)
ATTACH_PARAMS = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError)
TRAILER_OVERHEAD = 1024 * 1024  # tar headers and padding on top of the output-file budget
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)

def image_for(settings: Settings, runtime: Runtime) -> str:
    return f"{settings.docker_image_prefix}{runtime.image}:{settings.docker_image_tag}"


def wheelhouse_source(settings: Settings) -> str | None:
    """The host directory bound at /wheelhouse, if the operator set one."""
    return str(settings.wheelhouse.resolve()) if settings.wheelhouse is not None else None


@dataclass(frozen=True)
class ContainerConfig:
    """Everything a container is created with; translated to the Docker API in ``to_create_kwargs`` only."""

    image: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    limits: Limits
    cpu_cores: float
    uid: int
    gid: int
    labels: tuple[tuple[str, str], ...]
    cgroup_parent: str | None
    # A session's sandbox: its agent as the command (instead of the bootstrap and the init), a private /run,
    # and its CPU total as the CPU backstop.
    session_command: tuple[str, ...] = ()
    run_bytes: int = 0
    cpu_backstop_ms: int = 0
    extra_pids: int = INIT_PIDS
    wheelhouse: str | None = None  # the operator's wheels (a host directory), bound read-only at /wheelhouse
    stub: tuple[str, ...] = ()  # the program started ahead, waiting for "go" (DOCKER_INIT's stub mode), if any

    def init_command(self) -> list[str]:
        """The init and its mode (DOCKER_INIT): what fits the pids limit is started before the request."""
        if self.limits.max_pids + self.extra_pids < AHEAD_PIDS:
            mode, argv = "late", self.argv
        elif self.stub:
            mode, argv = "stub", self.stub
        else:
            mode, argv = "exec", self.argv
        return [PERL, "-e", DOCKER_INIT, "--", mode, *argv]

    def to_create_kwargs(self, api: docker.APIClient) -> dict[str, Any]:
        lim = self.limits
        # A backstop; the cgroup counter is polled
        cpu_s = math.ceil((self.cpu_backstop_ms or lim.cpu_time_ms) / 1000) + 1
        tmpfs_opts = f"rw,exec,nosuid,nodev,size={lim.scratch_bytes},uid={self.uid},gid={self.gid}"
        tmpfs = {WORKDIR: tmpfs_opts + ",mode=0755", "/tmp": tmpfs_opts + ",mode=1777"}  # noqa: S108
        if self.run_bytes:  # the agent's own directory (Docker mounts /run itself root-owned, whatever the mode)
            tmpfs["/run/sandbox"] = f"rw,nosuid,nodev,size={self.run_bytes},uid={self.uid},gid={self.gid},mode=0700"
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs=tmpfs,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true", docker_security_opt()],
            mem_limit=lim.memory_bytes,
            memswap_limit=lim.memory_bytes,
            nano_cpus=int(self.cpu_cores * 1e9),
            pids_limit=lim.max_pids + self.extra_pids,
            shm_size=min(lim.scratch_bytes, 64 * 1024 * 1024),
            ulimits=[
                Ulimit(name="nofile", soft=1024, hard=1024),
                Ulimit(name="fsize", soft=lim.file_size_bytes, hard=lim.file_size_bytes),
                Ulimit(name="cpu", soft=cpu_s, hard=cpu_s),
                Ulimit(name="core", soft=0, hard=0),
            ],
            log_config=LogConfig(type=LogConfig.types.NONE),
            cgroup_parent=self.cgroup_parent,
            init=False,
            privileged=False,
            binds={self.wheelhouse: {"bind": WHEELHOUSE, "mode": "ro"}} if self.wheelhouse else None,
        )
        return {
            "image": self.image,
            "command": list(self.session_command) or self.init_command(),
            "user": f"{self.uid}:{self.gid}",
            "working_dir": WORKDIR,
            "hostname": HOSTNAME,
            "environment": [f"{k}={v}" for k, v in self.env],
            "labels": dict(self.labels),
            "stop_signal": "SIGKILL",  # a daemon shutdown must not wait on a program that ignores SIGTERM
            "stdin_open": True,  # with detach=False this also sets StdinOnce: EOF on our side closes it
            "tty": False,
            "network_disabled": True,
            "host_config": host_config,
        }


@dataclass
class _Container:
    """One created-and-started container, waiting on its stdin for exactly one request."""

    id: str
    cgroup: Cgroup | None
    config: ContainerConfig
    started: float = 0.0


@dataclass
class _Run:
    spec: ExecutionSpec
    container: _Container | None = None
    killed_for: Status | None = None
    started: float = 0.0
    ended: float = 0.0
    started_ns: int = 0  # epoch ns, for the phase spans
    ended_ns: int = 0
    exited: bool = False
    # dockerd reported the container not running, or its init finished its report: no process of the program
    # is left
    stopped: bool = False
    last_cpu_ns: int = 0
    files: tuple[OutputFile, ...] = ()
    files_truncated: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    egress: EgressLink | None = None  # the container's proxy, with network


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owner = settings.cgroup_parent.replace("/", "-")
        self._executor = ThreadPoolExecutor(max_workers=settings.max_running + 4, thread_name_prefix="docker")
        self._api: docker.APIClient | None = None
        self.problem = "not started"
        self.missing_images: list[str] = []
        self.cgroups: CgroupManager | None = None
        self._unmanaged: list[Path] = []  # our parent in the hierarchies we do not manage (see start)
        self._pool: dict[str, deque[_Container]] = {}
        self._live: set[str] = set()
        self._runs: dict[str, _Run] = {}  # running executions by id, for kill()
        self._teardowns: set[asyncio.Task[None]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._fill_lock = asyncio.Lock()
        self._wanted = asyncio.Event()  # a pooled container was taken
        self._closing = False

    # ---- life cycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            hierarchy = detect(f"sandbox-docker-{self.owner}")
            self.cgroups = CgroupManager(hierarchy)
            self.cgroups.setup()
            # runc makes each container's cgroup parent in every mounted hierarchy, ours or not; in the others
            # the per-execution directories are ours to remove (what a crash left, now).
            self._unmanaged = unmanaged_dirs(hierarchy, f"sandbox-docker-{self.owner}")
            for directory in self._unmanaged:
                remove_empty_below(directory)
        except CgroupsUnavailable as exc:
            self.cgroups = None
            log.warning("Docker backend without per-execution cgroups (%s): CPU time and peak memory are "
                        "not measured; the container's own limits still hold", exc)
        await self._connect()
        self._maintainer = asyncio.create_task(self._maintain())

    async def _connect(self) -> bool:
        """(Re)connect to dockerd; on success reap strays and check images. Never raises."""
        try:
            api = await self._call(docker.APIClient, base_url=self.settings.docker_host, version="auto",
                                   timeout=30)
            await self._call(api.ping)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            if self._api is not None or self.problem == "not started":
                log.error("Docker backend unavailable: cannot reach dockerd at %s: %s",
                          self.settings.docker_host, exc)
            self._api = None
            self.problem = f"cannot reach dockerd at {self.settings.docker_host}: {_short(exc)}"
            return False
        self._api = api
        self.problem = ""
        await self._reap()
        missing = []
        for rt in RUNTIMES:
            image = image_for(self.settings, rt)
            try:
                await self._call(api.inspect_image, image)
            except docker.errors.ImageNotFound:
                missing.append(image)
        if missing and missing != self.missing_images:
            log.error("runtime images missing: %s; build them with `sandbox-server images build`", ", ".join(missing))
        self.missing_images = missing
        return True

    async def _maintain(self) -> None:
        """Reconnect when dockerd comes back, refill the warm pool, reap strays periodically."""
        last_reap = time.monotonic()
        while not self._closing:
            try:
                if self._api is None:
                    await self._connect()
                else:
                    if time.monotonic() - last_reap > self.settings.docker_reap_interval_s:
                        await self._reap()
                        last_reap = time.monotonic()
                    await self._fill_pool()
            except _DOCKER_ERRORS as exc:
                self._lost(exc)
            except Exception:
                log.exception("Docker backend maintenance failed")
            if self._api is None:
                await asyncio.sleep(1.0)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), 0.2)
                self._wanted.clear()

    def describe(self) -> dict[str, str]:
        state = "available" if self._api is not None else f"UNAVAILABLE ({self.problem})"
        return {
            "backend": self.name,
            "docker": f"{self.settings.docker_host}: {state}",
            "images": "missing: " + ", ".join(self.missing_images) if self.missing_images else "all present",
            "container": "network none, read-only root, cap-drop ALL, no-new-privileges, seccomp allow-list, "
                         f"user {self.settings.sandbox_uid}:{self.settings.sandbox_gid}",
            "warm pool": f"{self.settings.docker_pool_size} per runtime (default limits)",
            "cgroups": self.cgroups.version.value if self.cgroups else "container only (no usage counters)",
        }

    async def aclose(self) -> None:
        self._closing = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
        if self._teardowns:
            await asyncio.gather(*self._teardowns, return_exceptions=True)
        pooled = [c for q in self._pool.values() for c in q]
        self._pool.clear()
        await asyncio.gather(*(self._destroy(c) for c in pooled), return_exceptions=True)
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._reap()
        if self.cgroups is not None:
            self.cgroups.reap()
            self.cgroups.remove_parents()
        for directory in self._unmanaged:
            remove_empty_below(directory)
            with contextlib.suppress(OSError):
                directory.rmdir()
        self._executor.shutdown(wait=True)

    # ---- one execution ----------------------------------------------------------------------------------
    async def run(self, spec: ExecutionSpec, on_output: OutputCallback | None = None) -> ExecutionResult:
        if self._api is None:
            raise BackendUnavailable(f"the Docker backend is unavailable: {self.problem}")
        image = image_for(self.settings, spec.runtime)
        if image in self.missing_images:
            raise BackendUnavailable(
                f"runtime image {image} is missing; build it with `sandbox-server images build`", retry_after_s=30
            )
        run = _Run(spec=spec)
        self._runs[spec.execution_id] = run
        begun = time.time_ns()
        try:
            return await self._run(run, on_output)
        except _DOCKER_ERRORS as exc:
            if isinstance(exc, docker.errors.APIError) and exc.status_code is not None:
                # dockerd answered: it is there, and its pool with it; only this container failed.
                if exc.status_code < 500:
                    raise SandboxFailure(f"Docker refused the container: {_short(exc)}") from exc
                raise BackendUnavailable(f"Docker failed the container: {_short(exc)}", retry_after_s=1) from exc
            self._lost(exc)
            raise BackendUnavailable(f"the Docker backend failed mid-run: {_short(exc)}") from exc
        finally:
            self._runs.pop(spec.execution_id, None)
            if run.egress is not None:
                await run.egress.aclose()
            record_phase("sandbox.start", begun, run.started_ns or None, **{"sandbox.backend": self.name})
            if run.started_ns:
                record_phase("sandbox.run", run.started_ns, run.ended_ns or None)
            if run.container is not None:
                # A container seen stopped has no process left: removing it is bookkeeping the reply need not
                # wait for (aclose waits for it, the reaper backs it up). Any other must be gone first.
                await self.teardown(self._destroy(run.container), self._teardowns, after_reply=run.stopped)

    async def open_session(self, spec: SessionSpec) -> SessionSandbox:
        if self._api is None:
            raise BackendUnavailable(f"the Docker backend is unavailable: {self.problem}")
        image = image_for(self.settings, SESSION_RUNTIME)
        if image in self.missing_images:
            raise BackendUnavailable(
                f"runtime image {image} is missing; build it with `sandbox-server images build`", retry_after_s=30)
        from sandbox_server.backends.docker_session import DockerSession

        session = DockerSession(self, spec)
        try:
            await session.start()
        except _DOCKER_ERRORS as exc:
            self._lost(exc)
            raise BackendUnavailable(f"the Docker backend failed starting a session: {_short(exc)}") from exc
        return session

    def kill(self, execution_id: str) -> bool:
        run = self._runs.get(execution_id)
        if run is None or run.container is None:
            return False
        self._kill(run, Status.KILLED)
        return True

    async def _run(self, run: _Run, on_output: OutputCallback | None) -> ExecutionResult:
        spec = run.spec
        config = self._config(spec.runtime, spec.limits, spec.env)
        api = self._api
        if api is None:
            raise BackendUnavailable(f"the Docker backend is unavailable: {self.problem}")
        raw = None
        pooled = self._take(config)
        if pooled is not None:
            run.container = pooled
            try:
                raw = await self._call(api.attach_socket, pooled.id, params=ATTACH_PARAMS)
            except docker.errors.APIError:  # it died in the pool (e.g. dockerd restarted): use a fresh one
                await self._destroy(pooled)
                run.container = None
        if run.container is None:
            run.container = await self._create(config)
        container = run.container
        if raw is None:
            raw = await self._call(api.attach_socket, container.id, params=ATTACH_PARAMS)
        sock: socket.socket = raw._sock  # the hijacked connection: stdin in, multiplexed stdout/stderr out
        sock.setblocking(False)
        if spec.egress is not None:
            # Before the payload: the program cannot start before its tar has arrived, so the proxy is there
            # before the program's first connection.
            try:
                run.egress = await self.attach_egress(
                    await self.container_pid(container.id), spec.egress, spec.limits.egress_bytes,
                    execution_id=spec.execution_id, session_id=spec.session_id, exercise=spec.exercise)
            except BaseException:
                sock.close()
                raw.close()
                raise
        loop = asyncio.get_running_loop()
        capture = OutputCapture(spec.limits.output_bytes, on_output)
        frames = _Frames(spec.max_output_file_bytes + TRAILER_OVERHEAD)
        try:
            payload = _payload(spec)
            run.started = time.monotonic()
            run.started_ns = time.time_ns()

            async def send() -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await loop.sock_sendall(sock, payload)
                    sock.shutdown(socket.SHUT_WR)  # closes the program's stdin (StdinOnce)

            async def receive() -> None:
                buf = bytearray()
                while chunk := await loop.sock_recv(sock, READ_CHUNK):
                    buf += chunk
                    while len(buf) >= 8:
                        kind, size = buf[0], struct.unpack(">I", buf[4:8])[0]
                        if len(buf) < 8 + size:
                            break
                        data = bytes(buf[8:8 + size])
                        del buf[:8 + size]
                        if kind == 2:
                            ok = await capture.feed(StreamName.STDERR, data)
                        else:
                            ok = True
                            for stream, piece in frames.feed(data):
                                ok = ok and await capture.feed(stream, piece)
                            if frames.overflow:
                                self._kill(run, None)  # enough of the files, or a broken stream: stop it
                                return
                            if frames.complete:
                                return
                        if not ok:
                            self._kill(run, Status.OUTPUT_LIMIT)
                            return

            def cpu_ns() -> int:
                if container.cgroup is not None:
                    run.last_cpu_ns = container.cgroup.cpu_time_ns()
                return run.last_cpu_ns

            watcher = asyncio.create_task(watchdog(
                run.started, spec.limits, lambda: not run.exited,
                cpu_ns if container.cgroup is not None else None, lambda reason: self._kill(run, reason)))
            sender = asyncio.create_task(send())
            try:
                # The output ends when the program does; a program that never read its stdin must not leave
                # the sender blocked on a full pipe.
                await receive()
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                # Close before waiting: dockerd does not finish a container whose output nobody reads.
                sock.close()
                raw.close()
                if frames.complete and frames.status is not None and container.cgroup is not None:
                    # The init reported, after killing every other process, and its tar is done: what is left
                    # is tar's exit, which is not waited for: the container's processes are killed through our
                    # cgroup, so none is left when the reply goes out. The outcome is in; the OOM kills are our
                    # cgroup's to count (the container's own sits below it). Removing the container follows.
                    state: dict[str, Any] = {}
                    oom_kills = container.cgroup.oom_kills()
                    try:
                        container.cgroup.kill_all()
                        run.stopped = True
                    except OSError as exc:  # then the container is removed before the reply instead
                        log.warning("could not kill container %s through its cgroup: %r", container.id[:12], exc)
                else:
                    state = await self._wait_exit(container.id)
                    oom_kills = 1 if state.get("OOMKilled") else 0
                    run.stopped = not state.get("Running", False)
            finally:
                sender.cancel()
                run.exited = True
                run.ended = time.monotonic()
                run.ended_ns = time.time_ns()
                if run.egress is not None:
                    await run.egress.aclose()  # the program has ended: the counters are final
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        finally:
            sock.close()
            raw.close()
        return self._result(run, state, oom_kills, capture, frames)

    def _lost(self, exc: BaseException) -> None:
        """dockerd went away: stop using it until the maintainer reconnects; pooled containers are gone too
        (the reaper removes whatever survived a restart)."""
        if self._api is not None:
            log.error("lost dockerd at %s: %s", self.settings.docker_host, _short(exc))
        self._api = None
        self.problem = f"lost dockerd: {_short(exc)}"
        for queue in self._pool.values():
            for container in queue:
                if container.cgroup is not None:
                    container.cgroup.kill_all()
                    container.cgroup.try_remove()
            queue.clear()

    def _kill(self, run: _Run, reason: Status | None) -> None:
        if run.killed_for is None:
            run.killed_for = reason
        api, container = self._api, run.container
        if api is not None and container is not None:
            # Fire and forget: the kill ends the output stream, which ends the run.
            self._executor.submit(_quiet, api.kill, container.id, "SIGKILL")

    async def container_pid(self, container_id: str) -> int:
        """The host pid of a running container's first process (for its network namespace). Raises
        SandboxFailure when it is not running; dockerd's own errors pass through."""
        api = self._api
        if api is None:
            raise BackendUnavailable("lost dockerd")
        info = await self._call(api.inspect_container, container_id)
        pid = int(info["State"].get("Pid") or 0)
        if pid <= 0:
            raise SandboxFailure("the container is not running")
        return pid

    async def _wait_exit(self, container_id: str) -> dict[str, Any]:
        """The container's State once it has stopped (the output stream has already ended)."""
        api = self._api
        if api is None:
            raise BackendUnavailable("lost dockerd")
        for _ in range(200):
            info = await self._call(api.inspect_container, container_id)
            state: dict[str, Any] = info["State"]
            if not state.get("Running"):
                return state
            await asyncio.sleep(0.01)
        await self._call(api.kill, container_id, "SIGKILL")
        info = await self._call(api.wait, container_id, timeout=10)
        return {"ExitCode": info.get("StatusCode", 137), "OOMKilled": False}

    def _result(
        self, run: _Run, state: dict[str, Any], oom_kills: int, capture: OutputCapture, frames: _Frames
    ) -> ExecutionResult:
        """``state``: dockerd's view of the stopped container (only its ExitCode is read, when the init could not
        report); ``oom_kills``: from dockerd's OOMKilled, or counted in our cgroup."""
        spec, container = run.spec, run.container
        if frames.status is not None:
            exit_code, sig = frames.status
        else:
            # Killed before the reporter could speak (by us, or the OOM killer): Docker says 128 + signal.
            code = int(state.get("ExitCode", -1))
            exit_code, sig = (None, code - 128) if 128 < code < 160 else (code, None)
        cg = container.cgroup if container else None
        files, truncated = frames.files(spec)
        return finish(
            spec,
            backend=self.name,
            limits=spec.limits,
            killed_for=run.killed_for,
            exit_code=exit_code,
            sig=sig,
            oom_kills=oom_kills,
            usage=with_egress(Usage(wall_time_s=run.ended - run.started,
                                    cpu_time_s=(cg.cpu_time_ns() if cg else run.last_cpu_ns) / 1e9,
                                    peak_memory_bytes=cg.peak_memory_bytes() if cg else 0), run.egress),
            capture=capture,
            files=files,
            files_truncated=truncated,
        )

    # ---- containers ------------------------------------------------------------------------------------
    def _config(self, runtime: Runtime, limits: Limits, env: tuple[tuple[str, str], ...]) -> ContainerConfig:
        return ContainerConfig(
            image=image_for(self.settings, runtime),
            argv=runtime.argv(),
            stub=(runtime.interpreter, *runtime.args, "-c", DOCKER_PYTHON_STUB) if runtime.language == "python" else (),
            env=(*BASE_ENV, *env),
            limits=limits,
            cpu_cores=self.settings.cpu_cores,
            uid=self.settings.sandbox_uid,
            gid=self.settings.sandbox_gid,
            labels=((LABEL_MANAGED, "true"), (LABEL_OWNER, self.owner), (LABEL_RUNTIME, runtime.language)),
            cgroup_parent=None,
            wheelhouse=wheelhouse_source(self.settings),
        )

    async def _create(self, config: ContainerConfig) -> _Container:
        """Create and start one container (waiting on stdin), under a fresh per-execution cgroup of ours."""
        api = self._api
        if api is None:
            raise BackendUnavailable(f"the Docker backend is unavailable: {self.problem}")
        name = uuid.uuid4().hex
        cgroup: Cgroup | None = None
        if self.cgroups is not None:
            lim = config.limits
            # The same limits as the container's own: the container's cgroup, checked first, is the one that
            # hits them (so Docker sees its OOM kills), and ours never reads more than the limit. The pids
            # limit excepted: runc's own init process and its threads are counted here while it sets the
            # container up, before the container's limit applies, and a small limit failed the start.
            cgroup = self.cgroups.create(name, CgroupLimits(
                lim.memory_bytes, lim.max_pids + config.extra_pids + RUNC_PIDS, config.cpu_cores))
            config = ContainerConfig(**{**config.__dict__,
                                        "cgroup_parent": f"/sandbox-docker-{self.owner}/{name}"})
        container = _Container(id="", cgroup=cgroup, config=config)
        self._live.add(name)
        try:
            created = await self._call(api.create_container, name=f"sandbox-{name}",
                                       **config.to_create_kwargs(api))
            container.id = created["Id"]
            self._live.add(container.id)
            await self._call(api.start, container.id)
            container.started = time.monotonic()
        except BaseException:
            await self._destroy(container)
            raise
        finally:
            self._live.discard(name)
        return container

    def _take(self, config: ContainerConfig) -> _Container | None:
        queue = self._pool.get(_pool_key(config))
        if not queue:
            return None
        self._wanted.set()  # refill now, not at the maintainer's next round
        return queue.popleft()

    async def _fill_pool(self) -> None:
        size = self.settings.docker_pool_size
        if size <= 0 or self._api is None or self._closing:
            return
        async def add(queue: deque[_Container], config: ContainerConfig) -> None:
            queue.append(await self._create(config))

        async with self._fill_lock:
            # Every missing container at once: dockerd starts them in parallel, so a drained pool is back
            # sooner than one container after another would bring it.
            adding: list[Coroutine[Any, Any, None]] = []
            for runtime in RUNTIMES:
                if image_for(self.settings, runtime) in self.missing_images:
                    continue
                config = self._config(runtime, _default_limits(self.settings), ())
                queue = self._pool.setdefault(_pool_key(config), deque())
                adding += [add(queue, config) for _ in range(size - len(queue))]
            if adding:
                failed = [r for r in await asyncio.gather(*adding, return_exceptions=True)
                          if isinstance(r, BaseException)]
                if failed:
                    raise failed[0]

    async def _destroy(self, container: _Container) -> None:
        """Force-remove the container and its per-execution cgroup. Raises SandboxFailure if it stays."""
        api = self._api
        problems: list[str] = []
        if container.id and api is not None:
            try:
                await self._remove(api, container.id)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"container {container.id[:12]}: {_short(exc)}")
            except _DOCKER_ERRORS as exc:
                # dockerd is gone: the container is handed to the reaper, which removes it when dockerd returns.
                self._lost(exc)
                log.warning("container %s left to the reaper: %s", container.id[:12], _short(exc))
        elif container.id:
            log.warning("container %s left to the reaper: dockerd unavailable", container.id[:12])
        self._live.discard(container.id)
        if container.cgroup is not None:
            for _ in range(200):
                container.cgroup.kill_all()
                if container.cgroup.try_remove():
                    break
                await asyncio.sleep(0.01)
            else:
                problems.append("per-execution cgroup still busy")
            name = container.cgroup.dirs()[0].name
            for directory in self._unmanaged:  # runc removed the container's own cgroup there, not ours
                with contextlib.suppress(OSError):
                    (directory / name).rmdir()
        if problems:
            log.error("teardown left: %s", "; ".join(problems))
            raise SandboxFailure("container teardown failed: " + "; ".join(problems),
                                 metadata={"phase": "teardown", "backend": self.name})

    async def _remove(self, api: docker.APIClient, container_id: str) -> None:
        """Force-remove a container. dockerd answers 500 now and then when the container's processes are exiting
        at that moment ("could not kill running container"); it is retried for about two seconds before the
        error counts."""
        for delay in REMOVE_RETRIES:
            try:
                await self._call(api.remove_container, container_id, force=True, v=True)
                return
            except docker.errors.APIError as exc:
                if exc.status_code is None or exc.status_code < 500 or delay is None:
                    raise
                log.info("removing container %s: %s; retrying", container_id[:12], _short(exc))
            await asyncio.sleep(delay)

    async def _reap(self) -> int:
        """Remove containers with our labels that no live request or pool slot owns."""
        api = self._api
        if api is None:
            return 0
        found = await self._call(api.containers, all=True,
                                 filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={self.owner}"]})
        # Looked at after the listing, by id and by name: a container being created while the list was made is
        # registered by name from before its create call until its id is (a snapshot taken before the list,
        # by id alone, let the reaper remove a request's brand-new container under it).
        owned = self._live | {c.id for q in self._pool.values() for c in q}
        strays = [c["Id"] for c in found
                  if c["Id"] not in owned and not owned.intersection(_our_names(c.get("Names") or []))]
        for cid in strays:
            with contextlib.suppress(docker.errors.NotFound):
                await self._call(api.remove_container, cid, force=True, v=True)
        if strays:
            log.warning("removed %d stray sandbox containers", len(strays))
        return len(strays)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))


def _pool_key(config: ContainerConfig) -> str:
    return repr((config.image, config.argv, config.stub, config.env, config.limits, config.cpu_cores))


def _default_limits(settings: Settings) -> Limits:
    return Limits(**settings.defaults.model_dump())


def _payload(spec: ExecutionSpec) -> bytes:
    """The init's input: "<n>\\n", n bytes of tar (the code and input files), then the stdin."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path, content in ((spec.runtime.file_name, spec.code), *((f.path, f.content) for f in spec.files)):
            parts = path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    archive = buf.getvalue()
    return f"{len(archive)}\n".encode() + archive + spec.stdin


class _Frames:
    """Decodes the init's stdout: data frames (the program's stdout and stderr), then one status frame, then a
    tar of /work, capped at ``budget`` bytes. Only the init writes there, so nothing in it is the program's
    forgery."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.buf = bytearray()
        self.status: tuple[int | None, int | None] | None = None
        self.in_tar = False
        self.tar = bytearray()
        self.overflow = False
        self.complete = False  # the tar's end-of-archive blocks are in: the init has nothing more to say
        self._header = 0  # where in ``tar`` the next member's header starts

    def feed(self, data: bytes) -> list[tuple[StreamName, bytes]]:
        """Take stdout bytes; return the program's own output they complete, in its order."""
        if self.in_tar:
            self._tar(data)
            return []
        self.buf += data
        out: list[tuple[StreamName, bytes]] = []
        while self.buf and not self.in_tar and not self.overflow:
            kind = self.buf[0]
            if kind in (FRAME_DATA, FRAME_STDERR):
                if len(self.buf) < 5:
                    break
                size = struct.unpack(">I", self.buf[1:5])[0]
                if size > MAX_DATA_FRAME:  # the init reads at most that much at a time: not its frame
                    self.overflow = True
                    break
                if len(self.buf) < 5 + size:
                    break
                stream = StreamName.STDOUT if kind == FRAME_DATA else StreamName.STDERR
                out.append((stream, bytes(self.buf[5:5 + size])))
                del self.buf[:5 + size]
            elif kind == FRAME_STATUS:
                line, sep, rest = bytes(self.buf[1:]).partition(b"\n")
                if not sep:
                    self.overflow = len(self.buf) > 64
                    break
                self.status = parse_status(line)
                self.overflow = self.status is None
                self.in_tar = True
                self.buf = bytearray()
                self._tar(rest)
            else:
                self.overflow = True
        return out

    def _tar(self, data: bytes) -> None:
        room = self.budget - len(self.tar)
        if len(data) > room:
            self.overflow = True
        self.tar += data[: max(0, room)]
        self._find_end()

    def _find_end(self) -> None:
        """Walk the member headers that have arrived (each says how long its data is) up to the two zero
        blocks that end an archive. The stream's own end comes only once dockerd has handled the container's
        exit, ~50 ms later: the archive's end says the same thing first (the init wrote its status, had
        killed everything else, and tar is done)."""
        while not self.complete and not self.overflow and len(self.tar) >= self._header + BLOCK:
            header = bytes(self.tar[self._header:self._header + BLOCK])
            if header == ZERO_BLOCK:
                if len(self.tar) < self._header + 2 * BLOCK:
                    return
                self.complete = True
                return
            try:
                size = _member_size(header[124:136])
            except ValueError:
                self.overflow = True  # not a tar header: read to the stream's end, the archive is broken
                return
            self._header += BLOCK + -(-size // BLOCK) * BLOCK

    def files(self, spec: ExecutionSpec) -> tuple[tuple[OutputFile, ...], bool]:
        """The output files from the tar of /work, chosen as on every backend (select_outputs)."""
        data = bytes(self.tar)
        found: dict[str, tuple[int, int]] = {}  # path -> (data offset, real size)
        broken = self.overflow
        if data:
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                    for member in tar:
                        path = member.name.removeprefix("./")
                        if member.isreg() and path and not path.startswith("/") and ".." not in path.split("/"):
                            found[path] = (member.offset_data, member.size)  # links, FIFOs, devices: skipped
            except (tarfile.TarError, EOFError, OSError):
                broken = True  # cut at the budget: the members read so far still count, the last one partly

        def reader(offset: int, size: int) -> Callable[[int], bytes]:
            return lambda limit: data[offset:offset + min(size, limit)]

        files, truncated = select_outputs(((p, size, reader(off, size)) for p, (off, size) in found.items()), spec)
        return files, truncated or broken


def _member_size(field: bytes) -> int:
    """A tar header's size field: octal digits ended by NUL or space, or (GNU, 8 GiB and more) base-256 after
    a 0x80 byte. ValueError for anything else."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _our_names(names: list[str]) -> list[str]:
    """The names _create gives (``sandbox-<name>``) as Docker lists them (``/sandbox-<name>``): the <name>s."""
    return [n.lstrip("/").removeprefix("sandbox-") for n in names]


def _quiet(fn: Any, *args: Any) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
