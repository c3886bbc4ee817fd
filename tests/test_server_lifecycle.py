"""The real `sandbox-server serve` process: banner, health, reflection, drain on SIGTERM, crash recovery."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sandbox_client import SandboxClient
from sandbox_server.backends.cgroups import detect

SERVER = Path(sys.executable).parent / "sandbox-server"


class ServerProcess:
    def __init__(self, state_dir: Path, cgroup_parent: str, *extra: str) -> None:
        # No session sandboxes started ahead: these tests count the jails and scratch dirs of executions.
        env = {**os.environ, "SANDBOX_CGROUP_PARENT": cgroup_parent, "SANDBOX_DRAIN_TIMEOUT_S": "20",
               "SANDBOX_DATA_DIR": str(state_dir / "data"), "SANDBOX_SESSION_POOL_SIZE": "0"}
        self.proc = subprocess.Popen(
            [str(SERVER), "serve", "--port", "0", "--state-dir", str(state_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self.proc.stdout is not None
        self.banner: list[str] = []
        for line in self.proc.stdout:
            self.banner.append(line.rstrip())
            if line.startswith("  admission:"):
                break
        match = re.search(r"listening on (\S+)", "\n".join(self.banner))
        assert match, f"no banner; stderr: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.target = match.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture
def private() -> Iterator[tuple[Path, str]]:
    unique = uuid.uuid4().hex[:8]
    state = Path(f"/tmp/sandbox-life-{unique}")
    yield state, f"sandbox-life-{unique}"
    for d in detect(f"sandbox-life-{unique}").dirs():
        if d.exists():
            d.rmdir()
    shutil.rmtree(state, ignore_errors=True)


def test_banner_health_and_reflection(private: tuple[Path, str]) -> None:
    srv = ServerProcess(*private)
    try:
        text = "\n".join(srv.banner)
        assert "backend: nsjail" in text
        assert "cgroups: v" in text
        assert "namespaces: user,pid,mount,ipc,uts,net,cgroup" in text
        with grpc.insecure_channel(srv.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "sandbox.v1.Sandbox"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = list(reflect.ServerReflectionInfo(iter([request]), timeout=5))
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"sandbox.v1.Sandbox", "grpc.health.v1.Health"} <= names
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_executions(private: tuple[Path, str]) -> None:
    srv = ServerProcess(*private)
    results: list[object] = []
    try:
        with SandboxClient(srv.target, timeout=30) as sbx:
            assert sbx.execute("print(1)", language="python").stdout == "1\n"

            def slow() -> None:
                results.append(sbx.execute("import time; time.sleep(2); print('done')", language="python"))

            worker = threading.Thread(target=slow)
            worker.start()
            time.sleep(0.7)  # the execution is running
            srv.proc.send_signal(signal.SIGTERM)
            worker.join(timeout=30)
        assert srv.proc.wait(timeout=30) == 0
        assert len(results) == 1
        result = results[0]
        assert getattr(result, "status", None) == "OK"
        assert getattr(result, "stdout", None) == "done\n"
    finally:
        srv.stop()
    state, parent = private
    assert not list((state / "scratch").iterdir())
    assert all(not d.exists() for d in detect(parent).dirs())


def test_restart_reaps_the_leftovers_of_a_crash(private: tuple[Path, str]) -> None:
    state, parent = private
    first = ServerProcess(state, parent)
    try:
        with SandboxClient(first.target, timeout=30) as sbx:
            worker = threading.Thread(
                target=lambda: _ignore_errors(lambda: sbx.execute("sleep 60", language="bash")), daemon=True
            )
            worker.start()
            deadline = time.monotonic() + 10
            while not list((state / "scratch").iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list((state / "scratch").iterdir()), "the execution never started"
            first.proc.kill()  # a crash: no teardown runs
            first.proc.wait(timeout=10)
            time.sleep(0.2)
        hierarchy = detect(parent)
        cgroups = [p for d in hierarchy.dirs() if d.exists() for p in d.iterdir() if p.is_dir()]
        assert cgroups, "the crash should have left the execution's cgroup behind"
        jailed = {int(x) for p in cgroups for x in (p / "cgroup.procs").read_text().split()}
        assert jailed, "the jailed processes should still be alive after the crash"
    finally:
        first.stop()
    second = ServerProcess(state, parent)
    try:
        assert not list((state / "scratch").iterdir()), "scratch of the crashed run not reaped"
        leftover = [p.name for d in detect(parent).dirs() if d.exists() for p in d.iterdir() if p.is_dir()]
        assert leftover == [], leftover
        for pid in jailed:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"jailed pid {pid} survived"
        with SandboxClient(second.target, timeout=30) as sbx:
            assert sbx.execute("echo ok", language="bash").stdout == "ok\n"
    finally:
        second.stop()


def _ignore_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):  # the server is killed under this call on purpose
        fn()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _without_cgroups(*argv: str) -> list[str]:
    """Run argv in a private mount namespace where no cgroup file system is mounted."""
    script = "umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup; exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def test_without_cgroups_the_server_refuses_by_default(private: tuple[Path, str]) -> None:
    state, _ = private
    proc = subprocess.run(
        _without_cgroups(str(SERVER), "serve", "--port", "0", "--state-dir", str(state)),
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SANDBOX_DATA_DIR": str(state / "data")},
    )
    assert proc.returncode == 1
    assert "cgroups are unusable" in proc.stderr
    assert "refusing to start" in proc.stderr


def test_without_cgroups_rlimits_only_says_so_loudly_and_still_limits(private: tuple[Path, str]) -> None:
    state, parent = private
    srv = ServerProcess.__new__(ServerProcess)
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": parent, "SANDBOX_DATA_DIR": str(state / "data")}
    srv.proc = subprocess.Popen(
        _without_cgroups(str(SERVER), "serve", "--port", "0", "--state-dir", str(state),
                         "--cgroup-fallback", "rlimits-only"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert srv.proc.stdout is not None
        banner: list[str] = []
        while not banner or not banner[-1].startswith("  admission:"):
            banner.append(srv.proc.stdout.readline().rstrip())
        assert any("cgroups: UNAVAILABLE: rlimits only" in line for line in banner), banner
        target = re.search(r"listening on (\S+)", banner[0])
        assert target
        with SandboxClient(target.group(1), timeout=30) as sbx:
            assert sbx.execute("print('hi')", language="python").stdout == "hi\n"
            bomb = sbx.execute("x = bytearray(1 << 30)", language="python")
            assert bomb.status == "NONZERO_EXIT"
            assert "MemoryError" in bomb.stderr
    finally:
        srv.stop()
    assert srv.proc.stderr is not None
    assert "CGROUPS UNAVAILABLE" in srv.proc.stderr.read()
