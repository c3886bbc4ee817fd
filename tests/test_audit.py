"""Exactly one durable audit record per accepted execution; none for a refused request; none lost to kill -9."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox_client import (
    DeadlineExceededError,
    InvalidRequestError,
    Limits,
    SandboxClient,
    SandboxError,
)
from sandbox_server.backends.cgroups import detect
from sandbox_server.stores.base import AuditStore
from sandbox_server.stores.sqlite import SqliteAuditStore
from sandbox_server.testing import RunningServer, server_in_thread

BURST = 500  # mixed requests: accepted (ok, failing, timing out) and refused (unknown language, static check)


@pytest.fixture(scope="module")
def audited() -> Iterator[RunningServer]:
    # Incident response would quarantine this tenant for its escape-like refusals; it has its own tests.
    with server_in_thread(max_running=4, max_queued=64, incidents={"enabled": False}) as srv:
        yield srv


def _audit(srv: RunningServer) -> AuditStore:
    assert srv.app.stores is not None
    return srv.app.stores.audit


def test_one_record_per_accepted_execution_with_its_facts(audited: RunningServer) -> None:
    with SandboxClient(audited.target) as sbx:
        r = sbx.execute("print('audited')", session_id="s-1", limits=Limits(wall_time_s=3))
    rec = _audit(audited).get(r.execution_id)
    assert rec is not None
    assert rec.tenant == "default"
    assert rec.key_id == "dev"
    assert rec.session_id == "s-1"
    assert rec.language == "python"
    assert rec.code_sha256 == hashlib.sha256(b"print('audited')").hexdigest()
    assert rec.limits["wall_time_ms"] == 3000
    assert rec.outcome == "OK"
    assert rec.exit_code == 0
    assert rec.wall_time_s > 0
    assert rec.started_at <= rec.ended_at


def test_refused_requests_leave_no_record(audited: RunningServer) -> None:
    before = _audit(audited).count()
    with SandboxClient(audited.target) as sbx:
        with pytest.raises(InvalidRequestError):
            sbx.execute("print(1)", language="cobol")
        with pytest.raises(InvalidRequestError):
            sbx.execute("import ctypes")  # static validation of the default tenant
    assert _audit(audited).count() == before


def test_a_cancelled_execution_is_recorded_as_cancelled(audited: RunningServer) -> None:
    tag = uuid.uuid4().hex
    with SandboxClient(audited.target) as sbx, pytest.raises(DeadlineExceededError):
        sbx.execute(f"import time  # {tag}\ntime.sleep(30)", timeout=1)
    digest = hashlib.sha256(f"import time  # {tag}\ntime.sleep(30)".encode()).hexdigest()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [r for r in _audit(audited).list(limit=50) if r.code_sha256 == digest]
        if found:
            break
        time.sleep(0.05)
    assert [r.outcome for r in found] == ["CANCELLED"]


def test_audit_trail_is_complete_after_a_mixed_burst(audited: RunningServer) -> None:
    before = _audit(audited).count()
    programs = [("print(1)", "python"), ("exit 3", "bash"), ("x=1", "cobol"), ("import ctypes", "python"),
                ("console.log(2)", "javascript"), ("while True: pass", "python")]

    def one(i: int) -> tuple[str, str | None]:
        code, language = programs[i % len(programs)]
        with SandboxClient(audited.target) as sbx:
            try:
                r = sbx.execute(code, language=language, limits=Limits(wall_time_s=0.5))
                return "accepted", r.execution_id
            except SandboxError as exc:
                return type(exc).__name__, None

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(BURST)))
    accepted = [eid for kind, eid in results if kind == "accepted"]
    refused = [kind for kind, _ in results if kind != "accepted"]
    assert len(accepted) == sum(1 for i in range(BURST) if i % len(programs) not in (2, 3))
    assert set(refused) == {"InvalidRequestError"}
    assert _audit(audited).count() == before + len(accepted)
    for eid in accepted:
        assert eid is not None
        assert _audit(audited).get(eid) is not None


def test_no_record_is_lost_when_the_server_is_killed_right_after_replying(tmp_path: Path) -> None:
    unique = uuid.uuid4().hex[:8]
    # The state dir must be traversable by the sandbox user (pytest's tmp_path is 0700); data may stay private.
    state, data, parent = Path(f"/tmp/sandbox-audit-{unique}"), tmp_path / "data", f"sandbox-audit-{unique}"
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": parent, "SANDBOX_DATA_DIR": str(data),
           "SANDBOX_SESSION_POOL_SIZE": "0"}
    server = Path(sys.executable).parent / "sandbox-server"
    proc = subprocess.Popen([str(server), "serve", "--port", "0", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        target = re.search(r"listening on (\S+)", first)
        assert target, first
        with SandboxClient(target.group(1)) as sbx:
            result = sbx.execute("print('last words')")
            proc.send_signal(signal.SIGKILL)  # the moment the reply is in
        assert result.stdout == "last words\n"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # The killed server's jails and mounts are gone with it or reaped by the next start; clean ours.
        subprocess.run(["umount", "-R", "-l", str(state / "scratch")], check=False, capture_output=True)
        for d in detect(parent).dirs():
            if d.exists():
                for sub in sorted(d.iterdir(), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                d.rmdir()
        shutil.rmtree(state, ignore_errors=True)
    store = SqliteAuditStore(data / "state.db")
    try:
        rec = store.get(result.execution_id)
    finally:
        store.close()
    assert rec is not None
    assert rec.outcome == "OK"
