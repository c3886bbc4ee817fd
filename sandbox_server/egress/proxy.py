"""The egress proxy: the only way out of a sandbox's network namespace. An HTTP proxy in the server's event loop,
accepting on a socket the server made inside the sandbox's namespace.

- ``CONNECT host:port``: a raw tunnel (the sandbox's TLS goes end to end; the proxy never sees inside it).
- ``GET http://host:port/path`` (absolute form): forwarded in origin form, streamed both ways with h11,
  keep-alive on the sandbox's side, an upstream connection reused only for the same scheme, host and port.
  When the host's entry injects credentials, the request goes on over TLS with the headers set.

Every request: ``rules`` decides the name and port, the proxy resolves the name itself (the sandbox has no DNS),
checks every resolved address, and connects to exactly a checked address, so a rebinding answer cannot slip an
address past the check. Limits (bytes both ways, connections, connection rate) hold for the proxy's whole life:
one execution or one session. Nothing the sandbox sends can end the proxy: each connection's failure ends that
connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeAlias

import h11

from sandbox_server.egress.credentials import CredentialError, SecretSource
from sandbox_server.egress.resolver import ResolveError, Resolver
from sandbox_server.egress.rules import (
    BAD_HOST,
    AllowEntry,
    EgressRules,
    IPAddress,
    canonical_address,
    normalise_host,
)

__all__ = [
    "BAD_REQUEST",
    "CONNECTIONS",
    "CONNECTION_RATE",
    "CREDENTIAL_UNAVAILABLE",
    "EGRESS_BYTES",
    "HEADERS_TOO_LARGE",
    "MAX_HEAD_BYTES",
    "UNRESOLVABLE",
    "UPSTREAM_ERROR",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_TLS",
    "UPSTREAM_UNREACHABLE",
    "EgressLimits",
    "EgressProxy",
    "EgressStats",
    "Refusal",
]

logger = logging.getLogger("sandbox_server.egress")

# Reasons the proxy adds to the rules' own (the rules module has the address and allow-list ones).
BAD_REQUEST = "bad_request"
HEADERS_TOO_LARGE = "headers_too_large"
UNRESOLVABLE = "unresolvable"
UPSTREAM_UNREACHABLE = "upstream_unreachable"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_TLS = "upstream_tls"
UPSTREAM_ERROR = "upstream_error"
CREDENTIAL_UNAVAILABLE = "credential_unavailable"
EGRESS_BYTES = "egress_bytes"
CONNECTIONS = "connections"
CONNECTION_RATE = "connection_rate"

_STATUS = {
    BAD_REQUEST: 400, BAD_HOST: 400, HEADERS_TOO_LARGE: 431, CONNECTION_RATE: 429, UNRESOLVABLE: 502,
    UPSTREAM_UNREACHABLE: 502, UPSTREAM_TLS: 502, UPSTREAM_ERROR: 502, CREDENTIAL_UNAVAILABLE: 502,
    UPSTREAM_TIMEOUT: 504,
}  # any other reason: 403

MAX_HEAD_BYTES = 64 * 1024
MAX_OPEN_CLIENTS = 64  # connections from one sandbox open at once
OPEN_CONNECTIONS = "open_connections"
_CHUNK = 64 * 1024
# A connection refused at admission (rate, count) still gets its request head read, for an answer naming the
# host; briefly, so a flood of refused connections does not hold sockets for the idle timeout.
_ADMISSION_HEAD_TIMEOUT_S = 2.0
# How long, and how much of, the sandbox's unread input is drained before a graceful close (see _linger).
_LINGER_S = 0.5
_LINGER_BYTES = 256 * 1024
_MAX_IDLE_UPSTREAMS = 4  # per sandbox connection
_SHOWN_HOST_CHARS = 255

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate",
                         b"proxy-connection", b"te", b"trailer", b"upgrade"})
# Never dropped because a Connection header lists them: h11 frames the message by them, and dropping one on a
# sandbox's say-so would let the two sides disagree on where a message ends.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_PORT = re.compile(r"[0-9]{1,5}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

_Key: TypeAlias = tuple[bool, str, int]  # (TLS, host, port): when an upstream connection may be reused
_Headers: TypeAlias = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class EgressLimits:
    """Limits over the proxy's life (one execution or session). ``max_bytes`` counts both directions together;
    0 allows none. ``connections_per_s`` is a token bucket with a burst of ``max(1, rate)``."""

    max_bytes: int
    max_connections: int
    connections_per_s: float

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_connections < 0 or not self.connections_per_s >= 0:
            raise ValueError(f"egress limits must not be negative: {self}")


@dataclass(frozen=True)
class Refusal:
    host: str
    port: int
    reason: str
    address: str = ""


@dataclass
class EgressStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    connections: int = 0
    refusals: int = 0
    limit_exceeded: str = ""


class _Refused(Exception):
    def __init__(self, reason: str, host: str = "", port: int = 0, address: str = "", detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.host, self.port, self.address, self.detail = reason, host, port, address, detail


class _Closed(Exception):
    """The conversation is over with nothing more to say: end of input, a reset, idleness, a byte limit."""


class _Activity:
    """When either direction of a tunnel last moved: a tunnel is idle only when both are."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class _TokenBucket:
    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._burst = max(1.0, rate)
        self._tokens = self._burst
        self._at = time.monotonic()

    def take(self) -> bool:
        if math.isinf(self._rate):
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _Peer:
    """One side of a conversation: its streams and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 role: type[h11.CLIENT] | type[h11.SERVER], idle_s: float) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_s = idle_s

    def _counted(self, n: int) -> None:
        """Bytes just read."""

    def _idle(self) -> Exception:
        return _Closed("idle")

    async def read(self, activity: _Activity | None = None) -> bytes:
        """Up to a chunk; b"" at the end (a reset is an end like any other). Idle for ``idle_s`` (since
        ``activity`` last moved, when given) ends the conversation."""
        while True:
            since = activity.last if activity is not None else time.monotonic()
            remaining = since + self.idle_s - time.monotonic()
            if remaining <= 0:
                raise self._idle()
            try:
                data = await asyncio.wait_for(self.reader.read(_CHUNK), remaining)
            except TimeoutError:
                if activity is None:
                    raise self._idle() from None
                continue
            except OSError:
                data = b""
            self._counted(len(data))
            if activity is not None:
                activity.touch()
            return data

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.read())
                continue
            return event if isinstance(event, h11.Event) else h11.PAUSED

    async def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.idle_s)
        except (OSError, TimeoutError):
            raise _Closed("write failed") from None

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof() and not self.writer.is_closing():
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


class _Client(_Peer):
    """The sandbox's connection: every byte read or written is counted against the byte limit."""

    def __init__(self, proxy: EgressProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 idle_s: float) -> None:
        super().__init__(reader, writer, h11.SERVER, idle_s)
        self.proxy = proxy
        self.task = asyncio.current_task()

    def _counted(self, n: int) -> None:
        self.proxy.stats.bytes_sent += n

    async def send(self, event: h11.Event, *, relayed: bool) -> None:
        data = self.conn.send(event)
        if data:
            await self.write_counted(data, relayed=relayed)

    async def write_counted(self, data: bytes, *, relayed: bool) -> None:
        """Write to the sandbox. ``relayed`` data (from an upstream) must fit in what the byte limit has left;
        the proxy's own answers (a refusal, "Connection established") are counted but never held back."""
        if relayed and not self.proxy._room(len(data)):
            self.proxy._exhaust(self)
            raise _Closed("egress byte limit")
        self.proxy.stats.bytes_received += len(data)
        await self.write(data)


