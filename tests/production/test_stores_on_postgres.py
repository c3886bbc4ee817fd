"""A server on PostgreSQL (``database_url``) instead of its SQLite file: every durable record lands there, and
replicas sharing the database hold one budget exactly."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from postgres_server import Postgres
from production_helpers import metric, scrape, server_with_policy

from sandbox_client import Limits, ResourceExhaustedError, SandboxClient, UnavailableError
from sandbox_server.stores.embedded import open_stores, redacted
from sandbox_server.stores.outbox import OutboxAuditStore


def test_every_record_lands_in_postgres_and_none_in_sqlite(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.create_database()
    with server_with_policy(tmp_path, "pricing: {per_execution: 0.5}", database_url=url) as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        ran = [sbx.execute("print('hi')", session_id="pg").execution_id for _ in range(3)]
        assert srv.app.stores is not None
        assert "PostgreSQL" in srv.app.stores.where
        assert not (srv.settings.data_dir / "state.db").exists()
    stores = open_stores(tmp_path / "unused", url)  # what a restarted server (or another replica) reads
    try:
        assert {rec.execution_id for rec in stores.audit.list()} == set(ran)
        (row,) = stores.costs.report("session", "default")
        assert (row.key, row.executions, row.execution_cost) == ("default/pg", 3, 1.5)
        assert stores.versions.list(1), "the policy version that went live is recorded"
    finally:
        stores.close()


def test_three_replicas_hold_a_budget_exactly_under_a_burst(tmp_path: Path, postgres: Postgres) -> None:
    """Three servers on one database, 21 concurrent requests spread over them against a day budget of 7
    executions: exactly 7 run (each replica reserves against the same ledger, one tenant at a time), the other
    14 are refused before running, and there are exactly 7 audit records and 7.0 spent."""
    url = postgres.create_database()
    policy = "pricing: {per_execution: 1.0}\nbudget: {per_day: 7}"
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(server_with_policy(tmp_path / f"r{i}", policy, database_url=url,
                                                           max_running=4, max_queued=32)) for i in range(3)]

        def one(i: int) -> str:
            with SandboxClient(replicas[i % 3].target, retry=None) as sbx:
                try:
                    sbx.execute("import time; time.sleep(0.2)", session_id=f"burst{i}")
                except ResourceExhaustedError as exc:
                    return exc.reason or "exhausted"
                return "ran"

        with ThreadPoolExecutor(21) as pool:
            outcomes = list(pool.map(one, range(21)))
    assert outcomes.count("ran") == 7, outcomes
    assert outcomes.count("BUDGET_EXCEEDED") == 14, outcomes
    stores = open_stores(tmp_path / "unused", url)
    try:
        assert stores.audit.count() == 7
        assert stores.costs.spent("default", "").day == 7.0
    finally:
        stores.close()


def test_with_the_database_down_nothing_runs_and_the_error_says_why(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.create_database()
    try:
        with server_with_policy(tmp_path, "pricing: {per_execution: 1.0}", database_url=url) as srv, \
                SandboxClient(srv.target, retry=None, timeout=60) as sbx:
            assert sbx.execute("print(1)").status == "OK"
            postgres.halt()
            with pytest.raises(UnavailableError) as info:
                sbx.execute("print('must not run')")
            assert info.value.reason == "STORE_UNAVAILABLE"
            assert "database is unavailable" in info.value.message
            assert info.value.retry_after is not None
            postgres.resume()
            # Back by itself, without a restart of the server: its pool reconnects with a backoff (seconds).
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert sbx.execute("print(3)").status == "OK"
                    break
                except UnavailableError:
                    assert time.monotonic() < deadline, "the server did not reconnect to the database"
                    time.sleep(0.5)
    finally:
        if not postgres.started:
            postgres.resume()
    stores = open_stores(tmp_path / "unused", url)
    try:
        assert stores.audit.count() == 2  # the refused one never ran: no record, no charge
        assert stores.costs.spent("default", "").day == 2.0
    finally:
        stores.close()


def test_an_execution_running_through_a_database_restart_keeps_its_record(tmp_path: Path,
                                                                          postgres: Postgres) -> None:
    """The database goes away while the program runs and is back a few seconds later: the reply waits for the
    record (AUDIT_RETRY_S), and the caller gets its result."""
    url = postgres.create_database()
    try:
        with server_with_policy(tmp_path, "", database_url=url) as srv, \
                SandboxClient(srv.target, retry=None, timeout=90) as sbx, ThreadPoolExecutor(1) as pool:
            running = pool.submit(sbx.execute, "import time\ntime.sleep(1.5)\nprint('done')",
                                  limits=Limits(wall_time_s=10))
            time.sleep(0.5)
            postgres.halt()
            time.sleep(3)
            postgres.resume()
            result = running.result(timeout=60)
            assert (result.status, result.stdout) == ("OK", "done\n")
    finally:
        if not postgres.started:
            postgres.resume()
    _recorded_once(tmp_path, url, result.execution_id)


def test_an_execution_outlasting_the_database_keeps_its_record_through_the_outbox(tmp_path: Path,
                                                                                  postgres: Postgres) -> None:
    """The database stays away longer than a failover: the record waits in the server's outbox on disk (the
    reply does not wait for the database), and moves into the database, once, when it is back."""
    url = postgres.create_database()
    try:
        with server_with_policy(tmp_path, "", database_url=url, metrics_port=0) as srv, \
                SandboxClient(srv.target, retry=None, timeout=120) as sbx, ThreadPoolExecutor(1) as pool:
            assert srv.app.stores is not None
            audit = srv.app.stores.audit
            assert isinstance(audit, OutboxAuditStore)  # a remote store has an outbox
            running = pool.submit(sbx.execute, "import time\ntime.sleep(1.0)\nprint('done')",
                                  limits=Limits(wall_time_s=10))
            time.sleep(0.5)
            postgres.halt()
            deadline = time.monotonic() + 20
            while audit.outbox.count() == 0:
                assert time.monotonic() < deadline, "the record never reached the outbox"
                time.sleep(0.1)
            execution_id = audit.outbox.oldest()[0].execution_id
            assert audit.get(execution_id) is not None  # found while it waits
            assert metric(scrape(srv), "sandbox_audit_outbox_records") == 1
            postgres.resume()
            result = running.result(timeout=60)  # its charge waited for the database; then the reply
            assert (result.status, result.stdout, result.execution_id) == ("OK", "done\n", execution_id)
            deadline = time.monotonic() + 20
            while audit.outbox.count():
                assert time.monotonic() < deadline, "the outbox never drained"
                time.sleep(0.1)
            assert metric(scrape(srv), "sandbox_audit_outbox_records") == 0
    finally:
        if not postgres.started:
            postgres.resume()
    _recorded_once(tmp_path, url, result.execution_id)


def _recorded_once(tmp_path: Path, url: str, execution_id: str) -> None:
    """The database holds the execution's record, and no other."""
    stores = open_stores(tmp_path / "unused", url)
    try:
        assert stores.audit.get(execution_id) is not None
        assert stores.audit.count() == 1
    finally:
        stores.close()


def test_a_password_never_reaches_a_banner_or_log() -> None:
    assert redacted("postgresql://app:s3cret@db.internal:5432/sandbox") == "postgresql://app:***@db.internal:5432/sandbox"
    assert redacted("postgresql://app@127.0.0.1/sandbox") == "postgresql://app@127.0.0.1/sandbox"
