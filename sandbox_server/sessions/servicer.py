"""The Sandbox service's session methods: sessions, their workspace files, snapshots. Requests are checked
(sessions/requests.py), the caller's tenant policy applied, and the work is the SessionManager's; nothing
else lives here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import call_record, principal
from sandbox_server.errors import FieldViolation, InvalidRequest, NotFound
from sandbox_server.execution.convert import limits_to_proto
from sandbox_server.execution.servicer import MalformedRequest, ensure_request
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.sessions import files
from sandbox_server.sessions.channel import AgentError
from sandbox_server.sessions.ids import is_snapshot_id
from sandbox_server.sessions.manager import CLOSED, LiveSession, SessionManager
from sandbox_server.sessions.pages import (
    decode_token,
    encode_token,
    nanoseconds,
    page_size,
    session_page_token,
    session_position,
    timestamp,
)
from sandbox_server.sessions.requests import check_name, check_path, session_params
from sandbox_server.settings import Settings
from sandbox_server.stores.sessions import SnapshotRecord
from sandbox_server.validation.request import MAX_ID_CHARS

DOWNLOAD_CHUNK = 1024 * 1024
FILE_TYPES = {"file": pb.FILE_TYPE_FILE, "directory": pb.FILE_TYPE_DIRECTORY, "symlink": pb.FILE_TYPE_SYMLINK,
              "other": pb.FILE_TYPE_OTHER}


class SessionServicer:
    def __init__(self, settings: Settings, sessions: SessionManager, policies: TenantPolicies) -> None:
        self.settings = settings
        self.sessions = sessions
        self.policies = policies

    async def _session(self, session_id: str) -> LiveSession:
        """The caller's live session; NOT_FOUND otherwise (the same answer for every other tenant)."""
        call = call_record()
        if call is not None:
            call.session_id = session_id[:MAX_ID_CHARS]
        tenant, _ = caller_policy(self.policies)
        return await self.sessions.get(tenant, session_id)

    async def to_proto(self, session: LiveSession) -> pb.Session:
        return await session_to_proto(self.sessions, session)

    # ---- sessions ----------------------------------------------------------------------------------------------
    async def CreateSession(self, request: pb.CreateSessionRequest | MalformedRequest,
                            context: grpc.aio.ServicerContext) -> pb.Session:
        checked = ensure_request(request)
        tenant, policy = caller_policy(self.policies)
        who = principal()
        params = session_params(checked, self.settings, tenant, policy)
        session = await self.sessions.create(params, tenant, who.key_id if who else "", policy)
        call = call_record()
        if call is not None:
            call.session_id = session.id
        return await self.to_proto(session)

    async def GetSession(self, request: pb.GetSessionRequest | MalformedRequest,
                         context: grpc.aio.ServicerContext) -> pb.Session:
        return await self.to_proto(await self._session(ensure_request(request).session_id))

    async def ListSessions(self, request: pb.ListSessionsRequest | MalformedRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListSessionsResponse:
        checked = ensure_request(request)
        tenant, _ = caller_policy(self.policies)
        size = page_size(checked.page_size)
        after = session_position(checked.page_token)
        found = self.sessions.live(tenant, dict(checked.labels))
        if after is not None:
            found = [s for s in found if (nanoseconds(s.created_at), s.id) > after]
        page = found[:size]
        protos = await asyncio.gather(*(self.to_proto(s) for s in page))
        token = session_page_token(page[-1].created_at, page[-1].id) if len(found) > size else ""
        return pb.ListSessionsResponse(sessions=protos, next_page_token=token)

    async def CloseSession(self, request: pb.CloseSessionRequest | MalformedRequest,
                           context: grpc.aio.ServicerContext) -> pb.Session:
        session = await self._session(ensure_request(request).session_id)
        final = await self.to_proto(session)  # its usage, measured while it still lives
        await self.sessions.close(session, CLOSED)
        finish_closed(final, session)
        return final

    # ---- files -------------------------------------------------------------------------------------------------
    async def UploadFile(self, requests: AsyncIterator[pb.UploadFileRequest | MalformedRequest],
                         context: grpc.aio.ServicerContext) -> pb.FileInfo:
        first = ensure_request(await anext(aiter(requests), MalformedRequest("no header")))
        if not first.HasField("header"):
            raise InvalidRequest([FieldViolation("header", "the first message must be the upload's header")])
        header = first.header
        path = check_path(header.path)
        session = await self._session(header.session_id)
        limits = session.params.limits
        if header.HasField("size") and header.size > limits.file_size_bytes:
            raise files.refusal(AgentError("too_large", ""), session.id, path,
                                file_size_bytes=limits.file_size_bytes)
        if header.HasField("size") and header.size > limits.scratch_bytes:
            raise files.refusal(AgentError("no_space", ""), session.id, path,
                                scratch_bytes=limits.scratch_bytes)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in requests:
                part = ensure_request(message)
                if part.HasField("header"):
                    raise InvalidRequest([FieldViolation("header", "only the first message is a header")])
                yield part.chunk

        entry = await self.sessions.upload(session, path, chunks())
        return _file_info(entry)

    async def DownloadFile(self, request: pb.DownloadFileRequest | MalformedRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DownloadFileResponse]:
        checked = ensure_request(request)
        path = check_path(checked.path)
        session = await self._session(checked.session_id)
        async for item in files.download(session.sandbox, session.id, path):
            session.touch()
            if isinstance(item, files.FileEntry):
                yield pb.DownloadFileResponse(info=_file_info(item))
            else:
                for start in range(0, len(item), DOWNLOAD_CHUNK):
                    yield pb.DownloadFileResponse(chunk=item[start:start + DOWNLOAD_CHUNK])

    async def ListFiles(self, request: pb.ListFilesRequest | MalformedRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListFilesResponse:
        checked = ensure_request(request)
        path = check_path(checked.path, allow_root=True)
        session = await self._session(checked.session_id)
        session.touch()
        listing = await files.listdir(session.sandbox, session.id, path, checked.recursive)
        return pb.ListFilesResponse(files=[_file_info(e) for e in listing.entries], truncated=listing.truncated,
                                    workspace_bytes=listing.used_bytes,
                                    workspace_limit_bytes=session.params.limits.scratch_bytes)

    async def DeleteFile(self, request: pb.DeleteFileRequest | MalformedRequest,
                         context: grpc.aio.ServicerContext) -> pb.DeleteFileResponse:
        checked = ensure_request(request)
        path = check_path(checked.path)
        session = await self._session(checked.session_id)
        await self.sessions.delete(session, path, checked.recursive)
        return pb.DeleteFileResponse()

    # ---- snapshots ---------------------------------------------------------------------------------------------
    async def SnapshotSession(self, request: pb.SnapshotSessionRequest | MalformedRequest,
                              context: grpc.aio.ServicerContext) -> pb.Snapshot:
        checked = ensure_request(request)
        name = check_name(checked.name)
        session = await self._session(checked.session_id)
        _, policy = caller_policy(self.policies)
        return snapshot_to_proto(await self.sessions.snapshot(session, name, policy))

    async def ListSnapshots(self, request: pb.ListSnapshotsRequest | MalformedRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListSnapshotsResponse:
        checked = ensure_request(request)
        tenant, _ = caller_policy(self.policies)
        size = page_size(checked.page_size)
        before = decode_token(checked.page_token)
        found = await asyncio.to_thread(self.sessions.archive.index.list, tenant, size + 1, before)
        page = found[:size]
        token = encode_token((page[-1].created_at, page[-1].snapshot_id)) if len(found) > size else ""
        return pb.ListSnapshotsResponse(snapshots=[snapshot_to_proto(r) for r in page], next_page_token=token)

    async def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest | MalformedRequest,
                             context: grpc.aio.ServicerContext) -> pb.DeleteSnapshotResponse:
        checked = ensure_request(request)
        tenant, _ = caller_policy(self.policies)
        record = (await asyncio.to_thread(self.sessions.archive.index.get, checked.snapshot_id)
                  if is_snapshot_id(checked.snapshot_id) else None)
        if record is None or record.tenant != tenant:
            raise NotFound(f"no snapshot {checked.snapshot_id[:80]!r}", resource_type="snapshot",
                           resource_name=checked.snapshot_id[:80])
        await self.sessions.archive.delete(record)
        return pb.DeleteSnapshotResponse()


async def session_to_proto(sessions: SessionManager, session: LiveSession) -> pb.Session:
    """A live session (or one closing) as the API shows it."""
    params = session.params
    live = not session.closed
    used, cost = await sessions.usage(session) if live else (0, session.held_cost)
    state = (pb.SESSION_STATE_CLOSED if session.closed
             else pb.SESSION_STATE_BUSY if session.busy else pb.SESSION_STATE_READY)
    out = pb.Session(
        id=session.id, state=state, created_at=timestamp(session.created_at),
        last_used_at=timestamp(session.last_used_at), limits=limits_to_proto(params.limits),
        idle_timeout_s=params.idle_timeout_s, max_lifetime_s=params.max_lifetime_s,
        cpu_total_ms=params.cpu_total_ms, languages=params.languages, labels=dict(params.labels),
        usage=pb.SessionUsage(
            calls=session.calls, cpu_time_s=session.cpu_used_ns() / 1e9 if live else 0.0,
            memory_bytes=session.sandbox.memory_bytes() if live else 0,
            peak_memory_bytes=max(session.peak_memory_bytes, session.sandbox.peak_memory_bytes() if live else 0),
            workspace_bytes=used, cost=cost, kernel_restarts=session.kernel_restarts,
            egress_bytes=_egress_bytes(session)),
        close_reason=session.close_reason, backend=session.sandbox.backend, snapshot_id=params.snapshot_id)
    if session.closed:
        out.closed_at.CopyFrom(timestamp(session.closed_at))
    else:
        out.expires_at.CopyFrom(timestamp(session.expires_at()))
    return out


def finish_closed(out: pb.Session, session: LiveSession) -> None:
    """``out`` (the session measured just before its close) as its close left it: how and when it closed (whoever
    closed it first), nothing held any more, what it cost in all."""
    out.state = pb.SESSION_STATE_CLOSED
    out.close_reason = session.close_reason
    out.closed_at.CopyFrom(timestamp(session.closed_at))
    out.ClearField("expires_at")
    out.usage.memory_bytes = 0
    if session.final_cost is not None:
        out.usage.cost = session.final_cost


def snapshot_to_proto(record: SnapshotRecord) -> pb.Snapshot:
    return pb.Snapshot(id=record.snapshot_id, session_id=record.session_id, name=record.name,
                       created_at=timestamp(record.created_at), size_bytes=record.size_bytes, files=record.files,
                       skipped=record.skipped)


def _file_info(entry: files.FileEntry) -> pb.FileInfo:
    return pb.FileInfo(path=entry.path, type=FILE_TYPES.get(entry.kind, pb.FILE_TYPE_OTHER), size=entry.size,
                       mtime=timestamp(entry.mtime))



def _egress_bytes(session: LiveSession) -> int:
    link = session.sandbox.egress
    return link.stats.bytes_sent + link.stats.bytes_received if link is not None else 0
