"""PostgreSQL stores: the durable state that replicas share (``--database-url postgresql://...``).

One ``PostgresDatabase`` per process: a psycopg 3 connection pool and the schema. The schema is versioned SQL
(``migrations/postgres/NNNN_*.sql``, package data), applied in order at open inside one transaction that holds
an advisory lock, so replicas starting together apply each step once; every applied step is a row of
``schema_migrations``. A database at a version this code does not know (written by a newer server) is refused.

Each store implements the same protocol as its SQLite counterpart and passes the same contract suite. Writes
are single transactions, committed with PostgreSQL's default durability (``synchronous_commit = on``: on disk
before the commit returns). API keys are kept as in sqlite.py (a peppered hash; the pepper in ``meta``) and
verified keys are cached the same way; a replica may so accept a key another replica revoked for
``cache_ttl_s`` at most.
"""

from __future__ import annotations

import builtins
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from types import MappingProxyType, TracebackType
from typing import Any, Self

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from sandbox_server.errors import StoreUnavailable
from sandbox_server.stores.base import TOKEN_PREFIX, AuditRecord, KeyRecord, PolicyVersion, Role, audit_where
from sandbox_server.stores.keys import (
    DEFAULT_CACHE_TTL_S,
    KEY_COLUMNS,
    KEY_ID_BYTES,
    PEPPER_BYTES,
    SECRET_BYTES,
    KeyCache,
    check_new_key,
    digest,
    epoch_datetime,
    key_record,
    verify_token,
)
from sandbox_server.stores.sqlite import audit_record

log = logging.getLogger(__name__)

MIGRATIONS = "migrations/postgres"
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
MIGRATION_LOCK = 0x5A4E_4458  # pg_advisory_xact_lock key: one migrating replica at a time
POOL_MIN = 1
POOL_MAX = 8
CONNECT_TIMEOUT_S = 10.0
CHECKOUT_TIMEOUT_S = 5.0
"""How long a call waits for a connection (the database is down, or every connection is busy) before the call
fails with StoreUnavailable (UNAVAILABLE, retryable)."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order; numbered 1, 2, ... without gaps."""
    found = []
    for entry in resources.files("sandbox_server.stores").joinpath(MIGRATIONS).iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the PostgreSQL migrations are not numbered 1..{len(found)}: {[n for _, n, _ in found]}")
    return found


