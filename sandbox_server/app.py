"""Composition root: builds the backend, admission, servicer and server from Settings; owns start/stop order.

Start: backend (reaps leftovers of a crash, probes the host) -> server (port bound) -> health SERVING.
Stop: health NOT_SERVING and admission closed -> server drains in-flight calls up to the grace period, then
cancels the rest -> backend waits for every teardown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2

from sandbox_server.admin.servicer import AdminServicer
from sandbox_server.backends.base import Backend
from sandbox_server.backends.registry import build_backend
from sandbox_server.execution.admission import Admission
from sandbox_server.execution.servicer import SandboxServicer
from sandbox_server.interceptors import ChainDeps
from sandbox_server.policy.embedded import seed_policies
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.server import SERVICE_NAME, build_server, server_credentials
from sandbox_server.settings import Settings
from sandbox_server.stores.sqlite import Stores, open_stores, record_version

log = logging.getLogger(__name__)


class App:
    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else build_backend(settings)
        self.admission = Admission(settings.max_running, settings.max_queued)
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port = 0
        self.stores: Stores | None = None
        self.policies: PolicyRegistry | None = None

    def _open_stores_and_policies(self) -> tuple[Stores, PolicyRegistry]:
        """Raises PolicyLoadError: the server does not start on a policy directory that does not validate."""
        stores = open_stores(self.settings.data_dir)
        try:
            directory = self.settings.policies_dir or seed_policies(self.settings.data_dir / "policies")
            recorded = stores.versions.list(1)
            registry = PolicyRegistry(
                directory,
                poll_interval_s=self.settings.policy_poll_interval_s,
                first_version=recorded[0].version + 1 if recorded else 1,
            )
            registry.set_on_change(lambda new: record_version(stores.versions, registry, new))
            registry.load()
        except BaseException:
            stores.close()
            raise
        return stores, registry

    async def start(self) -> None:
        self.stores, self.policies = self._open_stores_and_policies()
        try:
            await self.backend.start()
        except BaseException:
            self.stores.close()
            raise
        self.servicer = SandboxServicer(self.settings, self.backend, self.admission, self.policies)
        admin = AdminServicer(self.policies, self.stores.keys, self.stores.versions)
        chain = ChainDeps(keys=None if self.settings.dev_mode else self.stores.keys, policies=self.policies,
                          audit=self.stores.audit)
        try:
            await self.policies.start()
            self.server, self.health = build_server(self.settings, self.servicer, admin, chain)
            address = f"{_host(self.settings.host)}:{self.settings.port}"
            credentials = server_credentials(self.settings)
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
            await self.server.start()
        except BaseException:
            await self.policies.aclose()
            await self.backend.aclose()
            self.stores.close()
            raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new work, let in-flight executions finish (up to the grace period), tear down."""
        grace = self.settings.drain_timeout_s if grace_s is None else grace_s
        self.admission.close()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        try:
            if self.server is not None:
                await self.server.stop(grace)
        finally:
            try:
                if self.policies is not None:
                    await self.policies.aclose()
                await self.backend.aclose()
            finally:
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


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
