"""Composition root: builds the backend, admission, servicer and server from Settings; owns start/stop order.

Start: backend (reaps leftovers of a crash, probes the host) -> host-pressure sampler -> sessions (closes the
records a crash left open) -> server (port bound) -> the web console, with console_port -> health SERVING.
Stop: the web console -> health NOT_SERVING and admission closed -> server drains in-flight calls up to the grace
period, then cancels the rest -> every session closed -> backend waits for every teardown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2
from opentelemetry.sdk.trace.export import SpanExporter

from sandbox_server.admin.operations import Operations
from sandbox_server.admin.servicer import AdminServicer
from sandbox_server.backends.base import Backend
from sandbox_server.backends.registry import build_backend
from sandbox_server.cost.budgeter import Budgeter
from sandbox_server.egress.gateway import EgressGateway
from sandbox_server.execution.admission import Admission
from sandbox_server.execution.pressure import PressureConfig, PressureMonitor, sandbox_memory_reader
from sandbox_server.execution.servicer import SandboxServicer
from sandbox_server.incidents import IncidentManager, build_sinks
from sandbox_server.interceptors import ChainDeps, build_chain
from sandbox_server.interceptors._concurrency import RedisConcurrency
from sandbox_server.interceptors._shared_idempotency import SharedIdempotency
from sandbox_server.interceptors.forward import ForwardInterceptor
from sandbox_server.interceptors.idempotency import IdempotencyInterceptor
from sandbox_server.interceptors.rate_limit import DEFAULT_STORAGE_URI
from sandbox_server.observers import IncidentFeed, IncidentMetrics
from sandbox_server.policy.embedded import seed_policies
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.policy.replicas import PolicySync
from sandbox_server.server import SERVICE_NAME, build_server, forward_credentials, server_credentials
from sandbox_server.sessions.manager import SessionManager
from sandbox_server.sessions.registry import SessionRegistry
from sandbox_server.sessions.servicer import SessionServicer
from sandbox_server.sessions.snapshots import SnapshotArchive
from sandbox_server.settings import Settings
from sandbox_server.shared import shared_redis
from sandbox_server.stores.embedded import Stores, open_stores
from sandbox_server.stores.outbox import OutboxAuditStore
from sandbox_server.stores.sqlite import record_version
from sandbox_server.telemetry import ExecutionMetrics, Telemetry, build_telemetry

if TYPE_CHECKING:
    from sandbox_server.console import Console

log = logging.getLogger(__name__)

FLEET_SESSIONS_PREFIX = "sandbox:sessions:"  # Redis: each tenant's live sessions on every replica
SHARED_REFRESH_S = 1.0
"""With a shared database, how stale another server's quarantine may be here at most (unless configured lower)."""


