"""Every console action is an Admin API call, over gRPC to this same server, with the signed-in operator's key.

Authorization, validation, the actor recorded with a change and the errors stay the Admin service's: the console
adds none of its own. Calls go through the project's blocking ``AdminClient`` (its typed results and errors) on
a small thread pool of the console's, so a slow call never blocks the server's event loop and the console never
takes the threads the server's own blocking work runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc

from sandbox_client import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxError,
    UnavailableError,
)
from sandbox_client.admin import AdminClient

CALL_TIMEOUT_S = 10.0
"""The deadline of one console call: a page waits no longer for the server."""
KEY_PREFIX = "sbx_"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Upstream:
    """How the console reaches the Admin API: this server's own port, with its TLS when it has some."""

    target: str
    credentials: grpc.ChannelCredentials | None
    executor: ThreadPoolExecutor


class AdminCalls:
    """One operator's Admin API client. The key lives here, in memory, for the console session's life only."""

    def __init__(self, upstream: Upstream, api_key: str) -> None:
        self._executor = upstream.executor
        self._client = AdminClient(upstream.target, api_key=api_key, timeout=CALL_TIMEOUT_S,
                                   credentials=upstream.credentials)

    async def run(self, call: Callable[[AdminClient], _T]) -> _T:
        """``call(client)`` on the console's threads; raises the call's ``SandboxError``."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, self._client)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class Operator:
    """Who signed in: their key's id, tenant and label (never its secret)."""

    key_id: str
    tenant: str
    label: str

    @property
    def name(self) -> str:
        return f"{self.tenant}/{self.key_id}"


class SignInRefused(Exception):
    """The key cannot sign in; the message says why, in words fit for the sign-in page."""


async def sign_in(upstream: Upstream, api_key: str) -> tuple[AdminCalls, Operator]:
    """Check ``api_key`` with an admin-only call (ListTenants), as the Admin API itself decides.

    Raises:
        SignInRefused: not a key, an unknown or revoked key, a tenant key, or the server did not answer.
    """
    key = api_key.strip()
    if not key.startswith(KEY_PREFIX) or len(key) > 512 or not key.isprintable():
        raise SignInRefused("that is not an API key: keys read sbx_<key id>_<secret>")
    calls = AdminCalls(upstream, key)
    signed_in = False
    try:
        await calls.run(lambda admin: admin.list_tenants())
        key_id = key.removeprefix(KEY_PREFIX).split("_", 1)[0]
        record = next((k for k in await calls.run(lambda admin: admin.list_api_keys()) if k.key_id == key_id), None)
        signed_in = True
    except AuthenticationError as exc:
        raise SignInRefused("unknown key: no active API key has this secret (revoked, or never made)") from exc
    except PermissionDeniedError as exc:
        raise SignInRefused("not an admin key: this key is a tenant's; the console needs a key of role admin") \
            from exc
    except SandboxError as exc:
        raise SignInRefused(problem(exc)) from exc
    finally:
        if not signed_in:
            calls.close()
    operator = Operator(key_id=key_id, tenant=record.tenant if record else "?", label=record.label if record else "")
    return calls, operator


def problem(exc: SandboxError) -> str:
    """What an operator is told about a failed call: the Admin API's own words for a refusal it explains (a bad
    request, an unknown id, a refusal), and only the kind of failure otherwise: the server's internals stay in
    its log."""
    if isinstance(exc, InvalidRequestError):
        violations = "; ".join(f"{v.field}: {v.description}" if v.field else v.description
                               for v in exc.field_violations)
        return f"{exc.message} ({violations})" if violations and violations not in exc.message else exc.message
    if isinstance(exc, NotFoundError | PermissionDeniedError | ResourceExhaustedError | AuthenticationError):
        return exc.message
    if isinstance(exc, UnavailableError | DeadlineExceededError):
        return "the server did not answer in time; try again"
    return "the server could not do this (its log says why)"
