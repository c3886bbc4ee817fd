"""The Admin service's operational calls: incidents, costs, executions (live and audited), quarantines.

Every method needs an admin principal (the same fail-closed check as the policy and key calls). What they act
on comes in one ``Operations`` input; without it (a server built for policies and keys alone) every one of
these calls answers UNAVAILABLE. Blocking store reads run in worker threads, never on the event loop.

Errors: a malformed request (a limit out of range, a missing id, an unknown outcome, ``since`` not before
``until``) is INVALID_ARGUMENT with a field violation per problem and changes nothing; an id the server does not
know (or an execution that is not running, for a kill) is NOT_FOUND with ResourceInfo.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial

import grpc
from google.protobuf import timestamp_pb2

from sandbox_client._proto.sandbox.v1 import admin_pb2 as pb
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_server.admin.operations import Operations
from sandbox_server.admin.servicer import _require_admin
from sandbox_server.context import Principal
from sandbox_server.errors import BackendUnavailable, FieldViolation, InvalidRequest, NotFound
from sandbox_server.execution.servicer import RunningExecution
from sandbox_server.stores.base import ANY_ERROR, AuditRecord
from sandbox_server.stores.costs import CostRow, GroupBy
from sandbox_server.stores.incidents import IncidentRecord, MitigationRecord, Severity
from sandbox_server.validation.request import admin_name

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
MAX_NOTE_CHARS = 1000
"""A resolution note is kept in the incident's details; the store keeps detail values this long at most."""
RUNNING = "RUNNING"
"""The outcome of an execution that holds a sandbox now."""
MAX_OUTCOMES = 32
"""Outcomes one ListExecutions may filter by (there are fewer distinct ones than this)."""
# The outcomes an audit record can have (interceptors/audit.py writes them), plus RUNNING for a live execution and
# ANY_ERROR for every "ERROR:<code>".
_OUTCOMES = frozenset({
    *(name.removeprefix("STATUS_") for name, n in sandbox_pb2.Status.items() if n != sandbox_pb2.STATUS_UNSPECIFIED),
    "CANCELLED", ANY_ERROR, RUNNING,
    *(f"{ANY_ERROR}:{code.name}" for code in grpc.StatusCode if code is not grpc.StatusCode.OK),
})
UNAVAILABLE_RETRY_S = 60.0

_SEVERITIES: Mapping[Severity, pb.Severity] = {
    "low": pb.SEVERITY_LOW,
    "medium": pb.SEVERITY_MEDIUM,
    "high": pb.SEVERITY_HIGH,
    "critical": pb.SEVERITY_CRITICAL,
}
_GROUP_BY: Mapping[pb.CostGroupBy, GroupBy] = {
    pb.COST_GROUP_BY_UNSPECIFIED: "tenant",
    pb.COST_GROUP_BY_TENANT: "tenant",
    pb.COST_GROUP_BY_SESSION: "session",
    pb.COST_GROUP_BY_DAY: "day",
}
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_TIMESTAMP_S = -62_135_596_800
_MAX_TIMESTAMP_S = 253_402_300_799


