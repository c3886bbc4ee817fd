"""The Admin service's session calls: every tenant's sessions (live, and recently closed from the session
records), one session with its lifecycle events, and closing one. Admin principals only; the same
fail-closed check and error conventions as the other operational calls (operations_servicer.py)."""

from __future__ import annotations

import asyncio

import grpc

from sandbox_client._proto.sandbox.v1 import admin_pb2 as pb
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_server.admin.operations import Operations
from sandbox_server.admin.servicer import _require_admin
from sandbox_server.errors import BackendUnavailable, FieldViolation, InvalidRequest, NotFound
from sandbox_server.sessions.manager import ADMIN, LiveSession, SessionManager
from sandbox_server.sessions.pages import timestamp
from sandbox_server.sessions.servicer import finish_closed, session_to_proto
from sandbox_server.stores.sessions import SessionEvent, SessionRecord
from sandbox_server.validation.request import admin_name

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class AdminSessionsServicer:
    def __init__(self, ops: Operations | None) -> None:
        self.ops = ops

    def _sessions(self) -> SessionManager:
        _require_admin()
        if self.ops is None or self.ops.sessions is None:
            raise BackendUnavailable("this server has no sessions", retry_after_s=60)
        return self.ops.sessions

    async def _live(self, session: LiveSession) -> pb.AdminSession:
        return pb.AdminSession(tenant=session.tenant, key_id=session.key_id,
                               session=await session_to_proto(self._sessions(), session))

    async def ListSessions(self, request: pb.AdminListSessionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.AdminListSessionsResponse:
        sessions = self._sessions()
        if request.limit < 0 or request.limit > MAX_LIMIT:
            raise InvalidRequest([FieldViolation("limit", f"0 (for {DEFAULT_LIMIT}) to {MAX_LIMIT}")])
        if problems := admin_name("tenant", request.tenant):
            raise InvalidRequest(problems)
        limit = request.limit or DEFAULT_LIMIT
        live = sessions.live(request.tenant or None, closing=True)
        out = [await self._live(s) for s in live[:limit]]
        if request.include_closed and len(out) < limit:
            records = await asyncio.to_thread(sessions.store.list, request.tenant or None, False, limit * 2)
            shown = {s.id for s in live}
            out += [_closed(r) for r in records if r.closed_at is not None and r.session_id not in shown]
        return pb.AdminListSessionsResponse(sessions=out[:limit])

    async def GetSession(self, request: pb.AdminGetSessionRequest,
                         context: grpc.aio.ServicerContext) -> pb.AdminSession:
        sessions = self._sessions()
        session_id = _id(request.session_id)
        events = await asyncio.to_thread(sessions.store.events, session_id)
        live = sessions.find(session_id)
        if live is not None:  # alive, or closing (its record is written once the close is done)
            out = await self._live(live)
        else:
            record = await asyncio.to_thread(sessions.store.get, session_id)
            if record is None:
                raise NotFound(f"no session {session_id!r}", resource_type="session", resource_name=session_id)
            out = _closed(record)
        out.events.extend(_event(e) for e in events)
        return out

    async def CloseSession(self, request: pb.AdminCloseSessionRequest,
                           context: grpc.aio.ServicerContext) -> pb.AdminSession:
        sessions = self._sessions()
        session_id = _id(request.session_id)
        live = sessions.find(session_id)
        if live is None or live.closed:
            raise NotFound(f"no live session {session_id!r}", resource_type="session", resource_name=session_id)
        out = await self._live(live)
        await sessions.close(live, ADMIN)
        finish_closed(out.session, live)
        return out


def _id(value: str) -> str:
    if problems := admin_name("session_id", value, required=True):
        raise InvalidRequest(problems)
    return value


def _closed(record: SessionRecord) -> pb.AdminSession:
    limits = sandbox_pb2.Limits(**{k: int(v) for k, v in record.limits.items()})
    session = sandbox_pb2.Session(
        id=record.session_id, state=sandbox_pb2.SESSION_STATE_CLOSED, created_at=timestamp(record.created_at),
        limits=limits, languages=record.languages, labels=dict(record.labels),
        idle_timeout_s=record.idle_timeout_s, max_lifetime_s=record.max_lifetime_s, cpu_total_ms=record.cpu_total_ms,
        usage=sandbox_pb2.SessionUsage(calls=record.calls, cpu_time_s=record.cpu_time_s, cost=record.cost,
                                       kernel_restarts=record.kernel_restarts,
                                       peak_memory_bytes=record.peak_memory_bytes),
        close_reason=record.close_reason, backend=record.backend, snapshot_id=record.snapshot_id)
    session.last_used_at.CopyFrom(timestamp(record.last_used_at if record.last_used_at is not None
                                            else record.created_at))
    if record.closed_at is not None:
        session.closed_at.CopyFrom(timestamp(record.closed_at))
    return pb.AdminSession(tenant=record.tenant, key_id=record.key_id, session=session)


def _event(event: SessionEvent) -> pb.SessionEvent:
    return pb.SessionEvent(event=event.event, at=timestamp(event.at),
                           detail={k: str(v) for k, v in event.detail.items()})
