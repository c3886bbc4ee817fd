"""Turns ExecuteStream's events into what ``execute_stream`` yields (shared by both clients)."""

from __future__ import annotations

from sandbox_client._convert import chunk_from_proto, display_from_proto, result_from_proto
from sandbox_client._errors import protocol_error
from sandbox_client._models import DisplayData, ExecutionResult, OutputChunk
from sandbox_client._proto.sandbox.v1 import sandbox_pb2


class StreamAssembler:
    """Feed it every event of one attempt, in order; then ``finish()`` gives the final result.

    The server leaves stdout/stderr and the rich outputs empty in the streamed result (they were streamed): the
    assembler fills them with the chunks it saw, joined, and the ``DisplayData`` it saw, in order, so the result
    equals what ``execute`` would have returned.
    """

    def __init__(self) -> None:
        self._chunks: list[OutputChunk] = []
        self._outputs: list[DisplayData] = []
        self._result: sandbox_pb2.ExecuteResult | None = None

    @property
    def chunks(self) -> tuple[OutputChunk, ...]:
        """Every chunk fed so far (each one was handed to the caller), in order."""
        return tuple(self._chunks)

    @property
    def outputs(self) -> tuple[DisplayData, ...]:
        """Every rich output fed so far (each one was handed to the caller), in order."""
        return tuple(self._outputs)

    @property
    def handed_out(self) -> bool:
        """Something was handed to the caller: the stream may no longer be retried behind its back."""
        return bool(self._chunks or self._outputs)

    def feed(self, event: sandbox_pb2.ExecuteEvent) -> OutputChunk | DisplayData | None:
        """The chunk or rich output to hand to the caller, or None (the result, or an event kind this client does
        not know).

        Raises:
            ServerError: an event after the result, or a chunk of no known stream.
        """
        if self._result is not None:
            raise protocol_error("event after the final result")
        kind = event.WhichOneof("event")
        if kind == "output":
            chunk = chunk_from_proto(event.output)
            self._chunks.append(chunk)
            return chunk
        if kind == "display":
            display = display_from_proto(event.display)
            self._outputs.append(display)
            return display
        if kind == "result":
            self._result = event.result
        # None: an event kind added after this client was written; skipping it keeps old clients working.
        return None

    def finish(self) -> ExecutionResult:
        """Raises ServerError when the stream ended without a result."""
        if self._result is None:
            raise protocol_error("stream ended without a result")
        result = self._result
        return result_from_proto(
            result,
            stdout=result.stdout or b"".join(c.data for c in self._chunks if c.stream == "stdout"),
            stderr=result.stderr or b"".join(c.data for c in self._chunks if c.stream == "stderr"),
            outputs=None if result.outputs else self._outputs,
        )
