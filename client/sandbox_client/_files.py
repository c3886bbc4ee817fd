"""What a session's file transfers share between the two clients: the upload's source, read in chunks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO

from sandbox_client._retry import Retrying

UPLOAD_CHUNK_BYTES = 1024 * 1024
"""An upload's content goes in messages of this many bytes (the last one shorter)."""


class UploadSource:
    """The content of one upload: bytes in memory, sent again whole on a retry (``Retrying.SAFE``: the server
    puts the file in place whole or not at all), or a binary stream, read once as it is sent and so never
    retried (``Retrying.NEVER``).

    A stream's own failure (an ``OSError`` of its ``read``, or text where bytes were due) cancels the call; the
    caller gets that exception, not the cancelled call's (``raise_read_error``).

    Raises:
        TypeError: ``data`` is neither bytes, str, nor a binary stream.
    """

    def __init__(self, data: bytes | str | BinaryIO) -> None:
        self._source: bytes | BinaryIO
        self._read_error: Exception | None = None
        if isinstance(data, str):
            self._source = data.encode("utf-8")
        elif isinstance(data, bytes | bytearray | memoryview):
            self._source = bytes(data)
        elif callable(getattr(data, "read", None)):
            self._source = data
        else:
            raise TypeError(f"upload data must be bytes, str or a binary stream, not {type(data).__name__}")

    @property
    def size(self) -> int | None:
        """The bytes to send, when known without reading them (bytes, or a seekable stream: from its position
        to its end); None otherwise."""
        source = self._source
        if isinstance(source, bytes):
            return len(source)
        try:
            if not source.seekable():
                return None
            position = source.tell()
            end = source.seek(0, io.SEEK_END)
            source.seek(position)
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both; a minimal reader has none
            return None
        return max(0, end - position)

    @property
    def retrying(self) -> Retrying:
        return Retrying.SAFE if isinstance(self._source, bytes) else Retrying.NEVER

    def chunks(self) -> Iterator[bytes]:
        """The content, from its start on every call for bytes, from the stream's position for a stream."""
        source = self._source
        if isinstance(source, bytes):
            for start in range(0, len(source), UPLOAD_CHUNK_BYTES):
                yield source[start:start + UPLOAD_CHUNK_BYTES]
            return
        while chunk := self._read(source):
            yield chunk

    async def achunks(self) -> AsyncIterator[bytes]:
        """``chunks`` for the asyncio client: a stream is read in a worker thread, off the event loop."""
        source = self._source
        if isinstance(source, bytes):
            for chunk in self.chunks():
                yield chunk
            return
        while chunk := await asyncio.to_thread(self._read, source):
            yield chunk

    def raise_read_error(self) -> None:
        """Raise the stream's own failure, if it is what ended the call; otherwise return."""
        if self._read_error is not None:
            raise self._read_error

    def _read(self, stream: BinaryIO) -> bytes:
        try:
            chunk = stream.read(UPLOAD_CHUNK_BYTES)
            if not isinstance(chunk, bytes | bytearray):
                raise TypeError(f"the upload stream must be binary: its read() gave {type(chunk).__name__}")
        except Exception as exc:
            self._read_error = exc
            raise
        return bytes(chunk)
