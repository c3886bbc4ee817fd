"""Server replicas as the separate processes a deployment runs: ``sandbox-server serve`` on a fixed loopback port
(so a restart comes back where the load balancer expects it), with the shared PostgreSQL and Redis, its own state
dir, data dir, policy directory and cgroup parent. ``kill`` is a SIGKILL: the replica gets no chance to clean up,
as on a node failure; ``start`` again is its restart, which must reap what the killed one left."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

from sandbox_server.backends.cgroups import detect
from sandbox_server.backends.warm import POOL_CGROUP_SUFFIX
from sandbox_server.testing import free_port

SERVER = Path(sys.executable).parent / "sandbox-server"


def policy_text(tenant_yaml: str) -> str:
    body = textwrap.indent(textwrap.dedent(tenant_yaml).strip() or "{}", "    ")
    return f"version: 1\ntenants:\n  default:\n{body}\n"


class Replica:
    def __init__(self, root: Path, name: str, database_url: str, redis_url: str, tenant_yaml: str) -> None:
        unique = uuid.uuid4().hex[:8]
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        # The state dir holds scratch mounts: a short path of its own, outside pytest's tmp tree.
        self.state = Path(f"/tmp/sandbox-replica-{unique}")
        self.data = root / name / "data"
        self.policies = root / name / "policies"
        self.policies.mkdir(parents=True)
        (self.policies / "default.yaml").write_text(policy_text(tenant_yaml))
        self.cgroup_parent = f"sandbox-replica-{unique}"
        self.database_url = database_url
        self.redis_url = redis_url
        self.log = root / name / "server.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "SANDBOX_CGROUP_PARENT": self.cgroup_parent, "SANDBOX_SESSION_POOL_SIZE": "0"}
        command = [str(SERVER), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--state-dir", str(self.state), "--data-dir", str(self.data), "--policies-dir", str(self.policies),
                   "--database-url", self.database_url, "--redis-url", self.redis_url,
                   "--advertise-address", self.target,
                   "--metrics-port", str(self.metrics_port), "--max-running", "8", "--max-queued", "64"]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not re.search(r"listening on (\S+)", first):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"replica {self.name} did not start: {first!r}\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def cgroup_dirs(self) -> list[Path]:
        """Its sandboxes' cgroup parents: the cold jails' and the warm pool's, in every hierarchy."""
        return [*detect(self.cgroup_parent).dirs(), *detect(self.cgroup_parent + POOL_CGROUP_SUFFIX).dirs()]

    def sandbox_processes(self) -> list[int]:
        """Every process in this replica's sandbox cgroups (its sandboxes, and what they started)."""
        pids: list[int] = []
        for directory in self.cgroup_dirs():
            if not directory.exists():
                continue
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids += [int(p) for p in procs.read_text().split()]
        return sorted(set(pids))

    def scratch_entries(self) -> list[str]:
        scratch = self.state / "scratch"
        return sorted(p.name for p in scratch.iterdir()) if scratch.exists() else []

    def clean_up(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.state / "scratch")], check=False, capture_output=True)
        for directory in self.cgroup_dirs():
            if directory.exists():
                for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    directory.rmdir()
        shutil.rmtree(self.state, ignore_errors=True)


@contextlib.contextmanager
def running_replicas(root: Path, n: int, database_url: str, redis_url: str,
                     tenant_yaml: str = "") -> Iterator[list[Replica]]:
    """``n`` replicas, started one after another (the first records the policy every other one then takes)."""
    replicas = [Replica(root, f"r{i}", database_url, redis_url, tenant_yaml) for i in range(n)]
    try:
        for replica in replicas:
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.clean_up()
