"""Maps every SandboxError to its status with rich details; anything else becomes a generic INTERNAL.

The cause of an unexpected error is logged with the request id, never sent to the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from sandbox_server.context import call_record
from sandbox_server.errors import SandboxError
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler

log = logging.getLogger(__name__)


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> NoReturn:
    call = call_record()
    if call is not None:
        call.error = exc  # for the telemetry link outside: it sees only the abort
    if isinstance(exc, SandboxError):
        status = exc.to_status()
        if exc.code is grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, exc.message)
    else:
        log.exception("unexpected error in %s", method, exc_info=exc)
        status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the server logged the cause")
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # it always raises


class ErrorsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    await abort_with(context, exc, method)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in behavior(request, context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:
                    await abort_with(context, exc, method)

            return wrapped

        return wrap_handler(handler, unary, stream)
