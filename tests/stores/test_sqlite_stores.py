"""What only the SQLite stores promise: durability settings, no secret on disk, the verify cache, upgrades of a
file written by an earlier release."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox_server.stores import SqliteAuditStore, SqliteKeyStore, SqlitePolicyVersionStore
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path) as keys:
        assert keys._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        keys.create("acme", "tenant", "")
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, a property of the file
    finally:
        probe.close()


def test_only_a_peppered_hash_reaches_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path) as keys:
        record, token = keys.create("acme", "tenant", "")
        secret = token.split("_", 2)[2]
        on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database, its WAL and shm
        assert secret.encode() not in on_disk
        probe = sqlite3.connect(path)
        try:
            stored = probe.execute("SELECT secret_hash FROM api_keys WHERE key_id = ?", (record.key_id,)).fetchone()[0]
            pepper = probe.execute("SELECT value FROM meta WHERE key = 'keys.pepper'").fetchone()[0]
        finally:
            probe.close()
    assert len(pepper) == 32
    assert stored != hashlib.sha256(secret.encode()).hexdigest()
    assert stored == hashlib.sha256(pepper + secret.encode()).hexdigest()


def test_each_database_has_its_own_pepper(tmp_path: Path) -> None:
    peppers = []
    for name in ("a.db", "b.db"):
        with SqliteKeyStore(tmp_path / name) as keys:
            peppers.append(keys._pepper)
    assert peppers[0] != peppers[1]
    with SqliteKeyStore(tmp_path / "a.db") as again:
        assert again._pepper == peppers[0]


def test_another_process_revoking_is_seen_within_the_cache_ttl(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    clock = FakeClock()
    with SqliteKeyStore(path, cache_ttl_s=5, clock=clock) as replica, SqliteKeyStore(path) as other:
        record, token = other.create("acme", "tenant", "")
        assert replica.verify(token) == record  # cached by the replica
        assert other.revoke(record.key_id)
        assert other.verify(token) is None
        clock.now += 4.9
        assert replica.verify(token) == record  # the documented window: at most cache_ttl_s
        clock.now += 0.2
        assert replica.verify(token) is None


def test_without_a_cache_revocation_elsewhere_is_seen_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path, cache_ttl_s=0) as replica, SqliteKeyStore(path) as other:
        record, token = other.create("acme", "tenant", "")
        assert replica.verify(token) == record
        other.revoke(record.key_id)
        assert replica.verify(token) is None


def test_two_stores_on_one_file_create_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path) as a, SqliteKeyStore(path) as b:
        with ThreadPoolExecutor(4) as pool:
            tokens = list(pool.map(lambda i: (a if i % 2 else b).create("acme", "tenant", str(i))[1], range(60)))
        assert len(a.list()) == len(b.list()) == 60
        assert all(a.verify(t) is not None and b.verify(t) is not None for t in tokens)


def test_verify_is_fast(tmp_path: Path) -> None:
    with SqliteKeyStore(tmp_path / "s.db") as keys:
        for _ in range(50):
            keys.create("acme", "tenant", "")
        _, token = keys.create("acme", "tenant", "")
        start = time.perf_counter()
        for _ in range(2000):
            assert keys.verify(token) is not None
        cached = time.perf_counter() - start
    with SqliteKeyStore(tmp_path / "s.db", cache_ttl_s=0) as uncached_keys:
        start = time.perf_counter()
        for _ in range(500):
            assert uncached_keys.verify(token) is not None
        uncached = time.perf_counter() - start
    # Generous bounds (shared CI machines): microseconds each in practice.
    assert cached / 2000 < 1e-3
    assert uncached / 500 < 5e-3


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    keys = SqliteKeyStore(tmp_path / "s.db")
    keys.close()
    keys.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        keys.create("acme", "tenant", "")
    with pytest.raises(RuntimeError, match="closed"):
        keys.list()
    versions = SqlitePolicyVersionStore(tmp_path / "s.db")
    versions.close()
    with pytest.raises(RuntimeError, match="closed"):
        versions.record(1, {}, "a")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqlitePolicyVersionStore(path).close()
    probe = sqlite3.connect(path)
    with probe:
        probe.execute("UPDATE meta SET value = 99 WHERE key = 'policy_versions.schema'")
    probe.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        SqlitePolicyVersionStore(path)
    SqliteKeyStore(path).close()  # the other store's schema is its own


def test_key_and_version_stores_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path) as keys, SqlitePolicyVersionStore(path) as versions:
        _, token = keys.create("acme", "tenant", "")
        versions.record(1, {"a.yaml": "x"}, "me")
        assert keys.verify(token) is not None
        assert versions.get(1) is not None


def test_a_new_database_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteKeyStore(path) as keys:
        keys.create("acme", "tenant", "")
        for file in tmp_path.iterdir():  # the database, its WAL and shm
            assert file.stat().st_mode & 0o077 == 0, file


# The tables as the first release wrote them (schema version 1), to prove an upgrade in place keeps the data.
AUDIT_V1 = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    INSERT INTO meta VALUES ('audit.schema', 1), ('incidents.schema', 1);
    CREATE TABLE audit (execution_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, key_id TEXT NOT NULL,
        session_id TEXT NOT NULL, language TEXT NOT NULL, code_sha256 TEXT NOT NULL, limits TEXT NOT NULL,
        outcome TEXT NOT NULL, exit_code INTEGER NOT NULL, wall_time_s REAL NOT NULL, cpu_time_s REAL NOT NULL,
        peak_memory_bytes INTEGER NOT NULL, started_at REAL NOT NULL, ended_at REAL NOT NULL, trace_id TEXT NOT NULL,
        cost REAL NOT NULL);
    CREATE INDEX audit_tenant_time ON audit (tenant, started_at);
    INSERT INTO audit VALUES ('e1', 'acme', 'k1', 's1', 'python', 'ab', '{"wall_time_ms": 1000}', 'OK', 0, 0.1, 0.1,
        1024, 1000.0, 1001.0, 't1', 0.5);
    CREATE TABLE incidents (id TEXT PRIMARY KEY, rule TEXT NOT NULL, severity TEXT NOT NULL, scope TEXT NOT NULL,
        subject TEXT NOT NULL, tenant TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL,
        count INTEGER NOT NULL, opened_at REAL NOT NULL, last_seen_at REAL NOT NULL, resolved_at REAL,
        resolved_by TEXT NOT NULL DEFAULT '');
    CREATE UNIQUE INDEX incidents_one_open ON incidents (rule, scope, subject) WHERE resolved_at IS NULL;
    CREATE INDEX incidents_by_time ON incidents (opened_at);
    CREATE INDEX incidents_by_tenant ON incidents (tenant, opened_at);
    CREATE TABLE mitigations (id TEXT PRIMARY KEY, incident_id TEXT NOT NULL REFERENCES incidents (id),
        action TEXT NOT NULL, scope TEXT NOT NULL, subject TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
        lifted_at REAL, lifted_by TEXT NOT NULL DEFAULT '', throttle_per_minute REAL NOT NULL);
    INSERT INTO incidents VALUES ('inc_000000000001', 'escape_attempts', 'high', 'tenant', 'acme', 'acme', 'boo',
        '{}', 3, 1000.0, 1000.0, NULL, '');
    INSERT INTO mitigations VALUES ('mit_000000000001', 'inc_000000000001', 'quarantine', 'tenant', 'acme', 1000.0,
        NULL, NULL, '', 0.0);
"""


