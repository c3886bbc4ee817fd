"""A real dockerd for the tests: started here with --bridge=none, stopped at the end of the session.

Its data root persists between runs (/var/lib/sandbox-test-docker), so the offline-built runtime images are
built once per machine; images/build-offline.sh also caches the root filesystem it debootstraps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path("/var/lib/sandbox-test-docker")
RUN_DIR = Path("/run/sandbox-test-docker")
SOCKET = RUN_DIR / "docker.sock"
HOST = f"unix://{SOCKET}"


def _ping(host: str) -> bool:
    try:
        client = docker.APIClient(base_url=host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _clear_stale_pidfile(pidfile: Path) -> None:
    """A dockerd killed without cleanup (a crashed test run) leaves its pidfile, which blocks the next start."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if cmdline and cmdline[0].endswith(b"dockerd") and f"--pidfile={pidfile}".encode() in cmdline:
        raise RuntimeError(f"another test run's dockerd (pid {pid}) is using {RUN_DIR}")
    pidfile.unlink(missing_ok=True)


class Dockerd:
    """One dockerd process of the tests' own (network: only --bridge=none)."""

    def __init__(self) -> None:
        self.host = HOST
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is missing: scripts/setup.sh installs Debian's docker.io")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        _clear_stale_pidfile(RUN_DIR / "dockerd.pid")
        with open(RUN_DIR / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "dockerd",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    f"--data-root={DATA_ROOT}",
                    f"--exec-root={RUN_DIR / 'exec'}",
                    f"--pidfile={RUN_DIR / 'dockerd.pid'}",
                    f"--host={HOST}",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not _ping(HOST):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {RUN_DIR / 'dockerd.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_dockerd() -> Iterator[Dockerd]:
    daemon = Dockerd()
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def build_images(host: str) -> None:
    """Build (or confirm) the runtime images offline; cached, so later runs take seconds."""
    subprocess.run(
        ["bash", str(ROOT / "images" / "build-offline.sh"), "--docker-host", host],
        check=True,
        timeout=1800,
    )
