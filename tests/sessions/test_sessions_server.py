"""Sessions through real servers of their own: lifecycle, tenancy, policy, quotas, snapshots, the production
stack (audit, cost, metrics, loop detection), shutdown and crash recovery. The backend contract of sessions
(what a session does on each backend) is tests/backends/test_session_contract.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from sandbox_client import (
    InvalidRequestError,
    Limits,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxClient,
    SessionNotFoundError,
    Status,
)
from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_client._proto.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_client.admin import AdminClient
from sandbox_server.backends.cgroups import detect
from sandbox_server.execution.pressure import PressureConfig
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "production"))
from production_helpers import metric, scrape

MIB = 1024 * 1024
TENANTS = """\
version: 1
tenants:
  acme:
    allowed_env: ["*"]
    static_validation: {enabled: false}
    guardrails: {output_secrets: "redact"}
    pricing: {session_memory_gb_second: 0.001, per_execution: 0.01}
    sessions:
      max_active: 3
      idle_timeout_s: {default: 600, max: 600}
      loop_detection: {repeats: 3}
      snapshots: {max_bytes: 1048576, max_count: 2}
  research:
    sessions: {enabled: false}
  other:
    static_validation: {enabled: false}
    budget: {per_session: 0.05}
    pricing: {per_execution: 0.02}
