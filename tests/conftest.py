"""Shared fixtures: real servers on loopback ports, real jails, and a leak check after every test."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker_daemon import Dockerd, build_images, running_dockerd
from postgres_server import Postgres, running_postgres
from redis_server import Redis, running_redis

from sandbox_client import SandboxClient
from sandbox_server.backends.cgroups import CgroupsUnavailable, detect
from sandbox_server.backends.docker import LABEL_OWNER, DockerBackend
from sandbox_server.testing import RunningServer, server_in_thread

# "nsjail": cold jails only. "nsjail-fresh" and "nsjail-fork": Python on the warm path (docs/warm-path.md) in
# each of its modes (a fresh interpreter started ahead; a fork of the warm zygote), JavaScript on its node
# started ahead, bash cold.
# "nsjail-rootfs": the nsjail backend chrooted into the very root filesystem the Docker images are made of.
BACKENDS = ["nsjail", "nsjail-fresh", "nsjail-fork", "docker", "nsjail-rootfs"]
ROOTFS = Path("/var/lib/sandbox-server/rootfs/bookworm")


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite runs real jails and must run as root")


# scripts/test.sh runs the suite on two pytest-xdist workers. The tests' dockerd has fixed paths, so only one may
# run: every test that needs it goes to one worker. xdist's scheduler sees node ids only, so the rule is on node
# ids (the backend in the parameters, or the Docker backend's own module), and collection checks that it finds
# every test whose fixtures start dockerd (the nsjail-rootfs backend builds its root filesystem with it too).
DOCKERD_NODEID = re.compile(r"test_docker\.py::|[\[-](docker|nsjail-rootfs)[\]-]")


def _needs_dockerd(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    values = {str(v) for v in callspec.params.values()} if callspec is not None else set()
    return "dockerd" in getattr(item, "fixturenames", ()) or bool(values & {"docker", "nsjail-rootfs"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missed = [item.nodeid for item in items if _needs_dockerd(item) and not DOCKERD_NODEID.search(item.nodeid)]
    if missed:
        raise pytest.UsageError(f"tests that start dockerd but that DOCKERD_NODEID does not name: {missed[:5]}")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class DockerdOnOneWorker(LoadScopeScheduling):  # type: ignore[misc]
        """Each test is its own unit of work, but those that need dockerd are one unit together."""

        def _split_scope(self, nodeid: str) -> str:
            return "dockerd" if DOCKERD_NODEID.search(nodeid) else nodeid

    return DockerdOnOneWorker(config, log)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The tests' own PostgreSQL cluster (Debian's packages, loopback); each test makes its own database."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """The tests' own redis-server (Debian's package, loopback); tests that share it flush it first."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """The tests' own dockerd (--bridge=none), with the runtime images built offline (cached)."""
    with running_dockerd() as daemon:
        build_images(daemon.host)
        yield daemon


# The backend contract is about sandboxes, not policies: one tenant that allows every language, any env var,
# and no static validation or output redaction in the way (those layers have suites of their own).
BACKEND_TEST_POLICY = """\
version: 1
tenants:
  default:
    allowed_env: ["*"]
    static_validation: {enabled: false}
    guardrails: {output_secrets: "off", max_input_files: 1000, max_input_file_bytes: 1073741824}
"""


