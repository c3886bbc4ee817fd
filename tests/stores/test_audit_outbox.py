"""The audit outbox (stores/outbox.py) over a real PostgreSQL: a record deferred while the database is down is
kept on disk, survives the server's restart, and moves into the database exactly once when it answers."""

from __future__ import annotations

import time
from pathlib import Path
from types import MappingProxyType

from postgres_server import Postgres

from sandbox_server.stores.base import AuditRecord
from sandbox_server.stores.outbox import AuditOutbox, OutboxAuditStore
from sandbox_server.stores.postgres import PostgresAuditStore, PostgresDatabase


def record(execution_id: str) -> AuditRecord:
    return AuditRecord(execution_id=execution_id, tenant="acme", key_id="k1", session_id="", language="python",
                       code_sha256="0" * 64, limits=MappingProxyType({"memory_bytes": 1 << 28}), outcome="OK",
                       exit_code=0, wall_time_s=0.5, cpu_time_s=0.25, peak_memory_bytes=1 << 20, started_at=1.0,
                       ended_at=1.5, trace_id="t", cost=0.25)


def open_store(url: str, directory: Path, interval_s: float = 0.1) -> OutboxAuditStore:
    return OutboxAuditStore(PostgresAuditStore(PostgresDatabase(url), owns=True), AuditOutbox(directory / "o.db"),
                            drain_interval_s=interval_s)


def wait_until(check: object, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_deferred_record_survives_a_restart_and_lands_once(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.create_database()
    store = open_store(url, tmp_path)
    store.record(record("e-committed"))
    try:
        postgres.halt()
        store.defer(record("e-waiting"))
        store.defer(record("e-committed"))  # committed before the outage cut the call off: kept, then recognised
        store.defer(record("e-waiting"))  # deferred twice: kept once
        assert store.outbox.count() == 2
        got = store.get("e-waiting")
        assert got is not None
        assert got == record("e-waiting")
        store.close()  # the server stops while the database is still down: the records stay on disk
        postgres.resume()
    finally:
        if not postgres.started:
            postgres.resume()
    again = open_store(url, tmp_path)
    try:
        wait_until(lambda: again.outbox.count() == 0)
        assert again.count() == 2
        assert again.get("e-waiting") == record("e-waiting")
    finally:
        again.close()


def test_records_keep_their_order_and_the_database_its_key(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.create_database()
    store = open_store(url, tmp_path, interval_s=3600)  # drained by hand here
    try:
        for i in range(5):
            store.defer(record(f"e{i}"))
        assert [r.execution_id for r in store.outbox.oldest()] == [f"e{i}" for i in range(5)]
        assert store.drain_once() == 5
        assert store.drain_once() == 0
        assert store.count() == 5
    finally:
        store.close()
