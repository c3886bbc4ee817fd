"""The session layer: every live session of this server, its lifecycle, quotas, calls, files and snapshots.

A session is a sandbox (Backend.open_session) and its agent, kept between calls. Calls to one session run one
at a time, in arrival order; up to the tenant's ``sessions.max_waiting_calls`` may wait, and one more is
refused at once (RESOURCE_EXHAUSTED, reason SESSION_BUSY, with RetryInfo). File operations do not wait for a
running call. A session closes when asked, at its idle timeout (no call running or waiting), at its lifetime,
when its CPU total is spent, when a budget it draws on is exhausted, when its sandbox fails, and at shutdown.
Its record and lifecycle events (created, closed and why, snapshots, restores, file changes, kernel restarts)
are durable in the session store before the reply that caused them leaves.

Visibility: a session is its tenant's only. Any other caller naming it gets exactly the answer an id that
never existed gets; its own tenant, once it is closed, is told why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from sandbox_server.backends.base import Backend
from sandbox_server.cost.budgeter import Budgeter
from sandbox_server.errors import (
    FieldViolation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    SandboxFailure,
    SharedStateUnavailable,
)
from sandbox_server.execution.admission import Admission
from sandbox_server.execution.runtimes import BASE_ENV
from sandbox_server.execution.spec import ExecutionResult, ExecutionSpec, OutputCallback, SessionSpec, Status
from sandbox_server.interceptors._concurrency import Concurrency, Slot
from sandbox_server.policy.caller import TenantPolicies
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.sessions import files
from sandbox_server.sessions.calls import CallControl, DisplayCallback, run_call
from sandbox_server.sessions.ids import is_session_id, new_session_id
from sandbox_server.sessions.pool import SessionPool
from sandbox_server.sessions.registry import SessionRegistry
from sandbox_server.sessions.requests import SessionParams
from sandbox_server.sessions.sandbox import SessionSandbox
from sandbox_server.sessions.snapshots import SnapshotArchive, SnapshotLimits
from sandbox_server.settings import Settings
from sandbox_server.stores.sessions import SessionEnd, SessionEvent, SessionRecord, SessionStore, SnapshotRecord
from sandbox_server.telemetry import Metrics, phase

log = logging.getLogger(__name__)

CLOSED = "closed"
IDLE_TIMEOUT = "idle_timeout"
MAX_LIFETIME = "max_lifetime"
CPU_LIMIT = "cpu_limit"
BUDGET_EXCEEDED = "budget_exceeded"
SERVER_SHUTDOWN = "server_shutdown"
SERVER_RESTART = "server_restart"
SERVER_LOST = "server_lost"  # the replica holding it does not answer (seen by another replica)
SANDBOX_FAILED = "sandbox_failed"
ADMIN = "admin"
SWEEP_INTERVAL_S = 1.0
HELD_CHARGE_INTERVAL_S = 60.0
IDEMPOTENCY_WINDOW_S = 600.0
BUSY_RETRY_S = 1.0
SERVER_FULL_RETRY_S = 5.0
GB = 1e9


class SessionNotFound(NotFound):
    """No live session of the caller's tenant has this id: the same answer whether it never existed, belongs to
    another tenant, or was lost with a server that stopped."""

    reason = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id[:80]!r}", resource_type="session", resource_name=session_id[:80])


class SessionClosed(NotFound):
    """The caller's own session, which has closed (``close_reason`` says why)."""

    reason = "SESSION_CLOSED"

    def __init__(self, session_id: str, close_reason: str) -> None:
        super().__init__(f"session {session_id} is closed ({close_reason})", resource_type="session",
                         resource_name=session_id, metadata={"close_reason": close_reason})
        self.close_reason = close_reason


class SessionBusy(ResourceExhausted):
    """A call came while one runs in the session and as many as may wait already wait."""

    reason = "SESSION_BUSY"