def test_a_first_release_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    with old:
        old.executescript(AUDIT_V1)
    old.close()
    with SqliteAuditStore(path) as audit, SqliteIncidentStore(path) as incidents:
        kept = audit.get("e1")
        assert kept is not None
        assert (kept.outcome, kept.cost, kept.exercise, kept.egress_bytes_sent) == ("OK", 0.5, False, 0)
        audit.record(replace(kept, execution_id="e2", exercise=True, egress_bytes_sent=10, egress_bytes_received=20,
                             egress_connections=1))
        again = audit.get("e2")
        assert again is not None
        assert again.exercise
        assert (again.egress_bytes_sent, again.egress_bytes_received, again.egress_connections) == (10, 20, 1)
        [incident] = incidents.list()
        assert (incident.id, incident.exercise, [m.action for m in incident.mitigations]) == (
            "inc_000000000001", False, ["quarantine"])
        # The one-open index now tells exercises apart: an exercise opens its own incident, real traffic bumps.
        drill, opened = incidents.open_or_bump("escape_attempts", "high", "tenant", "acme", "acme", "", {}, None,
                                               2000.0, 1, True)
        assert opened
        assert drill.exercise
        bumped, opened = incidents.open_or_bump("escape_attempts", "high", "tenant", "acme", "acme", "", {}, None,
                                                2001.0)
        assert (opened, bumped.id, bumped.count) == (False, "inc_000000000001", 4)
    probe = sqlite3.connect(path)
    versions = dict(probe.execute("SELECT key, value FROM meta WHERE key LIKE '%.schema'").fetchall())
    probe.close()
    assert (versions["audit.schema"], versions["incidents.schema"]) == (3, 2)
    with SqliteAuditStore(path) as audit:  # opening an upgraded file again changes nothing
        assert audit.count() == 2
