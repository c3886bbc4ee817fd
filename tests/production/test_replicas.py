"""Three replicas as separate processes, on one PostgreSQL and one Redis, behind HAProxy (gRPC over h2c, each
call balanced round robin): the deployment docs/operations.md describes, with every part real.

- calls through the balancer reach every replica, and each leaves exactly one audit record in the shared store;
- a policy applied on one replica is live on all three within a second;
- a quarantine opened on one replica is enforced by all three, and lifting it on another frees all three;
- a session lives on the replica that created it, and every call for it through the balancer (wherever it lands)
  is forwarded there: one kernel, one workspace; once that replica is gone, its caller is told so;
- a replica killed with SIGKILL in the middle of a burst: every reply a caller got has its audit record, a retry
  with the same idempotency key gets the first reply (or runs once, for the calls the dead replica never answered),
  new calls go to the survivors, and the killed replica's sandboxes and scratch space are gone after its restart.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import psutil
import pytest
import redis
from haproxy_server import HAProxy, running_haproxy
from postgres_server import Postgres
from production_helpers import metric
from redis_server import Redis
from replica_processes import Replica, policy_text, running_replicas

from sandbox_client import (
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxClient,
    SandboxError,
    SessionNotFoundError,
)
from sandbox_client._proto.sandbox.v1 import admin_pb2, admin_pb2_grpc
from sandbox_client.admin import AdminClient
from sandbox_server.interceptors.forward import FORWARDED
from sandbox_server.stores.incidents import MitigationSpec
from sandbox_server.stores.postgres import PostgresAuditStore, PostgresDatabase
from sandbox_server.stores.postgres_incidents import PostgresIncidentStore

pytestmark = pytest.mark.timeout(300)


@dataclass
class Topology:
    replicas: list[Replica]
    balancer: HAProxy
    database_url: str
    redis_url: str

    def audit(self) -> PostgresAuditStore:
        return PostgresAuditStore(PostgresDatabase(self.database_url), owns=True)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, redis_server: Redis) -> Iterator[Topology]:
    redis_server.flush()
    url = postgres.create_database()
    with running_replicas(tmp_path_factory.mktemp("replicas"), 3, url, redis_server.url) as replicas, \
            running_haproxy([r.port for r in replicas]) as balancer:
        yield Topology(replicas, balancer, url, redis_server.url)


def _scrape(replica: Replica) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def test_calls_through_the_balancer_reach_every_replica_with_one_record_each(topology: Topology) -> None:
    before = [metric(_scrape(r), "sandbox_executions_total") for r in topology.replicas]
    with SandboxClient(topology.balancer.target, timeout=60) as sbx, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: sbx.execute(f"print({i} * 2)"), range(30)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(30)]
    after = [metric(_scrape(r), "sandbox_executions_total") for r in topology.replicas]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 30, served
    assert min(served) >= 5, served  # round robin, per call
    audit = topology.audit()
    try:
        for result in results:
            record = audit.get(result.execution_id)
            assert record is not None
            assert record.outcome == "OK"
    finally:
        audit.close()


def _wait_for(check: Callable[[], bool], limit_s: float) -> float:
    """Seconds until ``check()`` is true; fails past ``limit_s``."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < limit_s, f"not within {limit_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_policy_applied_on_one_replica_is_live_on_all_within_a_second(topology: Topology) -> None:
    first, *others = topology.replicas
    with AdminClient(first.target, api_key=None) as admin:
        applied = admin.apply_policy("default.yaml", policy_text("description: applied on one replica"))
    listings = [AdminClient(r.target, api_key=None) for r in topology.replicas]
    try:
        took = _wait_for(lambda: all(a.list_policies().version == applied.version for a in listings), 1.0)
        for a in listings:
            file = a.get_policy().file("default.yaml")
            assert file is not None
            assert "applied on one replica" in file.text
    finally:
        for a in listings:
            a.close()
    # Each replica wrote the version into its own policy directory: a restart starts where it left off.
    for replica in others:
        assert "applied on one replica" in (replica.policies / "default.yaml").read_text()
    assert took < 1.0
    # A rollback on another replica is a version like any other: live on all within a second too.
    with AdminClient(others[-1].target, api_key=None) as admin:
        rolled = admin.rollback_policy(applied.version - 1)
    assert rolled.version == applied.version + 1
    listings = [AdminClient(r.target, api_key=None) for r in topology.replicas]
    try:
        assert _wait_for(lambda: all(a.list_policies().version == rolled.version for a in listings), 1.0) < 1.0
        for a in listings:
            file = a.get_policy().file("default.yaml")
            assert file is not None
            assert "applied on one replica" not in file.text
    finally:
        for a in listings:
            a.close()


def test_a_quarantine_is_enforced_by_every_replica_and_lifted_by_any(topology: Topology) -> None:
    # What a replica's incident response does when a tenant trips a critical rule: open it in the shared store.
    store = PostgresIncidentStore(PostgresDatabase(topology.database_url), owns=True)
    try:
        incident, _ = store.open_or_bump("escape_attempts", "critical", "tenant", "default", "default",
                                         "an escape attempt", {}, MitigationSpec("quarantine", "tenant", "default"))
    finally:
        store.close()
    clients = [SandboxClient(r.target, retry=None) for r in topology.replicas]
    try:
        def refused(sbx: SandboxClient) -> bool:
            try:
                sbx.execute("print(1)")
            except PermissionDeniedError as exc:
                return exc.reason == "QUARANTINED"
            return False

        _wait_for(lambda: all(refused(c) for c in clients), 3.0)
        with AdminClient(topology.replicas[2].target, api_key=None) as admin:
            (mitigation,) = [m for m in admin.list_quarantines() if m.incident_id == incident.id]
            admin.lift_quarantine(mitigation.id)

        def runs(sbx: SandboxClient) -> bool:
            try:
                return sbx.execute("print(1)").stdout == "1\n"
            except PermissionDeniedError:
                return False

        _wait_for(lambda: all(runs(c) for c in clients), 3.0)
    finally:
        for c in clients:
            c.close()


def _holder(topology: Topology, session_id: str) -> Replica:
    """The replica holding the session, asked of each replica's Admin API (not of the registry under test). The
    listing is asked as another server's fan-out asks it (x-sandbox-forwarded), so each answers for its own."""
    found = []
    for replica in topology.replicas:
        if replica.proc is None:
            continue
        with grpc.insecure_channel(replica.target) as channel:
            own = admin_pb2_grpc.AdminStub(channel).ListSessions(
                admin_pb2.AdminListSessionsRequest(), metadata=((FORWARDED, "test"),), timeout=30)
        if any(s.session.id == session_id for s in own.sessions):
            found.append(replica)
    assert len(found) == 1, found
    return found[0]


def test_a_session_is_one_kernel_and_workspace_wherever_its_calls_land(topology: Topology) -> None:
    with SandboxClient(topology.balancer.target, timeout=60) as sbx:
        session = sbx.session()
        holder = _holder(topology, session.id)
        # Round robin sends consecutive calls to each replica in turn: two of every three are forwarded.
        session.run("n = 0")
        for i in range(1, 7):
            assert session.run("n += 1\nn").value == str(i)
        session.files.upload("data/in.txt", b"uploaded through the balancer\n")
        assert session.run("cat data/in.txt", language="bash").stdout == "uploaded through the balancer\n"
        session.run("open('data/out.txt', 'w').write(str(n * 7))")
        for _ in range(3):
            assert session.files.download("data/out.txt") == b"42"
            assert [f.path for f in session.files.list("data")] == ["data/in.txt", "data/out.txt"]
        streamed = list(sbx.execute_stream("print(n)", session_id=session.id))
        assert streamed[-1].stdout == "6\n"  # type: ignore[union-attr]
        session.files.delete("data/in.txt")
        assert session.refresh().usage.calls >= 8
        assert _holder(topology, session.id) is holder  # it never moved
        # Every call ran, and was audited, on its holder: one record per execution in the shared trail.
        closed = session.close()
        assert closed is not None
        assert closed.close_reason == "closed"
    with SandboxClient(topology.balancer.target, retry=None) as sbx, pytest.raises(SessionNotFoundError) as info:
        sbx.execute("n", session_id=session.id)
    assert info.value.close_reason == "closed"
    # The registry forgets a closed session.
    client = redis.Redis.from_url(topology.redis_url)
    try:
        assert not [k for k in client.scan_iter("sandbox:session-owner:*") if session.id.encode() in k]
    finally:
        client.close()


def test_a_relayed_call_is_counted_once_with_the_holders_code(topology: Topology) -> None:
    """The holder's refusal reaches the caller whole (it used to become INTERNAL on the way back), and the call
    is counted once, by the holder: the server that relayed it neither counts it again nor takes it for a
    fault of its own."""
    holder, front = topology.replicas[0], topology.replicas[1]

    def counts(code: str) -> list[float]:
        return [metric(_scrape(r), "sandbox_rpcs_total", method="Execute", code=code) for r in (holder, front)]

    with SandboxClient(holder.target, timeout=60) as own:
        session = own.session()
        try:
            ok, refused, internal = counts("OK"), counts("INVALID_ARGUMENT"), counts("INTERNAL")
            with SandboxClient(front.target, timeout=60, retry=None) as other:
                assert other.execute("print(6 * 7)", session_id=session.id).stdout == "42\n"
                with pytest.raises(SandboxError) as info:
                    other.execute("print(1)", session_id=session.id, language="cobol")
            assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT  # the holder's answer, with its details
            assert [v.field for v in info.value.details.field_violations] == ["language"]
            assert [a - b for a, b in zip(counts("OK"), ok, strict=True)] == [1, 0]
            assert [a - b for a, b in zip(counts("INVALID_ARGUMENT"), refused, strict=True)] == [1, 0]
            assert counts("INTERNAL") == internal
        finally:
            session.close()


def test_session_listings_and_admin_session_calls_cover_every_replica(topology: Topology) -> None:
    """A tenant's ListSessions and the Admin API's, on any server, list the fleet's live sessions (each server
    answers for those it holds), pages included; the Admin API reads and closes a session another server holds."""
    labels = {"listing": os.urandom(4).hex()}
    clients = [SandboxClient(r.target, timeout=60) for r in topology.replicas]
    admins = [AdminClient(r.target, api_key=None) for r in topology.replicas]
    try:
        opened = [clients[i % 3].session(labels=labels) for i in range(5)]  # two, two and one per server
        ids = [s.id for s in opened]
        for sbx in clients:
            assert [s.id for s in sbx.list_sessions(labels)] == ids  # oldest first, from every server
            assert [s.id for s in sbx.list_sessions(labels, page_size=2)] == ids  # in pages of two

        def listings_counted() -> float:
            return sum(metric(_scrape(r), "sandbox_rpcs_total", method="ListSessions") for r in topology.replicas)

        before = listings_counted()
        assert len(list(clients[0].list_sessions(labels))) == 5
        assert listings_counted() - before == 1  # once, by the server asked: not again by the others it asked
        for admin in admins:
            listed = [s.session.id for s in admin.list_sessions() if s.session.id in ids]
            assert listed == ids
        held_by_third = opened[2]
        got = admins[0].get_session(held_by_third.id)
        assert got.session.state == "READY"
        assert got.events  # its events, from the shared records
        closed = admins[1].close_session(held_by_third.id)  # held by the third server
        assert closed.session.close_reason == "admin"
        remaining = [i for i in ids if i != held_by_third.id]
        assert [s.id for s in clients[0].list_sessions(labels)] == remaining
        for session in opened:
            if session.id != held_by_third.id:
                session.close()
        assert list(clients[1].list_sessions(labels)) == []
    finally:
        for client in clients:
            client.close()
        for admin in admins:
            admin.close()


def test_an_execution_running_on_one_replica_is_listed_read_and_killed_through_another(
        topology: Topology) -> None:
    runner, other = topology.replicas[0], topology.replicas[2]
    marker = os.urandom(4).hex()
    with SandboxClient(runner.target, timeout=120) as sbx, ThreadPoolExecutor(1) as pool, \
            AdminClient(other.target, api_key=None) as admin:
        pending = pool.submit(sbx.execute, f"import time\nprint({marker!r}, flush=True)\ntime.sleep(60)")

        def running_there() -> list[str]:
            return [e.execution_id for e in admin.list_executions(running_only=True)]

        _wait_for(lambda: len(running_there()) == 1, 30.0)
        (execution_id,) = running_there()
        assert admin.get_execution(execution_id).outcome == "RUNNING"
        assert [e.execution_id for e in admin.list_executions(limit=1)] == [execution_id]  # the newest
        assert admin.kill_execution(execution_id) is True
        killed = pending.result(timeout=60)
        assert (killed.execution_id, killed.status.name) == (execution_id, "KILLED")
        assert admin.get_execution(execution_id).outcome == "KILLED"  # its record, in the shared trail
        with pytest.raises(SandboxError) as missing:
            admin.kill_execution(execution_id)  # ended: no server runs it
        assert missing.value.code is grpc.StatusCode.NOT_FOUND


def test_a_tenants_live_sessions_are_counted_across_every_replica(topology: Topology) -> None:
    """sessions.max_active is the tenant's limit for the fleet, not for each server (counted in Redis)."""
    first, second, third = topology.replicas
    listings = [AdminClient(r.target, api_key=None) for r in topology.replicas]
    try:
        before = listings[0].list_policies().version
        applied = listings[0].apply_policy("default.yaml", policy_text("sessions: {max_active: 2}"))
        _wait_for(lambda: all(a.list_policies().version == applied.version for a in listings), 2.0)
        with SandboxClient(first.target, retry=None) as one, SandboxClient(second.target, retry=None) as two, \
                SandboxClient(third.target, retry=None) as three:
            kept = [one.session(), two.session()]
            with pytest.raises(ResourceExhaustedError) as refused:
                three.session()  # a server with no session of the tenant refuses the third
            assert [v.subject for v in refused.value.quota_violations] == ["tenant:default/sessions.max_active"]
            kept[0].close()  # a place is free again, on every server
            again = three.session()
            again.close()
            kept[1].close()
        listings[2].rollback_policy(before)
    finally:
        for a in listings:
            a.close()


def test_a_snapshot_taken_on_one_replica_restores_on_another(topology: Topology) -> None:
    first, second = topology.replicas[0], topology.replicas[2]
    with SandboxClient(first.target, timeout=60) as one:
        session = one.session()
        session.files.upload("notes/plan.txt", b"kept across replicas\n")
        snapshot = session.snapshot("before the move")
        session.close()
    # Its archive is in the shared database, not in the first replica's data directory.
    assert not list((first.data / "snapshots").glob("*.tar"))
    with SandboxClient(second.target, timeout=60) as other:
        restored = other.session(snapshot_id=snapshot.id)
        assert restored.files.download("notes/plan.txt") == b"kept across replicas\n"
        restored.close()
        assert snapshot.id in [s.id for s in other.list_snapshots()]
        other.delete_snapshot(snapshot.id)
        assert snapshot.id not in [s.id for s in other.list_snapshots()]


def test_a_session_whose_replica_is_gone_says_so(topology: Topology) -> None:
    with SandboxClient(topology.balancer.target, timeout=60) as sbx:
        session = sbx.session()
        session.run("x = 1")
        holder = _holder(topology, session.id)
        holder.kill()
        try:
            others = [r for r in topology.replicas if r is not holder]
            for other in others:  # every survivor gives the same clear answer, within seconds
                with SandboxClient(other.target, retry=None, timeout=30) as direct:
                    started = time.monotonic()
                    with pytest.raises(SessionNotFoundError) as info:
                        direct.execute("x", session_id=session.id)
                    assert info.value.close_reason == "server_lost"
                    assert time.monotonic() - started < 10
        finally:
            holder.start()
    with SandboxClient(holder.target, retry=None) as direct, pytest.raises(SessionNotFoundError) as info:
        direct.execute("x", session_id=session.id)
    assert info.value.close_reason == "server_restart"  # its restart closed the lost session's record


@dataclass
class Outcome:
    key: str
    execution_id: str = ""
    stdout: str = ""
    error: str = ""


def test_a_replica_killed_mid_burst(topology: Topology) -> None:
    victim = topology.replicas[1]
    # Python runs on the warm path (a pre-started sandbox, its scratch in the sandbox's own tmpfs), bash in a
    # cold jail with its scratch directory on the host: the restart must reap both kinds.
    programs = [("python", "import os, time\ntime.sleep(1.5)\nprint(os.urandom(8).hex())"),
                ("bash", "sleep 1.5; od -An -N8 -tx1 /dev/urandom")]
    n = 18
    start = threading.Barrier(n + 1)

    def call(i: int) -> Outcome:
        outcome = Outcome(f"burst-{os.getpid()}-{i}")
        with SandboxClient(topology.balancer.target, retry=None, timeout=120) as sbx:
            start.wait()
            try:
                result = sbx.execute(programs[i % 2][1], language=programs[i % 2][0], idempotency_key=outcome.key)
            except SandboxError as exc:
                outcome.error = type(exc).__name__
                return outcome
        outcome.execution_id, outcome.stdout = result.execution_id, result.stdout
        return outcome

    topology.balancer.wait_until_up(len(topology.replicas))  # the burst is spread over all three
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(call, i) for i in range(n)]
        start.wait()
        _wait_for(lambda: len(victim.sandbox_processes()) > 0 and len(victim.scratch_entries()) > 0, 10.0)
        time.sleep(0.5)  # every call is in its sandbox now
        left = {p.pid: p.create_time() for p in map(psutil.Process, victim.sandbox_processes())}
        left_scratch = set(victim.scratch_entries())
        victim.kill()
        # New work goes to the survivors at once: the balancer redispatches a failed connection.
        with SandboxClient(topology.balancer.target, retry=None, timeout=60) as sbx:
            for _ in range(3):
                assert sbx.execute("print('after')").stdout == "after\n"
        outcomes = [f.result() for f in futures]

    answered = [o for o in outcomes if o.execution_id]
    failed = [o for o in outcomes if not o.execution_id]
    assert failed, "no call was on the killed replica"
    assert len(answered) >= n // 2, outcomes
    assert {o.error for o in failed} <= {"UnavailableError", "InternalError"}, failed
    audit = topology.audit()
    try:
        for o in answered:  # every reply a caller got has its record
            record = audit.get(o.execution_id)
            assert record is not None, o
            assert record.outcome == "OK", o
        # Retries with the same keys, through the balancer: a call that was answered gets that same answer
        # (never a second run); one the dead replica never answered runs now, once (its claim expires first).
        with SandboxClient(topology.balancer.target, retry=None, timeout=120) as sbx, ThreadPoolExecutor(n) as pool:
            retried = list(pool.map(
                lambda i: sbx.execute(programs[i % 2][1], language=programs[i % 2][0], idempotency_key=outcomes[i].key),
                range(n)))
        for o, again in zip(outcomes, retried, strict=True):
            if o.execution_id:
                assert (again.execution_id, again.stdout) == (o.execution_id, o.stdout)
            assert again.status == "OK"
            assert audit.get(again.execution_id) is not None
        assert len({r.execution_id for r in retried}) == n
    finally:
        audit.close()

    # Nothing of the killed replica's sandboxes outlives its restart.
    victim.start()
    for pid, created in left.items():
        try:
            alive = psutil.Process(pid).create_time() == created
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, f"sandbox process {pid} of the killed replica is still running"
    assert not left_scratch & set(victim.scratch_entries()), "the killed replica's scratch space was not reaped"
    with SandboxClient(victim.target, retry=None) as sbx:
        assert sbx.execute("print('back')").stdout == "back\n"
