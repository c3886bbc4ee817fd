"""Egress rules: which names and ports a sandbox may reach, and which resolved addresses it may connect to.

Pure: no I/O, no clock. Two separate questions, both asked for every connection:

- :meth:`EgressRules.match`: does the allow-list name this host (a DNS name or an IP literal) with this port?
- :meth:`EgressRules.check_address`: may a connection be made to this *resolved* address? The proxy resolves
  the name itself, checks every address, and connects to exactly a checked one, so a name the list allows
  cannot smuggle in an internal address (DNS rebinding, a record pointing at the metadata service).

Names are compared in one normal form (:func:`normalise_host`): lower case, no trailing dot, A-labels for
internationalised names, and IP literals as :mod:`ipaddress` objects (IPv4-mapped IPv6 as IPv4). Anything that
is not a valid LDH name or a strict IP literal is ``bad_host``, including the numeric forms ``inet_aton`` and
browsers accept (``2130706433``, ``0x7f.1``, ``127.1``): they are neither matched nor resolved.

Fails closed: an address in a range this module does not know to be public unicast is refused unless an
entry names that exact IP literal.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "BAD_HOST",
    "CREDENTIALS_NEED_HTTP",
    "HOST_NOT_ALLOWED",
    "LOOPBACK_ADDRESS",
    "METADATA_OR_LINK_LOCAL",
    "MULTICAST",
    "PORT_NOT_ALLOWED",
    "PRIVATE_ADDRESS",
    "SERVER_PORT",
    "UNSPECIFIED",
    "AllowEntry",
    "Credential",
    "EgressRules",
    "HttpRoute",
    "IPAddress",
    "canonical_address",
    "covers",
    "narrow",
    "normalise_host",
    "within",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refusal reasons (stable strings: logs, metrics and the sandbox's error responses carry them).
BAD_HOST = "bad_host"
HOST_NOT_ALLOWED = "host_not_allowed"
PORT_NOT_ALLOWED = "port_not_allowed"
CREDENTIALS_NEED_HTTP = "credentials_need_http"
METADATA_OR_LINK_LOCAL = "metadata_or_link_local"
MULTICAST = "multicast"
UNSPECIFIED = "unspecified"
SERVER_PORT = "server_port"
PRIVATE_ADDRESS = "private_address"
LOOPBACK_ADDRESS = "loopback_address"

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Link-local and cloud metadata services: never reachable, whatever the list says. 169.254.169.254 (AWS, GCP,
# Azure, OpenStack, DigitalOcean) is inside 169.254/16; fd00:ec2::254 is AWS's IPv6 metadata endpoint;
# 100.100.100.200 is Alibaba Cloud's, 192.0.0.192 Oracle Cloud's (classic), 168.63.129.16 Azure's WireServer
# (VM agent configuration and certificates).
_METADATA_V4 = (_V4("169.254.0.0/16"), _V4("100.100.100.200/32"), _V4("192.0.0.192/32"), _V4("168.63.129.16/32"))
_METADATA_V6 = (_V6("fe80::/10"), _V6("fd00:ec2::254/128"))
_MULTICAST_V4 = (_V4("224.0.0.0/4"), _V4("255.255.255.255/32"))
_MULTICAST_V6 = (_V6("ff00::/8"),)
_UNSPECIFIED_V4 = (_V4("0.0.0.0/8"),)
_UNSPECIFIED_V6 = (_V6("::/128"),)
_LOOPBACK_V4 = (_V4("127.0.0.0/8"),)
_LOOPBACK_V6 = (_V6("::1/128"),)
# Not public unicast: private, shared (CGNAT), benchmarking, IETF protocol assignments, documentation, the
# deprecated 6to4 relay anycast, and the reserved 240/4. Reachable only when named as an exact IP literal.
_PRIVATE_V4 = (
    _V4("10.0.0.0/8"), _V4("172.16.0.0/12"), _V4("192.168.0.0/16"), _V4("100.64.0.0/10"), _V4("198.18.0.0/15"),
    _V4("192.0.0.0/24"), _V4("192.0.2.0/24"), _V4("198.51.100.0/24"), _V4("203.0.113.0/24"), _V4("192.88.99.0/24"),
    _V4("240.0.0.0/4"),
)
# IPv6 is public only inside 2000::/3 (everything else, fc00::/7 ULA and 64:ff9b::/96 NAT64 included, is
# refused unless named), and not even all of that: IETF assignments (2001::/23, which holds Teredo 2001::/32),
# documentation (2001:db8::/32, 3fff::/20), 6to4 (2002::/16) and SRv6 SIDs (5f00::/16).
_GLOBAL_V6 = _V6("2000::/3")
_PRIVATE_V6 = (_V6("2001::/23"), _V6("2001:db8::/32"), _V6("2002::/16"), _V6("3fff::/20"), _V6("5f00::/16"))

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# WHATWG's "ends in a number": such a host is an IPv4 address in some parser's eyes (inet_aton reads
# "2130706433", "0x7f.1" and "127.1" as 127.0.0.1), so it is never treated as a name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers a credential may not set: they frame or route the message, so the proxy owns them.
_RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-connection", "expect",
})
MAX_NAME_LENGTH = 253


def normalise_host(host: str) -> str | IPAddress:
    """The normal form of a host: an IP address for an IP literal (``[v6]`` brackets allowed, IPv4-mapped IPv6
    as IPv4), else a lower-case A-label name without a trailing dot. Raises ValueError for anything else."""
    text = host
    if "%" in text:  # an IPv6 zone id names an interface, never a destination we allow
        raise ValueError(f"bad host {host!r}")
    if text.startswith("[") and text.endswith("]"):
        try:
            return canonical_address(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise ValueError(f"bad IPv6 literal {host!r}") from None
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise ValueError(f"bad host {host!r}")
    try:
        return canonical_address(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text.isascii():
        # Only a name that survives the round trip: IDNA 2003 maps some characters to others or to nothing
        # ("ß" to "ss", a zero-width space away), and a name should not quietly become a different name.
        try:
            a_labels = text.encode("idna").decode("ascii")
            same = a_labels.encode("ascii").decode("idna") == unicodedata.normalize("NFC", text)
        except UnicodeError:
            same = False
        if not same:
            raise ValueError(f"bad internationalised name {host!r}")
        text = a_labels
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"name longer than {MAX_NAME_LENGTH} characters: {host[:64]!r}...")
    labels = text.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label) or (label.startswith("xn--") and not _valid_a_label(label)):
            raise ValueError(f"bad host {host!r}")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise ValueError(f"numeric host that is not a dotted-quad IPv4 address: {host!r}")
    return text


def _valid_a_label(label: str) -> bool:
    """An A-label is valid when it decodes and encodes back to itself (IDNA 2003 nameprep, the stdlib's): that
    refuses undecodable ones, ones that decode to plain ASCII or to characters nameprep prohibits."""
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
        return not decoded.isascii() and decoded.encode("idna").decode("ascii") == label
    except UnicodeError:
        return False


def canonical_address(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (``::ffff:a.b.c.d``) as its IPv4 address: it reaches exactly that address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries and a translator or tunnel could deliver to: IPv4-compatible
    (::a.b.c.d) and SIIT (::ffff:0:a.b.c.d), NAT64 (64:ff9b::/96 and the local-use 64:ff9b:1::/48, whose
    embedding depends on the prefix length, so its low 32 bits are taken: conservative), 6to4 (2002::/16) and
    Teredo (2001::/32, server and obfuscated client). They are judged against the always-refused ranges too."""
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if (value >> 32 == 0 and value > 1) or value >> 32 == 0xFFFF0000:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address in _V6("64:ff9b::/96") or address in _V6("64:ff9b:1::/48"):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _in(address: IPAddress, v4: tuple[_V4, ...], v6: tuple[_V6, ...]) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in net for net in v4)
    return any(address in net for net in v6)


