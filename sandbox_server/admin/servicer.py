"""The Admin service: tenant policies (list, show, validate, apply, history) and API keys (create, revoke, list).

Every method needs an admin principal (set by the auth interceptor; fail closed: no principal, no answer).
Policy changes go through the PolicyRegistry, which validates the whole directory with the change and swaps
atomically; each applied version is recorded in the PolicyVersionStore with the caller as its actor. Blocking
work (the registry's file I/O, the stores' transactions) runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import grpc
import yaml
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from sandbox_client._proto.sandbox.v1 import admin_pb2 as pb
from sandbox_server.admin.operations import Operations
from sandbox_server.context import Principal, principal
from sandbox_server.errors import FieldViolation, InvalidRequest, PermissionDenied, SandboxError, Unauthenticated
from sandbox_server.execution.servicer import MalformedRequest, ensure_request, tolerant
from sandbox_server.policy.loader import PolicyLoadError
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.stores.base import MAX_LABEL_CHARS, KeyRecord, KeyStore, PolicyVersionStore, Role
from sandbox_server.validation.request import admin_name

log = logging.getLogger(__name__)

ADMIN_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Admin"].full_name

DEFAULT_VERSIONS_LIMIT = 50
MAX_VERSIONS_LIMIT = 1000

_ROLES: Mapping[pb.ApiKeyRole, Role] = {
    pb.API_KEY_ROLE_UNSPECIFIED: "tenant",
    pb.API_KEY_ROLE_TENANT: "tenant",
    pb.API_KEY_ROLE_ADMIN: "admin",
}
_ROLE_TO_PROTO: Mapping[Role, pb.ApiKeyRole] = {"tenant": pb.API_KEY_ROLE_TENANT, "admin": pb.API_KEY_ROLE_ADMIN}


class PolicyErrorLike(Protocol):
    @property
    def file(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def message(self) -> str: ...


class PolicySetLike(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def tenants(self) -> Mapping[str, TenantPolicy]: ...
    @property
    def sources(self) -> Mapping[str, str]: ...
    @property
    def loaded_at(self) -> float: ...


class PolicyRegistryLike(Protocol):
    """What the servicer needs of ``sandbox_server.policy.registry.PolicyRegistry`` (thread-safe writers)."""

    def current(self) -> PolicySetLike: ...
    def validate(self, file_name: str, text: str) -> Sequence[PolicyErrorLike]: ...
    def apply(self, file_name: str, text: str, actor: str) -> PolicySetLike:
        """Raises PolicyLoadError (nothing changed) for an invalid change."""
        ...

    def replace_all(self, texts: Mapping[str, str], actor: str) -> PolicySetLike:
        """Raises PolicyLoadError (nothing changed) for texts that do not load."""
        ...

    @property
    def last_errors(self) -> Sequence[PolicyErrorLike]: ...


_T = TypeVar("_T")


class AdminServicer:
    """The Admin RPCs. ``registry`` holds the live policy; ``keys`` and ``versions`` are the durable stores."""

    def __init__(
        self, registry: PolicyRegistryLike, keys: KeyStore, versions: PolicyVersionStore,
        ops: Operations | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.versions = versions
        self.ops = ops  # None: the operational calls answer UNAVAILABLE (tests of policies and keys alone)

    # -- policies -----------------------------------------------------------------------------------------------

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPoliciesResponse:
        _require_admin()
        current = self.registry.current()
        return pb.ListPoliciesResponse(
            version=current.version,
            files=_files(current.sources, known=current.tenants),
            last_errors=[_error_to_proto(e) for e in self.registry.last_errors],
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        _require_admin()
        if request.version < 0:
            raise InvalidRequest([FieldViolation("version", "must be positive, or 0 for the current version")])
        if request.version == 0:
            current = self.registry.current()
            recorded = await _run(self.versions.get, current.version)
            response = pb.GetPolicyResponse(
                version=current.version, files=_files(current.sources, known=current.tenants)
            )
            if recorded is not None and dict(recorded.texts) == dict(current.sources):
                response.actor = recorded.actor
                response.at.CopyFrom(_timestamp(recorded.at))
            else:  # not in the history (or the history holds another set under this number): say what we know
                response.at.FromSeconds(int(current.loaded_at))
            return response
        found = await _run(self.versions.get, request.version)
        if found is None:
            raise InvalidRequest([FieldViolation("version", f"no policy version {request.version} in the history")])
        return pb.GetPolicyResponse(
            version=found.version, actor=found.actor, at=_timestamp(found.at), files=_files(found.texts)
        )

    async def ValidatePolicy(
        self, request: pb.ValidatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidatePolicyResponse:
        _require_admin()
        errors = await _run(self.registry.validate, request.file_name, request.text)
        return pb.ValidatePolicyResponse(valid=not errors, errors=[_error_to_proto(e) for e in errors])

    async def ApplyPolicy(
        self, request: pb.ApplyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyPolicyResponse:
        who = _require_admin()
        before = self.registry.current()
        try:
            new = await _run(self.registry.apply, request.file_name, request.text, who.actor)
        except PolicyLoadError as exc:
            raise InvalidRequest([_violation(e) for e in exc.errors]) from exc
        except OSError as exc:
            log.error("writing policy file %r failed: %s", request.file_name, exc)
            raise SandboxError(f"the policy file could not be written: {exc.strerror or exc}") from exc
        if new is not before:  # the same texts keep the current set and version: nothing new to record
            await self._record(new, who.actor)
        tenants = _tenants_in(new.sources.get(request.file_name, ""), known=new.tenants)
        return pb.ApplyPolicyResponse(version=new.version, tenants=tenants)

    async def RollbackPolicy(
        self, request: pb.RollbackPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackPolicyResponse:
        who = _require_admin()
        if request.to_version <= 0:
            raise InvalidRequest([FieldViolation("to_version", "must be a positive version number")])
        found = await _run(self.versions.get, request.to_version)
        if found is None:
            raise InvalidRequest([FieldViolation("to_version", f"no policy version {request.to_version} in the "
                                                               "history")])
        actor = f"{who.actor} (rollback to version {found.version})"
        before = self.registry.current()
        try:
            new = await _run(self.registry.replace_all, dict(found.texts), actor)
        except PolicyLoadError as exc:
            raise InvalidRequest([_violation(e) for e in exc.errors]) from exc
        except OSError as exc:
            log.error("rolling the policy back to version %d failed: %s", found.version, exc)
            raise SandboxError(f"the policy files could not be written: {exc.strerror or exc}") from exc
        if new is not before:
            await self._record(new, actor)
        return pb.RollbackPolicyResponse(version=new.version, rolled_back_to=found.version,
                                         tenants=sorted(new.tenants))

    async def _record(self, new: PolicySetLike, actor: str) -> None:
        """Record the applied set in the history, unless it is there already (e.g. by the registry's change hook)."""
        try:
            existing = await _run(self.versions.get, new.version)
            if existing is None:
                await _run(self.versions.record, new.version, dict(new.sources), actor)
            elif dict(existing.texts) != dict(new.sources):
                log.error("policy version %d is recorded with other files than the ones applied", new.version)
        except Exception as exc:
            log.exception("recording policy version %d failed", new.version)
            raise SandboxError(
                f"policy version {new.version} is applied and in force, but recording it in the version history "
                "failed; the server logged the cause"
            ) from exc

    async def ListPolicyVersions(
        self, request: pb.ListPolicyVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPolicyVersionsResponse:
        _require_admin()
        limit = request.limit or DEFAULT_VERSIONS_LIMIT
        if not 0 < limit <= MAX_VERSIONS_LIMIT:
            raise InvalidRequest([FieldViolation("limit", f"must be between 1 and {MAX_VERSIONS_LIMIT} (0: 50)")])
        found = await _run(self.versions.list, limit)
        return pb.ListPolicyVersionsResponse(
            versions=[
                pb.PolicyVersion(version=v.version, actor=v.actor, at=_timestamp(v.at), files=v.files) for v in found
            ]
        )

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTenantsResponse:
        _require_admin()
        current = self.registry.current()
        active = Counter(k.tenant for k in await _run(self.keys.list, None) if k.active)
        return pb.ListTenantsResponse(
            tenants=[
                pb.Tenant(
                    name=name,
                    description=policy.description,
                    languages=list(policy.languages),
                    active_keys=active[name],
                )
                for name, policy in sorted(current.tenants.items())
            ]
        )

    # -- API keys -----------------------------------------------------------------------------------------------

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        _require_admin()
        violations: list[FieldViolation] = []
        current = self.registry.current()
        if not request.tenant:
            violations.append(FieldViolation("tenant", "is required"))
        elif request.tenant not in current.tenants:
            violations.append(
                FieldViolation(
                    "tenant", f"no tenant {request.tenant!r} in the current policy (version {current.version})"
                )
            )
        role = _ROLES.get(request.role)
        if role is None:
            violations.append(FieldViolation("role", f"unknown role {request.role}"))
        if len(request.label) > MAX_LABEL_CHARS:
            violations.append(FieldViolation("label", f"longer than {MAX_LABEL_CHARS} characters"))
        elif not request.label.isprintable():
            violations.append(FieldViolation("label", "must not contain control characters"))
        if violations or role is None:
            raise InvalidRequest(violations)
        record, secret = await _run(self.keys.create, request.tenant, role, request.label)
        log.info("API key %s created for tenant %s (role %s)", record.key_id, record.tenant, record.role)
        return pb.CreateApiKeyResponse(key=_key_to_proto(record), secret=secret)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeApiKeyResponse:
        _require_admin()
        if problems := admin_name("key_id", request.key_id, required=True):
            raise InvalidRequest(problems)
        if await _run(self.keys.get, request.key_id) is None:
            raise InvalidRequest([FieldViolation("key_id", f"no API key {request.key_id!r}")])
        was_active = await _run(self.keys.revoke, request.key_id)
        record = await _run(self.keys.get, request.key_id)
        if record is None:  # keys are never deleted
            raise SandboxError(f"API key {request.key_id!r} vanished while being revoked")
        if was_active:
            log.info("API key %s of tenant %s revoked", record.key_id, record.tenant)
        return pb.RevokeApiKeyResponse(key=_key_to_proto(record), was_active=was_active)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        _require_admin()
        if problems := admin_name("tenant", request.tenant):
            raise InvalidRequest(problems)
        found = await _run(self.keys.list, request.tenant or None)
        return pb.ListApiKeysResponse(keys=[_key_to_proto(k) for k in found])


def admin_handler(servicer: AdminServicer) -> grpc.GenericRpcHandler:
    """The Admin service's handlers: policies and keys from ``servicer``, and the operational calls (incidents,
    costs, executions, quarantines) over ``servicer.ops`` (UNAVAILABLE when it is None). Undecodable requests
    become INVALID_ARGUMENT (through the errors interceptor), never UNKNOWN."""
    # Imported here: the operational calls build on this module's admin check, so it cannot import them first.
    from sandbox_server.admin.operations_servicer import OperationsServicer
    from sandbox_server.admin.sessions_servicer import AdminSessionsServicer

    ops = OperationsServicer(servicer.ops)
    sessions = AdminSessionsServicer(servicer.ops)
    methods: dict[
        str, tuple[Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]], type[Message], type[Message]]
    ] = {
        "ListPolicies": (servicer.ListPolicies, pb.ListPoliciesRequest, pb.ListPoliciesResponse),
        "GetPolicy": (servicer.GetPolicy, pb.GetPolicyRequest, pb.GetPolicyResponse),
        "ValidatePolicy": (servicer.ValidatePolicy, pb.ValidatePolicyRequest, pb.ValidatePolicyResponse),
        "ApplyPolicy": (servicer.ApplyPolicy, pb.ApplyPolicyRequest, pb.ApplyPolicyResponse),
        "RollbackPolicy": (servicer.RollbackPolicy, pb.RollbackPolicyRequest, pb.RollbackPolicyResponse),
        "ListPolicyVersions": (
            servicer.ListPolicyVersions,
            pb.ListPolicyVersionsRequest,
            pb.ListPolicyVersionsResponse,
        ),
        "ListTenants": (servicer.ListTenants, pb.ListTenantsRequest, pb.ListTenantsResponse),
        "CreateApiKey": (servicer.CreateApiKey, pb.CreateApiKeyRequest, pb.CreateApiKeyResponse),
        "RevokeApiKey": (servicer.RevokeApiKey, pb.RevokeApiKeyRequest, pb.RevokeApiKeyResponse),
        "ListApiKeys": (servicer.ListApiKeys, pb.ListApiKeysRequest, pb.ListApiKeysResponse),
        "ListIncidents": (ops.ListIncidents, pb.ListIncidentsRequest, pb.ListIncidentsResponse),
        "GetIncident": (ops.GetIncident, pb.GetIncidentRequest, pb.Incident),
        "ResolveIncident": (ops.ResolveIncident, pb.ResolveIncidentRequest, pb.Incident),
        "CostReport": (ops.CostReport, pb.CostReportRequest, pb.CostReportResponse),
        "ListExecutions": (ops.ListExecutions, pb.ListExecutionsRequest, pb.ListExecutionsResponse),
        "GetExecution": (ops.GetExecution, pb.GetExecutionRequest, pb.Execution),
        "KillExecution": (ops.KillExecution, pb.KillExecutionRequest, pb.KillExecutionResponse),
        "ListQuarantines": (ops.ListQuarantines, pb.ListQuarantinesRequest, pb.ListQuarantinesResponse),
        "LiftQuarantine": (ops.LiftQuarantine, pb.LiftQuarantineRequest, pb.Mitigation),
        "ListSessions": (sessions.ListSessions, pb.AdminListSessionsRequest, pb.AdminListSessionsResponse),
        "GetSession": (sessions.GetSession, pb.AdminGetSessionRequest, pb.AdminSession),
        "CloseSession": (sessions.CloseSession, pb.AdminCloseSessionRequest, pb.AdminSession),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _refuse_malformed(method),
            request_deserializer=tolerant(request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (method, request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(ADMIN_SERVICE_NAME, handlers)


def _refuse_malformed(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def behavior(request: Message | MalformedRequest, context: grpc.aio.ServicerContext) -> Message:
        return await method(ensure_request(request), context)

    return behavior


def _require_admin() -> Principal:
    """The caller, if an admin; fail closed when the auth interceptor set no principal."""
    who = principal()
    if who is None:
        raise Unauthenticated("no authenticated caller (the Admin service needs the auth interceptor)")
    if who.role != "admin":
        raise PermissionDenied("the Admin API needs an admin key", reason="ADMIN_ONLY")
    return who


async def _run(function: Callable[..., _T], *args: Any) -> _T:
    """Blocking store/registry work, off the event loop."""
    return await asyncio.to_thread(function, *args)


def _violation(error: PolicyErrorLike) -> FieldViolation:
    field = f"{error.file}:{error.location}" if error.location else error.file
    return FieldViolation(field, error.message)


def _error_to_proto(error: PolicyErrorLike) -> pb.PolicyError:
    return pb.PolicyError(file=error.file, location=error.location, message=error.message)


def _files(sources: Mapping[str, str], known: Mapping[str, object] | None = None) -> list[pb.PolicyFile]:
    return [
        pb.PolicyFile(name=name, text=text, tenants=_tenants_in(text, known=known))
        for name, text in sorted(sources.items())
    ]


def _tenants_in(text: str, known: Mapping[str, object] | None = None) -> list[str]:
    """The tenant names a policy file's text defines, in file order (only those in ``known`` if given).

    The text was validated when it was loaded or recorded; a text that does not parse defines no tenant."""
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError:
        return []
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, dict):
        return []
    return [str(name) for name in tenants if known is None or name in known]


_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _key_to_proto(record: KeyRecord) -> pb.ApiKey:
    key = pb.ApiKey(
        key_id=record.key_id,
        tenant=record.tenant,
        role=_ROLE_TO_PROTO[record.role],
        label=record.label,
        created_at=_timestamp(record.created_at),
    )
    if record.revoked_at is not None:
        key.revoked_at.CopyFrom(_timestamp(record.revoked_at))
    return key
