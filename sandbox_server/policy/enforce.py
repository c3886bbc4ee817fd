"""Apply a tenant's policy to a request that already passed validation: languages, limits, environment,
network (egress/policy.py).

A request may lower any limit, never raise one past its tenant's ceiling: asking above the ceiling is
PERMISSION_DENIED naming the ceiling (asking above the server's own ceiling stays INVALID_ARGUMENT).
Unset limits take the tenant's default, else the server's, never above the tenant's ceiling.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.egress.policy import egress_for
from sandbox_server.errors import PermissionDenied
from sandbox_server.execution.spec import ExecutionSpec, Limits
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.settings import LimitValues


def enforce(
    request: pb.ExecuteRequest, spec: ExecutionSpec, tenant: str, policy: TenantPolicy, server_ceilings: LimitValues
) -> ExecutionSpec:
    """The spec with the tenant's limits applied; raise PermissionDenied with every reason."""
    reasons: list[str] = []
    meta: dict[str, str] = {"tenant": tenant}
    if spec.runtime.language not in policy.languages:
        reasons.append(f"language {spec.runtime.language!r} is not allowed for tenant {tenant!r} "
                       f"(allowed: {', '.join(policy.languages)})")
        meta["language"] = spec.runtime.language
    values: dict[str, int] = {}
    for name in Limits.__dataclass_fields__:
        server_value = getattr(spec.limits, name)
        ceiling = getattr(policy.ceilings, name)
        if request.limits.HasField(name):
            if ceiling is not None and server_value > ceiling:
                reasons.append(f"limits.{name}={server_value} is above the ceiling of {ceiling} for tenant {tenant!r}")
                meta[f"ceiling.{name}"] = str(ceiling)
            values[name] = server_value
        else:
            default = getattr(policy.defaults, name)
            value = min(default, getattr(server_ceilings, name)) if default is not None else server_value
            values[name] = min(value, ceiling) if ceiling is not None else value
    for name, _ in spec.env:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in policy.allowed_env):
            reasons.append(f"env {name!r} is not in tenant {tenant!r}'s allowed_env")
            meta.setdefault("env", name)
    if reasons:
        raise PermissionDenied("; ".join(reasons), reason="POLICY_DENIED", metadata=meta)
    egress = egress_for(policy.network, request.network if request.HasField("network") else None, tenant)
    return dataclasses.replace(spec, limits=Limits(**values), egress=egress)
