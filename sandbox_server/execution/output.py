"""Capped capture of a sandbox's stdout and stderr, shared by every backend.

Never holds more than the output limit: once stdout + stderr together pass it, the rest is dropped, the
stream is marked truncated, and the caller is told to stop the sandbox (OUTPUT_LIMIT).
"""

from __future__ import annotations

from sandbox_server.execution.spec import OutputCallback, StreamName


class OutputCapture:
    def __init__(self, limit_bytes: int, on_output: OutputCallback | None = None) -> None:
        self.limit = limit_bytes
        self.on_output = on_output
        self._buffers = {StreamName.STDOUT: bytearray(), StreamName.STDERR: bytearray()}
        self._truncated = {StreamName.STDOUT: False, StreamName.STDERR: False}
        self.total = 0
        self.exceeded = False
        # With a streaming caller the chunks are its to keep; the final result then carries no copy.
        self.keep = on_output is None

    async def feed(self, stream: StreamName, data: bytes) -> bool:
        """Take one chunk; return False once the limit has been passed (the sandbox must then be stopped)."""
        if self.exceeded:
            self._truncated[stream] = True
            return False
        room = self.limit - self.total
        kept = data[:room]
        if len(kept) < len(data):
            self.exceeded = True
            self._truncated[stream] = True
        self.total += len(kept)
        if kept:
            if self.keep:
                self._buffers[stream] += kept
            if self.on_output is not None:
                await self.on_output(stream, kept)
        return not self.exceeded

    def data(self, stream: StreamName) -> bytes:
        return bytes(self._buffers[stream])

    def truncated(self, stream: StreamName) -> bool:
        return self._truncated[stream]


def printable_path(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not UTF-8 (kept by Python as surrogate escapes) become
    ``\\xNN``, so a program cannot break the reply with a name the protocol cannot carry."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
