"""Per-request state, passed through a ContextVar (never by rewriting metadata)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose policy applies, and the key's role."""

    tenant: str
    role: Literal["tenant", "admin"]
    key_id: str  # "dev" in development mode

    @property
    def actor(self) -> str:
        return f"{self.tenant}/{self.key_id}"


DEV_PRINCIPAL = Principal(tenant="default", role="admin", key_id="dev")

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "sandbox_principal", default=None
)


def principal() -> Principal | None:
    return current_principal.get()
