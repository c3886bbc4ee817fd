"""Per-request state, passed through a ContextVar (never by rewriting metadata)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec


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
    exercise: bool = False  # an admin marked it as an exercise (ExecuteRequest.exercise)


# Set by the audit interceptor around each call; the servicer appends to it once an execution is accepted.
current_acceptances: contextvars.ContextVar[list[Acceptance] | None] = contextvars.ContextVar(
    "sandbox_acceptances", default=None
)


def accept(acceptance: Acceptance) -> None:
    holder = current_acceptances.get()
    if holder is not None:
        holder.append(acceptance)


@dataclass
class CallRecord:
    """What one RPC learnt on its way through the chain, for the telemetry link (outermost) to report when it
    ends. Set by the telemetry interceptor; inner links fill what they know. Mutable on purpose: a ContextVar
    set inside a link is not seen by the links outside it, a shared holder is."""

    method: str
    started: float = 0.0  # monotonic
    tenant: str = ""
    session_id: str = ""
    language: str = ""
    execution_id: str = ""
    exercise: bool = False  # the request is an exercise (set by the auth link, which checks who may say so)
    relayed: bool = False  # passed on to the session's holder (the forward link), which counts the call
    fleet_part: bool = False  # this server's part of another server's fleet call, which that server counts
    error: Exception | None = None  # what the errors link mapped (a SandboxError, or an unexpected exception)
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)  # span attributes (+ logged)
    log_extra: dict[str, str] = field(default_factory=dict)  # logged only: code/output when the policy asks


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("sandbox_call", default=None)


def call_record() -> CallRecord | None:
    return current_call.get()


class BudgetGate(Protocol):
    """The cost link's hold on one call's executions (see interceptors/cost.py)."""

    async def reserve(self, spec: ExecutionSpec) -> None: ...
    def started(self, spec: ExecutionSpec) -> None: ...
    async def settle(self, spec: ExecutionSpec, result: ExecutionResult) -> float: ...


current_budget: contextvars.ContextVar[BudgetGate | None] = contextvars.ContextVar("sandbox_budget", default=None)


def budget_gate() -> BudgetGate | None:
    return current_budget.get()
