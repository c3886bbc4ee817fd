"""Helpers for the incident tests: a settable clock, a sink that records, and a loopback webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sandbox_server.incidents import AlertEvent, IncidentManager
from sandbox_server.stores.incidents import IncidentRecord

T0 = 1_700_000_000.0

StartManager = Callable[..., Awaitable[IncidentManager]]
"""The ``start_manager`` fixture: ``await start_manager(settings=None, sinks=None)``."""


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSink:
    """A real (tiny) sink: remembers every alert it was sent."""

    def __init__(self) -> None:
        self.alerts: list[tuple[AlertEvent, IncidentRecord]] = []

    async def send(self, incident: IncidentRecord, event: AlertEvent) -> None:
        self.alerts.append((event, incident))

    def events(self) -> list[tuple[AlertEvent, str]]:
        return [(event, incident.rule) for event, incident in self.alerts]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Receiver:
    """What a loopback webhook receiver got. ``statuses`` are the replies, in order (then 200 for ever)."""

    statuses: list[int]
    url: str = ""
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else 200


@contextmanager
def webhook_receiver(statuses: Sequence[int] = ()) -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 (a free port) in a thread, stopped on exit."""
    receiver = Receiver(list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.next_status()
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        receiver.url = f"http://{host!s}:{port}/hooks/incidents?token=s3cret"
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