class _Upstream(_Peer):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_s: float, key: _Key,
                 shown: str, address: IPAddress) -> None:
        super().__init__(reader, writer, h11.CLIENT, idle_s)
        self.key, self.shown, self.address = key, shown, address

    def _idle(self) -> Exception:
        return _Refused(UPSTREAM_TIMEOUT, self.shown, self.key[2], str(self.address))

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        try:
            return await super().next_event()
        except h11.RemoteProtocolError:
            raise _Refused(UPSTREAM_ERROR, self.shown, self.key[2], str(self.address),
                           "upstream broke HTTP/1.1") from None

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.write(data)

    def reusable(self) -> bool:
        return (self.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE} and not self.reader.at_eof()
                and not self.writer.is_closing())


class _Pool:
    """A sandbox connection's idle upstream connections, by (TLS, host, port)."""

    def __init__(self) -> None:
        self._idle: dict[_Key, _Upstream] = {}

    def take(self, key: _Key) -> _Upstream | None:
        upstream = self._idle.pop(key, None)
        if upstream is not None and (upstream.reader.at_eof() or upstream.writer.is_closing()):
            upstream.close()  # the server closed it while it sat idle
            return None
        return upstream

    def put(self, upstream: _Upstream) -> None:
        upstream.conn.start_next_cycle()
        old = self._idle.pop(upstream.key, None)
        if old is not None:
            old.close()
        self._idle[upstream.key] = upstream
        while len(self._idle) > _MAX_IDLE_UPSTREAMS:
            self._idle.pop(next(iter(self._idle))).close()

    def close_all(self) -> None:
        for upstream in self._idle.values():
            upstream.abort()
        self._idle.clear()


