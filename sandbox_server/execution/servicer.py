"""The Sandbox service: validate -> admit -> run on the backend -> reply. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.backends.base import Backend
from sandbox_server.context import Acceptance, accept
from sandbox_server.errors import FieldViolation, InvalidRequest
from sandbox_server.execution.admission import Admission
from sandbox_server.execution.convert import chunk_to_proto, result_to_proto
from sandbox_server.execution.runtimes import RUNTIMES, host_version
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, StreamName
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.policy.enforce import enforce
from sandbox_server.settings import Settings
from sandbox_server.validation.request import build_spec

log = logging.getLogger(__name__)

# Chunks buffered between a running sandbox and a slow streaming client; beyond it the sandbox waits.
STREAM_BUFFER_CHUNKS = 16


@dataclass(frozen=True)
class MalformedRequest:
    """What the server's deserializer yields for bytes that are not a valid request message."""

    error: str


def tolerant(message: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    """A request deserializer that turns undecodable bytes into MalformedRequest (INVALID_ARGUMENT), not
    grpc's UNKNOWN."""

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message.FromString(data)
        except DecodeError:
            return MalformedRequest(
                f"not a valid {message.DESCRIPTOR.full_name} (string fields must be valid UTF-8)"
            )

    return parse


def ensure_request(request: pb.ExecuteRequest | MalformedRequest) -> pb.ExecuteRequest:
    if isinstance(request, MalformedRequest):
        raise InvalidRequest([FieldViolation("request", request.error)])
    return request


def _accept(spec: ExecutionSpec) -> None:
    """From here on the execution is the server's: the audit owes it a record."""
    accept(Acceptance(
        execution_id=spec.execution_id,
        session_id=spec.session_id,
        language=spec.runtime.language,
        code_sha256=hashlib.sha256(spec.code).hexdigest(),
        limits=dataclasses.asdict(spec.limits),
    ))


class SandboxServicer:
    def __init__(self, settings: Settings, backend: Backend, admission: Admission, policies: TenantPolicies) -> None:
        self.settings = settings
        self.backend = backend
        self.admission = admission
        self.policies = policies

    def _spec(self, request: pb.ExecuteRequest | MalformedRequest) -> ExecutionSpec:
        """Validate the request, then apply the caller's tenant policy (fails closed without a caller)."""
        checked = ensure_request(request)
        spec = build_spec(checked, self.settings, uuid.uuid4().hex)
        tenant, policy = caller_policy(self.policies)
        return enforce(checked, spec, tenant, policy, self.settings.ceilings)

    async def Execute(
        self, request: pb.ExecuteRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResult:
        spec = self._spec(request)
        async with self.admission.slot():
            _accept(spec)
            result = await self.backend.run(spec)
        return result_to_proto(result)

    async def ExecuteStream(
        self, request: pb.ExecuteRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecuteEvent]:
        spec = self._spec(request)
        events: asyncio.Queue[pb.ExecuteEvent] = asyncio.Queue(maxsize=STREAM_BUFFER_CHUNKS)

        async def on_output(stream: StreamName, data: bytes) -> None:
            await events.put(chunk_to_proto(stream, data))

        async def run() -> ExecutionResult:
            async with self.admission.slot():
                _accept(spec)
                return await self.backend.run(spec, on_output)

        task = asyncio.create_task(run())
        getter: asyncio.Future[pb.ExecuteEvent] | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if getter.done() and not getter.cancelled():
                    yield getter.result()
            while not events.empty():
                yield events.get_nowait()
            yield pb.ExecuteEvent(result=result_to_proto(await task))
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()  # the client went away: the backend tears the sandbox down
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def ListRuntimes(
        self, request: pb.ListRuntimesRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRuntimesResponse:
        versions = await asyncio.gather(*(asyncio.to_thread(host_version, rt) for rt in RUNTIMES))
        return pb.ListRuntimesResponse(
            runtimes=[
                pb.Runtime(language=rt.language, aliases=rt.aliases, version=v, file_name=rt.file_name)
                for rt, v in zip(RUNTIMES, versions, strict=True)
            ],
            backend=self.backend.name,
        )