"""


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    """A server requiring API keys, with three tenants and a key each (plus an admin key), metrics on."""
    policies = tmp_path_factory.mktemp("policies")
    (policies / "tenants.yaml").write_text(TENANTS)
    settings = private_settings(auth="api-keys", policies_dir=policies, metrics_port=0)
    stores = open_stores(settings.data_dir)
    try:
        keys = {name: stores.keys.create(name, "tenant", "test")[1] for name in ("acme", "research", "other")}
        keys["admin"] = stores.keys.create("acme", "admin", "test")[1]
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        yield srv, keys


def client(srv: RunningServer, keys: dict[str, str], who: str) -> SandboxClient:
    return SandboxClient(srv.target, api_key=keys[who], retry=None, timeout=120)


# ---- tenancy -------------------------------------------------------------------------------------------------
def test_another_tenant_gets_exactly_the_answer_of_an_id_that_never_existed(
        tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme, client(srv, keys, "other") as other, acme.session() as s:
        s.files.upload("secret.txt", b"acme's")
        never = "ses_" + "a" * 32
        channel = grpc.insecure_channel(srv.target)
        stub = pb_grpc.SandboxStub(channel)
        metadata = (("authorization", f"Bearer {keys['other']}"),)

        def answers(session_id: str) -> list[tuple[grpc.StatusCode, str]]:
            out = []
            calls: list[Callable[[], object]] = [
                lambda: stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=metadata),
                lambda: stub.Execute(pb.ExecuteRequest(language="python", code=b"1", session_id=session_id),
                                     metadata=metadata),
                lambda: stub.ListFiles(pb.ListFilesRequest(session_id=session_id), metadata=metadata),
                lambda: list(stub.DownloadFile(pb.DownloadFileRequest(session_id=session_id, path="secret.txt"),
                                               metadata=metadata)),
                lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=metadata),
                lambda: stub.SnapshotSession(pb.SnapshotSessionRequest(session_id=session_id), metadata=metadata),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call()
                out.append((info.value.code(), info.value.details().replace(session_id, "<id>")))
            return out

        try:
            assert answers(s.id) == answers(never)
            assert all(code is grpc.StatusCode.NOT_FOUND for code, _ in answers(s.id))
        finally:
            channel.close()
        assert [x.id for x in other.list_sessions()] == []
        assert s.id in [x.id for x in acme.list_sessions()]
        assert s.run("open('secret.txt').read()").value == "\"acme's\""  # untouched


def test_a_tenant_without_sessions_is_refused(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "research") as research, pytest.raises(PermissionDeniedError) as info:
        research.session()
    assert info.value.details.reason == "SESSIONS_DISABLED"


def test_the_active_session_quota_is_named(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        opened = [acme.session(language="bash", languages=["bash"]) for _ in range(3)]
        try:
            with pytest.raises(ResourceExhaustedError) as info:
                acme.session(language="bash", languages=["bash"])
            assert info.value.details.quota_violations[0].subject == "tenant:acme/sessions.max_active"
        finally:
            for s in opened:
                s.close()


def test_policy_bounds_the_session_settings(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        with pytest.raises(PermissionDeniedError, match="idle_timeout_s"):
            acme.session(idle_timeout_s=601)
        with pytest.raises(InvalidRequestError):
            acme.session(languages=["cobol"])
        with pytest.raises(InvalidRequestError):
            acme.session(limits=Limits(memory_bytes=64 * 1024 ** 4))  # above the server's ceiling


def test_snapshots_belong_to_their_tenant_and_are_capped(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme, client(srv, keys, "other") as other:
        with acme.session(languages=["python", "bash"]) as s:
            s.files.upload("keep/me.txt", b"kept")
            s.run("import os; os.symlink('/etc/passwd', 'link')")
            snap = s.snapshot("first")
            assert snap.files == 1
            assert snap.skipped == 1
            assert snap.size_bytes == 4
            s.files.upload("big.bin", b"x" * (2 * MIB))
            with pytest.raises(ResourceExhaustedError) as info:
                s.snapshot("too big")
            assert "snapshots.max_bytes" in info.value.details.quota_violations[0].subject
        assert [x.id for x in acme.list_snapshots()] == [snap.id]
        with pytest.raises(NotFoundError):
            other.session(snapshot_id=snap.id)
        with pytest.raises(NotFoundError):
            other.delete_snapshot(snap.id)
        with acme.session(snapshot_id=snap.id) as restored:
            assert restored.files.download("keep/me.txt") == b"kept"
            assert sorted(f.path for f in restored.files.list(recursive=True)) == ["keep", "keep/me.txt"]
            assert restored.info.snapshot_id == snap.id
            second = restored.snapshot("second")
            with pytest.raises(ResourceExhaustedError):
                restored.snapshot("third")  # max_count: 2
        acme.delete_snapshot(snap.id)
        acme.delete_snapshot(second.id)
        assert list(acme.list_snapshots()) == []


# ---- lifecycle ------------------------------------------------------------------------------------------------
def test_an_idle_session_closes_and_says_why(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        s = acme.session(idle_timeout_s=1)
        s.run("1")
        time.sleep(3)
        with pytest.raises(SessionNotFoundError) as info:
            acme.get_session(s.id)
        assert info.value.close_reason == "idle_timeout"


def test_a_session_closes_at_its_lifetime_even_mid_call(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        s = acme.session(max_lifetime_s=2)
        r = s.run("import time; time.sleep(10)", limits=Limits(wall_time_s=30))
        assert r.status is Status.KILLED
        assert "max_lifetime" in r.message
        with pytest.raises(SessionNotFoundError) as info:
            s.run("1")
        assert info.value.close_reason == "max_lifetime"


def test_the_cpu_total_closes_the_session(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        s = acme.session(cpu_total_s=1)
        r = s.run("while True:\n    pass", limits=Limits(cpu_time_s=30, wall_time_s=30))
        assert r.status is Status.CPU_LIMIT
        assert any("CPU total" in w for w in r.warnings)
        deadline = time.monotonic() + 10
        while s.id in [x.id for x in acme.list_sessions()]:
            assert time.monotonic() < deadline, "the session outlived its CPU total"
            time.sleep(0.1)
        with pytest.raises(SessionNotFoundError) as info:
            acme.get_session(s.id)
        assert info.value.close_reason == "cpu_limit"


def test_lifecycle_events_and_audit_records(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme:
        with acme.session() as s:
            r = s.run("1 + 1")
            s.files.upload("a.txt", b"a")
            s.files.delete("a.txt")
        with AdminClient(srv.target, api_key=keys["admin"]) as admin:
            shown = admin.get_session(s.id)
    events = [e.event for e in shown.events]
    assert events == ["created", "uploaded", "deleted", "closed"]
    assert shown.events[-1].detail["reason"] == "closed"
    assert shown.tenant == "acme"
    stores = open_stores(srv.settings.data_dir)
    try:
        record = stores.audit.get(r.execution_id)
    finally:
        stores.close()
    assert record is not None
    assert record.session_id == s.id
    assert record.outcome == "OK"


def test_an_admin_lists_shows_and_closes_sessions(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme, AdminClient(srv.target, api_key=keys["admin"]) as admin:
        s = acme.session()
        listed = admin.list_sessions(tenant="acme")
        assert s.id in [x.session.id for x in listed]
        closed = admin.close_session(s.id)
        assert closed.session.close_reason == "admin"
        with pytest.raises(SessionNotFoundError) as info:
            s.run("1")
        assert info.value.close_reason == "admin"
        assert s.id in [x.session.id for x in admin.list_sessions(tenant="acme", include_closed=True)]


# ---- the production stack ----------------------------------------------------------------------------------
def test_loop_detection_warns_and_opens_an_incident(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme, acme.session() as s:
        results = [s.run("undefined_name + 1") for _ in range(3)]
        assert [bool(r.warnings) for r in results] == [False, False, True]
        assert "in a row" in results[-1].warnings[0]
        assert not s.run("1").warnings
        with AdminClient(srv.target, api_key=keys["admin"]) as admin:
            deadline = time.monotonic() + 10
            while not [i for i in admin.list_incidents() if i.rule == "session_loop"]:
                assert time.monotonic() < deadline, "no session_loop incident"
                time.sleep(0.1)


def test_held_time_is_priced_and_a_session_budget_holds_across_calls(
        tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with client(srv, keys, "acme") as acme, acme.session(limits=Limits(memory_bytes=512 * MIB)) as s:
        time.sleep(1.2)
        s.run("1")
        cost = s.refresh().usage.cost
        assert cost >= 0.01 + 0.001 * 0.512 * 1.0  # a call's fee, and over a second of 0.512 GB held
    with client(srv, keys, "other") as other, other.session() as s:
        s.run("1")
        s.run("1")
        with pytest.raises(ResourceExhaustedError) as info:
            s.run("1")  # 0.02 a call against a session budget of 0.05
        assert info.value.details.reason == "BUDGET_EXCEEDED"


def test_session_metrics(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    before = scrape(srv)
    with client(srv, keys, "acme") as acme, acme.session() as s:
        s.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
              limits=Limits(wall_time_s=1))
        during = scrape(srv)
    after = scrape(srv)
    assert metric(during, "sandbox_sessions_active", tenant="acme") == metric(before, "sandbox_sessions_active",
                                                                               tenant="acme") + 1
    assert metric(after, "sandbox_sessions_closed_total", reason="closed") >= 1
    assert metric(after, "sandbox_sessions_kernel_restarts_total", tenant="acme") >= 1
    assert metric(after, "sandbox_sessions_lifetime_seconds_count") >= 1


# ---- shutdown and crashes -------------------------------------------------------------------------------------
def test_shutdown_closes_every_session(tmp_path: Path) -> None:
    settings = private_settings(data_dir=tmp_path / "data")  # kept past the server (its state dir is not)
    with server_in_thread(settings) as srv, SandboxClient(srv.target) as sbx:
        s = sbx.session()
        s.run("1")
    stores = open_stores(settings.data_dir)
    try:
        record = stores.sessions.get(s.id)
    finally:
        stores.close()
    assert record is not None
    assert record.close_reason == "server_shutdown"


def test_a_killed_server_loses_its_sessions_cleanly(tmp_path: Path) -> None:
    unique = uuid.uuid4().hex[:8]
    state, data, parent = Path(f"/tmp/sandbox-crash-{unique}"), tmp_path / "data", f"sandbox-crash-{unique}"
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": parent, "SANDBOX_DATA_DIR": str(data),
           "SANDBOX_SESSION_POOL_SIZE": "0"}
    server = Path(sys.executable).parent / "sandbox-server"

    def serve() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([str(server), "serve", "--port", "0", "--state-dir", str(state)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"listening on (\S+)", first)
        assert found, first
        return proc, found.group(1)

    proc, target = serve()
    try:
        with SandboxClient(target) as sbx:
            s = sbx.session()
            s.run("x = 1")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Its jail ends with it: the agent's end of the channel closed.
        deadline = time.monotonic() + 15
        while any(d.exists() and any(p.is_dir() and not p.name.startswith("probe") and _busy(p)
                                     for p in d.iterdir()) for d in detect(parent).dirs()):
            assert time.monotonic() < deadline, "the session's processes outlived the killed server"
            time.sleep(0.1)
        proc, target = serve()
        with SandboxClient(target, retry=None) as sbx:
            started = time.monotonic()
            with pytest.raises(SessionNotFoundError) as info:
                sbx.execute("1", session_id=s.id)
            assert time.monotonic() - started < 5
            assert info.value.close_reason == "server_restart"
            with sbx.session() as again:  # and sessions work again
                assert again.run("1 + 1").value == "2"
        assert not (state / "scratch" / s.id).exists(), "the lost session's workspace was not reaped"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        subprocess.run(["umount", "-R", "-l", str(state / "scratch")], check=False, capture_output=True)
        for d in detect(parent).dirs():
            if d.exists():
                for sub in sorted(d.iterdir(), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                d.rmdir()
        shutil.rmtree(state, ignore_errors=True)


def _busy(cgroup_dir: Path) -> bool:
    procs = cgroup_dir / "cgroup.procs"
    return procs.exists() and bool(procs.read_text().split())


def test_no_kernel_is_started_ahead_while_the_host_sheds_new_work(tmp_path: Path) -> None:
    """A pooled sandbox would take what the host is short of, for no request: the pool waits for the shedding to
    end, then fills."""
    floor = psutil.virtual_memory().total  # more than is ever available: shedding from the first reading
    (tmp_path / "default.yaml").write_text("version: 1\ntenants:\n  default: {}\n")
    with server_in_thread(session_pool_size=1, policies_dir=tmp_path, shed_memory_floor_bytes=floor,
                          shed_sample_interval_s=0.1) as srv:
        pool = srv.app.sessions.pool if srv.app.sessions is not None else None
        assert pool is not None
        assert srv.app.pressure.violations()
        time.sleep(2.0)  # a pool that ignored the verdict starts its sandbox at once
        assert (pool.ready, pool.names()) == (0, set())
        srv.app.pressure.config = PressureConfig()  # the defaults never shed this machine: the shedding ends
        deadline = time.monotonic() + 60
        while pool.ready < 1:
            assert time.monotonic() < deadline, "the pool did not fill once the shedding ended"
            time.sleep(0.1)


def test_kernels_started_ahead_are_used_and_replaced(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text('version: 1\ntenants:\n  default:\n    allowed_env: ["*"]\n')
    with server_in_thread(session_pool_size=1, policies_dir=tmp_path) as srv, SandboxClient(srv.target) as sbx:
        pool = srv.app.sessions.pool if srv.app.sessions is not None else None
        assert pool is not None
        deadline = time.monotonic() + 60
        while pool.ready < 1:
            assert time.monotonic() < deadline, "the pool did not fill"
            time.sleep(0.1)
        started = time.monotonic()
        with sbx.session(env={"GREETING": "hello"}) as s:
            took = time.monotonic() - started
            assert s.run("import os; os.environ['GREETING']").value == "'hello'"
            assert s.run("echo $GREETING", language="bash").stdout == "hello\n"
            assert s.run("1").execution_count == 2  # the handover ran nothing the user can count
        assert took < 0.5, f"a pooled session took {took:.2f} s"
        while pool.ready < 1:
            assert time.monotonic() < deadline + 60, "the pool was not refilled"
            time.sleep(0.1)



