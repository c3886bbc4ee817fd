"""A blocking client for the Admin service: tenant policies, API keys, and operations (incidents, costs,
executions, quarantines, sessions). Every call needs an admin key.

    from sandbox_client.admin import AdminClient

    with AdminClient("127.0.0.1:50051", api_key="sbx_...") as admin:
        print(admin.list_policies().version)
        created = admin.create_api_key("acme", label="ci")
        print(created.secret)  # shown once: store it now
        for incident in admin.list_incidents(open_only=True):
            admin.resolve_incident(incident.id, note="looked into it")
        for live in admin.list_sessions(tenant="acme"):
            print(live.session.id, live.session.usage.cost)

Methods mirror the RPCs (``proto/sandbox/v1/admin.proto``) and return frozen dataclasses; times are aware UTC
datetimes. A failed call raises a ``sandbox_client.SandboxError`` subclass, e.g. ``InvalidRequestError`` whose
``field_violations`` name each problem of a refused policy as ``"<file>:<location>"``, or ``NotFoundError`` for
an unknown incident, execution, mitigation or session id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from sandbox_client._common import auth_metadata, call_timeout, check_timeout, open_channel
from sandbox_client._convert import session_from_proto
from sandbox_client._errors import NotFoundError, from_rpc_error
from sandbox_client._models import FrozenMapping, SessionInfo
from sandbox_client._proto.sandbox.v1 import admin_pb2, admin_pb2_grpc

__all__ = [
    "DEFAULT_ADMIN_TIMEOUT",
    "RUNNING",
    "AdminClient",
    "AdminSession",
    "ApiKey",
    "AppliedPolicy",
    "CostGroupBy",
    "CostReport",
    "CostRow",
    "CreatedApiKey",
    "Execution",
    "Incident",
    "Mitigation",
    "NotFoundError",
    "PolicyFile",
    "PolicyListing",
    "PolicyProblem",
    "PolicySnapshot",
    "PolicyVersion",
    "Role",
    "RolledBackPolicy",
    "SessionEvent",
    "SessionInfo",
    "Severity",
    "Tenant",
]

DEFAULT_ADMIN_TIMEOUT = 30.0
"""Seconds: the deadline of every admin call that passes no ``timeout`` of its own."""

Role = Literal["tenant", "admin"]
Severity = Literal["unspecified", "low", "medium", "high", "critical"]
"""low: alert only; medium: throttle the subject; high: quarantine it; critical: quarantine, or disable the
language. "unspecified": a severity this client does not know (a newer server)."""
CostGroupBy = Literal["tenant", "session", "day"]
RUNNING = "RUNNING"
"""The ``outcome`` of an execution that is running now."""


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
class RolledBackPolicy:
    """The policy after a rollback."""

    version: int
    """The version now in force (a new one, unless the files were the current ones already)."""
    rolled_back_to: int
    tenants: tuple[str, ...]


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


@dataclass(frozen=True)
class Mitigation:
    """What the server did about an incident (throttle, quarantine, disable a language), until an operator
    lifts it or it expires."""

    id: str
    incident_id: str
    action: str
    """"throttle", "quarantine" or "disable_language"."""
    scope: str
    """"session", "tenant" or "language"."""
    subject: str
    """"acme", "acme/sess-1" (tenant/session) or "python"."""
    created_at: datetime | None
    expires_at: datetime | None
    """None: until lifted."""
    lifted_at: datetime | None
    """None while not lifted."""
    lifted_by: str
    throttle_per_minute: float
    """For "throttle": executions per minute allowed meanwhile."""

    def active(self, now: datetime | None = None) -> bool:
        """Neither lifted nor expired at ``now`` (an aware datetime; default: the current time)."""
        moment = now if now is not None else datetime.now(UTC)
        return self.lifted_at is None and (self.expires_at is None or self.expires_at > moment)


@dataclass(frozen=True)
class Incident:
    """Something the server noticed on its own (e.g. repeated timeouts in a session), with its mitigations."""

    id: str
    rule: str
    """"escape_attempts", "teardown_failure", "error_rate", "budget_exceeded" or "repeated_timeouts"."""
    severity: Severity
    scope: str
    """"session", "tenant", "language" or "server"."""
    subject: str
    summary: str
    details: dict[str, str]
    """What the rule saw; a resolution note is kept here as ``resolve_note``."""
    count: int
    """Events that matched while it was open."""
    opened_at: datetime | None
    resolved_at: datetime | None
    """None while open."""
    resolved_by: str
    mitigations: tuple[Mitigation, ...]
    exercise: bool = False
    """Opened by exercise traffic (``SandboxClient(exercise=True)``): counted apart, never mitigated, logged only."""

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class CostRow:
    """One line of a cost report; money in the tenant's currency units."""

    key: str
    """The tenant, "tenant/session" or the UTC day "YYYY-MM-DD"."""
    execution_cost: float
    usage_cost: float
    """Reported LLM token usage."""
    total: float
    executions: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class CostReport:
    rows: tuple[CostRow, ...]
    """By descending total."""
    total: float