@dataclass(frozen=True)
class Credential:
    """A header the proxy sets on requests to an entry's host, its value from the server's environment (``env``)
    or secrets file (``secret``): exactly one of the two. The value never reaches the sandbox's request."""

    header: str
    env: str | None = None
    secret: str | None = None
    template: str = "{value}"

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.header) or self.header.lower() in _RESERVED_HEADERS:
            raise ValueError(f"credential header {self.header!r} is not a header a credential may set")
        if (self.env is None) == (self.secret is None) or not (self.env or self.secret):
            raise ValueError(f"credential for {self.header!r} needs exactly one of env or secret")
        if "{value}" not in self.template:
            raise ValueError(f"credential template for {self.header!r} has no {{value}}")

    def header_value(self, value: str) -> str:
        # str.replace, not str.format: the template is data, never a format string with attribute lookups.
        return self.template.replace("{value}", value)


@dataclass(frozen=True)
class AllowEntry:
    """One allowed destination: an exact DNS name, ``*.suffix`` (any name ending in ``.suffix``, never ``suffix``
    itself) or an IP literal; the ports allowed with it; credentials to inject on requests to it. The host is
    stored in normal form (:func:`normalise_host`); a host that has none raises ValueError."""

    host: str
    ports: tuple[int, ...]
    credentials: tuple[Credential, ...] = ()
    _ip: IPAddress | None = field(init=False, repr=False, compare=False, default=None)
    _suffix: str | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not self.ports or any(not isinstance(p, int) or not 1 <= p <= 65535 for p in self.ports):
            raise ValueError(f"egress entry {self.host!r} needs ports between 1 and 65535, got {self.ports!r}")
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "credentials", tuple(self.credentials))
        if self.host.startswith("*."):
            suffix = normalise_host(self.host[2:])
            if not isinstance(suffix, str):
                raise ValueError(f"egress entry {self.host!r}: a wildcard covers names, not IP addresses")
            object.__setattr__(self, "_suffix", suffix)
            object.__setattr__(self, "host", "*." + suffix)
            return
        normal = normalise_host(self.host)
        if isinstance(normal, str):
            object.__setattr__(self, "host", normal)
        else:
            object.__setattr__(self, "_ip", normal)
            object.__setattr__(self, "host", str(normal))

    @property
    def ip(self) -> IPAddress | None:
        """The address, when the host is an IP literal."""
        return self._ip

    @property
    def wildcard_suffix(self) -> str | None:
        """``suffix`` for a ``*.suffix`` entry."""
        return self._suffix

    def matches_host(self, host: str | IPAddress) -> bool:
        """Whether this entry's host pattern covers ``host`` (already in normal form)."""
        if not isinstance(host, str):
            return self._ip is not None and self._ip == host
        if self._suffix is not None:
            return host.endswith("." + self._suffix)
        return self._ip is None and self.host == host

    def specificity(self) -> tuple[int, int]:
        # An exact name or literal beats any wildcard; a longer suffix beats a shorter one.
        return (0, len(self._suffix)) if self._suffix is not None else (1, 0)


