"""What only the PostgreSQL stores have: the versioned schema, shared by replicas, on a real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from postgres_server import Postgres

from sandbox_server.stores.postgres import PostgresDatabase, PostgresKeyStore, migrations


def test_a_new_database_gets_every_migration_once(postgres: Postgres) -> None:
    url = postgres.create_database()
    db = PostgresDatabase(url)
    try:
        assert db.schema_version == len(migrations())
        applied = db.read("SELECT version, name FROM schema_migrations ORDER BY version")
        assert applied == [(v, name) for v, name, _ in migrations()]
    finally:
        db.close()
    again = PostgresDatabase(url)  # opening an up-to-date database changes nothing
    try:
        assert again.read("SELECT count(*) FROM schema_migrations") == [(len(migrations()),)]
    finally:
        again.close()


def test_replicas_starting_together_migrate_once(postgres: Postgres) -> None:
    url = postgres.create_database()
    with ThreadPoolExecutor(6) as pool:
        dbs = list(pool.map(lambda _: PostgresDatabase(url), range(6)))
    try:
        assert {db.schema_version for db in dbs} == {len(migrations())}
        assert dbs[0].read("SELECT count(*) FROM schema_migrations") == [(len(migrations()),)]
    finally:
        for db in dbs:
            db.close()


def test_a_newer_schema_is_refused(postgres: Postgres) -> None:
    url = postgres.create_database()
    PostgresDatabase(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, '0999_future.sql')")
    with pytest.raises(RuntimeError, match="newer"):
        PostgresDatabase(url)


def test_an_unreachable_database_fails_fast_and_clearly(postgres: Postgres) -> None:
    with pytest.raises(psycopg.OperationalError):
        PostgresDatabase(postgres.url("no_such_database"), connect_timeout_s=2)


def test_only_a_peppered_hash_reaches_the_database(postgres: Postgres) -> None:
    url = postgres.create_database()
    with PostgresKeyStore(PostgresDatabase(url), owns=True) as keys:
        _record, token = keys.create("acme", "tenant", "ci")
        secret = token.split("_", 2)[2]
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        pepper = conn.execute("SELECT value FROM meta WHERE key = 'keys.pepper'").fetchone()
    assert secret not in repr(rows)
    assert pepper is not None
    assert len(bytes(pepper[0])) == 32


def test_a_key_revoked_on_one_replica_is_refused_by_another_within_the_cache_ttl(postgres: Postgres) -> None:
    url = postgres.create_database()
    clock = [0.0]
    with PostgresKeyStore(PostgresDatabase(url), owns=True) as one, \
            PostgresKeyStore(PostgresDatabase(url), owns=True, clock=lambda: clock[0]) as two:
        record, token = one.create("acme", "tenant", "")
        assert two.verify(token) == record
        assert one.revoke(record.key_id)
        assert one.verify(token) is None  # at once where it was revoked
        assert two.verify(token) == record  # still cached there...
        clock[0] += 5.1
        assert two.verify(token) is None  # ...for cache_ttl_s at most
