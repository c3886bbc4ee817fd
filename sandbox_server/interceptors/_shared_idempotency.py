"""Idempotency entries in Redis (``redis_url``), so that a retry landing on another replica gets the first
request's response and never runs it twice.

One key per (tenant, idempotency key). Its value is either a claim, ``R`` + the request's fingerprint + the
claimant's id, set with NX by the replica that runs the request and renewed (a lease) while it runs; or the
kept response, ``K`` + the fingerprint + the response, written before that replica replies and kept for the
window. A retry elsewhere finds the claim and waits for the response; a claim whose replica died expires after
LEASE_S, and the retry then runs the request itself (no caller ever got the first run's response: it is
written before any reply). A request refused by a later link removes its claim, so a retry tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sandbox_server.errors import FieldViolation, InvalidRequest, SharedStateUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "sandbox:idempotency:"
LEASE_S = 10.0
POLL_S = 0.05
OP_TIMEOUT_S = 2.0
_LENGTHS = struct.Struct(">III")
_DELETE_IF_OURS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_IF_OURS = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
                  "end return 0")


@dataclass
class Claim:
    """This replica runs the request; ``marker`` is its value in Redis while it does. Ended by ``keep`` (the
    response) or ``release`` (nothing kept)."""

    owner: SharedIdempotency = field(repr=False)
    key: str
    marker: bytes
    renewer: asyncio.Task[None] | None = field(default=None, repr=False)

    async def keep(self, stdout: bytes, stderr: bytes, result: bytes) -> None:
        await self.owner.keep(self, stdout, stderr, result)

    async def release(self) -> None:
        await self.owner.release(self)


def _redis_key(tenant: str, key: str) -> str:
    # Hashed: tenants and keys are the caller's strings, of any length and content.
    return KEY_PREFIX + hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()


def _reused() -> InvalidRequest:
    return InvalidRequest([FieldViolation(
        "idempotency_key", "was already used for a different request; use a new key for a new request",
        reason="idempotency_key_reused")])


class SharedIdempotency:
    def __init__(self, client: Any, window_s: float) -> None:
        self._client = client
        self.window_s = window_s
        self._delete_if_ours = client.register_script(_DELETE_IF_OURS)
        self._renew_if_ours = client.register_script(_RENEW_IF_OURS)

    async def _call(self, what: str, op: Any) -> Any:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                return await op
        except (OSError, TimeoutError) as exc:
            raise SharedStateUnavailable(f"the shared idempotency store is unavailable ({what}): {exc!r}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise SharedStateUnavailable(
                    f"the shared idempotency store is unavailable ({what}): {exc!r}") from exc
            raise

    async def claim(self, tenant: str, key: str, fingerprint: bytes,
                    deadline: float | None) -> Claim | tuple[bytes, bytes, bytes]:
        """A Claim when this replica is to run the request, else the response another replica kept (stdout,
        stderr, the serialized result), waited for while it runs. InvalidRequest when the key was used for a
        different request; SharedStateUnavailable when Redis cannot be consulted; TimeoutError past
        ``deadline`` (monotonic)."""
        redis_key = _redis_key(tenant, key)
        marker = b"R" + fingerprint + uuid.uuid4().bytes
        while True:
            if await self._call("claim", self._client.set(redis_key, marker, nx=True, px=int(LEASE_S * 1000))):
                claim = Claim(self, redis_key, marker)
                claim.renewer = asyncio.get_running_loop().create_task(self._renew(claim))
                return claim
            value = await self._call("read", self._client.get(redis_key))
            if value is None:
                continue  # gone between the two calls (expired, or refused and removed): claim again
            if value[1:33] != fingerprint:
                raise _reused()
            if value[:1] == b"K":
                lengths = _LENGTHS.unpack_from(value, 33)
                body = value[33 + _LENGTHS.size:]
                out, err = body[:lengths[0]], body[lengths[0]:lengths[0] + lengths[1]]
                return bytes(out), bytes(err), bytes(body[lengths[0] + lengths[1]:])
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("the first request with this key is still running on another server")
            await asyncio.sleep(POLL_S)

    async def _renew(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                await self._call("renew", self._renew_if_ours(keys=[claim.key],
                                                              args=[claim.marker, int(LEASE_S * 1000)]))
            except SharedStateUnavailable as exc:
                log.warning("could not renew an idempotency claim: %s", exc.message)

    async def keep(self, claim: Claim, stdout: bytes, stderr: bytes, result: bytes) -> None:
        """The response, for retries anywhere, before the reply goes out."""
        self._stop(claim)
        value = b"K" + claim.marker[1:33] + _LENGTHS.pack(len(stdout), len(stderr), len(result)) + stdout + stderr \
            + result
        try:
            await self._call("keep", self._client.set(claim.key, value, px=int(self.window_s * 1000)))
        except SharedStateUnavailable as exc:
            # The execution has run: its caller gets its result; a retry elsewhere may run it again.
            log.error("the response of an idempotent request was not shared: %s", exc.message)

    async def release(self, claim: Claim) -> None:
        """Nothing kept (refused, or failed): a retry runs the request again."""
        self._stop(claim)
        with contextlib.suppress(SharedStateUnavailable):  # the lease expires anyway
            await self._call("release", self._delete_if_ours(keys=[claim.key], args=[claim.marker]))

    @staticmethod
    def _stop(claim: Claim) -> None:
        if claim.renewer is not None:
            claim.renewer.cancel()
            claim.renewer = None
