"""Start a real server on 127.0.0.1:0 for tests, benchmarks and users' own test suites.

    async with running_server(max_running=4) as srv:      # in an asyncio program
        async with AsyncSandboxClient(srv.target) as sbx: ...

    with server_in_thread(max_running=4) as srv:           # for sync code: the server runs its own loop
        with SandboxClient(srv.target) as sbx: ...

Each server gets its own state directory and cgroup parent, so several can run at once and none reaps
another's sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from sandbox_server.app import App
from sandbox_server.backends.base import Backend
from sandbox_server.settings import Settings, load_settings

PRIVATE_PREFIX = "sandbox-test-"  # private_settings' state dirs, removed when their server stops
# A server's start (pools, zygotes, a Docker backend's first containers) has its own bound, apart from the
# tests' per-test timeout, which covers the test function only.
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RunningServer:
    target: str
    settings: Settings
    app: App
    loop: asyncio.AbstractEventLoop  # the server's event loop (to run its coroutines from another thread)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released): for a server to take, or a connection to be refused."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def private_settings(**overrides: Any) -> Settings:
    """Settings for a private server: loopback, an ephemeral port, a private state dir and cgroup parent."""
    unique = uuid.uuid4().hex[:8]
    state_dir = Path(tempfile.gettempdir()) / f"{PRIVATE_PREFIX}{unique}"
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": state_dir,
        "data_dir": state_dir / "data",
        "cgroup_parent": f"sandbox-test-{unique}",
        "drain_timeout_s": 5.0,
        "session_pool_size": 0,  # a test that wants kernels started ahead asks for them
    }
    base.update(overrides)
    return load_settings(**base)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings | None = None,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    backend_factory: Callable[[Settings], Backend] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningServer]:
    """Run a server in the current event loop for the duration of the block. ``span_exporters`` receive
    every span as it ends (e.g. opentelemetry's InMemorySpanExporter); ``backend_factory`` builds the backend from
    the settings instead of the configured one (fault injection in tests)."""
    settings = settings if settings is not None else private_settings(**overrides)
    # A private state dir (made by private_settings, here or by the caller) is this server's to remove.
    own_state = settings.state_dir.name.startswith(PRIVATE_PREFIX)
    backend = backend_factory(settings) if backend_factory is not None else None
    app = App(settings, backend=backend, span_exporters=span_exporters)
    await app.start()
    try:
        yield RunningServer(target=f"127.0.0.1:{app.port}", settings=settings, app=app,
                            loop=asyncio.get_running_loop())
    finally:
        await app.stop()
        if own_state:
            _remove_state(settings.state_dir)


def _remove_state(state_dir: Path) -> None:
    """Remove a private state dir, unless a scratch dir is still there (a leak the tests must see)."""
    scratch = state_dir / "scratch"
    if scratch.exists() and any(scratch.iterdir()):
        return
    shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def server_in_thread(
    settings: Settings | None = None,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    backend_factory: Callable[[Settings], Backend] | None = None,
    **overrides: Any,
) -> Iterator[RunningServer]:
    """Run a server on its own event loop in a background thread (for sync callers)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        try:
            async with running_server(settings, span_exporters=span_exporters, backend_factory=backend_factory,
                                      **overrides) as srv:
                box["server"] = srv
                started.set()
                await stop.wait()
        except BaseException as exc:
            box["error"] = exc
            started.set()
            raise

    def run() -> None:
        asyncio.set_event_loop(loop)
        with contextlib.suppress(BaseException):
            loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, name="sandbox-test-server", daemon=True)
    thread.start()
    if not started.wait(START_TIMEOUT_S):
        raise RuntimeError(f"test server did not start within {START_TIMEOUT_S:g} s")
    if "error" in box:
        thread.join()
        raise RuntimeError("test server failed to start") from box["error"]
    try:
        yield box["server"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=60)
