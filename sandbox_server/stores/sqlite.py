"""SQLite stores: the embedded default. One file may hold every store (each has its own tables).

Each store owns one connection, guarded by a lock, in WAL mode with ``synchronous=FULL`` (a committed write
survives a power cut). A write whose loss in a power cut would be harmless (a budget reservation: it only holds
money back while its execution runs, and a power cut ends every execution) may skip the fsync
(``_write(durable=False)``); it is still atomic and visible to every connection at once, and the next durable
commit to the file syncs it too. Calls are short; asyncio callers run writes through ``asyncio.to_thread``. Several
processes may open the same file (SQLite's own locking, with a busy timeout). A new database file is created
readable by its owner only.

API key secrets are never stored. The store keeps ``sha256(pepper || secret)`` in hex, where the pepper is
32 random bytes made once per database and kept in its ``meta`` table, and compares hashes in constant time.
What that buys, and what it does not:

- The secret is 32 random bytes (256 bits), so a stored hash can be neither reversed nor brute-forced: a copy
  of the database yields no usable key, and knowing the key format (``sbx_<key_id>_<secret>``) does not help.
- The pepper makes every hash specific to its database: a hash is worthless anywhere else, no table computed
  in advance (or for another deployment) matches it, and the same secret never hashes alike in two stores.
- It is not a second secret: it lives in the same file, so whoever holds that file holds it too. It need not be
  one, since the secret's entropy already does the protecting.

Verified keys are cached in memory for ``cache_ttl_s`` (5 s by default), so the auth path rarely reads the
database. ``revoke`` drops the key from this store's cache at once; another process (a replica) sharing the
file may still accept a revoked key until its own cache entry expires, ``cache_ttl_s`` at most.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, Self

from sandbox_server.stores.base import (
    TOKEN_PREFIX,
    AuditRecord,
    KeyRecord,
    PolicyVersion,
    PolicyVersionStore,
    Role,
    audit_where,
    json_column,
)
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

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5_000
"""How long a write waits for another connection's transaction before failing."""


