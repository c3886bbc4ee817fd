"""A real ``sandbox-server serve`` of a benchmark's own, started as its own process as the README starts it.

    with served(POLICY, env={"SANDBOX_WARM_PYTHON_MODE": "fork"}, args=["--max-running", "2"]) as srv:
        with SandboxClient(srv.target) as client: ...

Development mode (no API keys; calls run as tenant ``default``) on a free loopback port, with a private state,
data and policies directory holding ``policy`` as ``tenants.yaml``. Ready when the server has printed its
start-up banner (it prints it once it serves), which is kept, parsed, in ``banner``. Stopped with SIGTERM (its
drain), then SIGKILL by its own pid if it does not end in time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER = Path(sys.executable).with_name("sandbox-server")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
LAST_BANNER_LINE = "  logs:"  # sandbox_server.__main__._banner ends with it


@dataclass(frozen=True)
class Served:
    proc: subprocess.Popen[str]
    port: int
    directory: Path
    banner: dict[str, str] = field(default_factory=dict)  # "warm python" -> what the backend said of it, ...

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    """Every line the server prints on stdout, into ``lines`` (so that its pipe never fills); None at EOF."""
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _read_banner(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> dict[str, str]:
    banner: dict[str, str] = {}
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise SystemExit(f"bench: the server did not start within {START_TIMEOUT_S:.0f} s") from None
        if line is None:
            raise SystemExit(f"bench: the server exited with {proc.wait()} before it served")
        key, sep, value = line.strip().partition(": ")
        if sep:
            banner[key] = value
        if line.startswith(LAST_BANNER_LINE):
            return banner


@contextlib.contextmanager
def served(policy: str, *, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="bench-served-") as directory:
        root = Path(directory)
        root.chmod(0o755)  # the jails reach their scratch under the state dir as another user
        (root / "policies").mkdir()
        (root / "policies" / "tenants.yaml").write_text(policy, encoding="utf-8")
        port = free_port()
        proc = subprocess.Popen(
            [str(SERVER), "serve", "--host", "127.0.0.1", "--port", str(port), "--policies-dir",
             str(root / "policies"), "--state-dir", str(root / "state"), "--data-dir", str(root / "data"),
             "--log-level", "WARNING", *args],
            env={**os.environ, "SANDBOX_AUTH": "none", **(env or {})}, stdout=subprocess.PIPE, text=True,
        )
        try:
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True, name="served-stdout").start()
            yield Served(proc, port, root, _read_banner(proc, lines))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its pid
                proc.wait()