class SessionEvents(Protocol):
    """Incident response's view of sessions."""

    def on_session_loop(self, *, tenant: str, session_id: str, language: str, repeats: int, failure: str,
                        exercise: bool = False) -> None: ...


@dataclass
class LiveSession:
    id: str
    tenant: str
    key_id: str
    params: SessionParams
    sandbox: SessionSandbox
    created_at: float  # epoch
    created_mono: float
    cpu_base_ns: int  # the sandbox's CPU when it was handed over (its start is not the session's to pay)
    last_used_at: float = 0.0
    last_used_mono: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    running: str = ""  # the execution id of the call running now
    control: CallControl | None = None  # the running call's stop switch
    calls: int = 0
    kernel_restarts: int = 0
    held_cost: float = 0.0
    held_until_mono: float = 0.0
    held_charges: int = 0
    loop_signature: str = ""
    loop_count: int = 0
    closed: bool = False
    close_reason: str = ""
    closed_at: float = 0.0
    closing: asyncio.Task[None] | None = None
    slot: Slot | None = None  # replicas: its place in the tenant's live sessions, counted in Redis
    peak_memory_bytes: int = 0
    final_cost: float | None = None  # once closed: what it cost in all

    def __post_init__(self) -> None:
        self.last_used_at = self.last_used_at or self.created_at
        self.last_used_mono = self.last_used_mono or self.created_mono
        self.held_until_mono = self.held_until_mono or self.created_mono

    @property
    def busy(self) -> bool:
        return self.lock.locked() or self.waiting > 0

    @property
    def idle_deadline(self) -> float:
        return self.last_used_mono + self.params.idle_timeout_s

    @property
    def lifetime_deadline(self) -> float:
        return self.created_mono + self.params.max_lifetime_s

    def touch(self) -> None:
        """A file operation counts as use: the idle timeout starts over (a long download is not cut by it)."""
        if not self.closed:
            self.last_used_at, self.last_used_mono = time.time(), time.monotonic()

    def expires_at(self) -> float:
        """Epoch seconds at which it closes unless a call comes first."""
        deadline = self.lifetime_deadline if self.busy else min(self.idle_deadline, self.lifetime_deadline)
        return time.time() + (deadline - time.monotonic())

    def cpu_used_ns(self) -> int:
        return max(0, self.sandbox.cpu_time_ns() - self.cpu_base_ns)

    def labels(self) -> Mapping[str, str]:
        return dict(self.params.labels)