class _SqliteStore:
    """One connection to ``path``, a lock around it, and the schema of one store.

    ``schema`` creates the current version's tables; ``migrations[n]`` is the script that takes a file written
    at version n to n + 1 (run in order, in the opening transaction, before ``schema``), so a server upgraded in
    place keeps its data. A file at a version this code cannot reach is refused.
    """

    schema_name: str
    schema_version = 1
    schema: str
    migrations: Mapping[int, str] = MappingProxyType({})

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        _create_private(self.path)
        # Autocommit mode (isolation_level=None): every write below opens its own explicit transaction.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            with self._write() as db:
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
                self._migrate(db)
                db.executescript_in_tx(self.schema)
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    (f"{self.schema_name}.schema", self.schema_version),
                )
                found = db.execute("SELECT value FROM meta WHERE key = ?", (f"{self.schema_name}.schema",)).fetchone()
            if found[0] != self.schema_version:
                raise RuntimeError(
                    f"{self.path}: {self.schema_name} schema version {found[0]} is not {self.schema_version}"
                    " (written by another version of the server)"
                )
        except BaseException:
            self._db.close()
            raise

    def _migrate(self, db: _Tx) -> None:
        """Bring a file written at an older version of this store's schema to the current one (inside the
        opening transaction: all steps or none). A file at an unknown version is left for the caller to refuse."""
        key = f"{self.schema_name}.schema"
        found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if found is None or not isinstance(found[0], int):
            return  # a new store: ``schema`` creates the current version
        version = found[0]
        while version < self.schema_version and version in self.migrations:
            db.executescript_in_tx(self.migrations[version])
            version += 1
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (version, key))
            log.info("%s: %s schema migrated to version %d", self.path, self.schema_name, version)

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[_Tx]:
        """One write transaction, under the lock; BEGIN IMMEDIATE takes SQLite's write lock up front.
        ``durable=False``: committed without an fsync (see the module docstring for when that is allowed)."""
        with self._lock:
            self._check_open()
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")  # a connection setting: restored below
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _Tx(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._check_open()
            return self._db.execute(sql, params).fetchall()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class _Tx:
    """The connection inside a write transaction (executescript would commit it, so statements run one by one)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def executescript_in_tx(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)


class SqliteKeyStore(_SqliteStore):
    """API keys in SQLite (see the module docstring for how secrets are kept). Thread-safe.

    Args:
        path: the database file (created if missing).
        cache_ttl_s: seconds a verified key is answered from memory; 0 disables the cache.
        clock: monotonic seconds, for the cache (tests pass their own).
    """

    schema_name = "keys"
    schema = """
        CREATE TABLE IF NOT EXISTS api_keys (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('tenant', 'admin')),
            label TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant, created_at)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_ttl_s < 0:
            raise ValueError(f"cache_ttl_s must be >= 0, got {cache_ttl_s}")
        super().__init__(path)
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache = KeyCache()
        try:
            with self._write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('keys.pepper', ?)",
                    (secrets.token_bytes(PEPPER_BYTES),),
                )
                self._pepper = bytes(db.execute("SELECT value FROM meta WHERE key = 'keys.pepper'").fetchone()[0])
        except BaseException:
            self.close()
            raise

    def _digest(self, secret: str) -> str:
        return digest(self._pepper, secret)

    def create(self, tenant: str, role: Role, label: str = "") -> tuple[KeyRecord, str]:
        check_new_key(tenant, role, label)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        created = time.time()
        while True:
            key_id = secrets.token_hex(KEY_ID_BYTES)
            try:
                with self._write() as db:
                    db.execute(
                        "INSERT INTO api_keys (key_id, tenant, role, label, secret_hash, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (key_id, tenant, role, label, self._digest(secret), created),
                    )
            except sqlite3.IntegrityError:  # a key id collision: 1 in 2**64 per pair; draw again
                continue
            record = KeyRecord(key_id, tenant, role, label, epoch_datetime(created), None)
            return record, f"{TOKEN_PREFIX}{key_id}_{secret}"

    def verify(self, token: str) -> KeyRecord | None:
        # Under the database lock, which revoke takes too (see verify_token).
        return verify_token(token, self._pepper, self._cache, self._cache_ttl_s, self._clock(), self._lock,
                            self._key_row_locked)

    def _key_row_locked(self, key_id: str) -> tuple[Any, ...] | None:
        self._check_open()
        row: tuple[Any, ...] | None = self._db.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)  # noqa: S608
        ).fetchone()
        return row

    def get(self, key_id: str) -> KeyRecord | None:
        rows = self._read(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))  # noqa: S608
        return key_record(rows[0]) if rows else None

    def revoke(self, key_id: str) -> bool:
        with self._write() as db:
            changed = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
            ).rowcount
            self._cache.forget(key_id)
        return changed == 1

    def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        if tenant is None:
            rows = self._read(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id")  # noqa: S608
        else:
            rows = self._read(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, key_id",  # noqa: S608
                (tenant,),
            )
        return [key_record(row) for row in rows]


class SqlitePolicyVersionStore(_SqliteStore):
    """The policy version history in SQLite. Thread-safe."""

    schema_name = "policy_versions"
    schema = """
        CREATE TABLE IF NOT EXISTS policy_versions (
            version INTEGER PRIMARY KEY,
            actor TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS policy_files (
            version INTEGER NOT NULL REFERENCES policy_versions (version),
            name TEXT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (version, name)
        )
    """

    def record(self, version: int, changes: Mapping[str, str], actor: str) -> None:
        if version <= 0:
            raise ValueError(f"a policy version is positive, not {version}")
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO policy_versions (version, actor, at) VALUES (?, ?, ?)", (version, actor, time.time())
                )
                for name, text in changes.items():
                    db.execute("INSERT INTO policy_files (version, name, text) VALUES (?, ?, ?)", (version, name, text))
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"policy version {version} is already recorded") from exc

    def list(self, limit: int = 50) -> builtins.list[PolicyVersion]:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        with self._lock:
            self._check_open()
            heads = self._db.execute(
                "SELECT version, actor, at FROM policy_versions ORDER BY version DESC LIMIT ?", (limit,)
            ).fetchall()
            names: dict[int, builtins.list[str]] = {version: [] for version, _, _ in heads}
            if heads:
                for version, name in self._db.execute(
                    "SELECT version, name FROM policy_files WHERE version >= ? ORDER BY name", (heads[-1][0],)
                ):
                    if version in names:
                        names[version].append(name)
        return [PolicyVersion(version, actor, epoch_datetime(at), tuple(names[version]))
                for version, actor, at in heads]

    def get(self, version: int) -> PolicyVersion | None:
        with self._lock:
            self._check_open()
            head = self._db.execute("SELECT actor, at FROM policy_versions WHERE version = ?", (version,)).fetchone()
            if head is None:
                return None
            files = self._db.execute(
                "SELECT name, text FROM policy_files WHERE version = ? ORDER BY name", (version,)
            ).fetchall()
        texts = {name: text for name, text in files}
        return PolicyVersion(version, head[0], epoch_datetime(head[1]), tuple(texts), MappingProxyType(texts))


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm files the same mode);
    an existing file is left as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqliteAuditStore(_SqliteStore):
    """The audit trail in SQLite (WAL, synchronous=FULL: a record is on disk before the reply goes out).
    Thread-safe. The execution id is the key, so an execution can never have two records."""

    schema_name = "audit"
    schema_version = 3
    remote = False  # the file is on this host: writable whenever the server runs
    schema = """
        CREATE TABLE IF NOT EXISTS audit (
            execution_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            language TEXT NOT NULL,
            code_sha256 TEXT NOT NULL,
            limits TEXT NOT NULL,
            outcome TEXT NOT NULL,
            exit_code INTEGER NOT NULL,
            wall_time_s REAL NOT NULL,
            cpu_time_s REAL NOT NULL,
            peak_memory_bytes INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            trace_id TEXT NOT NULL,
            cost REAL NOT NULL,
            exercise INTEGER NOT NULL DEFAULT 0,
            egress_bytes_sent INTEGER NOT NULL DEFAULT 0,
            egress_bytes_received INTEGER NOT NULL DEFAULT 0,
            egress_connections INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS audit_tenant_time ON audit (tenant, started_at);
    """
    migrations = MappingProxyType({
        1: "ALTER TABLE audit ADD COLUMN exercise INTEGER NOT NULL DEFAULT 0",  # 2: exercises are marked
        2: "ALTER TABLE audit ADD COLUMN egress_bytes_sent INTEGER NOT NULL DEFAULT 0;"  # 3: egress is counted
           "ALTER TABLE audit ADD COLUMN egress_bytes_received INTEGER NOT NULL DEFAULT 0;"
           "ALTER TABLE audit ADD COLUMN egress_connections INTEGER NOT NULL DEFAULT 0",
    })

    def ensure_writable(self) -> None:
        self._check_open()

    def record(self, rec: AuditRecord) -> None:
        """Write one record durably; raises ValueError if the execution already has one."""
        row = (rec.execution_id, rec.tenant, rec.key_id, rec.session_id, rec.language, rec.code_sha256,
               json.dumps(dict(rec.limits), sort_keys=True), rec.outcome, rec.exit_code, rec.wall_time_s,
               rec.cpu_time_s, rec.peak_memory_bytes, rec.started_at, rec.ended_at, rec.trace_id, rec.cost,
               int(rec.exercise), rec.egress_bytes_sent, rec.egress_bytes_received, rec.egress_connections)
        try:
            with self._write() as db:
                db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"execution {rec.execution_id} already has an audit record") from exc

    def list(
        self, tenant: str | None = None, limit: int = 100, session_id: str | None = None, *,
        outcomes: Collection[str] = (), since: float | None = None, until: float | None = None,
    ) -> builtins.list[AuditRecord]:
        """Newest first, filtered in SQL (see AuditStore.list)."""
        clause, params = audit_where("?", tenant, session_id, outcomes, since, until)
        rows = self._read(f"SELECT * FROM audit {clause}ORDER BY started_at DESC LIMIT ?",  # noqa: S608
                          (*params, limit))
        return [audit_record(r) for r in rows]

    def get(self, execution_id: str) -> AuditRecord | None:
        rows = self._read("SELECT * FROM audit WHERE execution_id = ?", (execution_id,))
        return audit_record(rows[0]) if rows else None

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM audit")[0][0])


