"""Capped capture of a sandbox's stdout and stderr, shared by every backend.

Never holds more than the output limit: once stdout + stderr together pass it, the rest is dropped, the
stream is marked truncated, and the caller is told to stop the sandbox (OUTPUT_LIMIT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sandbox_server.execution.spec import ExecutionSpec, OutputCallback, OutputFile, StreamName


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

    def charge(self, size: int) -> bool:
        """Count ``size`` bytes of other output (a session call's rich outputs, kept by the caller) against the
        same limit; False, and nothing counted, when they do not fit (the call must then be stopped)."""
        if self.exceeded or size > self.limit - self.total:
            self.exceeded = True
            return False
        self.total += size
        return True

    def data(self, stream: StreamName) -> bytes:
        return bytes(self._buffers[stream])

    def truncated(self, stream: StreamName) -> bool:
        return self._truncated[stream]


def printable_path(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not UTF-8 (kept by Python as surrogate escapes) become
    ``\\xNN``, so a program cannot break the reply with a name the protocol cannot carry."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def select_outputs(
    candidates: Iterable[tuple[str, int, Callable[[int], bytes | None]]], spec: ExecutionSpec
) -> tuple[tuple[OutputFile, ...], bool]:
    """Choose the output files both backends return, the same way: by path order, skipping inputs (and the
    code) the program left unchanged, then up to ``max_output_files`` files and ``max_output_file_bytes`` of
    content in all. Each candidate is (path, size, read(limit) -> bytes, or None when it cannot be read safely).
    Returns (files, truncated)."""
    unchanged = {f.path: f.content for f in spec.files}
    unchanged[spec.runtime.file_name] = spec.code
    out: list[OutputFile] = []
    budget = spec.max_output_file_bytes
    truncated = False
    for path, size, read in sorted(candidates, key=lambda c: c[0]):
        content: bytes | None = None
        original = unchanged.get(path)
        if original is not None and size == len(original):
            content = read(size)  # bounded by the input caps; read whole so the budget cannot fake a change
            if content is None or content == original:
                continue
        if len(out) >= spec.max_output_files:
            truncated = True
            break
        content = read(min(size, budget)) if content is None else content[:budget]
        if content is None:
            continue
        budget -= len(content)
        cut = len(content) < size
        truncated = truncated or cut
        out.append(OutputFile(path=printable_path(path), content=content, size=size, truncated=cut))
    return tuple(out), truncated