@dataclass(frozen=True)
class Execution:
    """One execution: its audit record, or its live state while it runs (``outcome`` RUNNING)."""

    execution_id: str
    tenant: str
    key_id: str
    session_id: str
    language: str
    code_sha256: str
    limits: dict[str, int]
    """The applied limits (units in the names: wall_time_ms, memory_bytes, ...)."""
    outcome: str
    """RUNNING while it runs; then the status ("OK", "TIMEOUT", "KILLED", ...), "ERROR:<code>" or "CANCELLED"."""
    exit_code: int
    wall_time_s: float
    """While it runs: the time it has held its sandbox so far."""
    cpu_time_s: float
    peak_memory_bytes: int
    cost: float
    trace_id: str
    started_at: datetime | None
    ended_at: datetime | None
    """None while it runs."""
    exercise: bool = False
    """The request was marked as an exercise (``SandboxClient(exercise=True)``)."""

    @property
    def running(self) -> bool:
        return self.outcome == RUNNING


@dataclass(frozen=True)
class SessionEvent:
    """One lifecycle event of a session, from the session store's durable audit trail."""

    event: str
    """"created", "closed", "snapshot", "restored", "uploaded", "deleted", "kernel_restarted" or
    "loop_detected"."""
    at: datetime
    """Timezone-aware (UTC)."""
    detail: Mapping[str, str]
    """What happened, as text: "reason" of a "closed" event (its ``close_reason``), "path" and "size" of an
    "uploaded" one, ...; sorted by name."""

    def __post_init__(self) -> None:
        if not isinstance(self.detail, FrozenMapping):  # a dict given by hand: frozen like the rest
            object.__setattr__(self, "detail", FrozenMapping(self.detail))