class SessionManager:
    def __init__(self, settings: Settings, backend: Backend, store: SessionStore, archive: SnapshotArchive,
                 admission: Admission, policies: TenantPolicies, budgeter: Budgeter | None = None,
                 metrics: Metrics | None = None, events: SessionEvents | None = None) -> None:
        self.settings = settings
        self.policies = policies
        self.backend = backend
        self.store = store
        self.archive = archive
        self.admission = admission
        self.budgeter = budgeter
        self.metrics = metrics
        self.events = events
        self.owner = str(settings.state_dir)
        self._live: dict[str, LiveSession] = {}
        self._starting: dict[str, int] = {}
        self._by_key: dict[tuple[str, str], tuple[str, float]] = {}
        self._creating: dict[tuple[str, str], asyncio.Future[LiveSession]] = {}
        pressure = admission.pressure
        self.pool = SessionPool(settings, backend,
                                pressed=lambda: pressure is not None and bool(pressure.violations()))
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Replicas (redis_url): where other servers look up which server holds a session, and the tenant's live
        # sessions counted across every server (sessions.max_active holds for the whole fleet).
        self.registry: SessionRegistry | None = None
        self.fleet_sessions: Concurrency | None = None

    # ---- life of the manager -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Close what a previous run of this server left open (its sessions died with it), then sweep."""
        orphans = await asyncio.to_thread(self.store.close_orphans, self.owner, SERVER_RESTART, time.time())
        if orphans:
            log.warning("%d sessions of a previous run were lost with it: closed as %s", len(orphans), SERVER_RESTART)
        self.archive.setup()
        self._sweeper = asyncio.create_task(self._sweep(), name="sessions-sweeper")
        self.pool.start()

    async def aclose(self) -> None:
        """Close every session (reason server_shutdown) and stop."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.gather(*(self.close(s, SERVER_SHUTDOWN) for s in list(self._live.values())),
                             self.pool.aclose(), return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def count(self) -> int:
        return len(self._live)

    # ---- lookups -----------------------------------------------------------------------------------------------
    async def get(self, tenant: str, session_id: str) -> LiveSession:
        """The tenant's live session. Raises SessionNotFound, or SessionClosed for the tenant's closed one."""
        session = self._live.get(session_id)
        if session is not None and session.tenant == tenant and not session.closed:
            return session
        if session is not None and session.tenant == tenant:
            raise SessionClosed(session_id, session.close_reason)
        if is_session_id(session_id):
            record = await asyncio.to_thread(self.store.get, session_id)
            if record is not None and record.tenant == tenant and record.closed_at is not None:
                raise SessionClosed(session_id, record.close_reason)
        raise SessionNotFound(session_id)

    def holds(self, session_id: str) -> bool:
        """Whether this server holds the session (live, or closing: its own answer is the right one)."""
        return session_id in self._live

    async def lost(self, tenant: str, session_id: str) -> Exception:
        """The answer for a session whose server (another replica) does not answer: closed (``server_lost``)
        for its own tenant, not found for anyone else."""
        record = await asyncio.to_thread(self.store.get, session_id) if is_session_id(session_id) else None
        if record is not None and record.tenant == tenant:
            return SessionClosed(session_id, SERVER_LOST)
        return SessionNotFound(session_id)

    def find(self, session_id: str) -> LiveSession | None:
        """Any tenant's live session (the admin API)."""
        return self._live.get(session_id)

    def live(self, tenant: str | None, labels: Mapping[str, str] | None = None,
             closing: bool = False) -> list[LiveSession]:
        """Live sessions, oldest first; of one tenant unless None; carrying every one of ``labels``; with
        ``closing``, also those whose close has begun and not finished."""
        wanted = dict(labels or {})
        out = [s for s in self._live.values() if (tenant is None or s.tenant == tenant) and (closing or not s.closed)
               and all(s.params.labels and dict(s.params.labels).get(k) == v for k, v in wanted.items())]
        return sorted(out, key=lambda s: (s.created_at, s.id))

    def running(self, execution_id: str) -> LiveSession | None:
        return next((s for s in self._live.values() if s.running == execution_id), None)

    # ---- create and close --------------------------------------------------------------------------------------
    async def create(self, params: SessionParams, tenant: str, key_id: str, policy: TenantPolicy) -> LiveSession:
        """Start a session. Raises ResourceExhausted (a quota, the server's capacity), BudgetExceeded,
        NotFound (the snapshot), BackendUnavailable, SandboxFailure. A retry with the idempotency key of a
        create that is running or done (and whose session lives) gets that same session."""
        key = (tenant, params.idempotency_key)
        if not params.idempotency_key:
            return await self._create(params, tenant, key_id, policy)
        running = self._creating.get(key)
        if running is not None:
            return await asyncio.shield(running)
        known = self._by_key.get(key)
        if known is not None and time.monotonic() - known[1] < IDEMPOTENCY_WINDOW_S:
            live = self._live.get(known[0])
            if live is not None and not live.closed:
                return live
        future: asyncio.Future[LiveSession] = asyncio.get_running_loop().create_future()
        self._creating[key] = future
        try:
            session = await self._create(params, tenant, key_id, policy)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            future.exception()  # retrieved: no retry may be waiting
            raise
        finally:
            del self._creating[key]
        future.set_result(session)
        self._by_key[key] = (session.id, time.monotonic())
        return session

    async def _create(self, params: SessionParams, tenant: str, key_id: str, policy: TenantPolicy) -> LiveSession:
        if self._closing:
            raise ResourceExhausted("the server is shutting down", violations=[
                QuotaViolation("server", "draining: no new sessions")], retry_after_s=SERVER_FULL_RETRY_S)
        mine = sum(1 for s in self._live.values() if s.tenant == tenant) + self._starting.get(tenant, 0)
        if mine >= policy.sessions.max_active:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {mine} live sessions, its limit (close one first)", violations=[
                    QuotaViolation(f"tenant:{tenant}/sessions.max_active",
                                   f"at most {policy.sessions.max_active} live sessions at once")],
                retry_after_s=None)
        everyone = len(self._live) + sum(self._starting.values())
        if everyone >= self.settings.max_sessions:
            raise ResourceExhausted(
                "this server runs as many sessions as it may", violations=[
                    QuotaViolation("server/sessions", f"at most {self.settings.max_sessions} live sessions")],
                retry_after_s=SERVER_FULL_RETRY_S)
        self.admission.check_host_pressure()  # a pooled sandbox too: the session will grow in it
        slot = await self._fleet_slot(tenant, policy)
        try:
            session = await self._create_held(params, tenant, key_id, policy)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        session.slot = slot
        return session

    async def _fleet_slot(self, tenant: str, policy: TenantPolicy) -> Slot | None:
        """With replicas, a place among the tenant's live sessions on every server (None without replicas).
        Raises ResourceExhausted at the limit, SharedStateUnavailable when the count cannot be read."""
        if self.fleet_sessions is None:
            return None
        limit = policy.sessions.max_active
        try:
            slot, count = await self.fleet_sessions.acquire(tenant, limit)
        except Exception as exc:
            log.error("live sessions of tenant %r cannot be counted: %r", tenant, exc)
            raise SharedStateUnavailable("the count of live sessions is unavailable; retry later",
                                         retry_after_s=SERVER_FULL_RETRY_S) from exc
        if slot is None:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {count} live sessions, its limit (close one first)", violations=[
                    QuotaViolation(f"tenant:{tenant}/sessions.max_active",
                                   f"at most {limit} live sessions at once")],
                retry_after_s=None)
        return slot

    async def _create_held(self, params: SessionParams, tenant: str, key_id: str,
                           policy: TenantPolicy) -> LiveSession:
        session_id = new_session_id()
        if self.budgeter is not None:
            await self.budgeter.check(tenant, policy, session_id)
        snapshot = await self._snapshot_for(tenant, params) if params.snapshot_id else None
        self._starting[tenant] = self._starting.get(tenant, 0) + 1
        try:
            spec = SessionSpec(session_id=session_id, limits=params.limits, cpu_total_ms=params.cpu_total_ms,
                               max_lifetime_s=params.max_lifetime_s, env=(*BASE_ENV, *params.env),
                               kernel=params.kernel, cpu_cores=self.settings.cpu_cores)
            sandbox = self.pool.take() if self.pool.eligible(params) else None
            if sandbox is None:
                async with self.admission.slot():  # a sandbox and a kernel cost as much to start as an execution
                    sandbox = await self.backend.open_session(spec)
            elif params.env:
                try:
                    await sandbox.channel.request("configure", {"env": dict(params.env)})
                except BaseException:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(sandbox.close())
                    raise
            try:
                if params.egress is not None:
                    # The agent runs nothing before the first call: the proxy is there before any program is.
                    sandbox.egress = await self.backend.attach_egress(
                        await sandbox.netns_pid(), params.egress, params.limits.egress_bytes,
                        session_id=session_id, exercise=params.exercise)
                session = await self._adopt(session_id, tenant, key_id, params, sandbox, snapshot)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sandbox.close())
                raise
        finally:
            self._starting[tenant] -= 1
            if not self._starting[tenant]:
                del self._starting[tenant]
        return session

    async def _snapshot_for(self, tenant: str, params: SessionParams) -> SnapshotRecord:
        record = await asyncio.to_thread(self.archive.index.get, params.snapshot_id)
        if record is None or record.tenant != tenant:
            raise NotFound(f"no snapshot {params.snapshot_id!r}", resource_type="snapshot",
                           resource_name=params.snapshot_id)
        if record.size_bytes > params.limits.scratch_bytes:
            raise InvalidRequest([FieldViolation(
                "snapshot_id", f"the snapshot's {record.size_bytes} bytes do not fit in scratch_bytes="
                               f"{params.limits.scratch_bytes}")])
        return record

    async def _adopt(self, session_id: str, tenant: str, key_id: str, params: SessionParams,
                     sandbox: SessionSandbox, snapshot: SnapshotRecord | None) -> LiveSession:
        """Fill the new sandbox's workspace, record the session, and make it live."""
        limits = params.limits
        if snapshot is not None:
            async for path, chunks in self.archive.restore(snapshot):
                await files.upload(sandbox, session_id, path, chunks, file_size_bytes=limits.file_size_bytes,
                                   scratch_bytes=limits.scratch_bytes)
        for f in params.files:
            await files.upload(sandbox, session_id, f.path, _one(f.content), file_size_bytes=limits.file_size_bytes,
                               scratch_bytes=limits.scratch_bytes)
        now = time.time()
        session = LiveSession(id=session_id, tenant=tenant, key_id=key_id, params=params, sandbox=sandbox,
                              created_at=now, created_mono=time.monotonic(), cpu_base_ns=sandbox.cpu_time_ns())
        record = SessionRecord(
            session_id=session_id, tenant=tenant, key_id=key_id, owner=self.owner, backend=sandbox.backend,
            languages=params.languages, limits=MappingProxyType(limits.as_dict()),
            labels=MappingProxyType(dict(params.labels)), snapshot_id=params.snapshot_id, created_at=now,
            idle_timeout_s=params.idle_timeout_s, max_lifetime_s=params.max_lifetime_s,
            cpu_total_ms=params.cpu_total_ms)
        detail: dict[str, str | int | float | bool] = {"languages": ",".join(params.languages),
                                                       "memory_bytes": limits.memory_bytes,
                                                       "idle_timeout_s": params.idle_timeout_s,
                                                       "max_lifetime_s": params.max_lifetime_s}
        if snapshot is not None:
            detail["snapshot_id"] = snapshot.snapshot_id
        if params.exercise:
            detail["exercise"] = True
        if self.registry is not None:
            await self.registry.claim(session_id)  # before any caller can know the id
        try:
            await asyncio.to_thread(self.store.create, record, self._event(session, "created", detail))
        except BaseException:
            if self.registry is not None:
                await self.registry.release(session_id)
            raise
        self._live[session_id] = session
        if self.metrics is not None:
            self.metrics.sessions_active.add(1, {"tenant": tenant})
        log.info("session %s created for tenant %s", session_id, tenant,
                 extra={"session_id": session_id, "tenant": tenant})
        return session

    async def close(self, session: LiveSession, reason: str) -> None:
        """Close the session now (a running call ends KILLED); idempotent, concurrent callers wait for the same
        close. Its sandbox's teardown failing is logged and counted, never raised."""
        if session.closing is None:
            session.closed = True
            session.close_reason = reason
            session.closed_at = time.time()
            session.closing = asyncio.get_running_loop().create_task(self._close(session))
        await asyncio.shield(session.closing)

    async def _close(self, session: LiveSession) -> None:
        reason = session.close_reason
        try:
            session.peak_memory_bytes = max(session.peak_memory_bytes, session.sandbox.peak_memory_bytes())
            cpu_s = session.cpu_used_ns() / 1e9
            await session.sandbox.close()
        except SandboxFailure as exc:
            log.error("session %s: its sandbox could not be torn down: %s", session.id, exc.message)
            if self.metrics is not None:
                self.metrics.teardown_failures.add(1, {"backend": session.sandbox.backend})
            cpu_s = 0.0
        finally:
            self._live.pop(session.id, None)
            if session.slot is not None:
                session.slot.release()
        if self.registry is not None:
            await self.registry.release(session.id)
        await self._charge_held(session, closing=True)
        cost = session.held_cost
        if self.budgeter is not None:
            with contextlib.suppress(Exception):
                cost = await self.budgeter.session_spent(session.tenant, session.id)
        end = SessionEnd(closed_at=session.closed_at, reason=reason, calls=session.calls, cpu_time_s=cpu_s,
                         cost=cost, kernel_restarts=session.kernel_restarts, last_used_at=session.last_used_at,
                         peak_memory_bytes=session.peak_memory_bytes)
        session.final_cost = cost
        event = self._event(session, "closed",
                            {"reason": reason, "calls": session.calls, "cpu_time_s": round(cpu_s, 3)})
        try:
            await asyncio.to_thread(self.store.end, session.id, end, event)
        except Exception:
            log.exception("session %s: its close could not be recorded", session.id)
        if self.metrics is not None:
            self.metrics.sessions_active.add(-1, {"tenant": session.tenant})
            self.metrics.session_closes.add(1, {"reason": reason})
            self.metrics.session_lifetime.record(session.closed_at - session.created_at, {"reason": reason})
        log.info("session %s closed (%s) after %d calls", session.id, reason, session.calls,
                 extra={"session_id": session.id, "tenant": session.tenant, "reason": reason})

    def _close_later(self, session: LiveSession, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.close(session, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- calls ------------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def turn(self, session: LiveSession, policy: TenantPolicy) -> AsyncIterator[None]:
        """Wait for the session's turn (calls run one at a time, in arrival order) and hold it for the block.
        Taken before anything else a call holds (its admission slot, its budget), so that waiting for a busy
        session holds nothing of the server's. Raises SessionClosed, or SessionBusy when too many wait."""
        if session.closed:
            raise SessionClosed(session.id, session.close_reason)
        if session.lock.locked() and session.waiting >= policy.sessions.max_waiting_calls:
            raise SessionBusy(
                f"session {session.id} is running a call and {session.waiting} more are waiting",
                violations=[QuotaViolation(f"session:{session.id}/max_waiting_calls",
                                           f"at most {policy.sessions.max_waiting_calls} calls may wait")],
                retry_after_s=BUSY_RETRY_S)
        session.waiting += 1
        try:
            with phase("session.turn", **{"sandbox.session_waiting": session.waiting}):
                await session.lock.acquire()
        finally:
            session.waiting -= 1
        try:
            if session.closed:
                raise SessionClosed(session.id, session.close_reason)
            yield
        finally:
            if not session.closed:
                session.last_used_at, session.last_used_mono = time.time(), time.monotonic()
            session.lock.release()

    async def call(self, session: LiveSession, spec: ExecutionSpec, policy: TenantPolicy,
                   on_output: OutputCallback | None = None,
                   on_display: DisplayCallback | None = None) -> ExecutionResult:
        """Run one call in the session; the caller holds its turn. Raises the errors of placing the call's
        input files in the workspace."""
        await self._charge_held(session)
        session.running = spec.execution_id
        try:
            limits = session.params.limits
            for f in spec.files:
                await files.upload(session.sandbox, session.id, f.path, _one(f.content),
                                   file_size_bytes=limits.file_size_bytes, scratch_bytes=limits.scratch_bytes)
            cpu_left = session.params.cpu_total_ms * 1_000_000 - session.cpu_used_ns()
            session.control = CallControl()
            with phase("session.call", **{"sandbox.backend": session.sandbox.backend}):
                result, facts = await run_call(session.sandbox, spec, cpu_left_ns=max(1, cpu_left),
                                               on_output=on_output, on_display=on_display, control=session.control)
        finally:
            session.running = ""
            session.control = None
        session.calls += 1
        session.peak_memory_bytes = max(session.peak_memory_bytes, result.usage.peak_memory_bytes)
        warnings = list(result.warnings)
        if facts.kernel_restarted:
            session.kernel_restarts += 1
            if self.metrics is not None:
                self.metrics.kernel_restarts.add(1, {"tenant": session.tenant})
            await asyncio.to_thread(self.store.record_event, self._event(
                session, "kernel_restarted", {"execution_id": spec.execution_id, "status": result.status.name}))
        warnings += await self._loop_check(session, spec, facts.error_signature, policy)
        if session.closed:
            result = _closed_during(result, session.close_reason)
        elif facts.broken:
            log.error("session %s: its sandbox failed during a call: %s (%s)", session.id, facts.broken,
                      session.sandbox.log_tail()[-500:])
            self._close_later(session, SANDBOX_FAILED)
        elif facts.session_cpu_exhausted or session.cpu_used_ns() >= session.params.cpu_total_ms * 1_000_000:
            warnings.append(f"the session's CPU total of {session.params.cpu_total_ms} ms is spent: it is closed")
            self._close_later(session, CPU_LIMIT)
        if warnings:
            result = dataclasses.replace(result, warnings=tuple(warnings))
        return result

    async def _loop_check(self, session: LiveSession, spec: ExecutionSpec, signature: str,
                          policy: TenantPolicy) -> list[str]:
        """Loop detection: the same failing call, again and again in a row."""
        repeats = policy.sessions.loop_detection.repeats
        if not signature or repeats == 0:
            session.loop_signature, session.loop_count = "", 0
            return []
        key = hashlib.sha256(spec.runtime.language.encode() + b"\0" + spec.code + b"\0"
                             + signature.encode()).hexdigest()
        session.loop_count = session.loop_count + 1 if key == session.loop_signature else 1
        session.loop_signature = key
        if session.loop_count < repeats:
            return []
        if session.loop_count == repeats:
            if self.events is not None:
                self.events.on_session_loop(tenant=session.tenant, session_id=session.id,
                                            language=spec.runtime.language, repeats=repeats, failure=signature,
                                            exercise=spec.exercise)
            await asyncio.to_thread(self.store.record_event, self._event(
                session, "loop_detected", {"repeats": repeats, "failure": signature[:200]}))
        return [f"this exact call has now failed the same way {session.loop_count} times in a row: the agent "
                "seems to be in a loop; change the code or stop"]

    def interrupt(self, execution_id: str) -> bool:
        """Stop the session call running as ``execution_id`` (the admin's kill): its kernel is interrupted, or
        its command killed, and its result says KILLED."""
        session = self.running(execution_id)
        if session is None or session.control is None:
            return False
        session.control.stop(Status.KILLED)
        return True

    # ---- files and snapshots ----------------------------------------------------------------------------------
    async def upload(self, session: LiveSession, path: str, chunks: AsyncIterator[bytes]) -> files.FileEntry:
        session.touch()
        limits = session.params.limits
        try:
            entry = await files.upload(session.sandbox, session.id, path, chunks,
                                       file_size_bytes=limits.file_size_bytes, scratch_bytes=limits.scratch_bytes)
        finally:
            session.touch()
        await asyncio.to_thread(self.store.record_event, self._event(
            session, "uploaded", {"path": path[:1024], "size": entry.size}))
        return entry

    async def delete(self, session: LiveSession, path: str, recursive: bool) -> None:
        session.touch()
        await files.delete(session.sandbox, session.id, path, recursive)
        await asyncio.to_thread(self.store.record_event, self._event(
            session, "deleted", {"path": path[:1024], "recursive": recursive}))

    async def snapshot(self, session: LiveSession, name: str, policy: TenantPolicy) -> SnapshotRecord:
        """Save the workspace, between calls (it waits for a running one)."""
        rules = policy.sessions.snapshots
        if not rules.enabled:
            raise PermissionDenied(f"tenant {session.tenant!r} may not take snapshots", reason="SNAPSHOTS_DISABLED")
        async with session.lock:
            if session.closed:
                raise SessionClosed(session.id, session.close_reason)
            session.touch()
            record = await self.archive.take(session.sandbox, session.tenant, session.id, name,
                                             SnapshotLimits(max_bytes=rules.max_bytes, max_count=rules.max_count))
        await asyncio.to_thread(self.store.record_event, self._event(
            session, "snapshot", {"snapshot_id": record.snapshot_id, "size_bytes": record.size_bytes,
                                  "files": record.files}))
        return record

    async def usage(self, session: LiveSession) -> tuple[int, float]:
        """(workspace bytes used, cost so far) of a live session."""
        used = 0
        with contextlib.suppress(Exception):
            used, _ = await asyncio.wait_for(files.workspace_usage(session.sandbox), 5)
        cost = session.held_cost
        if self.budgeter is not None:
            with contextlib.suppress(Exception):
                cost = await self.budgeter.session_spent(session.tenant, session.id)
        return used, cost

    # ---- held time ---------------------------------------------------------------------------------------------
    async def _charge_held(self, session: LiveSession, closing: bool = False) -> None:
        """Charge the session's held memory since the last charge; close it when that exhausts a budget."""
        if self.budgeter is None:
            return
        policy = self.policies.tenant(session.tenant)
        now = time.monotonic()
        seconds = now - session.held_until_mono
        if policy is None or seconds <= 0:
            return
        price = policy.pricing.session_memory_gb_second
        session.held_until_mono = now
        if price <= 0:
            return
        cost = price * session.params.limits.memory_bytes / GB * seconds
        session.held_charges += 1
        session.held_cost += cost
        try:
            exceeded = await self.budgeter.charge_held(session.tenant, policy, session.id, cost,
                                                       f"held:{session.id}:{session.held_charges}",
                                                       exercise=session.params.exercise)
        except Exception:
            log.exception("session %s: its held time could not be charged", session.id)
            return
        if exceeded and not closing and not session.closed:
            self._close_later(session, BUDGET_EXCEEDED)

    # ---- the sweeper -------------------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self._sweep_once()
            except Exception:
                log.exception("session sweep failed")

    async def _sweep_once(self) -> None:
        now = time.monotonic()
        for session in list(self._live.values()):
            if session.closed:
                continue
            if now >= session.lifetime_deadline:
                self._close_later(session, MAX_LIFETIME)
            elif not session.busy and now >= session.idle_deadline:
                self._close_later(session, IDLE_TIMEOUT)
            elif not session.sandbox.alive() and not session.busy:
                log.error("session %s: its sandbox ended on its own (%s)", session.id,
                          session.sandbox.log_tail()[-500:])
                self._close_later(session, SANDBOX_FAILED)
            elif now - session.held_until_mono >= HELD_CHARGE_INTERVAL_S:
                await self._charge_held(session)
        cutoff = now - IDEMPOTENCY_WINDOW_S
        for key, (_, at) in list(self._by_key.items()):
            if at < cutoff:
                del self._by_key[key]

    def _event(self, session: LiveSession, event: str,
               detail: Mapping[str, str | int | float | bool] | None = None) -> SessionEvent:
        return SessionEvent(session_id=session.id, tenant=session.tenant, key_id=session.key_id, event=event,
                            at=time.time(), detail=MappingProxyType(dict(detail or {})))


async def _one(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _closed_during(result: ExecutionResult, reason: str) -> ExecutionResult:
    return dataclasses.replace(result, status=Status.KILLED, exit_code=-1,
                               message=f"the session was closed while this call ran ({reason})")
