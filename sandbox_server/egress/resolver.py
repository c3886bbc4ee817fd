"""Name resolution for the egress proxy. The sandbox has no DNS of its own: the proxy resolves every name here,
then checks each address against the rules before it connects (``rules.check_address``).

Resolvers take names only, already in normal form (``rules.normalise_host``); an IP literal never reaches them,
and :class:`SystemResolver` refuses one rather than let ``getaddrinfo`` read ``2130706433`` as 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Protocol

from sandbox_server.egress.rules import IPAddress, normalise_host

__all__ = ["DEFAULT_TIMEOUT_S", "ResolveError", "Resolver", "StaticResolver", "SystemResolver"]

DEFAULT_TIMEOUT_S = 2.0


class ResolveError(Exception):
    """The name has no usable address (unknown, no answer in time, or not a name at all)."""


class Resolver(Protocol):
    async def resolve(self, host: str) -> list[IPAddress]:
        """Every address of ``host``, in the resolver's order, without duplicates; raises ResolveError."""
        ...


def _name(host: str) -> str:
    try:
        normal = normalise_host(host)
    except ValueError:
        raise ResolveError(f"not a host name: {host[:64]!r}") from None
    if not isinstance(normal, str):
        raise ResolveError(f"an IP literal is not resolved: {host!r}")
    return normal


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


class SystemResolver:
    """The host's resolver (``getaddrinfo`` in the loop's executor, both families), bounded by a timeout. A
    timed-out lookup's thread runs on to its own end: ``getaddrinfo`` cannot be cancelled."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    async def resolve(self, host: str) -> list[IPAddress]:
        name = _name(host)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.getaddrinfo(name, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise ResolveError(f"resolving {name!r} took longer than {self.timeout_s:g} s") from None
        except (OSError, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {name!r}: {exc}") from None
        found: list[IPAddress] = []
        for family, _type, _proto, _canonname, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.append(ipaddress.ip_address(sockaddr[0]))
                except ValueError:
                    continue
        if not found:
            raise ResolveError(f"no address for {name!r}")
        return _unique(found)


class StaticResolver:
    """A fixed table of names to addresses (tests; an operator's overrides), asking ``fallback`` for any other
    name, or refusing it when there is none."""

    def __init__(self, table: Mapping[str, Iterable[IPAddress | str]], fallback: Resolver | None = None) -> None:
        self._table: dict[str, list[IPAddress]] = {}
        for name, addresses in table.items():
            normal = normalise_host(name)
            if not isinstance(normal, str):
                raise ValueError(f"static resolver: {name!r} is an IP literal, not a name")
            self._table[normal] = _unique(a if not isinstance(a, str) else ipaddress.ip_address(a) for a in addresses)
        self._fallback = fallback

    async def resolve(self, host: str) -> list[IPAddress]:
        name = _name(host)
        addresses = self._table.get(name)
        if addresses is None:
            if self._fallback is None:
                raise ResolveError(f"unknown name {name!r}")
            return await self._fallback.resolve(name)
        if not addresses:
            raise ResolveError(f"no address for {name!r}")
        return list(addresses)
