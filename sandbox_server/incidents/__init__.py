"""Incident response: rules over server events, severities, mitigations (throttle, quarantine, disable a
language) and alert sinks. ``IncidentManager`` is the one object the rest of the server talks to."""

from __future__ import annotations

from sandbox_server.incidents.config import (
    BudgetExceededRule,
    ErrorRateRule,
    EscapeAttemptsRule,
    IncidentRules,
    IncidentSettings,
    RepeatedTimeoutsRule,
    SeverityResponse,
    SeverityTable,
    TeardownFailureRule,
)
from sandbox_server.incidents.manager import ALLOW, IncidentManager, Verdict
from sandbox_server.incidents.sinks import AlertEvent, AlertSink, LogSink, WebhookSink, alert_json, build_sinks

__all__ = [
    "ALLOW",
    "AlertEvent",
    "AlertSink",
    "BudgetExceededRule",
    "ErrorRateRule",
    "EscapeAttemptsRule",
    "IncidentManager",
    "IncidentRules",
    "IncidentSettings",
    "LogSink",
    "RepeatedTimeoutsRule",
    "SeverityResponse",
    "SeverityTable",
    "TeardownFailureRule",
    "Verdict",
    "WebhookSink",
    "alert_json",
    "build_sinks",
]