class App:
    def __init__(
        self, settings: Settings, backend: Backend | None = None, span_exporters: Sequence[SpanExporter] = (),
    ) -> None:
        """``span_exporters``: extra span exporters (tests pass an in-memory one)."""
        self.settings = settings
        self.span_exporters = tuple(span_exporters)
        self.telemetry: Telemetry | None = None
        self.incidents: IncidentManager | None = None
        self.metrics_port: int | None = None
        self.idempotency: IdempotencyInterceptor | None = None
        self.backend = backend if backend is not None else build_backend(settings)
        self.pressure = PressureMonitor(PressureConfig.from_settings(settings),
                                        read_memory=sandbox_memory_reader(settings.cgroup_parent))
        self.admission = Admission(settings.max_running, settings.max_queued, pressure=self.pressure)
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port = 0
        self.stores: Stores | None = None
        self.policies: PolicyRegistry | None = None
        self.sessions: SessionManager | None = None
        self.egress: EgressGateway | None = None
        self.redis: Any = None  # redis.asyncio.Redis, with redis_url
        self.concurrency: RedisConcurrency | None = None
        self.policy_sync: PolicySync | None = None
        self.session_registry: SessionRegistry | None = None
        self.fleet_sessions: RedisConcurrency | None = None
        self.forward: ForwardInterceptor | None = None
        self.console: Console | None = None  # the operators' web console, with console_port
        self.console_port: int | None = None

    def _open_stores_and_policies(self) -> tuple[Stores, PolicyRegistry]:
        """Raises PolicyLoadError: the server does not start on a policy directory that does not validate."""
        stores = open_stores(self.settings.data_dir, self.settings.database_url)
        try:
            directory = self.settings.policies_dir or seed_policies(self.settings.data_dir / "policies")
            recorded = stores.versions.list(1)
            registry = PolicyRegistry(
                directory,
                poll_interval_s=self.settings.policy_poll_interval_s,
                first_version=recorded[0].version + 1 if recorded else 1,
            )
            if self.settings.database_url is not None:  # replicas: the shared history is the policy
                self.policy_sync = PolicySync(registry, stores.versions)
                self.policy_sync.load()
            else:
                registry.set_on_change(lambda new: record_version(stores.versions, registry, new))
                registry.load()
        except BaseException:
            stores.close()
            raise
        return stores, registry

    async def start(self) -> None:
        self.stores, self.policies = self._open_stores_and_policies()
        self.telemetry = build_telemetry(self.settings, self.span_exporters)
        try:
            await self.backend.start()
        except BaseException:
            self.telemetry.shutdown()
            self.stores.close()
            raise
        try:
            await self._start_serving(self.stores, self.policies, self.telemetry)
        except BaseException:
            await self.pressure.aclose()
            if self.sessions is not None:
                await self.sessions.aclose()
            if self.incidents is not None:
                await self.incidents.aclose()
            if self.policy_sync is not None:
                await self.policy_sync.aclose()
            await self.policies.aclose()
            await self.backend.aclose()
            self.telemetry.shutdown()
            self.stores.close()
            raise
        if self.settings.console_port is not None:
            try:
                await self._start_console()
            except BaseException:
                await self.stop(grace_s=0)
                raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)  # type: ignore[union-attr]
        # What start-up built (modules, gRPC, telemetry, policies: ~100k objects) lives as long as the server: out
        # of the collector's generations, a full collection walks only what requests made since, instead of
        # stalling the event loop ~50 ms at a time under load (stop() gives them back). No collection first:
        # freezing is O(1), a collection of a large process is not, and start-up leaves little garbage.
        gc.freeze()

    async def _start_serving(self, stores: Stores, policies: PolicyRegistry, telemetry: Telemetry) -> None:
        settings = self.settings
        metrics = telemetry.metrics
        metrics.watch_queue(lambda: self.admission.queued)
        if isinstance(stores.audit, OutboxAuditStore):
            metrics.watch_outbox(stores.audit.outbox.count)
        await self.pressure.start(metrics)  # judged from the first request on
        sinks = [*build_sinks(settings.incidents), IncidentMetrics(metrics)]
        incident_settings = settings.incidents
        if settings.database_url is not None:  # a quarantine set on another server is enforced here within 1 s
            incident_settings = incident_settings.model_copy(update={
                "refresh_interval_s": min(incident_settings.refresh_interval_s, SHARED_REFRESH_S)})
        self.incidents = IncidentManager(stores.incidents, incident_settings, sinks)
        await self.incidents.start()
        budgeter = Budgeter(stores.costs, metrics, events=self.incidents)
        self.sessions = SessionManager(
            settings, self.backend, stores.sessions,
            SnapshotArchive(settings.data_dir / "snapshots", stores.snapshots, stores.archives),
            self.admission, policies, budgeter, metrics, events=self.incidents)
        await self.sessions.start()
        self.servicer = SandboxServicer(settings, self.backend, self.admission, policies, budgeter, self.sessions)
        admin = AdminServicer(policies, stores.keys, stores.versions, ops=Operations(
            audit=stores.audit, costs=stores.costs, incidents=self.incidents, executions=self.servicer,
            sessions=self.sessions))
        feed = IncidentFeed(self.incidents, metrics)
        self.backend.on_teardown_failure = feed.on_teardown_failure
        self.egress = EgressGateway(settings)
        self.egress.observers.append(feed.on_egress_refusal)
        self.backend.egress = self.egress
        concurrency = shared_keys = None
        if settings.redis_url is not None:
            self.redis = shared_redis(settings.redis_url)
            concurrency = self.concurrency = RedisConcurrency(self.redis)
            shared_keys = SharedIdempotency(self.redis, settings.idempotency_window_s)
            # The address is known once the port is bound (below); no session exists before.
            self.session_registry = SessionRegistry(self.redis, settings.advertise_address or "")
            self.sessions.registry = self.session_registry
            self.fleet_sessions = RedisConcurrency(self.redis, prefix=FLEET_SESSIONS_PREFIX)
            self.sessions.fleet_sessions = self.fleet_sessions
            self.forward = ForwardInterceptor(self.session_registry, self.sessions, forward_credentials(settings))
        self.idempotency = IdempotencyInterceptor(
            settings.idempotency_window_s, settings.idempotency_max_bytes, settings.idempotency_grace_s,
            shared=shared_keys)
        chain = ChainDeps(
            keys=None if settings.dev_mode else stores.keys, policies=policies, audit=stores.audit,
            telemetry=telemetry, budgeter=budgeter, mitigations=self.incidents, idempotency=self.idempotency,
            call_observers=(feed,), execution_observers=(ExecutionMetrics(metrics), feed),
            rate_limit_storage=settings.redis_url or DEFAULT_STORAGE_URI, concurrency=concurrency,
            forward=self.forward,
        )
        await policies.start()
        if self.policy_sync is not None:
            await self.policy_sync.start()
        self.server, self.health = build_server(settings, self.servicer, admin, build_chain(chain),
                                                SessionServicer(settings, self.sessions, policies))
        address = f"{_host(settings.host)}:{settings.port}"
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.session_registry is not None:
            self.session_registry.address = settings.advertise_address or advertised(settings.host, self.port)
            self.session_registry.start()
        if settings.metrics_port is not None:
            self.metrics_port = telemetry.serve_metrics(settings.metrics_host, settings.metrics_port)
        # The ports actually bound (0 in the settings picks one): no sandbox's proxy may reach them.
        self.egress.server_ports.update(p for p in (self.port, self.metrics_port) if p)
        await self.server.start()

    async def _start_console(self) -> None:
        """After the gRPC server: every console action is an Admin API call to it."""
        from sandbox_server.console import Console  # Starlette, uvicorn and Jinja2 load only when it is on

        self.console = Console(self.settings, self.port)
        await self.console.start()
        self.console_port = self.console.port
        if self.egress is not None:
            self.egress.server_ports.add(self.console.port)  # no sandbox's proxy may reach it either

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new work, let in-flight executions finish (up to the grace period), tear down."""
        grace = self.settings.drain_timeout_s if grace_s is None else grace_s
        if self.console is not None:
            await self.console.stop()  # its actions are Admin API calls: it goes before the server drains
        self.admission.close()
        gc.unfreeze()  # what start() froze becomes collectable again once this server lets go of it
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        try:
            if self.server is not None:
                await self.server.stop(grace)
        finally:
            try:
                await self.pressure.aclose()  # no new work comes in any more
                if self.sessions is not None:
                    await self.sessions.aclose()
                if self.idempotency is not None:
                    await self.idempotency.aclose()  # executions whose callers went away
                if self.policy_sync is not None:
                    await self.policy_sync.aclose()
                if self.policies is not None:
                    await self.policies.aclose()
                if self.concurrency is not None:
                    await self.concurrency.aclose()
                if self.session_registry is not None:
                    await self.session_registry.aclose()
                if self.fleet_sessions is not None:
                    await self.fleet_sessions.aclose()
                if self.forward is not None:
                    await self.forward.aclose()
                if self.redis is not None:
                    await self.redis.aclose()
                await self.backend.aclose()
                if self.incidents is not None:
                    await self.incidents.aclose()
            finally:
                if self.telemetry is not None:
                    self.telemetry.shutdown()
                if self.stores is not None:
                    self.stores.close()

    async def serve_until_signalled(self, on_started: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            if on_started is not None:
                on_started()
            await stop.wait()
            log.info("signal received: draining (up to %.0f s)", self.settings.drain_timeout_s)
        finally:
            await self.stop()


def advertised(host: str, port: int) -> str:
    """The address replicas reach this server at: the bound one (settings refuse a wildcard host without
    ``advertise_address``)."""
    return f"{_host(host)}:{port}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
