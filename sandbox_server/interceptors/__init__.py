"""The interceptor chain, declared once. The first interceptor is the outermost (grpc's rule).

Order and why (see ../shared/DESIGN.md): tracing (sees every outcome) -> errors (maps every SandboxError
raised inside it to a status with rich details) -> auth -> rate_limit -> guardrails -> cost -> audit.
Only the links that exist are listed; each later one slots in at its place here.
"""

from __future__ import annotations

import grpc

from sandbox_server.interceptors.errors import ErrorsInterceptor

CHAIN_ORDER = ("errors",)


def build_chain() -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first, in CHAIN_ORDER."""
    links: dict[str, grpc.aio.ServerInterceptor] = {"errors": ErrorsInterceptor()}
    return [links[name] for name in CHAIN_ORDER]
