"""What every KeyStore implementation shares: the token format, the peppered digest, the verified-key cache and
the row a key is read from. How secrets are kept is explained in sqlite.py's docstring; PostgreSQL keeps them
the same way."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sandbox_server.stores.base import MAX_LABEL_CHARS, ROLES, TOKEN_PREFIX, KeyRecord, Role

DEFAULT_CACHE_TTL_S = 5.0
"""Seconds a verified key is answered from memory; also how long another process may accept a revoked key."""
MAX_CACHED_KEYS = 10_000
KEY_ID_BYTES = 8
"""A key id is 16 hex digits (never an underscore, so a token splits unambiguously)."""
SECRET_BYTES = 32
PEPPER_BYTES = 32
MAX_TOKEN_CHARS = 256
KEY_COLUMNS = "key_id, tenant, role, label, secret_hash, created_at, revoked_at"


def check_new_key(tenant: str, role: Role, label: str) -> None:
    if not tenant:
        raise ValueError("tenant must not be empty")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label is longer than {MAX_LABEL_CHARS} characters")


def digest(pepper: bytes, secret: str) -> str:
    return hashlib.sha256(pepper + secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None."""
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
        return None
    key_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not secret or len(key_id) != 2 * KEY_ID_BYTES:
        return None
    return key_id, secret


def key_record(row: tuple[Any, ...]) -> KeyRecord:
    """A KeyRecord from a row of KEY_COLUMNS (times in epoch seconds)."""
    key_id, tenant, role, label, _hash, created_at, revoked_at = row
    return KeyRecord(
        key_id=str(key_id),
        tenant=str(tenant),
        role=cast(Role, role),
        label=str(label),
        created_at=epoch_datetime(created_at),
        revoked_at=None if revoked_at is None else epoch_datetime(revoked_at),
    )


def epoch_datetime(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


@dataclass(frozen=True)
class CachedKey:
    digest: str
    record: KeyRecord
    expires: float


def verify_token(token: str, pepper: bytes, cache: KeyCache, cache_ttl_s: float, now: float,
                 lock: AbstractContextManager[Any],
                 key_row: Callable[[str], tuple[Any, ...] | None]) -> KeyRecord | None:
    """KeyStore.verify for any store: the cache first, else ``key_row`` (a row of KEY_COLUMNS, or None), read under
    ``lock``. The lock is held until the record is cached, and the store's revoke takes it too before it
    evicts, so a concurrent revoke cannot be overtaken by a stale entry."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    hashed = digest(pepper, secret)
    cached = cache.get(key_id)
    if cached is not None and cached.expires > now:
        return cached.record if hmac.compare_digest(cached.digest, hashed) else None
    with lock:
        row = key_row(key_id)
        if row is None or not hmac.compare_digest(row[4], hashed) or row[6] is not None:
            return None
        record = key_record(row)
        if cache_ttl_s > 0:
            cache.remember(key_id, CachedKey(hashed, record, now + cache_ttl_s), now)
    return record


class KeyCache:
    """Verified keys by key id, each until its expiry; bounded (expired entries are dropped first)."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedKey] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> CachedKey | None:
        with self._lock:
            return self._entries.get(key_id)

    def remember(self, key_id: str, entry: CachedKey, now: float) -> None:
        with self._lock:
            if len(self._entries) >= MAX_CACHED_KEYS:
                self._entries = {k: v for k, v in self._entries.items() if v.expires > now}
                if len(self._entries) >= MAX_CACHED_KEYS:
                    self._entries.clear()
            self._entries[key_id] = entry

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._entries.pop(key_id, None)
