"""A blocking client for the Admin service: tenant policies and API keys. Every call needs an admin key.

    from sandbox_client.admin import AdminClient

    with AdminClient("127.0.0.1:50051", api_key="sbx_...") as admin:
        print(admin.list_policies().version)
        created = admin.create_api_key("acme", label="ci")
        print(created.secret)  # shown once: store it now

Methods mirror the RPCs (``proto/sandbox/v1/admin.proto``) and return frozen dataclasses. A failed call raises
a ``sandbox_client.SandboxError`` subclass, e.g. ``InvalidRequestError`` whose ``field_violations`` name each
problem of a refused policy as ``"<file>:<location>"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import grpc
from google.protobuf import timestamp_pb2

from sandbox_client._common import auth_metadata, call_timeout, check_timeout, open_channel
from sandbox_client._errors import from_rpc_error
from sandbox_client._proto.sandbox.v1 import admin_pb2, admin_pb2_grpc

__all__ = [
    "DEFAULT_ADMIN_TIMEOUT",
    "AdminClient",
    "ApiKey",
    "AppliedPolicy",
    "CreatedApiKey",
    "PolicyFile",
    "PolicyListing",
    "PolicyProblem",
    "PolicySnapshot",
    "PolicyVersion",
    "Role",
    "Tenant",
]

DEFAULT_ADMIN_TIMEOUT = 30.0
"""Seconds: the deadline of every admin call that passes no ``timeout`` of its own."""

Role = Literal["tenant", "admin"]


@dataclass(frozen=True)
class PolicyProblem:
    """One problem with a policy file."""

    file: str
    location: str
    """Where in the file: a dotted path (``tenants.acme.defaults.wall_time_ms``), ``line 3, column 5``, or ""."""
    message: str


@dataclass(frozen=True)
class PolicyFile:
    name: str
    text: str
    tenants: tuple[str, ...]
    """The tenants the file defines."""


@dataclass(frozen=True)
class PolicyListing:
    """The current policy."""

    version: int
    files: tuple[PolicyFile, ...]
    last_errors: tuple[PolicyProblem, ...]
    """Why the last reload from disk was refused (the previous policy stays in force); empty if it succeeded."""

    def file(self, name: str) -> PolicyFile | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass(frozen=True)
class PolicySnapshot:
    """One policy version with its files."""

    version: int
    actor: str
    """Who made it; "" when the history does not know."""
    at: datetime | None
    files: tuple[PolicyFile, ...]

    def file(self, name: str) -> PolicyFile | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass(frozen=True)
class AppliedPolicy:
    version: int
    """The new policy version, in force now."""
    tenants: tuple[str, ...]
    """The tenants the applied file defines."""


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    actor: str
    at: datetime | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class Tenant:
    name: str
    description: str
    languages: tuple[str, ...]
    active_keys: int


@dataclass(frozen=True)
class ApiKey:
    """An API key as the server keeps it: never its secret."""

    key_id: str
    tenant: str
    role: Role
    label: str
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CreatedApiKey:
    key: ApiKey
    secret: str = field(repr=False)
    """The whole key (``sbx_<key_id>_<secret>``), to send as ``api_key``. The server never shows it again."""


class AdminClient:
    """A blocking client for the Admin service. Thread-safe.

    Args:
        target: the server's address, ``host:port``.
        api_key: an admin key, sent as ``authorization: Bearer <key>``; None sends none (development mode).
        timeout: seconds; the deadline of every call that passes no ``timeout`` of its own.
        credentials: TLS (``grpc.ssl_channel_credentials(...)``); None makes a plaintext channel.
        options: gRPC channel options, passed through.

    Every method raises a ``sandbox_client.SandboxError`` subclass when the call fails.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        timeout: float = DEFAULT_ADMIN_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._timeout = check_timeout(timeout)
        self._metadata = auth_metadata(api_key)
        self._channel = open_channel(target, credentials, options)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel. Idempotent."""
        self._closed = True
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        if self._closed:
            raise RuntimeError("the AdminClient is closed")
        try:
            return getattr(self._stub, method)(
                request, timeout=call_timeout(timeout, self._timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    # -- policies -----------------------------------------------------------------------------------------------

    def list_policies(self, *, timeout: float | None = None) -> PolicyListing:
        """The current policy: version, files (with texts and tenants), and the last reload's errors."""
        response: admin_pb2.ListPoliciesResponse = self._call("ListPolicies", admin_pb2.ListPoliciesRequest(), timeout)
        return PolicyListing(
            version=response.version,
            files=tuple(_file(f) for f in response.files),
            last_errors=tuple(_problem(e) for e in response.last_errors),
        )

    def get_policy(self, version: int = 0, *, timeout: float | None = None) -> PolicySnapshot:
        """A recorded policy version with its files; 0 is the current one.

        Raises:
            InvalidRequestError: no such version in the history.
        """
        response: admin_pb2.GetPolicyResponse = self._call(
            "GetPolicy", admin_pb2.GetPolicyRequest(version=version), timeout
        )
        return PolicySnapshot(
            version=response.version,
            actor=response.actor,
            at=_datetime(response.at) if response.HasField("at") else None,
            files=tuple(_file(f) for f in response.files),
        )

    def validate_policy(self, file_name: str, text: str, *, timeout: float | None = None) -> tuple[PolicyProblem, ...]:
        """Every problem the server's policy would have with ``text`` as ``file_name``; empty if it would load.
        Nothing changes."""
        response: admin_pb2.ValidatePolicyResponse = self._call(
            "ValidatePolicy", admin_pb2.ValidatePolicyRequest(file_name=file_name, text=text), timeout
        )
        return tuple(_problem(e) for e in response.errors)

    def apply_policy(self, file_name: str, text: str, *, timeout: float | None = None) -> AppliedPolicy:
        """Add or replace the policy file ``file_name``; it is in force when this returns.

        Raises:
            InvalidRequestError: the change would not load; ``field_violations`` name each problem
                (``"<file>:<location>"``). Nothing changed.
        """
        response: admin_pb2.ApplyPolicyResponse = self._call(
            "ApplyPolicy", admin_pb2.ApplyPolicyRequest(file_name=file_name, text=text), timeout
        )
        return AppliedPolicy(version=response.version, tenants=tuple(response.tenants))

    def list_policy_versions(self, limit: int = 50, *, timeout: float | None = None) -> tuple[PolicyVersion, ...]:
        """The latest ``limit`` policy versions (1 to 1000), newest first."""
        response: admin_pb2.ListPolicyVersionsResponse = self._call(
            "ListPolicyVersions", admin_pb2.ListPolicyVersionsRequest(limit=limit), timeout
        )
        return tuple(
            PolicyVersion(
                version=v.version,
                actor=v.actor,
                at=_datetime(v.at) if v.HasField("at") else None,
                files=tuple(v.files),
            )
            for v in response.versions
        )

    def list_tenants(self, *, timeout: float | None = None) -> tuple[Tenant, ...]:
        """The tenants of the current policy, by name, with their count of active keys."""
        response: admin_pb2.ListTenantsResponse = self._call("ListTenants", admin_pb2.ListTenantsRequest(), timeout)
        return tuple(
            Tenant(name=t.name, description=t.description, languages=tuple(t.languages), active_keys=t.active_keys)
            for t in response.tenants
        )

    # -- API keys -----------------------------------------------------------------------------------------------

    def create_api_key(
        self, tenant: str, *, role: Role = "tenant", label: str = "", timeout: float | None = None
    ) -> CreatedApiKey:
        """A new key for ``tenant``. The returned ``secret`` is shown this once: the server keeps only a hash.

        Raises:
            InvalidRequestError: unknown tenant, or a label too long (200 characters) or with control characters.
        """
        if role not in _ROLE_TO_PROTO:
            raise ValueError(f"role must be 'tenant' or 'admin', not {role!r}")
        request = admin_pb2.CreateApiKeyRequest(tenant=tenant, role=_ROLE_TO_PROTO[role], label=label)
        response: admin_pb2.CreateApiKeyResponse = self._call("CreateApiKey", request, timeout)
        return CreatedApiKey(key=_api_key(response.key), secret=response.secret)

    def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> ApiKey:
        """Revoke a key for good (revoking a revoked key changes nothing). Returns the key, with ``revoked_at``.

        Raises:
            InvalidRequestError: no key with this id.
        """
        response: admin_pb2.RevokeApiKeyResponse = self._call(
            "RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id), timeout
        )
        return _api_key(response.key)

    def list_api_keys(self, tenant: str | None = None, *, timeout: float | None = None) -> tuple[ApiKey, ...]:
        """Every key (revoked ones too) of ``tenant``, or of every tenant; oldest first."""
        response: admin_pb2.ListApiKeysResponse = self._call(
            "ListApiKeys", admin_pb2.ListApiKeysRequest(tenant=tenant or ""), timeout
        )
        return tuple(_api_key(k) for k in response.keys)


