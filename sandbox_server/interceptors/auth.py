"""Who is calling: an API key in ``authorization: Bearer <key>`` mapped to a tenant and role.

Health checking and reflection stay open. The Admin service needs an admin key. In development mode (no keys;
the settings allow it on loopback only) every call is the built-in ``default`` tenant with admin rights.
The principal reaches the handler through a ContextVar, set inside the handler's own task.

A request marked as an exercise (``ExecuteRequest.exercise``, ``CreateSessionRequest.exercise``: an operator's
own check, which incident response counts apart and never mitigates) needs admin rights too, checked here with
the role: from a tenant key it is PERMISSION_DENIED (``EXERCISE_NOT_ALLOWED``), never silently run as ordinary
traffic. The call's record (``CallRecord.exercise``) says so for the links outside this one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import DEV_PRINCIPAL, Principal, call_record, current_principal
from sandbox_server.errors import PermissionDenied, Unauthenticated
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.telemetry import phase

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_PREFIX = "/sandbox.v1.Admin/"
EXERCISE_NOT_ALLOWED = "EXERCISE_NOT_ALLOWED"
_MAY_BE_EXERCISES = (pb.ExecuteRequest, pb.CreateSessionRequest)


class KeyRecordLike(Protocol):
    @property
    def key_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def role(self) -> str: ...


class KeyVerifier(Protocol):
    def verify(self, token: str) -> KeyRecordLike | None: ...


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


def is_exercise(who: Principal, request: Any) -> bool:
    """Whether ``request`` is marked as an exercise; raises PermissionDenied when ``who`` may not mark one (only
    admins may: an exercise opens no mitigation, so a tenant's agent must not be able to claim it)."""
    if not isinstance(request, _MAY_BE_EXERCISES) or not request.exercise:
        return False
    if who.role != "admin":
        raise PermissionDenied(
            "only an admin key (or a server in development mode) may mark a request as an exercise; this key is "
            f"tenant {who.tenant!r}'s: send it without the exercise flag to run it as the tenant's ordinary traffic",
            reason=EXERCISE_NOT_ALLOWED, metadata={"tenant": who.tenant, "key_id": who.key_id})
    return True


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeyVerifier | None) -> None:
        """``keys`` None means development mode."""
        self.keys = keys

    def authenticate(self, method: str, metadata: Any) -> Principal:
        """The caller, or a SandboxError saying why not."""
        if self.keys is None:
            return DEV_PRINCIPAL
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing API key: send the metadata 'authorization: Bearer <key>'")
        record = self.keys.verify(token) if token else None
        if record is None:
            raise Unauthenticated("unknown or revoked API key")
        principal = Principal(tenant=record.tenant, role="admin" if record.role == "admin" else "tenant",
                              key_id=record.key_id)
        if method.startswith(ADMIN_PREFIX) and principal.role != "admin":
            raise PermissionDenied("the Admin API needs an admin key", reason="ADMIN_ONLY")
        return principal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if method.startswith(OPEN_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        authenticate = self.authenticate

        def identify(request: Any) -> Principal:
            # Inside the call (not at handler lookup) so the span of this phase joins the call's trace.
            with phase("auth"):
                who = authenticate(method, metadata)
                call = call_record()
                if call is not None:
                    call.tenant = who.tenant
                exercise = is_exercise(who, request)
            if call is not None:
                call.exercise = exercise
            return who

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = current_principal.set(identify(request))
                try:
                    return await behavior(request, context)
                finally:
                    current_principal.reset(token)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                token = current_principal.set(identify(request))
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    current_principal.reset(token)

            return wrapped

        return wrap_handler(handler, unary, stream)
