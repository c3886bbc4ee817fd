"""A loopback TCP proxy the client tests put between a client and a real server, to break connections at the
moment a test chooses (the way a load balancer restart or a flaky network would) and to count connections.

    with TcpProxy(srv.target) as proxy:
        with SandboxClient(proxy.target) as sbx: ...
        proxy.cut()        # every open connection is reset now; new ones are accepted as before

Threads, not asyncio: the sync client blocks, and the proxy must keep pumping while it does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, upstream: str) -> None:
        """``upstream``: ``127.0.0.1:<port>`` of the server to forward to."""
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.connections = 0
        """Client connections accepted so far."""
        self.bytes_to_server = 0
        """Bytes forwarded from clients to the server, all connections together."""

    def __enter__(self) -> TcpProxy:
        self._spawn(self._accept_loop, "tcp-proxy-accept")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(10)
            if thread.is_alive():
                raise RuntimeError(f"{thread.name} did not stop")

    def cut(self) -> int:
        """Reset every open connection, both sides (RST, not a polite FIN). Returns how many sockets it reset."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close() sends a reset, as a crashed peer or a dropped route would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return len(sockets)

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._open.update((client, server))
            self._spawn(self._pump, "tcp-proxy-up", client, server, True)
            self._spawn(self._pump, "tcp-proxy-down", server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.bytes_to_server += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