class OperationsServicer:
    """ListIncidents, GetIncident, ResolveIncident, CostReport, ListExecutions, GetExecution, KillExecution,
    ListQuarantines and LiftQuarantine (``admin.proto`` holds their contracts). ``ops`` None: each answers
    UNAVAILABLE."""

    def __init__(self, ops: Operations | None) -> None:
        self.ops = ops

    def _ops(self) -> tuple[Principal, Operations]:
        """The calling admin and what the calls act on. The caller is checked first: a non-admin learns nothing
        about the server, not even that these calls are unavailable."""
        who = _require_admin()
        if self.ops is None:
            raise BackendUnavailable(
                "incidents, costs and executions are not configured on this server", retry_after_s=UNAVAILABLE_RETRY_S
            )
        return who, self.ops

    # -- incidents ----------------------------------------------------------------------------------------------

    async def ListIncidents(
        self, request: pb.ListIncidentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIncidentsResponse:
        _, ops = self._ops()
        limit = _limit(request.limit, admin_name("tenant", request.tenant))
        found = await ops.incidents.list(request.open_only, request.tenant or None, limit)
        return pb.ListIncidentsResponse(incidents=[_incident(i) for i in found])

    async def GetIncident(self, request: pb.GetIncidentRequest, context: grpc.aio.ServicerContext) -> pb.Incident:
        _, ops = self._ops()
        _check(admin_name("id", request.id, required=True))
        found = await ops.incidents.get(request.id)
        if found is None:
            raise _not_found("incident", request.id)
        return _incident(found)

    async def ResolveIncident(
        self, request: pb.ResolveIncidentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Incident:
        who, ops = self._ops()
        problems = admin_name("id", request.id, required=True)
        if len(request.note) > MAX_NOTE_CHARS:
            problems.append(FieldViolation("note", f"longer than {MAX_NOTE_CHARS} characters"))
        elif "\x00" in request.note:  # a database's text refuses it: bad input, never a failed write
            problems.append(FieldViolation("note", "contains a NUL character"))
        _check(problems)
        found = await ops.incidents.resolve(request.id, who.actor, request.note)
        if found is None:
            raise _not_found("incident", request.id)
        log.info("incident %s (%s, %s) resolved by %s", found.id, found.rule, found.subject, who.actor)
        return _incident(found)

    # -- costs --------------------------------------------------------------------------------------------------

    async def CostReport(
        self, request: pb.CostReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.CostReportResponse:
        _, ops = self._ops()
        problems = admin_name("tenant", request.tenant)
        group_by = _GROUP_BY.get(request.group_by)
        if group_by is None:
            problems.append(FieldViolation("group_by", f"unknown grouping {request.group_by}"))
        since, until = _time_range(request, problems)
        if problems or group_by is None:
            raise InvalidRequest(problems)
        rows = await asyncio.to_thread(ops.costs.report, group_by, request.tenant or None, since, until)
        return pb.CostReportResponse(rows=[_cost_row(r) for r in rows], total=sum(r.total for r in rows))

    # -- executions ---------------------------------------------------------------------------------------------

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        """The running executions and the audit trail's that pass every filter of the request, merged newest
        first (by start), ``limit`` in all. The audit store filters in SQL, so ``limit`` counts matches only."""
        _, ops = self._ops()
        problems = [*admin_name("tenant", request.tenant), *admin_name("session_id", request.session_id)]
        outcomes = _outcomes(request.outcomes, problems)
        since, until = _time_range(request, problems)
        limit = _limit(request.limit, problems)
        now = time.time()
        live = [
            _live_execution(r, now)
            for r in ops.executions.running.values()
            if (not request.tenant or r.tenant == request.tenant)
            and (not request.session_id or r.spec.session_id == request.session_id)
            and (not outcomes or RUNNING in outcomes)
            and (since is None or r.started_at >= since)
            and (until is None or r.started_at < until)
        ]
        audited: list[pb.Execution] = []
        finished_outcomes = outcomes - {RUNNING}  # no audit record is RUNNING
        if not request.running_only and (not outcomes or finished_outcomes):
            records = await asyncio.to_thread(
                partial(ops.audit.list, request.tenant or None, limit, request.session_id or None,
                        outcomes=finished_outcomes, since=since, until=until)
            )
            audited = [_audited_execution(r) for r in records]
        # An execution that ended while we read the trail may show up in both: its audit record is the final word.
        finished = {e.execution_id for e in audited}
        merged = [e for e in live if e.execution_id not in finished] + audited
        merged.sort(key=lambda e: (e.started_at.seconds, e.started_at.nanos), reverse=True)
        return pb.ListExecutionsResponse(executions=merged[:limit])

    async def GetExecution(self, request: pb.GetExecutionRequest, context: grpc.aio.ServicerContext) -> pb.Execution:
        """The live state while it runs (outcome RUNNING, no ``ended_at``), else its audit record."""
        _, ops = self._ops()
        _check(admin_name("execution_id", request.execution_id, required=True))
        running = ops.executions.running.get(request.execution_id)
        if running is not None:
            return _live_execution(running, time.time())
        record = await asyncio.to_thread(ops.audit.get, request.execution_id)
        if record is None:
            raise _not_found("execution", request.execution_id)
        return _audited_execution(record)

    async def KillExecution(
        self, request: pb.KillExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.KillExecutionResponse:
        who, ops = self._ops()
        _check(admin_name("execution_id", request.execution_id, required=True))
        if not ops.executions.kill(request.execution_id):
            raise NotFound(
                f"no running execution {request.execution_id!r} on this server (unknown, or it has ended)",
                resource_type="execution", resource_name=request.execution_id,
            )
        log.info("execution %s killed by %s", request.execution_id, who.actor)
        return pb.KillExecutionResponse(killed=True)

    # -- quarantines --------------------------------------------------------------------------------------------

    async def ListQuarantines(
        self, request: pb.ListQuarantinesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQuarantinesResponse:
        _, ops = self._ops()
        found = await ops.incidents.mitigations(request.include_lifted)
        return pb.ListQuarantinesResponse(mitigations=[_mitigation(m) for m in found])

    async def LiftQuarantine(
        self, request: pb.LiftQuarantineRequest, context: grpc.aio.ServicerContext
    ) -> pb.Mitigation:
        who, ops = self._ops()
        _check(admin_name("id", request.id, required=True))
        found = await ops.incidents.lift(request.id, who.actor)
        if found is None:
            raise _not_found("mitigation", request.id)
        log.info("mitigation %s (%s %s %s) lifted by %s", found.id, found.action, found.scope, found.subject,
                 who.actor)
        return _mitigation(found)


# -- validation -------------------------------------------------------------------------------------------------


def _check(problems: Sequence[FieldViolation]) -> None:
    if problems:
        raise InvalidRequest(list(problems))


def _limit(requested: int, problems: list[FieldViolation]) -> int:
    """The list size to use (0: the default); raises InvalidRequest with ``problems`` and any of its own."""
    limit = requested or DEFAULT_LIST_LIMIT
    if not 0 < limit <= MAX_LIST_LIMIT:
        problems.append(
            FieldViolation("limit", f"must be between 1 and {MAX_LIST_LIMIT} (0: {DEFAULT_LIST_LIMIT})")
        )
    _check(problems)
    return limit


def _outcomes(requested: Sequence[str], problems: list[FieldViolation]) -> frozenset[str]:
    """The outcomes to filter by (empty: any); each unknown one adds a violation naming its index."""
    if len(requested) > MAX_OUTCOMES:
        problems.append(FieldViolation("outcomes", f"at most {MAX_OUTCOMES} values"))
        return frozenset()
    for i, outcome in enumerate(requested):
        if outcome not in _OUTCOMES:
            problems.append(FieldViolation(
                f"outcomes[{i}]",
                f"unknown outcome {outcome[:40]!r}: a status (OK, TIMEOUT, ...), RUNNING, CANCELLED, "
                f"{ANY_ERROR}:<grpc code> (e.g. {ANY_ERROR}:INTERNAL), or {ANY_ERROR} for any of those",
            ))
    return frozenset(requested)


def _time_range(request: pb.CostReportRequest | pb.ListExecutionsRequest,
                problems: list[FieldViolation]) -> tuple[float | None, float | None]:
    """The request's ``since`` and ``until`` (epoch seconds, None when unset); a violation for each bad one, and
    for ``since`` not before ``until``."""
    since = _epoch("since", request.since, problems) if request.HasField("since") else None
    until = _epoch("until", request.until, problems) if request.HasField("until") else None
    if since is not None and until is not None and not since < until:
        problems.append(FieldViolation("since", "must be before until"))
    return since, until


def _epoch(field: str, stamp: timestamp_pb2.Timestamp, problems: list[FieldViolation]) -> float | None:
    """Epoch seconds of a set Timestamp; an out-of-range one adds a violation and gives None."""
    if not (_MIN_TIMESTAMP_S <= stamp.seconds <= _MAX_TIMESTAMP_S and 0 <= stamp.nanos < 1_000_000_000):
        problems.append(FieldViolation(field, "not a valid timestamp"))
        return None
    return stamp.seconds + stamp.nanos / 1e9


def _not_found(kind: str, name: str) -> NotFound:
    return NotFound(f"no {kind} {name!r}", resource_type=kind, resource_name=name)


# -- conversions ------------------------------------------------------------------------------------------------


def _timestamp(epoch_s: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(epoch_s * 1e9))
    return stamp


def _mitigation(record: MitigationRecord) -> pb.Mitigation:
    out = pb.Mitigation(
        id=record.id,
        incident_id=record.incident_id,
        action=record.action,
        scope=record.scope,
        subject=record.subject,
        created_at=_timestamp(record.created_at),
        lifted_by=record.lifted_by,
        throttle_per_minute=record.throttle_per_minute,
    )
    if record.expires_at is not None:
        out.expires_at.CopyFrom(_timestamp(record.expires_at))
    if record.lifted_at is not None:
        out.lifted_at.CopyFrom(_timestamp(record.lifted_at))
    return out


def _incident(record: IncidentRecord) -> pb.Incident:
    out = pb.Incident(
        id=record.id,
        rule=record.rule,
        severity=_SEVERITIES.get(record.severity, pb.SEVERITY_UNSPECIFIED),
        scope=record.scope,
        subject=record.subject,
        summary=record.summary,
        details=dict(record.details),
        count=record.count,
        opened_at=_timestamp(record.opened_at),
        resolved_by=record.resolved_by,
        mitigations=[_mitigation(m) for m in record.mitigations],
        exercise=record.exercise,
    )
    if record.resolved_at is not None:
        out.resolved_at.CopyFrom(_timestamp(record.resolved_at))
    return out


def _cost_row(row: CostRow) -> pb.CostRow:
    return pb.CostRow(
        key=row.key,
        execution_cost=row.execution_cost,
        usage_cost=row.usage_cost,
        total=row.total,
        executions=row.executions,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
    )


def _live_execution(running: RunningExecution, now: float) -> pb.Execution:
    """A running execution: outcome RUNNING, ``wall_time_s`` the time it has held its sandbox so far."""
    spec = running.spec
    return pb.Execution(
        execution_id=spec.execution_id,
        tenant=running.tenant,
        key_id=running.key_id,
        session_id=spec.session_id,
        language=spec.runtime.language,
        code_sha256=hashlib.sha256(spec.code).hexdigest(),
        limits=spec.limits.as_dict(),
        outcome=RUNNING,
        wall_time_s=max(0.0, now - running.started_at),
        trace_id=running.trace_id,
        started_at=_timestamp(running.started_at),
        exercise=spec.exercise,
    )


def _audited_execution(record: AuditRecord) -> pb.Execution:
    return pb.Execution(
        execution_id=record.execution_id,
        tenant=record.tenant,
        key_id=record.key_id,
        session_id=record.session_id,
        language=record.language,
        code_sha256=record.code_sha256,
        limits=dict(record.limits),
        outcome=record.outcome,
        exit_code=record.exit_code,
        wall_time_s=record.wall_time_s,
        cpu_time_s=record.cpu_time_s,
        peak_memory_bytes=record.peak_memory_bytes,
        cost=record.cost,
        trace_id=record.trace_id,
        started_at=_timestamp(record.started_at),
        ended_at=_timestamp(record.ended_at),
        exercise=record.exercise,
    )