_ROLE_TO_PROTO: dict[str, admin_pb2.ApiKeyRole] = {
    "tenant": admin_pb2.API_KEY_ROLE_TENANT,
    "admin": admin_pb2.API_KEY_ROLE_ADMIN,
}
_ROLE_FROM_PROTO: dict[admin_pb2.ApiKeyRole, Role] = {
    admin_pb2.API_KEY_ROLE_TENANT: "tenant",
    admin_pb2.API_KEY_ROLE_ADMIN: "admin",
}


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _problem(message: admin_pb2.PolicyError) -> PolicyProblem:
    return PolicyProblem(file=message.file, location=message.location, message=message.message)


def _file(message: admin_pb2.PolicyFile) -> PolicyFile:
    return PolicyFile(name=message.name, text=message.text, tenants=tuple(message.tenants))


def _api_key(message: admin_pb2.ApiKey) -> ApiKey:
    return ApiKey(
        key_id=message.key_id,
        tenant=message.tenant,
        # An unknown role (a newer server) is shown as the least privileged one.
        role=_ROLE_FROM_PROTO.get(message.role, "tenant"),
        label=message.label,
        created_at=_datetime(message.created_at) if message.HasField("created_at") else None,
        revoked_at=_datetime(message.revoked_at) if message.HasField("revoked_at") else None,
    )
