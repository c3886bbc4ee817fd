"""What only the SQLite stores promise: durability settings, no secret on disk, the verify cache."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox_server.stores import SqliteKeyStore, SqlitePolicyVersionStore


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
