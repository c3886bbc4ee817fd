"""The interceptor order is declared once and pinned here (the first is the outermost)."""

from __future__ import annotations

from pathlib import Path

from sandbox_server import interceptors
from sandbox_server.cost.budgeter import Budgeter
from sandbox_server.incidents import IncidentManager, IncidentSettings
from sandbox_server.interceptors.audit import AuditInterceptor
from sandbox_server.interceptors.auth import AuthInterceptor
from sandbox_server.interceptors.cost import CostInterceptor
from sandbox_server.interceptors.errors import ErrorsInterceptor
from sandbox_server.interceptors.forward import ForwardInterceptor
from sandbox_server.interceptors.guardrails import GuardrailsInterceptor
from sandbox_server.interceptors.idempotency import IdempotencyInterceptor
from sandbox_server.interceptors.mitigations import MitigationsInterceptor
from sandbox_server.interceptors.rate_limit import RateLimitInterceptor
from sandbox_server.interceptors.telemetry import TelemetryInterceptor
from sandbox_server.policy.embedded import seed_policies
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.settings import load_settings
from sandbox_server.stores.embedded import open_stores
from sandbox_server.telemetry import build_telemetry


def test_chain_order_is_pinned(tmp_path: Path) -> None:
    assert interceptors.CHAIN_ORDER == (
        "telemetry", "errors", "auth", "forward", "idempotency", "mitigations", "rate_limit", "guardrails", "cost",
        "audit")
    registry = PolicyRegistry(seed_policies(tmp_path / "policies"))
    registry.load()
    stores = open_stores(tmp_path / "data")
    telemetry = build_telemetry(load_settings())
    try:
        chain = interceptors.build_chain(interceptors.ChainDeps(
            keys=stores.keys, policies=registry, audit=stores.audit, telemetry=telemetry,
            budgeter=Budgeter(stores.costs), mitigations=IncidentManager(stores.incidents, IncidentSettings(), []),
            idempotency=IdempotencyInterceptor()))
    finally:
        telemetry.shutdown()
        stores.close()
    assert [type(link) for link in chain] == [
        TelemetryInterceptor, ErrorsInterceptor, AuthInterceptor, ForwardInterceptor, IdempotencyInterceptor,
        MitigationsInterceptor,
        RateLimitInterceptor,
        GuardrailsInterceptor, CostInterceptor, AuditInterceptor]