class PostgresDatabase:
    """A connection pool to one PostgreSQL database, its schema brought up to date at open.

    Raises psycopg.OperationalError when the database cannot be reached within ``connect_timeout_s``, and
    RuntimeError when its schema is newer than this code."""

    def __init__(self, url: str, *, pool_max: int = POOL_MAX, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 checkout_timeout_s: float = CHECKOUT_TIMEOUT_S) -> None:
        self.url = url
        self.pool = ConnectionPool(url, min_size=POOL_MIN, max_size=pool_max, open=False, timeout=checkout_timeout_s,
                                   kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
                                   check=ConnectionPool.check_connection)
        self.pool.open(wait=True, timeout=connect_timeout_s)
        try:
            self.schema_version = self._migrate()
        except BaseException:
            self.pool.close()
            raise

    def _migrate(self) -> int:
        shipped = migrations()
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            current = int(row[0]) if row else 0
            if current > len(shipped):
                raise RuntimeError(f"database schema version {current} is newer than this server's "
                                   f"({len(shipped)}): written by a newer version of the server")
            for version, name, sql in shipped[current:]:
                conn.execute(sql.encode())  # several statements: psycopg sends them as one simple query
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("PostgreSQL schema migrated to version %d (%s)", version, name)
        return len(shipped)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction. A lost or unreachable database raises StoreUnavailable (nothing was committed)."""
        with _reachable(), self.pool.connection() as conn, conn.transaction():
            yield conn

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with _reachable(), self.pool.connection() as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def close(self) -> None:
        self.pool.close()


class PostgresStore:
    """A store over a shared PostgresDatabase; ``owns``: closing the store closes the database too."""

    def __init__(self, db: PostgresDatabase, *, owns: bool = False) -> None:
        self.db = db
        self._owns = owns
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns:
                self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class PostgresKeyStore(PostgresStore):
    """API keys in PostgreSQL. Thread-safe."""

    def __init__(self, db: PostgresDatabase, *, owns: bool = False, cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if cache_ttl_s < 0:
            raise ValueError(f"cache_ttl_s must be >= 0, got {cache_ttl_s}")
        super().__init__(db, owns=owns)
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache = KeyCache()
        # Held from a verify's read until its record is cached, and by revoke until it has evicted: a verify
        # that read before a revoke cannot cache the key after it.
        self._verify_lock = threading.Lock()
        with db.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('keys.pepper', %s) ON CONFLICT (key) DO NOTHING",
                         (secrets.token_bytes(PEPPER_BYTES),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'keys.pepper'").fetchone()
        if row is None:
            raise RuntimeError("the key store's pepper is missing from the database")
        self._pepper = bytes(row[0])

    def create(self, tenant: str, role: Role, label: str = "") -> tuple[KeyRecord, str]:
        check_new_key(tenant, role, label)
        self._check_open()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        created = time.time()
        while True:
            key_id = secrets.token_hex(KEY_ID_BYTES)
            try:
                with self.db.transaction() as conn:
                    conn.execute("INSERT INTO api_keys (key_id, tenant, role, label, secret_hash, created_at)"
                                 " VALUES (%s, %s, %s, %s, %s, %s)",
                                 (key_id, tenant, role, label, digest(self._pepper, secret), created))
            except psycopg.errors.UniqueViolation:  # a key id collision: 1 in 2**64 per pair; draw again
                continue
            return KeyRecord(key_id, tenant, role, label, epoch_datetime(created), None), \
                f"{TOKEN_PREFIX}{key_id}_{secret}"

    def verify(self, token: str) -> KeyRecord | None:
        return verify_token(token, self._pepper, self._cache, self._cache_ttl_s, self._clock(), self._verify_lock,
                            self._key_row)

    def _key_row(self, key_id: str) -> tuple[Any, ...] | None:
        self._check_open()
        rows = self.db.read(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,))  # noqa: S608
        return rows[0] if rows else None

    def get(self, key_id: str) -> KeyRecord | None:
        self._check_open()
        rows = self.db.read(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,))  # noqa: S608
        return key_record(rows[0]) if rows else None

    def revoke(self, key_id: str) -> bool:
        self._check_open()
        with self._verify_lock:
            with self.db.transaction() as conn:
                changed = conn.execute("UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                                       (time.time(), key_id)).rowcount
            self._cache.forget(key_id)
        return changed == 1

    def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        self._check_open()
        if tenant is None:
            rows = self.db.read(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id")  # noqa: S608
        else:
            rows = self.db.read(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = %s ORDER BY created_at, key_id",  # noqa: S608
                (tenant,))
        return [key_record(row) for row in rows]


class PostgresPolicyVersionStore(PostgresStore):
    """The policy version history in PostgreSQL. Thread-safe."""

    def record(self, version: int, changes: Mapping[str, str], actor: str) -> None:
        if version <= 0:
            raise ValueError(f"a policy version is positive, not {version}")
        self._check_open()
        try:
            with self.db.transaction() as conn:
                conn.execute("INSERT INTO policy_versions (version, actor, at) VALUES (%s, %s, %s)",
                             (version, actor, time.time()))
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO policy_files (version, name, text) VALUES (%s, %s, %s)",
                                    [(version, name, text) for name, text in changes.items()])
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"policy version {version} is already recorded") from exc

    def list(self, limit: int = 50) -> builtins.list[PolicyVersion]:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self._check_open()
        with self.db.transaction() as conn:
            heads = conn.execute("SELECT version, actor, at FROM policy_versions ORDER BY version DESC LIMIT %s",
                                 (limit,)).fetchall()
            names: dict[int, builtins.list[str]] = {version: [] for version, _, _ in heads}
            if heads:
                for version, name in conn.execute(
                        "SELECT version, name FROM policy_files WHERE version >= %s ORDER BY name COLLATE \"C\"",
                        (heads[-1][0],)):
                    if version in names:
                        names[version].append(name)
        return [PolicyVersion(version, actor, epoch_datetime(at), tuple(names[version]))
                for version, actor, at in heads]

    def get(self, version: int) -> PolicyVersion | None:
        self._check_open()
        with self.db.transaction() as conn:
            head = conn.execute("SELECT actor, at FROM policy_versions WHERE version = %s", (version,)).fetchone()
            if head is None:
                return None
            files = conn.execute("SELECT name, text FROM policy_files WHERE version = %s ORDER BY name COLLATE \"C\"",
                                 (version,)).fetchall()
        texts = {name: text for name, text in files}
        return PolicyVersion(version, head[0], epoch_datetime(head[1]), tuple(texts), MappingProxyType(texts))


class PostgresAuditStore(PostgresStore):
    """The audit trail in PostgreSQL: a record is committed (on disk) before the reply goes out. Thread-safe.
    The execution id is the key, so an execution can never have two records."""

    remote = True

    def ensure_writable(self) -> None:
        """StoreUnavailable unless the database answers now (checked before an execution runs)."""
        self._check_open()
        self.db.read("SELECT 1")

    def record(self, rec: AuditRecord) -> None:
        """Write one record durably; raises ValueError if the execution already has one."""
        self._check_open()
        row = (rec.execution_id, rec.tenant, rec.key_id, rec.session_id, rec.language, rec.code_sha256,
               Jsonb(dict(rec.limits)), rec.outcome, rec.exit_code, rec.wall_time_s, rec.cpu_time_s,
               rec.peak_memory_bytes, rec.started_at, rec.ended_at, rec.trace_id, rec.cost, rec.exercise,
               rec.egress_bytes_sent, rec.egress_bytes_received, rec.egress_connections)
        try:
            with self.db.transaction() as conn:
                conn.execute("INSERT INTO audit VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                             " %s, %s, %s, %s, %s)", row)
        except psycopg.errors.UniqueViolation as exc:
            raise ValueError(f"execution {rec.execution_id} already has an audit record") from exc

    def list(
        self, tenant: str | None = None, limit: int = 100, session_id: str | None = None, *,
        outcomes: Collection[str] = (), since: float | None = None, until: float | None = None,
    ) -> builtins.list[AuditRecord]:
        """Newest first, filtered in SQL (see AuditStore.list)."""
        self._check_open()
        clause, params = audit_where("%s", tenant, session_id, outcomes, since, until)
        rows = self.db.read(f"SELECT * FROM audit {clause}ORDER BY started_at DESC LIMIT %s",  # noqa: S608
                            (*params, limit))
        return [audit_record(r) for r in rows]

    def get(self, execution_id: str) -> AuditRecord | None:
        self._check_open()
        rows = self.db.read("SELECT * FROM audit WHERE execution_id = %s", (execution_id,))
        return audit_record(rows[0]) if rows else None

    def count(self) -> int:
        self._check_open()
        return int(self.db.read("SELECT COUNT(*) FROM audit")[0][0])




@contextmanager
def _reachable() -> Iterator[None]:
    """A lost or unreachable database (no connection within the checkout timeout) as StoreUnavailable."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:200] if text else type(exc).__name__
        raise StoreUnavailable(f"the database is unavailable: {reason}", retry_after_s=2.0) from exc