class EgressProxy:
    """One sandbox's egress: serves on a listening socket it is handed, until :meth:`aclose`."""

    def __init__(self, rules: EgressRules, limits: EgressLimits, *, resolver: Resolver, secrets: SecretSource,
                 ssl_context: ssl.SSLContext, on_refusal: Callable[[Refusal], None] | None = None,
                 connect_timeout_s: float = 10.0, idle_timeout_s: float = 300.0) -> None:
        self.rules = rules
        self.limits = limits
        self.stats = EgressStats()
        self._resolver = resolver
        self._secrets = secrets
        self._ssl = ssl_context
        self._on_refusal = on_refusal
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._bucket = _TokenBucket(limits.connections_per_s)
        self._accepted = 0
        self._bytes_exhausted = False
        self._injected: set[str] = set()
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    async def serve(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (already listening) from now on. The proxy owns the socket: aclose closes it."""
        if self._sock is not None or self._closing:
            raise RuntimeError("the egress proxy serves one socket, once")
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept(sock), name="egress-accept")

    async def aclose(self) -> None:
        """Stop accepting, close every connection, wait for their handlers. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._accepting is not None:
                self._accepting.cancel()
                await asyncio.gather(self._accepting, return_exceptions=True)
            if self._sock is not None:
                self._sock.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._closed.set()

    def redactions(self) -> list[str]:
        """Every secret value the proxy has injected, for the output guardrail to redact (an upstream may echo
        it back to the sandbox)."""
        return sorted(self._injected)

    # -- accepting and admission --

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if sock.fileno() < 0:
                    return
                # Out of descriptors, or the peer gave up before accept: wait a little rather than spin.
                logger.debug("egress accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            if len(self._tasks) >= MAX_OPEN_CLIENTS:
                # Each open connection holds descriptors of the server's: past this many at once, new ones are
                # closed unread, so no sandbox can run the server out of descriptors.
                conn.close()
                self._note_limit(OPEN_CONNECTIONS)
                continue
            task = asyncio.create_task(self._serve_client(conn, self._admit()), name="egress-client")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _admit(self) -> str:
        """"" when a new connection may be served, else the limit it would exceed. A connection refused for
        its rate is not counted in the total."""
        if not self._bucket.take():
            self._note_limit(CONNECTION_RATE)
            return CONNECTION_RATE
        self._accepted += 1
        if self._accepted > self.limits.max_connections:
            self._note_limit(CONNECTIONS)
            return CONNECTIONS
        return ""

    def _note_limit(self, kind: str) -> None:
        if not self.stats.limit_exceeded:
            self.stats.limit_exceeded = kind
            logger.warning("egress limit exceeded", extra={"limit": kind})

    def _room(self, n: int) -> bool:
        return self.stats.bytes_sent + self.stats.bytes_received + n <= self.limits.max_bytes

    def _over(self) -> bool:
        return not self._room(0)

    def _exhaust(self, current: _Client | None) -> None:
        """The byte limit is crossed: every other connection ends now (once: connections refused later must not
        cut each other's refusals short); the current one ends as it unwinds."""
        if self._bytes_exhausted:
            return
        self._bytes_exhausted = True
        self._note_limit(EGRESS_BYTES)
        for task in list(self._tasks):
            if current is None or task is not current.task:
                task.cancel()

    # -- one connection from the sandbox --

    async def _serve_client(self, conn: socket.socket, admission: str) -> None:
        client: _Client | None = None
        ended = False
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=_CHUNK)
            idle = _ADMISSION_HEAD_TIMEOUT_S if admission else self._idle_timeout_s
            client = _Client(self, reader, writer, idle)
            await self._converse(client, admission)
            client.write_eof()
            await self._linger(client)
            ended = True
        except _Closed:
            pass
        except Exception:
            logger.debug("egress connection failed", exc_info=True)
        finally:
            if client is None:
                conn.close()
            elif ended:
                client.close()
            else:
                client.abort()

    async def _converse(self, client: _Client, admission: str) -> None:
        pool = _Pool()
        try:
            while True:
                try:
                    event = await client.next_event()
                except h11.RemoteProtocolError as exc:
                    reason = HEADERS_TOO_LARGE if exc.error_status_hint == 431 else BAD_REQUEST
                    await self._refuse(client, _Refused(admission or reason))
                    return
                if not isinstance(event, h11.Request):
                    return  # the sandbox closed the connection (or stopped between requests)
                try:
                    if admission:
                        raise _Refused(admission, *_target_for_log(event.target))
                    if _head_size(event) > MAX_HEAD_BYTES:
                        # h11 bounds only a head still incomplete after a read: one read can complete a bigger one.
                        raise _Refused(HEADERS_TOO_LARGE, *_target_for_log(event.target))
                    if event.http_version not in (b"1.0", b"1.1") or _ambiguous_framing(event.headers):
                        raise _Refused(BAD_REQUEST, *_target_for_log(event.target))
                    if self._bytes_exhausted or self._over():
                        self._exhaust(client)
                        raise _Refused(EGRESS_BYTES, *_target_for_log(event.target))
                    if event.method == b"CONNECT":
                        await self._tunnel(client, event)
                        return
                    keep = await self._forward(client, event, pool)
                except _Refused as refusal:
                    await self._refuse(client, refusal)
                    return
                except h11.RemoteProtocolError:  # the sandbox broke HTTP inside a request body
                    await self._refuse(client, _Refused(BAD_REQUEST, *_target_for_log(event.target)))
                    return
                if not keep or client.conn.states != {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
                    return
                client.conn.start_next_cycle()
        finally:
            pool.close_all()

    async def _refuse(self, client: _Client, refusal: _Refused) -> None:
        host, port, reason = refusal.host[:_SHOWN_HOST_CHARS], refusal.port, refusal.reason
        if client.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            # A response (or a tunnel) had already begun: not a refusal, only an end; closing is all that is left.
            logger.debug("egress connection ended", extra={"host": host, "port": port, "reason": reason,
                                                           "address": refusal.address, "detail": refusal.detail})
            return
        self.stats.refusals += 1
        logger.info("egress refused", extra={"host": host, "port": port, "reason": reason,
                                             "address": refusal.address, "detail": refusal.detail})
        if self._on_refusal is not None:
            try:
                self._on_refusal(Refusal(host=host, port=port, reason=reason, address=refusal.address))
            except Exception:
                logger.debug("egress on_refusal callback failed", exc_info=True)
        status = _STATUS.get(reason, 403)
        body = f"egress refused: {reason} ({_join(host, port)})\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("X-Sandbox-Egress", f"refused; reason={reason}"), ("Connection", "close")]
        data = client.conn.send(h11.Response(status_code=status, reason=HTTPStatus(status).phrase.encode(),
                                             headers=headers)) or b""
        data += client.conn.send(h11.Data(data=body)) or b""
        data += client.conn.send(h11.EndOfMessage()) or b""
        await client.write_counted(data, relayed=False)

    async def _linger(self, client: _Client) -> None:
        """Drain what the sandbox still sends (a body nobody will read) a moment before closing: closing a socket
        with unread input resets it, and a reset can destroy the last response before the sandbox has read it."""
        drained = 0
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_LINGER_S):
                while drained < _LINGER_BYTES:
                    data = await client.reader.read(_CHUNK)
                    if not data:
                        return
                    drained += len(data)
                    client.proxy.stats.bytes_sent += len(data)

    # -- resolving, checking, connecting --

    def _host(self, text: str, port: int) -> str | IPAddress:
        try:
            return normalise_host(text)
        except ValueError:
            raise _Refused(BAD_HOST, text, port) from None

    async def _addresses(self, host: str | IPAddress, shown: str, port: int) -> list[IPAddress]:
        """Every address of ``host``, each checked: one refused address refuses the request (another answer
        might be fine, but a name with an internal address in its answer is not one to talk to)."""
        if isinstance(host, str):
            try:
                found = await self._resolver.resolve(host)
            except ResolveError as exc:
                raise _Refused(UNRESOLVABLE, shown, port, detail=str(exc)) from None
            except Exception as exc:  # a resolver's bug refuses, never lets through
                raise _Refused(UNRESOLVABLE, shown, port, detail=type(exc).__name__) from None
        else:
            found = [host]
        addresses = list(dict.fromkeys(canonical_address(a) for a in found))
        if not addresses:
            raise _Refused(UNRESOLVABLE, shown, port)
        for address in addresses:
            reason = self.rules.check_address(address, port)
            if reason is not None:
                raise _Refused(reason, shown, port, str(address))
        return addresses

    async def _open(self, host: str | IPAddress, shown: str, port: int, *, tls: bool) -> _Upstream:
        addresses = await self._addresses(host, shown, port)
        tried = addresses[0]
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                for tried in addresses:
                    try:
                        # A literal address: asyncio connects to it without any lookup.
                        reader, writer = await asyncio.open_connection(
                            str(tried), port, ssl=self._ssl if tls else None,
                            server_hostname=str(host) if tls else None, limit=_CHUNK)
                        break
                    except ssl.SSLError as exc:
                        raise _Refused(UPSTREAM_TLS, shown, port, str(tried), _tls_detail(exc)) from None
                    except OSError:
                        continue
                else:
                    raise _Refused(UPSTREAM_UNREACHABLE, shown, port, str(tried))
        except TimeoutError:
            raise _Refused(UPSTREAM_TIMEOUT, shown, port, str(tried)) from None
        self.stats.connections += 1
        logger.debug("egress connection", extra={"host": shown, "port": port, "address": str(tried), "tls": tls})
        return _Upstream(reader, writer, self._idle_timeout_s, (tls, str(host), port), shown, tried)

    # -- CONNECT --

    async def _tunnel(self, client: _Client, request: h11.Request) -> None:
        try:
            shown, port = _split_authority(request.target.decode("ascii"), None)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(BAD_REQUEST, *_target_for_log(request.target)) from None
        host = self._host(shown, port)
        decision = self.rules.route_connect(str(host), port)
        if isinstance(decision, str):
            raise _Refused(decision, shown, port)
        upstream = await self._open(host, shown, port, tls=False)
        try:
            await client.send(h11.Response(status_code=200, reason=b"Connection established", headers=[]),
                              relayed=False)
            early, _ = client.conn.trailing_data
            activity = _Activity()
            await _both(self._pump_out(client, upstream, bytes(early), activity),
                        self._pump_in(upstream, client, activity))
        finally:
            upstream.abort()

    async def _pump_out(self, client: _Client, upstream: _Upstream, early: bytes, activity: _Activity) -> None:
        """Sandbox to upstream; the bytes were counted as they were read."""
        data = early
        while True:
            if data:
                if self._over():
                    self._exhaust(client)
                    raise _Closed("egress byte limit")
                await upstream.write(data)
                activity.touch()
            data = await client.read(activity)
            if not data:
                upstream.write_eof()
                return

    async def _pump_in(self, upstream: _Upstream, client: _Client, activity: _Activity) -> None:
        """Upstream to sandbox, held to what the byte limit has left."""
        while True:
            data = await upstream.read(activity)
            if not data:
                client.write_eof()
                return
            await client.write_counted(data, relayed=True)
            activity.touch()

    # -- absolute-form HTTP --

    async def _forward(self, client: _Client, request: h11.Request, pool: _Pool) -> bool:
        """Forward one request and its response; whether the sandbox's connection may carry another."""
        try:
            shown, port, path = _parse_absolute(request.target.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise _Refused(BAD_REQUEST, *_target_for_log(request.target)) from None
        host = self._host(shown, port)
        route = self.rules.route_http(str(host), port)
        if isinstance(route, str):
            raise _Refused(route, shown, port)
        injected = self._credential_headers(route.entry, shown, route.port)
        key: _Key = (route.tls, str(host), route.port)
        upstream = pool.take(key) or await self._open(host, shown, route.port, tls=route.tls)
        headers: _Headers = [(b"host", _join(host, route.port, 443 if route.tls else 80).encode())]
        replaced = {name.lower().encode() for name, _ in injected} | {b"host", b"expect"}
        headers += _end_to_end(list(request.headers), replaced)
        headers += [(name.encode(), value.encode()) for name, value in injected]
        try:
            await upstream.send(h11.Request(method=request.method, target=path.encode(), headers=headers))
            if client.conn.client_is_waiting_for_100_continue:
                # The upstream never saw the Expect (it was dropped): the proxy answers it, since it takes the
                # body now either way.
                await client.send(h11.InformationalResponse(status_code=100, headers=[]), relayed=False)
            await self._exchange(client, upstream)
        except BaseException:
            upstream.abort()
            raise
        if upstream.reusable():
            pool.put(upstream)
        else:
            upstream.close()
        return True

    def _credential_headers(self, entry: AllowEntry, shown: str, port: int) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for credential in entry.credentials:
            try:
                value = self._secrets.value(credential)
            except CredentialError as exc:
                raise _Refused(CREDENTIAL_UNAVAILABLE, shown, port, detail=str(exc)) from None
            rendered = credential.header_value(value)
            if not _PRINTABLE.fullmatch(rendered):
                # Checked here so h11's own complaint, which would quote the value, never happens.
                raise _Refused(CREDENTIAL_UNAVAILABLE, shown, port,
                               detail=f"the value for header {credential.header} is not printable ASCII")
            self._injected.add(value)
            headers.append((credential.header, rendered))
        return headers

    async def _exchange(self, client: _Client, upstream: _Upstream) -> None:
        """The request body up and the response down at once (an upstream may answer before it has the whole
        body). A response that ends before the body was all sent leaves neither connection reusable."""
        upload = asyncio.create_task(self._upload(client, upstream))
        relay = asyncio.create_task(self._relay(client, upstream))
        try:
            await asyncio.wait({upload, relay}, return_when=asyncio.FIRST_COMPLETED)
            if upload.done() and not relay.done() and upload.exception() is None:
                await relay
        finally:
            for task in (upload, relay):
                task.cancel()
            await asyncio.gather(upload, relay, return_exceptions=True)
        for task in (relay, upload):
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _upload(self, client: _Client, upstream: _Upstream) -> None:
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                if self._over():
                    self._exhaust(client)
                    raise _Closed("egress byte limit")
                await upstream.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                # Trailers are dropped: h11 cannot send them to an HTTP/1.0 peer or with a Content-Length.
                await upstream.send(h11.EndOfMessage())
                return
            else:
                raise _Closed("the sandbox left in the middle of a request body")

    async def _relay(self, client: _Client, upstream: _Upstream) -> None:
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:  # Upgrade is never forwarded, so a switch was never asked for
                    raise _Refused(UPSTREAM_ERROR, upstream.shown, upstream.key[2], str(upstream.address),
                                   "unrequested protocol switch")
                await client.send(h11.InformationalResponse(status_code=event.status_code, reason=event.reason,
                                                            headers=_end_to_end(list(event.headers))), relayed=True)
            elif isinstance(event, h11.Response):
                await client.send(h11.Response(status_code=event.status_code, reason=event.reason,
                                               headers=_end_to_end(list(event.headers))), relayed=True)
            elif isinstance(event, h11.Data):
                await client.send(h11.Data(data=event.data), relayed=True)
            elif isinstance(event, h11.EndOfMessage):
                await client.send(h11.EndOfMessage(), relayed=True)
                return
            else:
                raise _Refused(UPSTREAM_ERROR, upstream.shown, upstream.key[2], str(upstream.address),
                               "upstream closed before the response ended")


async def _both(first: Coroutine[Any, Any, None], second: Coroutine[Any, Any, None]) -> None:
    """Run both to their ends; the first failure cancels the other and is raised."""
    tasks = [asyncio.create_task(first), asyncio.create_task(second)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc


def _end_to_end(headers: _Headers, drop: frozenset[bytes] | set[bytes] = frozenset()) -> _Headers:
    """The headers without hop-by-hop ones (those named, and those a Connection header lists) and ``drop``."""
    listed = {token.strip().lower() for name, value in headers if name.lower() == b"connection"
              for token in value.split(b",")}
    removed = (_HOP_BY_HOP | listed | set(drop)) - _FRAMING
    return [(name, value) for name, value in headers if name.lower() not in removed]


def _ambiguous_framing(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's body length could be read two ways: Content-Length with Transfer-Encoding, or
    Content-Length twice. An upstream that reads it the other way would take the rest of the body as a request of
    the sandbox's own making, past the proxy's checks (request smuggling, RFC 9112 6.3): refused, never fixed up."""
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in headers)
    return (chunked and bool(lengths)) or len(lengths) > 1


def _head_size(request: h11.Request) -> int:
    """The request head's size as sent, near enough (``name: value\\r\\n`` per header)."""
    line = len(request.method) + len(request.target) + len(request.http_version) + 12
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers)


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (the port optional when there is a default) into its parts."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("unclosed [")
        host, rest = authority[: end + 1], authority[end + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if not host:
        raise ValueError("no host")
    if not rest:
        if default_port is None:
            raise ValueError("no port")
        return host, default_port
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]) or not 1 <= int(rest[1:]) <= 65535:
        raise ValueError("bad port")
    return host, int(rest[1:])


def _parse_absolute(target: str) -> tuple[str, int, str]:
    """``http://host[:port]/path?query`` into the host as written, the port, and the origin-form target."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise ValueError("only absolute http:// targets are forwarded")
    end = len(rest)
    for mark in "/?":
        found = rest.find(mark)
        if 0 <= found < end:
            end = found
    authority, path = rest[:end], rest[end:]
    if "@" in authority or "#" in target:
        raise ValueError("userinfo or fragment in the target")
    host, port = _split_authority(authority, 80)
    if not path.startswith("/"):
        path = "/" + path
    return host, port, path


def _target_for_log(target: bytes) -> tuple[str, int]:
    """The host and port a request named, as far as they can be read, for a refusal's message."""
    text = target.decode("ascii", "backslashreplace")
    scheme, sep, rest = text.partition("://")
    try:
        if sep:
            authority = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
            return _split_authority(authority, 443 if scheme.lower() == "https" else 80)
        return _split_authority(text, None)
    except ValueError:
        return "", 0


def _join(host: str | IPAddress, port: int, default: int | None = None) -> str:
    text = f"[{host}]" if isinstance(host, ipaddress.IPv6Address) else str(host)
    return text if port == default else f"{text}:{port}"


def _tls_detail(exc: ssl.SSLError) -> str:
    return getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
