"""Feeds what the chain observes into incident response and the metrics that go with it.

``IncidentFeed`` is a call observer (telemetry link: refused requests, server failures, teardown failures), the
backend's ``on_teardown_failure`` (teardowns that fail after the reply), the egress gateway's refusal observer,
and an execution observer (audit link: how each accepted execution ended); ``IncidentMetrics`` is an alert
sink that counts opened incidents for ``sandbox_incidents_total``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import grpc

from sandbox_server.context import CallRecord, call_record
from sandbox_server.errors import InvalidRequest, SandboxFailure
from sandbox_server.interceptors.telemetry import SERVER_FAULTS
from sandbox_server.stores.base import AuditRecord
from sandbox_server.stores.incidents import IncidentRecord
from sandbox_server.telemetry import Metrics

if TYPE_CHECKING:
    from sandbox_server.egress.gateway import EgressContext
    from sandbox_server.egress.proxy import Refusal
    from sandbox_server.execution.spec import EgressSpec


class IncidentEvents(Protocol):
    """``exercise``: the event comes from exercise traffic (counted apart, never mitigated; see incidents)."""

    def on_execution(self, *, tenant: str, session_id: str, language: str, status: str,
                     exercise: bool = False) -> None: ...
    def on_violation(self, *, tenant: str, session_id: str, language: str, rules: list[str],
                     exercise: bool = False) -> None: ...
    def on_call(self, *, failed: bool) -> None: ...
    def on_teardown_failure(self, *, tenant: str, session_id: str, language: str, detail: str) -> None: ...
    def on_egress_refusal(self, *, tenant: str, session_id: str, host: str, port: int, reason: str,
                          threshold: int, exercise: bool = False) -> None: ...


class IncidentFeed:
    def __init__(self, incidents: IncidentEvents, metrics: Metrics) -> None:
        self.incidents = incidents
        self.metrics = metrics

    def on_call_end(self, call: CallRecord, code: grpc.StatusCode) -> None:
        self.incidents.on_call(failed=code in SERVER_FAULTS)  # a server fault is real, exercise or not
        error = call.error
        if isinstance(error, InvalidRequest):
            rules = sorted({v.reason for v in error.violations if v.reason})
            if rules:
                self.incidents.on_violation(tenant=call.tenant, session_id=call.session_id,
                                            language=call.language, rules=rules, exercise=call.exercise)
        elif isinstance(error, SandboxFailure) and error.metadata.get("phase") == "teardown":
            self._teardown_failed(call, error)

    def on_teardown_failure(self, error: SandboxFailure) -> None:
        """A teardown that failed after its execution's reply went out (Backend.on_teardown_failure), told in
        that execution's context."""
        call = call_record()
        if call is not None:
            self._teardown_failed(call, error)
        else:
            self.metrics.teardown_failures.add(1, {"backend": error.metadata.get("backend", "")})
            self.incidents.on_teardown_failure(tenant="", session_id="", language="", detail=error.message)

    def _teardown_failed(self, call: CallRecord, error: SandboxFailure) -> None:
        self.metrics.teardown_failures.add(1, {"backend": error.metadata.get("backend", "")})
        self.incidents.on_teardown_failure(tenant=call.tenant, session_id=call.session_id,
                                           language=call.language, detail=error.message)

    def on_egress_refusal(self, context: EgressContext, egress: EgressSpec, refusal: Refusal) -> None:
        """The egress proxy refused one of a sandbox's connections (EgressGateway's observer)."""
        self.metrics.egress_refusals.add(1, {"tenant": context.tenant, "reason": refusal.reason})
        self.incidents.on_egress_refusal(
            tenant=context.tenant, session_id=context.session_id, host=refusal.host, port=refusal.port,
            reason=refusal.reason, threshold=egress.refusals_before_incident, exercise=context.exercise)

    def on_execution(self, rec: AuditRecord) -> None:
        self.incidents.on_execution(tenant=rec.tenant, session_id=rec.session_id, language=rec.language,
                                    status=rec.outcome, exercise=rec.exercise)


class IncidentMetrics:
    """An alert sink: counts each opened incident by rule and severity."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def send(self, incident: IncidentRecord, event: str) -> None:
        if event == "opened":
            self.metrics.incidents.add(1, {"rule": incident.rule, "severity": incident.severity})
