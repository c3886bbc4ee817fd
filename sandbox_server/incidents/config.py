"""Operator settings for incident response: the rules, what each severity does, where alerts go.

Every model is frozen and rejects unknown keys. Units are in the field names. ``IncidentSettings`` is
self-contained, so the server's settings embed it as one field (``incidents``).

What each rule watches, and the scope of the incidents it opens (fixed by the rule):

- ``escape_attempts`` (tenant): executions refused by static validation or guardrails for an escape-like rule.
- ``repeated_timeouts`` (session, "tenant/session"): executions that ended TIMEOUT or CPU_LIMIT (agents stuck in
  an infinite loop). Executions without a session id share the session "tenant/" of their tenant.
- ``teardown_failure`` (language): a sandbox that could not be torn down; the host may be left unclean.
- ``error_rate`` (server): the share of Execute calls that ended with a server-side error.
- ``budget_exceeded`` (tenant, or session for a session budget): a budget refused an execution.
- ``session_loop`` (session): the same failing call repeated in a row in one session (the number is the tenant
  policy's ``sessions.loop_detection.repeats``): an agent stuck in a loop.
- ``egress_refusals`` (session): connections the egress proxy refused to one session's sandboxes (the number is
  the tenant policy's ``network.refusals_before_incident``): an exfiltration signal.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox_server.stores.incidents import Severity

MINUTE_S = 60.0

DEFAULT_ESCAPE_RULES: tuple[str, ...] = (
    "denied_import",
    "denied_call",
    "dunder_escape",
    "denied_module",
    "dynamic_require",
    "denied_command",
    "denied_file_names",
)
"""Static-validation and guardrail rule names whose refusal looks like an attempt to break out of the sandbox."""
DEFAULT_TIMEOUT_STATUSES: tuple[str, ...] = ("TIMEOUT", "CPU_LIMIT")
DEFAULT_THROTTLE_PER_MINUTE = 6.0
DEFAULT_THROTTLE_DURATION_S = 15 * MINUTE_S
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
DEFAULT_WEBHOOK_RETRIES = 3
DEFAULT_REFRESH_INTERVAL_S = 5.0
DEFAULT_MAX_TRACKED_KEYS = 10_000
DEFAULT_MAX_PENDING_EVENTS = 10_000
DEFAULT_MAX_PENDING_ALERTS = 1_000

MitigationAction = Literal["alert", "throttle", "quarantine"]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SeverityResponse(_Model):
    """What an incident of one severity does to its subject besides alerting.

    ``quarantine`` refuses every execution of the subject; for a language subject it disables the language.
    ``throttle`` caps the subject's executions at ``throttle_per_minute``. A server-wide incident only alerts.
    """

    action: MitigationAction
    throttle_per_minute: float = Field(default=DEFAULT_THROTTLE_PER_MINUTE, gt=0)
    duration_s: float | None = Field(default=None, gt=0, description="how long it lasts; None: until lifted")


class SeverityTable(_Model):
    """The response to each severity."""

    low: SeverityResponse = SeverityResponse(action="alert")
    medium: SeverityResponse = SeverityResponse(
        action="throttle", throttle_per_minute=DEFAULT_THROTTLE_PER_MINUTE, duration_s=DEFAULT_THROTTLE_DURATION_S
    )
    high: SeverityResponse = SeverityResponse(action="quarantine")
    critical: SeverityResponse = SeverityResponse(action="quarantine")

    def of(self, severity: Severity) -> SeverityResponse:
        table: dict[Severity, SeverityResponse] = {
            "low": self.low, "medium": self.medium, "high": self.high, "critical": self.critical,
        }
        return table[severity]


class EscapeAttemptsRule(_Model):
    """``threshold`` escape-like refusals of one tenant within ``window_s`` open an incident for the tenant."""

    enabled: bool = True
    threshold: int = Field(default=3, ge=1)
    window_s: float = Field(default=10 * MINUTE_S, gt=0)
    severity: Severity = "high"
    rules: tuple[Name, ...] = Field(default=DEFAULT_ESCAPE_RULES, min_length=1)


class RepeatedTimeoutsRule(_Model):
    """``threshold`` executions of one session ending in one of ``statuses`` within ``window_s``."""

    enabled: bool = True
    threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=10 * MINUTE_S, gt=0)
    severity: Severity = "medium"
    statuses: tuple[Name, ...] = Field(default=DEFAULT_TIMEOUT_STATUSES, min_length=1)


class TeardownFailureRule(_Model):
    """Any sandbox that could not be torn down opens an incident for its language."""

    enabled: bool = True
    severity: Severity = "critical"


class ErrorRateRule(_Model):
    """More than ``max_failure_ratio`` of the Execute calls within ``window_s`` ended with a server-side error,
    out of at least ``min_calls`` calls. Server-wide: it alerts, there is nothing to quarantine."""

    enabled: bool = True
    max_failure_ratio: float = Field(default=0.05, ge=0, lt=1)
    window_s: float = Field(default=5 * MINUTE_S, gt=0)
    min_calls: int = Field(default=20, ge=1)
    severity: Severity = "high"


class BudgetExceededRule(_Model):
    """A budget refused one of the tenant's executions (the "session" budget: one of the session's)."""

    enabled: bool = True
    severity: Severity = "medium"


class SessionLoopRule(_Model):
    """A session repeated the same failing call (same code, same error) as many times in a row as its tenant's
    ``sessions.loop_detection.repeats``: an agent in a loop. Low by default: an alert; the caller is warned in
    the result."""

    enabled: bool = True
    severity: Severity = "low"


class EgressRefusalsRule(_Model):
    """A session's sandboxes had as many connections refused by the egress proxy within ``window_s`` as its
    tenant's ``network.refusals_before_incident``: code probing for a way out (an exfiltration signal). One-shot
    executions without a session id share the session "tenant/" of their tenant."""

    enabled: bool = True
    window_s: float = Field(default=10 * MINUTE_S, gt=0)
    severity: Severity = "high"


class IncidentRules(_Model):
    escape_attempts: EscapeAttemptsRule = EscapeAttemptsRule()
    repeated_timeouts: RepeatedTimeoutsRule = RepeatedTimeoutsRule()
    teardown_failure: TeardownFailureRule = TeardownFailureRule()
    error_rate: ErrorRateRule = ErrorRateRule()
    budget_exceeded: BudgetExceededRule = BudgetExceededRule()
    session_loop: SessionLoopRule = SessionLoopRule()
    egress_refusals: EgressRefusalsRule = EgressRefusalsRule()


class IncidentSettings(_Model):
    """Incident response as a whole.

    With ``enabled`` false no rule opens an incident and nothing is alerted; mitigations already recorded (by
    an earlier run or another replica) are still enforced until an operator lifts them, so turning the feature
    off never silently releases a quarantine.
    """

    enabled: bool = True
    rules: IncidentRules = IncidentRules()
    severities: SeverityTable = SeverityTable()
    webhook_url: str | None = Field(default=None, description="http(s) URL that receives every alert as JSON")
    webhook_timeout_s: float = Field(default=DEFAULT_WEBHOOK_TIMEOUT_S, gt=0, le=60)
    webhook_retries: int = Field(default=DEFAULT_WEBHOOK_RETRIES, ge=0, le=10)
    refresh_interval_s: float = Field(
        default=DEFAULT_REFRESH_INTERVAL_S, gt=0, description="how often mitigations are re-read from the store"
    )
    max_tracked_keys: int = Field(
        default=DEFAULT_MAX_TRACKED_KEYS, ge=1, description="per rule: sessions or tenants whose events are counted"
    )
    max_pending_events: int = Field(default=DEFAULT_MAX_PENDING_EVENTS, ge=1)
    max_pending_alerts: int = Field(default=DEFAULT_MAX_PENDING_ALERTS, ge=1)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("webhook_url must not contain whitespace or control characters")
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a malformed port
        except ValueError as exc:
            raise ValueError(f"webhook_url is not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"webhook_url must be http or https, not {parts.scheme or 'schemeless'!r}")
        if not parts.hostname:
            raise ValueError("webhook_url needs a host")
        return value
