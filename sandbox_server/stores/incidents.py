"""Incidents and the mitigations they started: protocol and records.

An incident is opened by a rule for one subject (a session, a tenant, a language or the whole server). While it
is open, further matches of the same rule for the same subject bump its count instead of opening another. A
mitigation (throttle, quarantine, disable a language) belongs to the incident that started it; resolving the
incident lifts its active mitigations; a mitigation may also be lifted alone, or expire.

An exercise incident (opened by traffic an admin marked as an exercise) is kept apart from the ordinary one of
the same rule and subject, so neither bumps the other, and it never has a mitigation.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
Scope = Literal["session", "tenant", "language", "server"]
Action = Literal["throttle", "quarantine", "disable_language"]


@dataclass(frozen=True)
class MitigationSpec:
    """What to do about a newly opened incident."""

    action: Action
    scope: Scope  # "session", "tenant" or "language" (never "server")
    subject: str  # "tenant/session", "tenant" or the language
    expires_at: float | None = None  # epoch seconds; None: until lifted
    throttle_per_minute: float = 0.0  # for "throttle"


@dataclass(frozen=True)
class MitigationRecord:
    id: str
    incident_id: str
    action: Action
    scope: Scope
    subject: str
    created_at: float
    expires_at: float | None
    lifted_at: float | None
    lifted_by: str
    throttle_per_minute: float

    def active(self, now: float) -> bool:
        return self.lifted_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class IncidentRecord:
    id: str
    rule: str
    severity: Severity
    scope: Scope
    subject: str
    tenant: str  # "" for a language or server incident
    summary: str
    details: Mapping[str, str]
    count: int
    opened_at: float
    resolved_at: float | None
    resolved_by: str
    mitigations: tuple[MitigationRecord, ...] = field(default=())
    exercise: bool = False  # opened by exercise traffic: no mitigation, alerted to the log only

    @property
    def open(self) -> bool:
        return self.resolved_at is None


EMPTY_DETAILS: Mapping[str, str] = MappingProxyType({})


class IncidentStore(Protocol):
    """Incidents and mitigations. Thread-safe; ``now`` is epoch seconds (None: the current time)."""

    def open_or_bump(
        self,
        rule: str,
        severity: Severity,
        scope: Scope,
        subject: str,
        tenant: str,
        summary: str,
        details: Mapping[str, str],
        mitigation: MitigationSpec | None,
        now: float | None = None,
        increment: int = 1,
        exercise: bool = False,
    ) -> tuple[IncidentRecord, bool]:
        """Open an incident (with its mitigation, in one transaction) unless one is open for (rule, scope,
        subject, exercise): then bump that one's count and return it. The bool is True when a new one was opened.

        ``increment`` (>= 1) is how many matching events this call stands for: a new incident starts with that
        count, an open one is bumped by it (a caller that coalesces events makes one call for many).

        A bump re-arms the mitigation when the open incident has none active and none was ever lifted by hand
        (its earlier ones expired): the subject is still misbehaving. A mitigation lifted by an operator is
        never re-armed while its incident stays open.

        ``exercise``: the events are exercise traffic; its incidents are apart from the ordinary ones (an open
        exercise incident is never bumped by ordinary events, nor the reverse) and never mitigated.

        Raises:
            ValueError: an unknown severity or scope, an empty subject, a mitigation for the "server" scope or
                for an exercise, a throttle without a positive rate, ``increment`` < 1.
        """
        ...

    def get(self, incident_id: str) -> IncidentRecord | None: ...

    def list(
        self, open_only: bool = False, tenant: str | None = None, limit: int = 50
    ) -> builtins.list[IncidentRecord]:
        """Newest first, with their mitigations."""
        ...

    def resolve(self, incident_id: str, actor: str, note: str = "", now: float | None = None) -> IncidentRecord | None:
        """Resolve the incident and lift its active mitigations (idempotent: a resolved one is returned as is).
        None for an unknown id."""
        ...

    def mitigations(
        self, include_lifted: bool = False, now: float | None = None
    ) -> builtins.list[MitigationRecord]:
        """Active mitigations (or every one with ``include_lifted``), newest first."""
        ...

    def lift(self, mitigation_id: str, actor: str, now: float | None = None) -> MitigationRecord | None:
        """Lift one mitigation (idempotent). None for an unknown id."""
        ...

    def close(self) -> None: ...
