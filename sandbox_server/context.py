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


@dataclass(frozen=True)
class Acceptance:
    """An execution the server accepted (validated, policy-checked, admitted): the audit owes it a record."""

    execution_id: str
    session_id: str
    language: str
    code_sha256: str
    limits: dict[str, int]


# Set by the audit interceptor around each call; the servicer appends to it once an execution is accepted.
current_acceptances: contextvars.ContextVar[list[Acceptance] | None] = contextvars.ContextVar(
    "sandbox_acceptances", default=None
)


def accept(acceptance: Acceptance) -> None:
    holder = current_acceptances.get()
    if holder is not None:
        holder.append(acceptance)
