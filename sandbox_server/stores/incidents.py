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
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, cast, get_args

from sandbox_server.stores.base import json_column

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


# ---- what every implementation shares ------------------------------------------------------------------------
INCIDENT_ID_PREFIX = "inc_"
MITIGATION_ID_PREFIX = "mit_"
ID_HEX_BYTES = 6
"""Ids are a prefix and 12 hex digits: 2**48 values, drawn again on the (rare) collision."""
RESOLVE_NOTE_KEY = "resolve_note"
MAX_ID_DRAWS = 8

SCOPES: frozenset[str] = frozenset(get_args(Scope))
ACTIONS: frozenset[str] = frozenset(get_args(Action))

INCIDENT_COLUMNS = (
    "id, rule, severity, scope, subject, tenant, summary, details, count, opened_at, resolved_at, resolved_by,"
    " exercise"
)
MITIGATION_COLUMNS = (
    "id, incident_id, action, scope, subject, created_at, expires_at, lifted_at, lifted_by, throttle_per_minute"
)


def check_incident(
    rule: str,
    severity: str,
    scope: str,
    subject: str,
    details: Mapping[str, str],
    mitigation: MitigationSpec | None,
    increment: int,
    exercise: bool,
) -> None:
    if not rule:
        raise ValueError("rule must not be empty")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(sorted(SCOPES))}, not {scope!r}")
    if not subject:
        raise ValueError("subject must not be empty")
    if increment < 1:
        raise ValueError(f"increment must be >= 1, got {increment}")
    for key, value in details.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"details map strings to strings, got {key!r}: {value!r}")
    if mitigation is not None:
        if exercise:
            raise ValueError("an exercise incident has no mitigation")
        if mitigation.scope == "server" or mitigation.scope not in SCOPES:
            raise ValueError(f"a mitigation applies to a session, tenant or language, not {mitigation.scope!r}")
        if mitigation.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(sorted(ACTIONS))}, not {mitigation.action!r}")
        if not mitigation.subject:
            raise ValueError("a mitigation's subject must not be empty")
        if mitigation.action == "throttle" and not mitigation.throttle_per_minute > 0:
            raise ValueError(f"a throttle needs a positive rate, got {mitigation.throttle_per_minute}")


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(ID_HEX_BYTES)


def incident_record(row: tuple[Any, ...], mitigations: tuple[MitigationRecord, ...]) -> IncidentRecord:
    (incident_id, rule, severity, scope, subject, tenant, summary, details, count, opened_at, resolved_at,
     resolved_by, exercise) = row
    return IncidentRecord(
        id=str(incident_id),
        rule=str(rule),
        severity=cast(Severity, severity),
        scope=cast(Scope, scope),
        subject=str(subject),
        tenant=str(tenant),
        summary=str(summary),
        details=MappingProxyType({str(k): str(v) for k, v in json_column(details).items()}),
        count=int(count),
        opened_at=float(opened_at),
        resolved_at=None if resolved_at is None else float(resolved_at),
        resolved_by=str(resolved_by),
        mitigations=mitigations,
        exercise=bool(exercise),
    )


def mitigation_record(row: tuple[Any, ...]) -> MitigationRecord:
    (mitigation_id, incident_id, action, scope, subject, created_at, expires_at, lifted_at, lifted_by,
     throttle_per_minute) = row
    return MitigationRecord(
        id=str(mitigation_id),
        incident_id=str(incident_id),
        action=cast(Action, action),
        scope=cast(Scope, scope),
        subject=str(subject),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        lifted_at=None if lifted_at is None else float(lifted_at),
        lifted_by=str(lifted_by),
        throttle_per_minute=float(throttle_per_minute),
    )

