"""The interceptor chain, declared once. The first interceptor is the outermost (grpc's rule).

Order and why (see ../shared/DESIGN.md): tracing (sees every outcome) -> errors (maps every SandboxError
raised inside it to a status with rich details) -> auth -> rate_limit -> guardrails -> cost -> audit.
Only the links that exist are listed (tracing and cost are still to come); each slots in at its place here.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from sandbox_server.interceptors.audit import AuditInterceptor, AuditSink
from sandbox_server.interceptors.auth import AuthInterceptor, KeyVerifier
from sandbox_server.interceptors.errors import ErrorsInterceptor
from sandbox_server.interceptors.guardrails import GuardrailsInterceptor
from sandbox_server.interceptors.rate_limit import DEFAULT_STORAGE_URI, RateLimitInterceptor
from sandbox_server.policy.caller import TenantPolicies

CHAIN_ORDER = ("errors", "auth", "rate_limit", "guardrails", "audit")


@dataclass(frozen=True)
class ChainDeps:
    """What the links need; one frozen input, so adding a link breaks no caller."""

    keys: KeyVerifier | None  # None: development mode (no API keys)
    policies: TenantPolicies
    audit: AuditSink
    rate_limit_storage: str = DEFAULT_STORAGE_URI  # a `limits` storage URI; redis:// to share across replicas


def build_chain(deps: ChainDeps) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first, in CHAIN_ORDER."""
    links: dict[str, grpc.aio.ServerInterceptor] = {
        "errors": ErrorsInterceptor(),
        "auth": AuthInterceptor(deps.keys),
        "rate_limit": RateLimitInterceptor(deps.policies, deps.rate_limit_storage),
        "guardrails": GuardrailsInterceptor(deps.policies),
        "audit": AuditInterceptor(deps.audit),
    }
    return [links[name] for name in CHAIN_ORDER]
