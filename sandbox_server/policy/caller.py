"""The policy of the tenant making the current request (fails closed without a caller or a policy)."""

from __future__ import annotations

from typing import Protocol

from sandbox_server.context import principal
from sandbox_server.errors import PermissionDenied, Unauthenticated
from sandbox_server.policy.models import TenantPolicy


class TenantPolicies(Protocol):
    def tenant(self, name: str) -> TenantPolicy | None: ...


def caller_policy(policies: TenantPolicies) -> tuple[str, TenantPolicy]:
    """(tenant name, its policy); Unauthenticated without a caller, PermissionDenied for an unknown tenant."""
    who = principal()
    if who is None:
        raise Unauthenticated("no caller identity for this request")
    policy = policies.tenant(who.tenant)
    if policy is None:
        raise PermissionDenied(f"tenant {who.tenant!r} has no policy", reason="UNKNOWN_TENANT",
                               metadata={"tenant": who.tenant})
    return who.tenant, policy
