"""A session's sandbox on the Docker backend: one long-lived container, isolated exactly as a one-shot
container is (ContainerConfig: network none, read-only root, every capability dropped, no-new-privileges, the
seccomp profile, memory, pids and CPU limits), whose command is the session agent (sessions/agent.py).

The agent's channel is the container's attached stdin and stdout (Docker multiplexes stdout and stderr over the
attach socket; stderr is the agent's log). The workspace is the container's /work tmpfs; /run is a small
private tmpfs for the agent. The container ends when the agent does: on ``shutdown``, or when the attach
connection closes (StdinOnce: a crashed server takes its sessions with it); the reaper removes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any

from sandbox_server.backends.docker import (
    ATTACH_PARAMS,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUNTIME,
    READ_CHUNK,
    SESSION_RUNTIME,
    ContainerConfig,
    _Container,
    image_for,
    wheelhouse_source,
)
from sandbox_server.errors import SandboxFailure
from sandbox_server.execution.runtimes import BASE_ENV
from sandbox_server.execution.spec import SessionSpec
from sandbox_server.sessions.channel import AgentChannel
from sandbox_server.sessions.sandbox import SessionSandbox
from sandbox_server.sessions.start import AGENT_ARGV, RUN_BYTES, SYSTEM_PIDS, start_agent

if TYPE_CHECKING:
    from sandbox_server.backends.docker import DockerBackend

LABEL_SESSION = "org.sandbox-server.session"
_HEADER = struct.Struct(">BxxxI")


class DockerSession(SessionSandbox):
    backend = "docker"

    def __init__(self, owner: DockerBackend, spec: SessionSpec) -> None:
        super().__init__()
        self.owner = owner
        self.spec = spec
        self.container: _Container | None = None
        self._raw: Any = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None

    def config(self) -> ContainerConfig:
        settings, spec = self.owner.settings, self.spec
        return ContainerConfig(
            image=image_for(settings, SESSION_RUNTIME),
            argv=(),
            env=BASE_ENV,  # the agent's own; the session's variables are its processes' (sent in init)
            limits=spec.limits,
            cpu_cores=spec.cpu_cores,
            uid=settings.sandbox_uid,
            gid=settings.sandbox_gid,
            labels=((LABEL_MANAGED, "true"), (LABEL_OWNER, self.owner.owner), (LABEL_RUNTIME, "session"),
                    (LABEL_SESSION, spec.session_id)),
            cgroup_parent=None,
            session_command=AGENT_ARGV,
            run_bytes=RUN_BYTES,
            cpu_backstop_ms=spec.cpu_total_ms,
            extra_pids=SYSTEM_PIDS,
            wheelhouse=wheelhouse_source(settings),
        )

    async def start(self) -> None:
        """Create and start the container, attach to it, and wait for the agent's ``init`` reply. Raises
        SandboxFailure, BackendUnavailable, or the Docker SDK's errors; nothing is left behind then."""
        owner = self.owner
        try:
            self.container = await owner._create(self.config())
            self.cgroup = self.container.cgroup
            api = owner._api
            if api is None:
                raise ConnectionError("lost dockerd")
            self._raw = await owner._call(api.attach_socket, self.container.id, params=ATTACH_PARAMS)
            sock: socket.socket = self._raw._sock
            sock.setblocking(False)
            self._sock = sock
            loop = asyncio.get_running_loop()
            stdout = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)

            async def write(data: bytes) -> None:
                await loop.sock_sendall(sock, data)

            self.channel = AgentChannel(stdout, write, self.spec.session_id)
            self._reader = loop.create_task(self._demux(sock, stdout))
            self.channel.start()
            await start_agent(self, self.spec)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy()
            raise

    async def netns_pid(self) -> int:
        if self.container is None:
            raise SandboxFailure("the session's container is gone")
        try:
            return await self.owner.container_pid(self.container.id)
        except SandboxFailure:
            raise
        except Exception as exc:
            raise SandboxFailure(f"could not inspect the session's container: {exc}") from exc

    async def _demux(self, sock: socket.socket, stdout: asyncio.StreamReader) -> None:
        """Docker's attach stream: 8-byte headers (stream, length), stdout to the channel, stderr to the log."""
        loop = asyncio.get_running_loop()
        buf = bytearray()
        try:
            while chunk := await loop.sock_recv(sock, READ_CHUNK):
                buf += chunk
                while len(buf) >= _HEADER.size:
                    kind, size = _HEADER.unpack_from(buf)
                    if len(buf) < _HEADER.size + size:
                        break
                    data = bytes(buf[_HEADER.size:_HEADER.size + size])
                    del buf[:_HEADER.size + size]
                    if kind == 2:
                        self.note_log(data)
                    else:
                        stdout.feed_data(data)
        except OSError:
            pass
        finally:
            stdout.feed_eof()

    async def destroy(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
        container, self.container = self.container, None
        self.cgroup = None
        if container is not None:
            await self.owner._destroy(container)