@dataclass(frozen=True)
class AdminSession:
    """A session of any tenant, as an operator sees it."""

    tenant: str
    key_id: str
    """The API key that created it."""
    session: SessionInfo
    """Its live state, or the record of a closed one (state CLOSED, with its ``close_reason`` and ``closed_at``).
    A closed one's record keeps less than a live session shows: its ``last_used_at`` is the epoch (unknown), its
    timeouts, CPU total and memory and workspace figures are zero."""
    events: tuple[SessionEvent, ...]
    """Its lifecycle events, oldest first: filled by ``get_session`` only (empty in ``list_sessions``)."""


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
        self._stub = admin_pb2_grpc.AdminStub(self._channel)
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

    def rollback_policy(self, to_version: int, *, timeout: float | None = None) -> RolledBackPolicy:
        """Make version ``to_version``'s files the whole policy again; in force when this returns, as a new
        version recorded with who rolled back (the current version when its files are those already).

        Raises:
            InvalidRequestError: no such version in the history, or its files no longer load (a field
                violation per problem). Nothing changed.
        """
        response: admin_pb2.RollbackPolicyResponse = self._call(
            "RollbackPolicy", admin_pb2.RollbackPolicyRequest(to_version=to_version), timeout
        )
        return RolledBackPolicy(version=response.version, rolled_back_to=response.rolled_back_to,
                                tenants=tuple(response.tenants))

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


    # -- incidents ----------------------------------------------------------------------------------------------

    def list_incidents(
        self, *, open_only: bool = False, tenant: str | None = None, limit: int = 50, timeout: float | None = None
    ) -> tuple[Incident, ...]:
        """The latest ``limit`` incidents (1 to 1000), newest first, with their mitigations; only open ones with
        ``open_only``, only ``tenant``'s when given."""
        response: admin_pb2.ListIncidentsResponse = self._call(
            "ListIncidents",
            admin_pb2.ListIncidentsRequest(open_only=open_only, tenant=tenant or "", limit=limit),
            timeout,
        )
        return tuple(_incident(i) for i in response.incidents)

    def get_incident(self, incident_id: str, *, timeout: float | None = None) -> Incident:
        """One incident with its mitigations.

        Raises:
            NotFoundError: no incident with this id.
        """
        return _incident(self._call("GetIncident", admin_pb2.GetIncidentRequest(id=incident_id), timeout))

    def resolve_incident(self, incident_id: str, *, note: str = "", timeout: float | None = None) -> Incident:
        """Resolve an incident and lift its active mitigations (resolving a resolved one changes nothing).
        ``note`` (at most 1000 characters) is kept in its details as ``resolve_note``.

        Raises:
            NotFoundError: no incident with this id.
        """
        request = admin_pb2.ResolveIncidentRequest(id=incident_id, note=note)
        return _incident(self._call("ResolveIncident", request, timeout))

    # -- costs --------------------------------------------------------------------------------------------------

    def cost_report(
        self,
        *,
        group_by: CostGroupBy = "tenant",
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        timeout: float | None = None,
    ) -> CostReport:
        """Cost per tenant, "tenant/session" or UTC day within [``since``, ``until``) (None: the beginning; now),
        from the cost ledger, by descending total.

        Raises:
            ValueError: an unknown ``group_by``, or a naive datetime (give a timezone).
            InvalidRequestError: ``since`` is not before ``until``.
        """
        if group_by not in _GROUP_BY_TO_PROTO:
            raise ValueError(f"group_by must be 'tenant', 'session' or 'day', not {group_by!r}")
        request = admin_pb2.CostReportRequest(group_by=_GROUP_BY_TO_PROTO[group_by], tenant=tenant or "")
        if since is not None:
            request.since.CopyFrom(_timestamp("since", since))
        if until is not None:
            request.until.CopyFrom(_timestamp("until", until))
        response: admin_pb2.CostReportResponse = self._call("CostReport", request, timeout)
        return CostReport(rows=tuple(_cost_row(r) for r in response.rows), total=response.total)

    # -- executions ---------------------------------------------------------------------------------------------

    def list_executions(
        self,
        *,
        tenant: str | None = None,
        session_id: str | None = None,
        running_only: bool = False,
        limit: int = 50,
        outcomes: Sequence[str] | str = (),
        since: datetime | None = None,
        until: datetime | None = None,
        timeout: float | None = None,
    ) -> tuple[Execution, ...]:
        """The latest ``limit`` executions (1 to 1000) that pass every filter given, newest first: the running
        ones and the audit trail's (only the running ones with ``running_only``). The server filters, so
        ``limit`` counts matches: by ``tenant``, ``session_id``, ``outcomes`` (any of: "RUNNING", a status such
        as "OK" or "TIMEOUT", "CANCELLED", "ERROR:<grpc code>", or "ERROR" for every "ERROR:<code>") and start
        time within [``since``, ``until``).

        Raises:
            ValueError: a naive datetime (give a timezone).
            InvalidRequestError: an unknown outcome, or ``since`` is not before ``until``.
        """
        request = admin_pb2.ListExecutionsRequest(
            tenant=tenant or "", session_id=session_id or "", running_only=running_only, limit=limit,
            outcomes=[outcomes] if isinstance(outcomes, str) else list(outcomes),  # one outcome, not its letters
        )
        if since is not None:
            request.since.CopyFrom(_timestamp("since", since))
        if until is not None:
            request.until.CopyFrom(_timestamp("until", until))
        response: admin_pb2.ListExecutionsResponse = self._call("ListExecutions", request, timeout)
        return tuple(_execution(e) for e in response.executions)

    def get_execution(self, execution_id: str, *, timeout: float | None = None) -> Execution:
        """One execution: its live state while it runs, then its audit record.

        Raises:
            NotFoundError: no execution with this id.
        """
        request = admin_pb2.GetExecutionRequest(execution_id=execution_id)
        return _execution(self._call("GetExecution", request, timeout))

    def kill_execution(self, execution_id: str, *, timeout: float | None = None) -> bool:
        """Kill a running execution: its caller gets a result with status KILLED. Returns True once killed.

        Raises:
            NotFoundError: no execution with this id is running (unknown, or it has ended).
        """
        response: admin_pb2.KillExecutionResponse = self._call(
            "KillExecution", admin_pb2.KillExecutionRequest(execution_id=execution_id), timeout
        )
        return response.killed

    # -- quarantines --------------------------------------------------------------------------------------------

    def list_quarantines(self, *, include_lifted: bool = False, timeout: float | None = None) -> tuple[Mitigation, ...]:
        """Active mitigations (throttled or quarantined sessions and tenants, disabled languages), newest first;
        lifted and expired ones too with ``include_lifted``."""
        response: admin_pb2.ListQuarantinesResponse = self._call(
            "ListQuarantines", admin_pb2.ListQuarantinesRequest(include_lifted=include_lifted), timeout
        )
        return tuple(_mitigation(m) for m in response.mitigations)

    def lift_quarantine(self, mitigation_id: str, *, timeout: float | None = None) -> Mitigation:
        """Lift one mitigation (lifting a lifted one changes nothing); its incident stays open.

        Raises:
            NotFoundError: no mitigation with this id.
        """
        response: admin_pb2.Mitigation = self._call(
            "LiftQuarantine", admin_pb2.LiftQuarantineRequest(id=mitigation_id), timeout
        )
        return _mitigation(response)

    # -- sessions -----------------------------------------------------------------------------------------------

    def list_sessions(
        self,
        tenant: str | None = None,
        *,
        include_closed: bool = False,
        limit: int = 50,
        timeout: float | None = None,
    ) -> tuple[AdminSession, ...]:
        """At most ``limit`` sessions (1 to 1000) of every tenant, or of ``tenant``: the live ones, oldest first;
        with ``include_closed``, then closed ones from the session records, the most recently created first.
        Without their events (``get_session`` has them)."""
        request = admin_pb2.AdminListSessionsRequest(tenant=tenant or "", include_closed=include_closed, limit=limit)
        response: admin_pb2.AdminListSessionsResponse = self._call("ListSessions", request, timeout)
        return tuple(_admin_session(s) for s in response.sessions)

    def get_session(self, session_id: str, *, timeout: float | None = None) -> AdminSession:
        """One session of any tenant, live or closed, with its lifecycle events (oldest first).

        Raises:
            NotFoundError: no session with this id (a ``SessionNotFoundError``).
        """
        request = admin_pb2.AdminGetSessionRequest(session_id=session_id)
        return _admin_session(self._call("GetSession", request, timeout))

    def close_session(self, session_id: str, *, timeout: float | None = None) -> AdminSession:
        """Close a live session of any tenant now (a call running in it ends KILLED) and return its final state:
        CLOSED, with close reason "admin". Its tenant's next call on it raises ``SessionNotFoundError`` (close
        reason "admin").

        Raises:
            NotFoundError: no live session with this id (unknown, or closed already; a ``SessionNotFoundError``).
        """
        request = admin_pb2.AdminCloseSessionRequest(session_id=session_id)
        return _admin_session(self._call("CloseSession", request, timeout))


