"""The interceptor order is declared once and pinned here (the first is the outermost)."""

from __future__ import annotations

from pathlib import Path

from sandbox_server import interceptors
from sandbox_server.interceptors.audit import AuditInterceptor
from sandbox_server.interceptors.auth import AuthInterceptor
from sandbox_server.interceptors.errors import ErrorsInterceptor
from sandbox_server.interceptors.guardrails import GuardrailsInterceptor
from sandbox_server.interceptors.rate_limit import RateLimitInterceptor
from sandbox_server.policy.embedded import seed_policies
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.stores.sqlite import open_stores


def test_chain_order_is_pinned(tmp_path: Path) -> None:
    assert interceptors.CHAIN_ORDER == ("errors", "auth", "rate_limit", "guardrails", "audit")
    registry = PolicyRegistry(seed_policies(tmp_path / "policies"))
    registry.load()
    stores = open_stores(tmp_path / "data")
    try:
        chain = interceptors.build_chain(interceptors.ChainDeps(keys=stores.keys, policies=registry,
                                                                audit=stores.audit))
    finally:
        stores.close()
    assert [type(link) for link in chain] == [ErrorsInterceptor, AuthInterceptor, RateLimitInterceptor,
                                              GuardrailsInterceptor, AuditInterceptor]