@dataclass(frozen=True)
class HttpRoute:
    """Where a plain ``http://`` request goes: the entry that allows it, the upstream port, and whether the hop
    onward is TLS (always, when the entry injects credentials: a secret never crosses the network in clear)."""

    entry: AllowEntry
    port: int
    tls: bool


@dataclass(frozen=True)
class EgressRules:
    """A sandbox's egress: the allow-list, the server's own listening ports, the host's own addresses."""

    entries: tuple[AllowEntry, ...]
    server_ports: frozenset[int] = frozenset()
    local_addresses: frozenset[IPAddress] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "server_ports", frozenset(self.server_ports))
        object.__setattr__(self, "local_addresses", frozenset(canonical_address(a) for a in self.local_addresses))

    def match(self, host: str, port: int) -> AllowEntry | None:
        """The entry allowing this name or IP literal with this port, else None."""
        found = self.decide(host, port)
        return found if isinstance(found, AllowEntry) else None

    def decide(self, host: str, port: int) -> AllowEntry | str:
        """The most specific entry allowing ``host`` with ``port``, else the reason: ``bad_host``,
        ``host_not_allowed`` or ``port_not_allowed``."""
        candidates = self._candidates(host)
        if isinstance(candidates, str):
            return candidates
        with_port = [e for e in candidates if port in e.ports]
        if not with_port:
            return PORT_NOT_ALLOWED
        return max(with_port, key=AllowEntry.specificity)  # max keeps the first of equals: list order breaks ties

    def route_connect(self, host: str, port: int) -> AllowEntry | str:
        """``decide`` for a CONNECT tunnel. An entry with credentials refuses it: the proxy does not intercept TLS
        (that would need a CA the sandbox trusts and would let the proxy read all of the sandbox's traffic), so
        credentials can only be added to plain ``http://`` requests it forwards over TLS itself."""
        found = self.decide(host, port)
        if isinstance(found, AllowEntry) and found.credentials:
            return CREDENTIALS_NEED_HTTP
        return found

    def route_http(self, host: str, port: int) -> HttpRoute | str:
        """Where a plain ``http://host:port`` request goes, else the reason. With credentials the request goes
        over TLS to ``port`` when the entry lists it, and a request to port 80 the entry does not list goes to
        the entry's first port."""
        found = self.decide(host, port)
        if isinstance(found, AllowEntry):
            return HttpRoute(found, port, tls=bool(found.credentials))
        if found == PORT_NOT_ALLOWED and port == 80:
            candidates = self._candidates(host)
            credentialed = [e for e in candidates if e.credentials] if not isinstance(candidates, str) else []
            if credentialed:
                entry = max(credentialed, key=AllowEntry.specificity)
                return HttpRoute(entry, entry.ports[0], tls=True)
        return found

    def check_address(self, address: IPAddress, port: int) -> str | None:
        """None when a connection to this resolved address and port may be made, else the reason."""
        address = canonical_address(address)
        reason = self._always_refused(address, port)
        if reason is None and isinstance(address, ipaddress.IPv6Address):
            for embedded in _embedded_ipv4(address):
                reason = reason or self._always_refused(embedded, port)
        if reason is not None:
            return reason
        if _in(address, _LOOPBACK_V4, _LOOPBACK_V6):
            return None if self._names_literal(address, port) else LOOPBACK_ADDRESS
        if address in self.local_addresses or not _public(address):
            return None if self._names_literal(address, port) else PRIVATE_ADDRESS
        return None

    def _candidates(self, host: str) -> list[AllowEntry] | str:
        try:
            normal = normalise_host(host)
        except ValueError:
            return BAD_HOST
        candidates = [e for e in self.entries if e.matches_host(normal)]
        return candidates or HOST_NOT_ALLOWED

    def _always_refused(self, address: IPAddress, port: int) -> str | None:
        if _in(address, _METADATA_V4, _METADATA_V6):
            return METADATA_OR_LINK_LOCAL
        if _in(address, _MULTICAST_V4, _MULTICAST_V6):
            return MULTICAST
        if _in(address, _UNSPECIFIED_V4, _UNSPECIFIED_V6):
            return UNSPECIFIED
        if port in self.server_ports and (_in(address, _LOOPBACK_V4, _LOOPBACK_V6) or address in self.local_addresses):
            return SERVER_PORT
        return None

    def _names_literal(self, address: IPAddress, port: int) -> bool:
        return any(e.ip == address and port in e.ports for e in self.entries)


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return not _in(address, _PRIVATE_V4, ())
    return address in _GLOBAL_V6 and not _in(address, (), _PRIVATE_V6)


