"""The server's side of egress: one proxy per sandbox that has network, its listening socket made inside that
sandbox's network namespace (netns.py), its counters read into the result's usage, its refusals reported.

Backends call ``attach`` with the pid of a process in the sandbox once it exists and before the program runs
(a one-shot jail waits for it; a session's agent runs nothing before its first call), and ``aclose`` the link
when the sandbox ends. Everything about what is allowed is the proxy's (proxy.py, rules.py); this module only
wires it to sandboxes, settings and observers.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import psutil

from sandbox_server.egress.credentials import SecretSource
from sandbox_server.egress.netns import PROXY_PORT, listen_in, net_namespace
from sandbox_server.egress.proxy import EgressLimits, EgressProxy, EgressStats, Refusal
from sandbox_server.egress.resolver import Resolver, StaticResolver, SystemResolver
from sandbox_server.egress.rules import IPAddress
from sandbox_server.errors import SandboxGone
from sandbox_server.execution.spec import EgressSpec
from sandbox_server.guardrails.secrets import add_known_secret
from sandbox_server.settings import Settings

log = logging.getLogger("sandbox_server.egress")


@dataclass(frozen=True)
class EgressContext:
    """Who a proxy works for: what its refusals and counters are reported under."""

    tenant: str
    execution_id: str = ""
    session_id: str = ""
    exercise: bool = False


RefusalObserver = Callable[[EgressContext, EgressSpec, Refusal], None]


@dataclass
class EgressLink:
    """One sandbox's proxy, from attach to aclose."""

    proxy: EgressProxy
    context: EgressContext
    _closed: bool = field(default=False)

    @property
    def stats(self) -> EgressStats:
        return self.proxy.stats

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.proxy.aclose()


class EgressGateway:
    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self.settings = settings
        base: Resolver = resolver or SystemResolver()
        if settings.egress_hosts:
            base = StaticResolver(settings.egress_hosts, fallback=base)
        self.resolver = base
        self.secrets = SecretSource(settings.egress_secrets_file)
        self.ssl_context = ssl.create_default_context()
        if settings.egress_ca_file is not None:
            self.ssl_context.load_verify_locations(cafile=str(settings.egress_ca_file))
        # The server's own listening ports, refused on its own addresses whatever a list says; the app adds the
        # ports it actually bound (a port of 0 in the settings is chosen at start).
        self.server_ports: set[int] = {p for p in (settings.port, settings.metrics_port) if p}
        self.observers: list[RefusalObserver] = []

    async def attach(self, pid: int, egress: EgressSpec, max_bytes: int, context: EgressContext) -> EgressLink:
        """A proxy serving the sandbox whose process ``pid`` is given, listening inside its namespace.

        Raises SandboxGone (UNAVAILABLE) when that process has ended (a zombie's namespace is gone too), and
        OSError (netns.NamespaceError) when the socket cannot be made in its namespace for any other reason.
        """
        self._register_secrets(egress)
        try:
            sock = await asyncio.to_thread(listen_in, pid, PROXY_PORT)
        except OSError as exc:
            # ENOENT/ESRCH also come from the server's own /proc/thread-self: only a namespace that is gone
            # now means the sandbox's process ended, which is no fault of the server's set-up.
            if exc.errno in (errno.ENOENT, errno.ESRCH) and net_namespace(pid) is None:
                log.warning("sandbox process %d ended before its egress proxy was attached: %s", pid, exc)
                raise SandboxGone("the sandbox ended before its egress proxy could be attached (the program "
                                  "never started); try again") from exc
            raise
        rules = replace(egress.rules, server_ports=frozenset(self.server_ports),
                        local_addresses=frozenset(_local_addresses()))
        proxy = EgressProxy(
            rules, EgressLimits(max_bytes=max_bytes, max_connections=egress.max_connections,
                                connections_per_s=egress.connections_per_s),
            resolver=self.resolver, secrets=self.secrets, ssl_context=self.ssl_context,
            on_refusal=lambda refusal: self._refused(context, egress, refusal),
            connect_timeout_s=self.settings.egress_connect_timeout_s)
        try:
            await proxy.serve(sock)
        except BaseException:
            sock.close()
            await proxy.aclose()
            raise
        return EgressLink(proxy, context)

    def _register_secrets(self, egress: EgressSpec) -> None:
        """The values this sandbox's proxy may inject, for the output guardrail to redact should the program
        get one back (an upstream echoing its headers)."""
        for entry in egress.rules.entries:
            for credential in entry.credentials:
                try:
                    value = self.secrets.value(credential)
                except Exception as exc:  # missing now: the request that needs it is refused then
                    log.debug("credential for %s not resolvable yet: %s", entry.host, type(exc).__name__)
                else:
                    add_known_secret(value)
                    add_known_secret(credential.header_value(value))

    def _refused(self, context: EgressContext, egress: EgressSpec, refusal: Refusal) -> None:
        for observer in self.observers:
            try:
                observer(context, egress, refusal)
            except Exception:
                log.exception("an egress refusal observer failed")


def _local_addresses() -> set[IPAddress]:
    """Every address of the host's own interfaces (the server's ports are refused on each)."""
    out: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family.name in ("AF_INET", "AF_INET6"):
                try:
                    out.add(ipaddress.ip_address(addr.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return out
