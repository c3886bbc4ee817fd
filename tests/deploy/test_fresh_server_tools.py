"""An operator's own checks work out of the box: every ``sandbox-admin`` command the README shows (the red-team
corpus, the shipped evaluation suites) exits 0 against a freshly started ``sandbox-server serve``, leaves no
mitigation behind (they are exercises: incident response records what they provoke apart, and quarantines
nothing), and the server still runs ordinary work; then all again against the server restarted on the same data
directory (what the first run recorded must not turn against the second).

As a new user would: the installed entry points (``.venv/bin/sandbox-server serve``, ``.venv/bin/sandbox-admin``
with ``SANDBOX_TARGET``), the nsjail backend, development mode (loopback, no keys), the default policy and
settings. Only what would collide with another server on this host is the test's own: the data directory, the
state directory, the port (``--port 0``: the server says which it bound) and the cgroup parent (a server reaps
every leftover cgroup under its parent when it starts, so sharing the default one would kill the sandboxes of
any other server using it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_client import SandboxClient
from sandbox_client.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
README_COMMANDS = (
    ("redteam",),
    ("eval", "basic"),
    ("eval", "humaneval-sample"),
    ("eval", "sessions"),
)
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
LISTENING = re.compile(r"^sandbox-server listening on 127\.0\.0\.1:(\d+)$", re.MULTILINE)


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without any SANDBOX_* setting (the defaults are under test), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(extra)
    return env


@contextmanager
def _serve(data_dir: Path, state_dir: Path, cgroup_parent: str, logs: Path) -> Iterator[str]:
    """``sandbox-server serve`` in a subprocess until the block ends (then SIGTERM: it drains and stops); yields
    its target once it answers health checks as SERVING."""
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(
            [str(BIN / "sandbox-server"), "serve", "--port", "0", "--data-dir", str(data_dir),
             "--state-dir", str(state_dir)],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=_environment(SANDBOX_CGROUP_PARENT=cgroup_parent),
        )
    try:
        target = _wait_until_serving(server, out, err)
        yield target
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(STOP_TIMEOUT_S)
                pytest.fail(f"the server did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
    assert server.returncode == 0, f"the server exited {server.returncode}:\n{err.read_text()[-3000:]}"


def _wait_until_serving(server: subprocess.Popen[bytes], out: Path, err: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    target = ""
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sandbox-server serve exited {server.returncode}:\n{out.read_text()}\n"
                        f"{err.read_text()[-3000:]}")
        if not target and (found := LISTENING.search(out.read_text())):
            target = f"127.0.0.1:{found.group(1)}"
        if target and _serving(target):
            return target
        time.sleep(0.2)
    pytest.fail(f"the server did not serve within {START_TIMEOUT_S:.0f} s:\n{out.read_text()}")


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _sandbox_admin(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "sandbox-admin"), *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL, cwd=ROOT, env=_environment(SANDBOX_TARGET=target), check=False,
    )


def _check_the_operator_tools(target: str) -> None:
    for command in README_COMMANDS:
        done = _sandbox_admin(target, *command)
        assert done.returncode == 0, (
            f"sandbox-admin {' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-2000:]}")
    with AdminClient(target, api_key=None) as admin:  # development mode: no key, admin rights
        assert admin.list_quarantines() == ()
        held = [i for i in admin.list_incidents(open_only=True, limit=1000) if any(m.active() for m in i.mitigations)]
        assert held == [], f"open incidents holding a mitigation: {held}"
        observed = [i for i in admin.list_incidents(limit=1000) if i.rule == "escape_attempts"]
        assert observed, "incident response did not observe the corpus's escape attempts"
        assert all(i.exercise and not i.mitigations for i in observed)
    with SandboxClient(target) as sbx:  # ordinary traffic of the tenant the checks ran as
        result = sbx.execute("print(6 * 7)")
        assert (result.ok, result.stdout) == (True, "42\n")


@pytest.mark.slow
@pytest.mark.timeout(2 * (START_TIMEOUT_S + len(README_COMMANDS) * COMMAND_TIMEOUT_S + STOP_TIMEOUT_S))
def test_the_readme_commands_pass_against_a_fresh_then_a_restarted_server(tmp_path: Path) -> None:
    for entry_point in ("sandbox-server", "sandbox-admin"):
        assert (BIN / entry_point).exists(), f"{BIN / entry_point} is missing: run scripts/setup.sh"
    data_dir = tmp_path / "data"
    unique = uuid.uuid4().hex[:8]
    # Short (the sandboxes' sockets live under it) and made by the server itself, with the modes it needs.
    state_dir = Path(tempfile.gettempdir()) / f"sandbox-test-{unique}"
    cgroup_parent = f"sandbox-test-{unique}"
    try:
        for run in ("fresh", "restarted"):
            with _serve(data_dir, state_dir, cgroup_parent, tmp_path / f"serve-{run}") as target:
                _check_the_operator_tools(target)
    finally:
        scratch = state_dir / "scratch"
        if not (scratch.exists() and any(scratch.iterdir())):  # a leftover mount is a leak to look at, kept
            shutil.rmtree(state_dir, ignore_errors=True)