@pytest.fixture(scope="session")
def backend_policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("backend-policies")
    (directory / "default.yaml").write_text(BACKEND_TEST_POLICY)
    return directory


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One real server per backend for the session (its own state dir and cgroup parent)."""
    extra: dict[str, Any] = {}
    backend = request.param
    if backend == "docker":
        extra["docker_host"] = request.getfixturevalue("dockerd").host
    if backend in ("nsjail", "nsjail-fresh", "nsjail-fork"):
        extra["warm_python"] = extra["warm_javascript"] = backend != "nsjail"
        if backend != "nsjail":
            extra["warm_python_mode"] = backend.removeprefix("nsjail-")
        backend = "nsjail"
    if backend == "nsjail-rootfs":
        request.getfixturevalue("dockerd")  # builds the images, and with them the root filesystem
        backend, extra["rootfs"] = "nsjail", ROOTFS
    policies = request.getfixturevalue("backend_policies")
    # Incident response would throttle or quarantine this shared server after the contract's deliberate
    # timeouts and escape attempts; it is tested on servers of its own (tests/production).
    with server_in_thread(backend=backend, max_running=4, max_queued=32, policies_dir=policies,
                          incidents={"enabled": False}, **extra) as srv:
        if backend == "docker":
            wait_for_pool(srv)
        yield srv


def wait_for_pool(srv: RunningServer, timeout_s: float = 60.0) -> None:
    """Let the warm pool fill once, so the first tests do not race its creation for CPU."""
    backend = srv.app.backend
    assert isinstance(backend, DockerBackend)
    deadline = time.monotonic() + timeout_s
    want = srv.settings.docker_pool_size * 3
    while sum(len(q) for q in backend._pool.values()) < want and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def sbx(server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(server.target, timeout=60) as client:
        yield client


def leftovers(server: RunningServer) -> list[str]:
    """Scratch mounts, cgroups, containers and jailed processes of this server that still exist
    (warm-pool containers, never used, excepted)."""
    # The admission slot is released only after the backend's teardown returns, a few awaits after the last
    # process, mount or cgroup is gone: a held slot is a leftover too, until the call has really ended.
    held = server.app.admission.running
    found: list[str] = [f"admission slots held {held}"] if held else []
    backend = server.app.backend
    if isinstance(backend, DockerBackend):
        return found + _docker_leftovers(server, backend)
    scratch = server.settings.state_dir / "scratch"
    if scratch.exists():
        found += [f"scratch {p.name}" for p in scratch.iterdir()]
    try:
        hierarchy = detect(server.settings.cgroup_parent)
    except CgroupsUnavailable:
        return found
    for d in hierarchy.dirs():
        if d.exists():
            found += [f"cgroup {p}" for p in d.iterdir() if p.is_dir()]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if str(scratch) in line:
            found.append("mount " + line.split()[4])
    return found


def check_no_leftovers(server: RunningServer, wait_s: float = 5.0) -> None:
    """Teardown may still be finishing for a cancelled call: wait briefly, then fail with what is left."""
    deadline = time.monotonic() + wait_s
    while (left := leftovers(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left behind: {left}"


@pytest.fixture
def assert_no_leftovers() -> Callable[..., None]:
    """check_no_leftovers, for any test module (a fixture: conftest.py files cannot be imported by name)."""
    return check_no_leftovers


@pytest.fixture
def no_leftovers(server: RunningServer) -> Iterator[None]:
    yield
    check_no_leftovers(server)


def _docker_leftovers(server: RunningServer, backend: DockerBackend) -> list[str]:
    pooled = {c.id for q in backend._pool.values() for c in q}
    cgroups = {c.cgroup.dirs()[0].name for q in backend._pool.values() for c in q if c.cgroup}
    if backend._fill_lock.locked() and not server.app.admission.running:
        # A container being made for the pool (its refill after an earlier execution took one) is not one
        # an execution left: with no execution running, whatever is being created is the pool's.
        pooled |= set(backend._live)
        cgroups |= set(backend._live)
    client = docker.APIClient(base_url=server.settings.docker_host, timeout=30)
    try:
        found = client.containers(all=True, filters={"label": f"{LABEL_OWNER}={backend.owner}"})
    finally:
        client.close()
    out = [f"container {c['Id'][:12]} {c['State']}" for c in found
           if c["Id"] not in pooled and not {n.removeprefix("/sandbox-") for n in c.get("Names") or ()} & pooled]
    if backend.cgroups is not None:
        # Ours, and runc's parents in the hierarchies we do not manage (blkio, devices, ...): both are ours to remove.
        for d in [*backend.cgroups.hierarchy.dirs(), *backend._unmanaged]:
            if d.exists():
                out += [f"cgroup {p}" for p in d.iterdir() if p.is_dir() and p.name not in cgroups]
    return out