def covers(tenant_entry: AllowEntry, requested_entry: AllowEntry) -> bool:
    """Whether ``requested_entry`` asks for nothing ``tenant_entry`` does not allow: the same or a narrower host
    pattern, a subset of its ports, and a subset of its credentials (a request may drop an injection, never add
    one: it would send a server secret wherever the request's host leads)."""
    if not set(requested_entry.ports) <= set(tenant_entry.ports):
        return False
    if not set(requested_entry.credentials) <= set(tenant_entry.credentials):
        return False
    if tenant_entry.ip is not None or requested_entry.ip is not None:
        return tenant_entry.ip == requested_entry.ip
    suffix = tenant_entry.wildcard_suffix
    if suffix is None:
        return requested_entry.wildcard_suffix is None and requested_entry.host == tenant_entry.host
    requested = requested_entry.wildcard_suffix
    if requested is None:
        return requested_entry.host.endswith("." + suffix)
    return requested == suffix or requested.endswith("." + suffix)


def within(tenant: EgressRules, requested: EgressRules) -> list[str]:
    """The requested entries no single tenant entry covers, described; empty when the request is within."""
    return [f"egress entry {_describe(entry)} is not within the tenant's egress list"
            for entry in requested.entries if not any(covers(t, entry) for t in tenant.entries)]


def narrow(tenant: EgressRules, requested: EgressRules) -> EgressRules:
    """The requested list, checked against the tenant's, with the refusals of both (server ports and local
    addresses are the server's, not the request's to drop). Raises ValueError naming each entry that widens."""
    problems = within(tenant, requested)
    if problems:
        raise ValueError("; ".join(problems))
    return EgressRules(entries=requested.entries, server_ports=tenant.server_ports | requested.server_ports,
                       local_addresses=tenant.local_addresses | requested.local_addresses)


def _describe(entry: AllowEntry) -> str:
    ports = ",".join(str(p) for p in entry.ports)
    creds = f" with {len(entry.credentials)} credential(s)" if entry.credentials else ""
    return f"{entry.host!r} ports {ports}{creds}"
