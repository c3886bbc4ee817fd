"""A grpc.aio server on 127.0.0.1:<ephemeral>, run from its own event loop in a background thread, for tests
whose client side is synchronous."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc


@contextlib.contextmanager
def grpc_server_in_thread(
    setup: Callable[[grpc.aio.Server], None],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    name: str = "test-grpc-server",
) -> Iterator[str]:
    """Yield the server's target; ``setup`` adds the services. Raises RuntimeError if it fails to start or
    to stop."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def serve() -> None:
        server = grpc.aio.server(interceptors=list(interceptors), options=[("grpc.so_reuseport", 0)])
        setup(server)
        try:
            state["port"] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            stop = asyncio.Event()
            state["stop"] = stop
            ready.set()
            await stop.wait()
        finally:
            await server.stop(grace=None)

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            state["error"] = exc
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    try:
        if not ready.wait(10) or "error" in state:
            raise RuntimeError(f"{name} did not start: {state.get('error')!r}")
        yield f"127.0.0.1:{state['port']}"
    finally:
        stop = state.get("stop")
        if isinstance(stop, asyncio.Event):
            loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{name} did not stop")
