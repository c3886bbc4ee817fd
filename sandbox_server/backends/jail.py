"""A started sandbox as the nsjail backend's supervisor sees it, whichever way it was started.

NsjailBackend owns everything around one execution (scratch, cgroup, watchdog, output capture, the result,
teardown); a Jail is only the running sandbox: its stdio, whether it is still running, how to kill it at once,
and what became of the program. Two kinds exist: the cold path's nsjail process (nsjail.NsjailProcess) and the
warm path's fork of the Python zygote (warm.WarmJail).
"""

from __future__ import annotations

import abc
import asyncio
import os

READ_CHUNK = 64 * 1024


class Jail(abc.ABC):
    """One running sandbox. ``stdin``, ``stdout`` and ``stderr`` are the program's, already connected."""

    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader

    @abc.abstractmethod
    def running(self) -> bool:
        """False once every process of the sandbox has ended."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the whole sandbox now; idempotent, never raises. (The caller kills its cgroup as well.)"""

    @abc.abstractmethod
    async def wait(self) -> None:
        """Return once the program's outcome is known and none of the processes it started runs any more. The
        sandbox's own init may still be exiting (``ended`` waits for that too)."""

    async def ended(self) -> None:
        """Return once every process of the sandbox, its init included, has ended."""
        await self.wait()

    def reported(self) -> bool:
        """True once ``wait`` would return at once: what is left of the sandbox is only its init's exit."""
        return not self.running()

    @abc.abstractmethod
    def outcome(self, killed: bool) -> tuple[int | None, int | None]:
        """(exit code, signal) of the program, exactly one of them set; call after ``wait``. ``killed``: the
        server killed the sandbox, so a missing report means SIGKILL. Raises SandboxFailure when the sandbox
        never got as far as running the program."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release what the handle holds (fds, transports, tasks). Does not kill."""


async def pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A StreamReader over the read end of a pipe (the fd is owned by the returned transport)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader, transport


async def pipe_writer(fd: int) -> asyncio.StreamWriter:
    """A StreamWriter over the write end of a pipe (the fd is owned by the writer's transport), with
    drain() flow control, the way asyncio.subprocess builds a child's stdin."""
    loop = asyncio.get_running_loop()
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
    transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)
