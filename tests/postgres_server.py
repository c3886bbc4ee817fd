"""A real PostgreSQL for the tests, from Debian's packages: a throwaway cluster made with initdb, listening on a
free loopback port (and a Unix socket in its own directory), stopped and deleted at the end of the session.

It runs as the ``postgres`` user (PostgreSQL refuses root), trusts loopback connections, and skips fsync: the
tests check what the stores do, not the disk. Each test gets a database of its own (``create_database``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from sandbox_server.testing import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: install Debian's postgresql (scripts/setup.sh does)")
    return found[-1]


class Postgres:
    """One PostgreSQL cluster of the tests' own."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sandbox-test-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self.started = False

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._as_postgres(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-sync", "--locale=C.UTF-8")
        self.port = free_port()
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after ``halt``) on the same port and data."""
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
                   " -c full_page_writes=off -c max_connections=200")
        self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60",
                          "-o", options, "start")
        self.started = True

    def halt(self) -> None:
        """Stop the server at once, as a crash would (its data stays, for ``resume``)."""
        self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError):
                self._as_postgres(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()
