"""The Sandbox service: validate -> admit -> run on the backend -> reply. Nothing else lives here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.backends.base import Backend
from sandbox_server.context import Acceptance, accept, budget_gate, call_record, principal
from sandbox_server.cost.budgeter import Budgeter
from sandbox_server.egress.env import sandbox_env
from sandbox_server.errors import BackendUnavailable, FieldViolation, InvalidRequest
from sandbox_server.execution.admission import Admission
from sandbox_server.execution.convert import chunk_to_proto, display_to_proto, result_to_proto
from sandbox_server.execution.runtimes import RUNTIMES, host_version
from sandbox_server.execution.spec import DisplayData, ExecutionResult, ExecutionSpec, OutputCallback, StreamName
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.policy.enforce import enforce
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.sessions.calls import DisplayCallback
from sandbox_server.sessions.ids import is_session_id
from sandbox_server.sessions.manager import LiveSession, SessionManager
from sandbox_server.sessions.requests import call_spec
from sandbox_server.settings import Settings
from sandbox_server.telemetry import current_trace_id, metrics, phase
from sandbox_server.validation.request import MAX_ID_CHARS, build_spec, check_usage_request

log = logging.getLogger(__name__)

# Chunks buffered between a running sandbox and a slow streaming client; beyond it the sandbox waits.
STREAM_BUFFER_CHUNKS = 16
LOG_CONTENT_BYTES = 4096  # of code or output, when a policy puts them in the logs


M = TypeVar("M", bound=Message)


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


def ensure_request(request: M | MalformedRequest) -> M:
    """The decoded request, or InvalidRequest for bytes that were not one."""
    if isinstance(request, MalformedRequest):
        raise InvalidRequest([FieldViolation("request", request.error)])
    return request


@dataclass(frozen=True)
class Target:
    """Where a checked request runs: a fresh sandbox, or a live session (with its tenant's policy)."""

    spec: ExecutionSpec
    session: LiveSession | None = None
    policy: TenantPolicy | None = None


@dataclass(frozen=True)
class RunningExecution:
    """An execution holding a sandbox now (for the admin's list and kill)."""

    spec: ExecutionSpec
    tenant: str
    key_id: str
    started_at: float  # epoch seconds
    trace_id: str


def _accept(spec: ExecutionSpec) -> None:
    """From here on the execution is the server's: the audit owes it a record."""
    accept(Acceptance(
        execution_id=spec.execution_id,
        session_id=spec.session_id,
        language=spec.runtime.language,
        code_sha256=hashlib.sha256(spec.code).hexdigest(),
        limits=spec.limits.as_dict(),
        exercise=spec.exercise,
    ))


class SandboxServicer:
    def __init__(
        self, settings: Settings, backend: Backend, admission: Admission, policies: TenantPolicies,
        budgeter: Budgeter | None = None, sessions: SessionManager | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.admission = admission
        self.policies = policies
        self.budgeter = budgeter
        self.sessions = sessions
        self.running: dict[str, RunningExecution] = {}

    async def _target(self, request: pb.ExecuteRequest | MalformedRequest) -> Target:
        """Validate the request, then apply the caller's tenant policy (fails closed without a caller). A
        session id names the session it runs in (NOT_FOUND unless it is a live session of the caller's tenant);
        any other session_id is a label."""
        checked = ensure_request(request)
        call = call_record()
        if call is not None:
            call.session_id = checked.session_id[:MAX_ID_CHARS]
            call.language = checked.language[:40]
        session: LiveSession | None = None
        with phase("policy"):
            tenant, policy = caller_policy(self.policies)
            if self.sessions is not None and is_session_id(checked.session_id):
                session = await self.sessions.get(tenant, checked.session_id)
                params = session.params
                spec = call_spec(checked, self.settings, uuid.uuid4().hex, params.limits, params.languages,
                                 tenant, policy, params.egress)
            else:
                spec = build_spec(checked, self.settings, uuid.uuid4().hex)
                spec = enforce(checked, spec, tenant, policy, self.settings.ceilings)
                env = sandbox_env(spec.env, self.settings, session=False, network=spec.egress is not None)
                if env != spec.env:  # most requests: no network, no wheelhouse, nothing to add
                    spec = dataclasses.replace(spec, env=env)
            if checked.exercise:  # the auth link refused it already unless the caller may say so
                spec = dataclasses.replace(spec, exercise=True)
        if call is not None:
            call.language = spec.runtime.language
            call.execution_id = spec.execution_id
            if policy.log_content.code:  # the tenant asked for code in its logs
                call.log_extra["source"] = spec.code[:LOG_CONTENT_BYTES].decode(errors="replace")
            call.attributes.update({f"sandbox.limits.{k}": v for k, v in spec.limits.as_dict().items()})
            if session is not None:
                call.attributes["sandbox.in_session"] = True
        return Target(spec, session, policy if session is not None else None)

    async def _run(self, target: Target, on_output: OutputCallback | None = None,
                   on_display: DisplayCallback | None = None) -> ExecutionResult:
        """Run the checked request where it belongs: its budget reserved, its admission slot held (see
        ``_running``), and, in a session, the session's turn taken first. Under host pressure it is refused
        before any of those, a call in a session too: it would grow memory in a sandbox that exists already."""
        self.admission.check_host_pressure()
        session, policy, spec = target.session, target.policy, target.spec
        if session is None or policy is None or self.sessions is None:
            async with self._running(spec):
                return await self.backend.run(spec, on_output)
        async with self.sessions.turn(session, policy), self._running(spec):
            return await self.sessions.call(session, spec, policy, on_output, on_display)

    @contextlib.asynccontextmanager
    async def _running(self, spec: ExecutionSpec) -> AsyncIterator[None]:
        """Reserve its budget, wait for a slot, then hold the sandbox: the block runs the execution."""
        gate = budget_gate()
        if gate is not None:
            await gate.reserve(spec)
        queued = time.monotonic()
        async with contextlib.AsyncExitStack() as holding:
            with phase("queue"):
                await holding.enter_async_context(self.admission.slot())
            m = metrics()
            if m is not None:
                m.queue_wait.record(time.monotonic() - queued)
                m.active.add(1)
            _accept(spec)
            if gate is not None:
                gate.started(spec)
            who = principal()
            self.running[spec.execution_id] = RunningExecution(
                spec, who.tenant if who else "", who.key_id if who else "", time.time(), current_trace_id())
            try:
                yield
            finally:
                del self.running[spec.execution_id]
                if m is not None:
                    m.active.add(-1)

    async def _finish(self, spec: ExecutionSpec, result: ExecutionResult) -> pb.ExecuteResult:
        gate = budget_gate()
        cost = await gate.settle(spec, result) if gate is not None else 0.0
        out = result_to_proto(result)
        out.cost = cost
        out.trace_id = current_trace_id()
        call = call_record()
        if call is not None:
            call.attributes.update({
                "sandbox.status": result.status.name, "sandbox.exit_code": result.exit_code,
                "sandbox.usage.wall_time_s": result.usage.wall_time_s,
                "sandbox.usage.cpu_time_s": result.usage.cpu_time_s,
                "sandbox.usage.peak_memory_bytes": result.usage.peak_memory_bytes, "sandbox.cost": cost,
            })
        return out

    async def Execute(
        self, request: pb.ExecuteRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteResult:
        target = await self._target(request)
        result = await self._run(target)
        return await self._finish(target.spec, result)

    async def ExecuteStream(
        self, request: pb.ExecuteRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecuteEvent]:
        target = await self._target(request)
        spec = target.spec
        events: asyncio.Queue[pb.ExecuteEvent] = asyncio.Queue(maxsize=STREAM_BUFFER_CHUNKS)

        async def on_output(stream: StreamName, data: bytes) -> None:
            await events.put(chunk_to_proto(stream, data))

        async def on_display(display: DisplayData) -> None:
            await events.put(pb.ExecuteEvent(display=display_to_proto(display)))

        async def run() -> ExecutionResult:
            return await self._run(target, on_output, on_display)

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
            yield pb.ExecuteEvent(result=await self._finish(spec, await task))
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()  # the client went away: the backend tears the sandbox down
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def RecordUsage(
        self, request: pb.RecordUsageRequest | MalformedRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordUsageResponse:
        checked = check_usage_request(ensure_request(request))
        tenant, policy = caller_policy(self.policies)
        call = call_record()
        if call is not None:
            call.session_id = checked.session_id
            call.attributes.update({"sandbox.model": checked.model, "sandbox.input_tokens": checked.input_tokens,
                                    "sandbox.output_tokens": checked.output_tokens})
        if self.budgeter is None:
            raise BackendUnavailable("cost accounting is not configured on this server", retry_after_s=60)
        cost, session_cost, states = await self.budgeter.record_usage(
            tenant, policy, checked.session_id, checked.model, checked.input_tokens, checked.output_tokens,
            checked.idempotency_key)
        return pb.RecordUsageResponse(
            cost=cost, session_cost=session_cost,
            budgets=[pb.BudgetState(budget=b.budget, limit=b.limit, spent=b.spent, exceeded=b.exceeded)
                     for b in states],
        )

    def kill(self, execution_id: str) -> bool:
        """Kill a running execution (its result says KILLED); False if it is not running here."""
        if execution_id not in self.running:
            return False
        if self.sessions is not None and self.sessions.interrupt(execution_id):
            return True
        return self.backend.kill(execution_id)

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
