"""A real HAProxy for the tests, from Debian's package: gRPC over h2c on a free loopback port, each call
balanced round robin over the given loopback backends, stopped (by its pid) at the end.

A backend is checked every 300 ms (a TCP connect) and taken out at its first failed check, and a call whose
connection to a backend fails is sent to another one: what a deployment's load balancer does for a replica
that is gone. A call already sent to a replica that dies fails (gRPC UNAVAILABLE): only the caller may retry it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sandbox_server.testing import free_port

CONFIG = """\
global
    log stderr format raw local0 warning
    stats socket {socket} mode 600 level operator
defaults
    mode http
    log global
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    retries 3
    option redispatch 1
    retry-on conn-failure
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""


class HAProxy:
    def __init__(self, backends: Sequence[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sandbox-test-haproxy-"))
        self.port = free_port()
        self.config = self.dir / "haproxy.cfg"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p} proto h2 check inter 300ms fall 1 rise 1"
                            for i, p in enumerate(backends))
        self.socket = self.dir / "stats.sock"
        self.config.write_text(CONFIG.format(port=self.port, servers=servers, socket=self.socket))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is missing: install Debian's haproxy (scripts/setup.sh does)")
        subprocess.run([binary, "-c", "-q", "-f", str(self.config)], check=True)
        self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=(self.dir / "haproxy.log").open("wb"))
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"haproxy did not start: {(self.dir / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def servers_up(self) -> int:
        """How many backends HAProxy sends calls to now (its own view, from its stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
        return sum(1 for row in rows if row[0] == "replicas" and row[1] not in ("BACKEND", "FRONTEND")
                   and row[17] == "UP")

    def wait_until_up(self, n: int, limit_s: float = 20.0) -> None:
        """Wait until ``n`` backends are up in HAProxy's view (a restarted one is seen at its next check)."""
        deadline = time.monotonic() + limit_s
        while self.servers_up() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy sees {self.servers_up()} backends up, not {n}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


@contextlib.contextmanager
def running_haproxy(backends: Sequence[int]) -> Iterator[HAProxy]:
    proxy = HAProxy(backends)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(proxy.dir, ignore_errors=True)
