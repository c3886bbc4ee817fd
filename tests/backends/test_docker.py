"""Docker-specific behaviour: daemon down or restarted, the reaper, the warm pool, the container's own config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import struct
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cold_cases import SAME_AS_COLD
from docker_daemon import Dockerd

from sandbox_client import ExecutionResult, SandboxClient, UnavailableError
from sandbox_client import Limits as RequestLimits
from sandbox_server.backends.docker import LABEL_MANAGED, LABEL_OWNER, DockerBackend
from sandbox_server.backends.sandbox_init import INIT_PIDS
from sandbox_server.execution.runtimes import find_runtime
from sandbox_server.execution.spec import ExecutionSpec, Limits
from sandbox_server.settings import Settings
from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="module")
def docker_server(dockerd: Dockerd, backend_policies: Path) -> Iterator[RunningServer]:
    with server_in_thread(backend="docker", docker_host=dockerd.host, max_running=4, docker_pool_size=1,
                          policies_dir=backend_policies) as srv:
        yield srv


def _api(host: str) -> docker.APIClient:
    return docker.APIClient(base_url=host, timeout=30)


def _wait(predicate: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_dockerd_not_running_server_starts_and_execute_is_unavailable() -> None:
    missing = f"unix:///run/sandbox-test-docker/absent-{uuid.uuid4().hex[:6]}.sock"
    with server_in_thread(backend="docker", docker_host=missing) as srv:
        described = srv.app.backend.describe()
        assert "UNAVAILABLE" in described["docker"]
        assert "cannot reach dockerd" in described["docker"]
        with SandboxClient(srv.target, timeout=30) as sbx, pytest.raises(UnavailableError) as info:
            sbx.execute("print(1)", language="python")
        assert "Docker backend is unavailable" in info.value.message
        assert "cannot reach dockerd" in info.value.message
        assert info.value.retry_after is not None


def test_pooled_container_config_is_locked_down(docker_server: RunningServer) -> None:
    backend = docker_server.app.backend
    assert isinstance(backend, DockerBackend)
    assert _wait(lambda: any(backend._pool.values()))
    pooled = next(c for q in backend._pool.values() for c in q)
    info = _api(docker_server.settings.docker_host).inspect_container(pooled.id)
    host = info["HostConfig"]
    limits = docker_server.settings.defaults
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["Memory"] == limits.memory_bytes
    assert host["MemorySwap"] == limits.memory_bytes
    assert host["PidsLimit"] == limits.max_pids + INIT_PIDS  # the sandbox init is a process too
    assert host["NanoCpus"] == int(docker_server.settings.cpu_cores * 1e9)
    assert host["LogConfig"]["Type"] == "none"
    assert host["Binds"] in (None, [])
    assert set(host["Tmpfs"]) == {"/work", "/tmp"}
    assert f"size={limits.scratch_bytes}" in host["Tmpfs"]["/work"]
    ulimits = {u["Name"]: u["Hard"] for u in host["Ulimits"]}
    assert ulimits["fsize"] == limits.file_size_bytes
    assert ulimits["nofile"] == 1024
    assert info["Config"]["User"] == "65534:65534"
    assert info["Config"]["Labels"][LABEL_MANAGED] == "true"
    assert info["Config"]["Labels"][LABEL_OWNER] == backend.owner
    assert info["State"]["Running"] is True  # started, waiting on stdin, never used


def test_pool_never_hands_out_a_used_container(docker_server: RunningServer) -> None:
    seen: set[str] = set()
    with SandboxClient(docker_server.target, timeout=30) as sbx:
        for _ in range(4):
            r = sbx.execute(
                "import os\n"
                "print(open('/proc/self/cgroup').read().strip().split('/')[-1])\n"
                "print(sorted(os.listdir('/tmp')))\n"
                "open('/tmp/mark', 'w').write('x')\n",
                language="python",
            )
            assert r.status == "OK", r
            container_id, tmp_listing = r.stdout.splitlines()
            assert tmp_listing == "[]", "a container that ran something was handed out again"
            assert container_id not in seen
            seen.add(container_id)


def test_no_cgroup_is_left_in_the_hierarchies_we_do_not_manage(dockerd: Dockerd, backend_policies: Path) -> None:
    """runc makes each container's cgroup parent (our per-execution cgroup) in every mounted hierarchy, blkio,
    devices, freezer and the rest included, and removes only the container's own cgroup: the per-execution
    directories there are the backend's to remove, after every execution and, for a crash's, at start."""
    with server_in_thread(backend="docker", docker_host=dockerd.host, max_running=2, docker_pool_size=1,
                          policies_dir=backend_policies) as srv:
        backend = srv.app.backend
        assert isinstance(backend, DockerBackend)
        assert backend.cgroups is not None
        if not backend._unmanaged:
            pytest.skip("one cgroup hierarchy only (cgroup v2): nothing outside it")
        def pooled() -> set[str]:
            return {c.cgroup.dirs()[0].name for q in backend._pool.values() for c in q if c.cgroup is not None}

        def left() -> list[str]:
            spared = pooled()
            return [str(p) for d in backend._unmanaged if d.exists() for p in d.iterdir()
                    if p.is_dir() and p.name not in spared]

        assert _wait(lambda: bool(pooled()), 30)
        # The runtime does make them there: a pooled container's directory is in every one of those hierarchies.
        assert all((d / name).is_dir() for d in backend._unmanaged for name in pooled())
        with SandboxClient(srv.target, timeout=60) as sbx:
            for language in ("python", "bash", "python"):
                assert sbx.execute("echo hi" if language == "bash" else "print('hi')", language=language).ok
        assert _wait(lambda: not left(), 10), left()
        unmanaged, settings = list(backend._unmanaged), srv.settings
    assert not any(d.exists() for d in unmanaged), "the parents outlived the backend's close"
    # What a crash leaves there (empty per-execution directories) goes at the next start.
    planted = [d / f"crash-{uuid.uuid4().hex[:8]}" for d in unmanaged]
    for d in planted:
        d.mkdir(parents=True)
    with server_in_thread(settings):
        assert not any(d.exists() for d in planted)


@contextlib.contextmanager
def _program_started_at_go(backend: DockerBackend) -> Iterator[None]:
    """The backend's containers exec the Python interpreter at "go" (a cold start, as for other languages)
    instead of starting it ahead (DOCKER_PYTHON_STUB)."""
    original = backend._config
    backend._config = (  # type: ignore[method-assign]
        lambda runtime, limits, env: dataclasses.replace(original(runtime, limits, env), stub=()))
    try:
        yield
    finally:
        del backend._config


def _comparable(result: ExecutionResult) -> tuple[object, ...]:
    return (result.status, result.exit_code, result.signal, result.stdout, result.stderr,
            [(f.path, f.content) for f in result.files])


# The pid numbers inside a container depend on how many runc used while starting it, so "identity" is compared
# without getpid here; "cmdline" is the one difference (test_what_differs_when_the_interpreter_started_ahead).
DOCKER_SAME_AS_COLD = {name: case for name, case in SAME_AS_COLD.items() if name not in ("cmdline", "identity")}
DOCKER_SAME_AS_COLD["identity"] = (
    "import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.getppid(), os.getpgrp(), os.getsid(0), "
    "os.getcwd(), os.umask(0o22), os.getpriority(os.PRIO_PROCESS, 0))", {})


@pytest.mark.parametrize("name", sorted(DOCKER_SAME_AS_COLD))
def test_the_interpreter_started_ahead_gives_a_cold_starts_result(name: str, docker_server: RunningServer) -> None:
    backend = docker_server.app.backend
    assert isinstance(backend, DockerBackend)
    code, kwargs = DOCKER_SAME_AS_COLD[name]
    with SandboxClient(docker_server.target, timeout=60) as sbx:
        ahead = sbx.execute(code, language="python", **kwargs)
        with _program_started_at_go(backend):
            cold = sbx.execute(code, language="python", **kwargs)
    assert _comparable(ahead) == _comparable(cold)


def test_what_differs_when_the_interpreter_started_ahead(docker_server: RunningServer) -> None:
    """Only the command line in /proc, which a container has no capability to rewrite."""
    backend = docker_server.app.backend
    assert isinstance(backend, DockerBackend)
    code = "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:4])"
    with SandboxClient(docker_server.target, timeout=60) as sbx:
        ahead = sbx.execute(code, language="python")
        with _program_started_at_go(backend):
            cold = sbx.execute(code, language="python")
    assert ahead.stdout == "[b'/usr/bin/python3', b'-B', b'-s', b'-c']\n", ahead
    assert cold.stdout == "[b'/usr/bin/python3', b'-B', b'-s', b'main.py']\n", cold


@pytest.mark.parametrize("language", ["python", "bash"])  # node's own threads need more than one
def test_a_pids_limit_of_one_starts_nothing_ahead(language: str, docker_server: RunningServer) -> None:
    """With room for two processes only (the init and the program), tar and the program run one after the
    other, once the request is there. (The container used to fail to start at all: runc's own init counted
    against our cgroup's pids limit, and the 500 took the whole backend down as if dockerd were lost.)"""
    code = {"python": "print(open('data.txt').read())", "bash": "echo $(< data.txt)"}[language]
    with SandboxClient(docker_server.target, timeout=60) as sbx:
        result = sbx.execute(code, language=language, files={"data.txt": b"input file"},
                             limits=RequestLimits(max_pids=1, wall_time_s=10))
    assert result.status == "OK", result
    assert result.stdout == "input file\n"


def test_reaper_removes_our_strays_and_only_ours(docker_server: RunningServer) -> None:
    backend = docker_server.app.backend
    assert isinstance(backend, DockerBackend)
    api = _api(docker_server.settings.docker_host)
    image = "sandbox-runtime-bash:bookworm"
    stray = api.create_container(image, command=["true"], labels={LABEL_MANAGED: "true", LABEL_OWNER: backend.owner})
    other = api.create_container(image, command=["true"], labels={LABEL_MANAGED: "true", LABEL_OWNER: "someone-else"})
    try:
        import asyncio

        removed = asyncio.run_coroutine_threadsafe(backend._reap(), _loop_of(docker_server)).result(timeout=60)
        assert removed >= 1
        ids = {c["Id"] for c in api.containers(all=True)}
        assert stray["Id"] not in ids
        assert other["Id"] in ids
    finally:
        api.remove_container(other["Id"], force=True)


def test_reaper_spares_a_container_being_created(docker_server: RunningServer) -> None:
    """A request's container whose create call has not returned yet is known by name only: the reaper, listing
    at that moment, must leave it alone (it used to remove it, and the request failed with a 404)."""
    backend = docker_server.app.backend
    assert isinstance(backend, DockerBackend)
    api = _api(docker_server.settings.docker_host)
    name = uuid.uuid4().hex
    labels = {LABEL_MANAGED: "true", LABEL_OWNER: backend.owner}
    backend._live.add(name)  # as _create does before its create call
    created = api.create_container("sandbox-runtime-bash:bookworm", command=["true"], labels=labels,
                                   name=f"sandbox-{name}")
    loop = _loop_of(docker_server)
    try:
        asyncio.run_coroutine_threadsafe(backend._reap(), loop).result(timeout=60)
        assert created["Id"] in {c["Id"] for c in api.containers(all=True)}
    finally:
        backend._live.discard(name)
    asyncio.run_coroutine_threadsafe(backend._reap(), loop).result(timeout=60)  # now a stray
    assert created["Id"] not in {c["Id"] for c in api.containers(all=True)}


def test_dockerd_restart_mid_run_fails_cleanly_then_recovers(dockerd: Dockerd) -> None:
    with server_in_thread(backend="docker", docker_host=dockerd.host, docker_pool_size=1) as srv:
        outcome: list[object] = []
        with SandboxClient(srv.target, timeout=60, retry=None) as sbx:  # the failure itself, not a retry
            assert sbx.execute("echo up", language="bash").stdout == "up\n"

            def long_run() -> None:
                try:
                    outcome.append(sbx.execute("sleep 20; echo late", language="bash"))
                except Exception as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=long_run)
            worker.start()
            time.sleep(1.5)
            dockerd.restart()
            worker.join(timeout=60)
            assert len(outcome) == 1
            assert isinstance(outcome[0], UnavailableError), outcome[0]
            assert "Docker" in outcome[0].message

            def works() -> bool:
                try:
                    return sbx.execute("echo again", language="bash").stdout == "again\n"
                except UnavailableError:
                    return False

            assert _wait(works, timeout_s=60), "the backend never recovered after dockerd came back"