def audit_record(row: tuple[Any, ...]) -> AuditRecord:
    """An AuditRecord from a row of the audit table's columns, in order (limits as JSON text or a mapping)."""
    (eid, tenant, key_id, session, language, digest, limits, outcome, exit_code, wall, cpu, peak, started, ended,
     trace_id, cost, exercise, sent, received, connections) = row
    return AuditRecord(eid, tenant, key_id, session, language, digest, MappingProxyType(dict(json_column(limits))),
                       outcome, exit_code, wall, cpu, peak, started, ended, trace_id, cost, bool(exercise),
                       sent, received, connections)


class _RegistryLike(Protocol):
    versions: builtins.list[tuple[int, float, str]]


class _PolicySetLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def sources(self) -> Mapping[str, str]: ...


def record_version(store: PolicyVersionStore, registry: _RegistryLike, new: _PolicySetLike) -> None:
    """The registry's change hook: every policy set that went live is recorded once, with who changed it. Another
    server sharing the store (a replica) may record the same number first: its record stands."""
    if store.get(new.version) is None:
        actor = registry.versions[-1][2] if registry.versions else "file change"
        try:
            store.record(new.version, dict(new.sources), actor)
        except ValueError:
            if store.get(new.version) is None:
                raise
            log.info("policy version %d was recorded by another server sharing the store", new.version)