_ROLE_TO_PROTO: dict[str, admin_pb2.ApiKeyRole] = {
    "tenant": admin_pb2.API_KEY_ROLE_TENANT,
    "admin": admin_pb2.API_KEY_ROLE_ADMIN,
}
_ROLE_FROM_PROTO: dict[admin_pb2.ApiKeyRole, Role] = {
    admin_pb2.API_KEY_ROLE_TENANT: "tenant",
    admin_pb2.API_KEY_ROLE_ADMIN: "admin",
}


_SEVERITY_FROM_PROTO: dict[admin_pb2.Severity, Severity] = {
    admin_pb2.SEVERITY_LOW: "low",
    admin_pb2.SEVERITY_MEDIUM: "medium",
    admin_pb2.SEVERITY_HIGH: "high",
    admin_pb2.SEVERITY_CRITICAL: "critical",
}
_GROUP_BY_TO_PROTO: dict[str, admin_pb2.CostGroupBy] = {
    "tenant": admin_pb2.COST_GROUP_BY_TENANT,
    "session": admin_pb2.COST_GROUP_BY_SESSION,
    "day": admin_pb2.COST_GROUP_BY_DAY,
}


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _optional_datetime(message: Message, name: str) -> datetime | None:
    """The Timestamp field ``name``; None when unset (the proto's way to say "not yet" or "never")."""
    return _datetime(getattr(message, name)) if message.HasField(name) else None


