"""A real redis-server for the tests, from Debian's package: on a free loopback port, nothing persisted, stopped
(by its pid) at the end. ``halt`` and ``resume`` stop and start it on the same port, as an outage would."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from sandbox_server.testing import free_port


class Redis:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sandbox-test-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def resume(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: install Debian's redis-server (scripts/setup.sh does)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def halt(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        client.flushall()
        client.close()


@contextlib.contextmanager
def running_redis() -> Iterator[Redis]:
    server = Redis()
    try:
        server.resume()
        yield server
    finally:
        server.halt()
        shutil.rmtree(server.dir, ignore_errors=True)