def _loop_of(srv: RunningServer) -> asyncio.AbstractEventLoop:
    backend = srv.app.backend
    assert isinstance(backend, DockerBackend)
    assert backend._maintainer is not None
    return backend._maintainer.get_loop()


def _tar_of(files: dict[str, bytes], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_init_reports_end_at_the_archives_end_not_the_streams(fmt: int) -> None:
    """The stream ends only once dockerd has handled the container's exit (~50 ms later); the end of the
    init's tar archive says it first. Long names (an extra header with data) and empty files included."""
    from sandbox_server.backends.docker import _Frames
    from sandbox_server.backends.sandbox_init import FRAME_DATA, FRAME_STATUS, FRAME_STDERR
    from sandbox_server.execution.spec import StreamName

    files = {"./out.txt": b"result", "./" + "d/" * 60 + "long.txt": b"x" * 1500, "./empty": b""}
    archive = _tar_of(files, fmt)
    stream = (bytes([FRAME_DATA]) + struct.pack(">I", 6) + b"hello\n" + bytes([FRAME_STDERR]) + struct.pack(">I", 4)
              + b"oops" + bytes([FRAME_DATA]) + struct.pack(">I", 3) + b"end" + bytes([FRAME_STATUS]) + b"0 0\n"
              + archive)
    end = stream.index(archive) + len(archive.rstrip(b"\0")) + 1024  # past the last member and two zero blocks
    frames = _Frames(1 << 20)
    out: list[tuple[StreamName, bytes]] = []
    for i in range(0, len(stream), 700):  # as dockerd's frames cut it
        out += frames.feed(stream[i:i + 700])
        if i + 700 < end:
            assert not frames.complete, f"complete before the end-of-archive blocks (at {i + 700} of {end})"
    assert frames.complete
    assert frames.status == (0, None)
    assert out == [(StreamName.STDOUT, b"hello\n"), (StreamName.STDERR, b"oops"), (StreamName.STDOUT, b"end")]
    spec_files = {f.path: f.content for f in frames.files(_spec_for_files())[0]}
    assert spec_files["out.txt"] == b"result"
    assert spec_files["d/" * 60 + "long.txt"] == b"x" * 1500


def test_a_broken_archive_is_read_to_the_streams_end() -> None:
    from sandbox_server.backends.docker import _Frames
    from sandbox_server.backends.sandbox_init import FRAME_STATUS

    frames = _Frames(1 << 20)
    frames.feed(bytes([FRAME_STATUS]) + b"0 0\n" + b"not a tar header".ljust(1024, b"!"))
    assert not frames.complete
    assert frames.overflow


def _spec_for_files() -> ExecutionSpec:
    runtime = find_runtime("python")
    assert runtime is not None
    return ExecutionSpec("e1", runtime, b"", b"", (), (), Limits(**Settings().defaults.model_dump()), 1.0, 16,
                         1 << 20)