def _timestamp(name: str, moment: datetime) -> timestamp_pb2.Timestamp:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with a timezone), not {moment!r}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _mitigation(message: admin_pb2.Mitigation) -> Mitigation:
    return Mitigation(
        id=message.id,
        incident_id=message.incident_id,
        action=message.action,
        scope=message.scope,
        subject=message.subject,
        created_at=_optional_datetime(message, "created_at"),
        expires_at=_optional_datetime(message, "expires_at"),
        lifted_at=_optional_datetime(message, "lifted_at"),
        lifted_by=message.lifted_by,
        throttle_per_minute=message.throttle_per_minute,
    )


def _incident(message: admin_pb2.Incident) -> Incident:
    return Incident(
        id=message.id,
        rule=message.rule,
        severity=_SEVERITY_FROM_PROTO.get(message.severity, "unspecified"),
        scope=message.scope,
        subject=message.subject,
        summary=message.summary,
        details=dict(sorted(message.details.items())),
        count=message.count,
        opened_at=_optional_datetime(message, "opened_at"),
        resolved_at=_optional_datetime(message, "resolved_at"),
        resolved_by=message.resolved_by,
        mitigations=tuple(_mitigation(m) for m in message.mitigations),
        exercise=message.exercise,
    )


def _cost_row(message: admin_pb2.CostRow) -> CostRow:
    return CostRow(
        key=message.key,
        execution_cost=message.execution_cost,
        usage_cost=message.usage_cost,
        total=message.total,
        executions=message.executions,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
    )


def _execution(message: admin_pb2.Execution) -> Execution:
    return Execution(
        execution_id=message.execution_id,
        tenant=message.tenant,
        key_id=message.key_id,
        session_id=message.session_id,
        language=message.language,
        code_sha256=message.code_sha256,
        limits=dict(sorted(message.limits.items())),
        outcome=message.outcome,
        exit_code=message.exit_code,
        wall_time_s=message.wall_time_s,
        cpu_time_s=message.cpu_time_s,
        peak_memory_bytes=message.peak_memory_bytes,
        cost=message.cost,
        trace_id=message.trace_id,
        started_at=_optional_datetime(message, "started_at"),
        ended_at=_optional_datetime(message, "ended_at"),
        exercise=message.exercise,
    )


def _session_event(message: admin_pb2.SessionEvent) -> SessionEvent:
    return SessionEvent(
        event=message.event, at=_datetime(message.at), detail=FrozenMapping(sorted(message.detail.items()))
    )


def _admin_session(message: admin_pb2.AdminSession) -> AdminSession:
    return AdminSession(
        tenant=message.tenant,
        key_id=message.key_id,
        session=session_from_proto(message.session),
        events=tuple(_session_event(e) for e in message.events),
    )


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
