"""Forwarding: a call for a session another replica holds is sent to that replica, with the caller's identity.

Replicas behind a load balancer each hold their own live sessions (a kernel and a workspace live in one
server's sandbox). A call naming a session this server does not hold is looked up in the sessions registry
(``sessions/registry.py``); if another server holds it, the call is relayed there over gRPC: the same method and
request, the caller's own metadata (its API key, idempotency key and trace context: the holder authenticates the
caller again and runs the whole chain itself), the caller's remaining deadline, and the holder's answer (its
responses, or its status with every detail) is passed back unchanged. A relayed call carries
``x-sandbox-forwarded`` and is never relayed again, so two servers that disagree cannot bounce a call between
them. A holder that does not answer at all has lost the session with itself: the caller gets NOT_FOUND
(SESSION_CLOSED, close reason ``server_lost``) for its own session, SESSION_NOT_FOUND for anyone else's.

The Admin API's GetSession and CloseSession are relayed the same way (if the holder does not answer, this
server's answer from the shared record stands). The fleet calls (``methods.FLEET_LISTINGS``, ``FLEET_LOOKUPS``)
are answered by every server for its own part: a listing of sessions (a tenant's or the Admin API's) or of
executions is asked of every other live server in the registry and the answers merged; a lookup or kill of an
execution this server does not run is asked of every other one.

It runs right after auth: a caller without valid credentials is refused here, and nothing of this server's
chain (idempotency, limits, budgets, audit) is spent on a call another server runs and accounts for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from sandbox_client._proto.sandbox.v1 import admin_pb2
from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import call_record, principal
from sandbox_server.errors import NotFound, RelayedStatus
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.interceptors.methods import (
    ADMIN_PREFIX,
    ADMIN_SESSION_ADDRESSED,
    FLEET_LISTINGS,
    FLEET_LOOKUPS,
    PREFIX,
    SESSION_ADDRESSED,
    UPLOAD_FILE,
)
from sandbox_server.sessions.pages import page_size, session_page_token
from sandbox_server.telemetry import phase

log = logging.getLogger(__name__)

FORWARDED = "x-sandbox-forwarded"
_SKIPPED_METADATA = ("user-agent", "content-type", "te", "host")
_RESPONSES: dict[str, Any] = {
    prefix + m.name: message_factory.GetMessageClass(m.output_type)
    for prefix, service in ((PREFIX, pb.DESCRIPTOR.services_by_name["Sandbox"]),
                            (ADMIN_PREFIX, admin_pb2.DESCRIPTOR.services_by_name["Admin"]))
    for m in service.methods}
ADMIN_LIST_SESSIONS = ADMIN_PREFIX + "ListSessions"
ADMIN_LIST_EXECUTIONS = ADMIN_PREFIX + "ListExecutions"
FLEET_TIMEOUT_S = 10.0  # each other server's part of a fleet call: a hung one must not hang the caller's listing


class Holders(Protocol):
    """What forwarding needs from the sessions side."""

    def holds(self, session_id: str) -> bool: ...
    async def lost(self, tenant: str, session_id: str) -> Exception: ...


class Owners(Protocol):
    address: str

    async def owner(self, session_id: str) -> str | None: ...
    async def others(self) -> set[str]: ...


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _session_of(request: Any) -> str:
    if isinstance(request, pb.UploadFileRequest):
        return request.header.session_id if request.WhichOneof("part") == "header" else ""
    session_id = getattr(request, "session_id", "")
    return session_id if isinstance(session_id, str) else ""


class ForwardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, owners: Owners | None = None, holders: Holders | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """``owners`` None (one server, no registry): the link passes every call through. ``credentials``: for
        the channels to other replicas (None: plaintext, as this server serves)."""
        self.owners = owners
        self.holders = holders
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            channel = (grpc.aio.secure_channel(address, self.credentials, options) if self.credentials is not None
                       else grpc.aio.insecure_channel(address, options))
            self._channels[address] = channel
        return channel

    async def _holder(self, owners: Owners, holders: Holders, session_id: str,
                      context: grpc.aio.ServicerContext) -> str | None:
        """The other server to relay to, or None: handle here."""
        if not session_id or holders.holds(session_id):
            return None
        if _asked_by_a_server(context):
            return None  # relayed once already: answer here, whatever the registry says
        with phase("forward"):
            owner = await owners.owner(session_id)
        return owner if owner is not None and owner != owners.address else None

    @staticmethod
    def _call_args(owners: Owners, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                    if not k.startswith((":", "grpc-")) and k not in _SKIPPED_METADATA]
        metadata.append((FORWARDED, owners.address))
        return {"metadata": tuple(metadata), "timeout": context.time_remaining()}

    @staticmethod
    async def _relay_error(holders: Holders, exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext,
                           owner: str, session_id: str) -> None:
        if _gone(exc, owner, session_id):
            who = principal()
            raise await holders.lost(who.tenant if who is not None else "", session_id) from exc
        await _pass_on(context, exc)

    def _fleet(self, handler: grpc.RpcMethodHandler, method: str, owners: Owners) -> grpc.RpcMethodHandler:
        """A call every server answers for its own part (FLEET_LISTINGS, FLEET_LOOKUPS): this server answers,
        then (a listing) asks every other live server and merges the answers, or (a lookup that found nothing
        here) asks every other one and takes the answer of the one that has it. Asked by another server
        (``x-sandbox-forwarded``), a server answers for its own part only."""

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if _asked_by_a_server(context):
                    call = call_record()
                    if call is not None:
                        call.fleet_part = True
                    return await behavior(request, context)
                if method in FLEET_LOOKUPS:
                    try:
                        return await behavior(request, context)
                    except NotFound as missing:  # not here: running on another server, perhaps
                        found = await self._ask_others(owners, method, request, context, skip_not_found=True)
                        if found:
                            return found[0]
                        raise missing from None
                local = await behavior(request, context)  # first: it validates the request and the caller
                answers = await self._ask_others(owners, method, _their_part(method, request), context)
                return _MERGES[method](request, local, answers) if answers else local

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            return behavior  # every fleet call is unary

        return wrap_handler(handler, unary, stream)

    async def _ask_others(self, owners: Owners, method: str, request: Any, context: grpc.aio.ServicerContext,
                          *, skip_not_found: bool = False) -> list[Any]:
        """The answers of every other live server. One that does not answer is left out (what it held is lost
        with it); another refusal is passed on, as a relayed call's would be."""
        with phase("forward"):
            others = sorted(await owners.others())
        if not others:
            return []
        args = self._call_args(owners, context)
        remaining = args["timeout"]
        args["timeout"] = FLEET_TIMEOUT_S if remaining is None else min(remaining, FLEET_TIMEOUT_S)
        answers = await asyncio.gather(*(self._channel(address).unary_unary(
            method, request_serializer=_serialize, response_deserializer=_RESPONSES[method].FromString,
        )(request, **args) for address in others), return_exceptions=True)
        found: list[Any] = []
        for address, answer in zip(others, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                if _no_answer(answer):
                    log.warning("%s: the server at %s does not answer: %s", method, address, answer.details())
                elif not (skip_not_found and answer.code() is grpc.StatusCode.NOT_FOUND):
                    await _pass_on(context, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found.append(answer)
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        owners, holders = self.owners, self.holders
        if owners is None or holders is None:
            return handler
        if method in FLEET_LISTINGS or method in FLEET_LOOKUPS:
            return self._fleet(handler, method, owners)
        admin = method in ADMIN_SESSION_ADDRESSED
        if method not in SESSION_ADDRESSED and not admin:
            return handler
        response_type = _RESPONSES[method]

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                streamed = method == UPLOAD_FILE  # an iterator of requests
                first: Any = None
                if streamed:
                    first = await anext(aiter(request), None)
                    request = _replay(first, request)
                session_id = _session_of(first if streamed else request)
                owner = await self._holder(owners, holders, session_id, context)
                if owner is None:
                    return await behavior(request, context)
                channel = self._channel(owner)
                _set_relayed(True)
                try:
                    if streamed:
                        return await channel.stream_unary(
                            method, request_serializer=_serialize, response_deserializer=response_type.FromString,
                        )(request, **self._call_args(owners, context))
                    return await channel.unary_unary(
                        method, request_serializer=_serialize, response_deserializer=response_type.FromString,
                    )(request, **self._call_args(owners, context))
                except grpc.aio.AioRpcError as exc:
                    if admin and _gone(exc, owner, session_id):
                        # An operator asks after it: what this server knows (the shared record) is the answer.
                        return await behavior(request, context)
                    await self._relay_error(holders, exc, context, owner, session_id)
                    raise  # _relay_error always raises

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                session_id = _session_of(request)
                owner = await self._holder(owners, holders, session_id, context)
                if owner is None:
                    async for item in behavior(request, context):
                        yield item
                    return
                _set_relayed(True)
                call = self._channel(owner).unary_stream(
                    method, request_serializer=_serialize, response_deserializer=response_type.FromString,
                )(request, **self._call_args(owners, context))
                try:
                    async for item in call:
                        yield item
                except grpc.aio.AioRpcError as exc:
                    await self._relay_error(holders, exc, context, owner, session_id)
                finally:
                    call.cancel()  # the caller went away: so does the relayed call

            return wrapped

        return wrap_handler(handler, unary, stream)


async def _pass_on(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> None:
    """Answer with another server's status, every detail included. Always raises (grpc's abort)."""
    call = call_record()
    if call is not None:  # the telemetry link sees only the abort: tell it what the other server said
        call.error = _relayed_status(exc)
    # grpc's abort takes a tuple, not the call's Metadata (given that, it failed every relayed error as INTERNAL)
    await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))


def _no_answer(exc: grpc.aio.AioRpcError) -> bool:
    """No answer from the other server at all (its own UNAVAILABLE carries details): it is gone."""
    return exc.code() is grpc.StatusCode.UNAVAILABLE and "grpc-status-details-bin" not in dict(
        exc.trailing_metadata() or ())


def _gone(exc: grpc.aio.AioRpcError, owner: str, session_id: str) -> bool:
    """Whether the session's holder gave no answer at all; if so, the call is this server's to answer (and to
    count), and that is logged."""
    if not _no_answer(exc):
        return False
    log.warning("session %s: its server at %s does not answer: %s", session_id, owner, exc.details())
    _set_relayed(False)
    return True


def _set_relayed(relayed: bool) -> None:
    """Whether the holder runs and counts this call (sandbox_rpcs_total, rejections), so this server must not."""
    call = call_record()
    if call is not None:
        call.relayed = relayed


def _relayed_status(exc: grpc.aio.AioRpcError) -> RelayedStatus:
    """The other server's code, message and ErrorInfo reason, as an error the telemetry link can name."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    reason = ""
    if isinstance(raw, bytes):
        with contextlib.suppress(DecodeError):
            for detail in status_pb2.Status.FromString(raw).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
                    break
    return RelayedStatus(exc.code(), exc.details() or "", reason)


def _position(session: Any) -> tuple[int, str]:
    return session.created_at.ToNanoseconds(), session.id


def _merge_tenant(request: Any, local: Any, remote: list[Any]) -> Any:
    """One page of a tenant's live sessions across servers, oldest first, as each server pages its own: the
    page token is a position (creation, id), so the next page asks every server again from there."""
    size = page_size(request.page_size)
    found = sorted([*local.sessions, *(s for answer in remote for s in answer.sessions)], key=_position)
    page = found[:size]
    more = len(found) > size or any(a.next_page_token for a in (local, *remote))
    token = session_page_token(page[-1].created_at, page[-1].id) if more and page else ""
    return pb.ListSessionsResponse(sessions=page, next_page_token=token)


def _merge_admin(request: Any, local: Any, remote: list[Any]) -> Any:
    """The live sessions of every server, oldest first, then the closed ones (from the shared records, so every
    server lists the same: each once), ``limit`` in all."""
    from sandbox_server.admin.sessions_servicer import DEFAULT_LIMIT  # here: the admin package imports the chain

    limit = request.limit or DEFAULT_LIMIT
    answers = [*local.sessions, *(s for answer in remote for s in answer.sessions)]
    live = {s.session.id: s for s in answers if s.session.state != pb.SESSION_STATE_CLOSED}
    closed: dict[str, Any] = {}
    for s in answers:
        if s.session.state == pb.SESSION_STATE_CLOSED and s.session.id not in live:
            closed.setdefault(s.session.id, s)
    merged = sorted(live.values(), key=lambda s: _position(s.session)) + list(closed.values())
    return admin_pb2.AdminListSessionsResponse(sessions=merged[:limit])


def _merge_executions(request: Any, local: Any, remote: list[Any]) -> Any:
    """This server's answer (its running executions and the shared audit trail's) with the executions running
    on the others, newest first, ``limit`` in all; an execution's audit record is the final word on it."""
    from sandbox_server.admin.operations_servicer import DEFAULT_LIST_LIMIT  # here: the admin package imports
    # the chain

    found = {e.execution_id: e for answer in remote for e in answer.executions}
    found.update((e.execution_id, e) for e in local.executions)
    merged = sorted(found.values(), key=lambda e: (e.started_at.seconds, e.started_at.nanos), reverse=True)
    return admin_pb2.ListExecutionsResponse(executions=merged[: request.limit or DEFAULT_LIST_LIMIT])


def _their_part(method: str, request: Any) -> Any:
    """What to ask the other servers: for executions, only those running there (the audit trail is shared)."""
    if method != ADMIN_LIST_EXECUTIONS:
        return request
    theirs = admin_pb2.ListExecutionsRequest()
    theirs.CopyFrom(request)
    theirs.running_only = True
    return theirs


def _asked_by_a_server(context: grpc.aio.ServicerContext) -> bool:
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


_MERGES: dict[str, Callable[[Any, Any, list[Any]], Any]] = {
    PREFIX + "ListSessions": _merge_tenant,
    ADMIN_LIST_SESSIONS: _merge_admin,
    ADMIN_LIST_EXECUTIONS: _merge_executions,
}


async def _replay(first: Any, rest: Any) -> AsyncIterator[Any]:
    """The request stream again, its first message (already read) included."""
    if first is None:
        return
    yield first
    async for item in rest:
        yield item
