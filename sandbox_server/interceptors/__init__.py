"""The interceptor chain, declared once. The first interceptor is the outermost (grpc's rule).

Order and why (see docs/architecture.md):
telemetry (sees every outcome, rejections included: span, call metrics, the call's log line)
-> errors (maps every SandboxError raised inside it to a status with rich details)
-> auth (who is calling)
-> forward (a call for a session another replica holds goes there, before this server spends anything on it)
-> idempotency (a retried request with the same key gets the first one's response; keys are per tenant)
-> mitigations (a quarantined or throttled caller spends nothing further)
-> rate_limit (per tenant and session)
-> guardrails (validate before spending budget; redact output on the way out)
-> cost (reserve the worst case before running, settle the actual cost after)
-> audit (one durable record per accepted execution, written before the reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from sandbox_server.cost.budgeter import Budgeter
from sandbox_server.interceptors._concurrency import Concurrency
from sandbox_server.interceptors.audit import AuditInterceptor, AuditSink, ExecutionObserver
from sandbox_server.interceptors.auth import AuthInterceptor, KeyVerifier
from sandbox_server.interceptors.cost import CostInterceptor
from sandbox_server.interceptors.errors import ErrorsInterceptor
from sandbox_server.interceptors.forward import ForwardInterceptor
from sandbox_server.interceptors.guardrails import GuardrailsInterceptor
from sandbox_server.interceptors.idempotency import IdempotencyInterceptor
from sandbox_server.interceptors.mitigations import MitigationCheck, MitigationsInterceptor
from sandbox_server.interceptors.rate_limit import DEFAULT_STORAGE_URI, RateLimitInterceptor
from sandbox_server.interceptors.telemetry import CallObserver, TelemetryInterceptor
from sandbox_server.policy.caller import TenantPolicies
from sandbox_server.telemetry import Telemetry

CHAIN_ORDER = (
    "telemetry", "errors", "auth", "forward", "idempotency", "mitigations", "rate_limit", "guardrails", "cost", "audit")


@dataclass(frozen=True)
class ChainDeps:
    """What the links need; one frozen input, so adding a link breaks no caller."""

    keys: KeyVerifier | None  # None: development mode (no API keys)
    policies: TenantPolicies
    audit: AuditSink
    telemetry: Telemetry
    budgeter: Budgeter
    mitigations: MitigationCheck
    idempotency: IdempotencyInterceptor  # built by the app, which closes it at shutdown
    call_observers: Sequence[CallObserver] = ()
    execution_observers: Sequence[ExecutionObserver] = ()
    rate_limit_storage: str = DEFAULT_STORAGE_URI  # a `limits` storage URI (redis_url, when set)
    concurrency: Concurrency | None = None  # where executions in flight are counted (None: this process)
    forward: ForwardInterceptor | None = None  # built by the app with replicas (closes its channels); None: one server


def build_chain(deps: ChainDeps) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first, in CHAIN_ORDER."""
    links: dict[str, grpc.aio.ServerInterceptor] = {
        "telemetry": TelemetryInterceptor(deps.telemetry, deps.call_observers),
        "errors": ErrorsInterceptor(),
        "auth": AuthInterceptor(deps.keys),
        "forward": deps.forward if deps.forward is not None else ForwardInterceptor(),
        "idempotency": deps.idempotency,
        "mitigations": MitigationsInterceptor(deps.mitigations, deps.rate_limit_storage),
        "rate_limit": RateLimitInterceptor(deps.policies, deps.rate_limit_storage, deps.concurrency),
        "guardrails": GuardrailsInterceptor(deps.policies),
        "cost": CostInterceptor(deps.budgeter, deps.policies),
        "audit": AuditInterceptor(deps.audit, deps.execution_observers),
    }
    return [links[name] for name in CHAIN_ORDER]
