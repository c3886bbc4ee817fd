"""Content guardrails around Execute, ExecuteStream and the session methods that move content, per the caller's
tenant policy.

In: static validation of the code (validation/static) and input guardrails (blocked patterns, prompt-injection
markers, file names and sizes) before any sandbox starts; a violation is INVALID_ARGUMENT with BadRequest field
violations naming the rule (and line and column for code). A session's initial files (CreateSession) and an
uploaded file (UploadFile: its name, and its first MAX_SCAN_BYTES for prompt-injection markers) are checked the
same way. Out: secrets in stdout, stderr, output files and a session call's value, rich outputs and error are
redacted (counted in ``redactions``) or, when the policy says block, the result becomes REJECTED with the output
withheld. Streams are redacted line by line; in block mode a stream's output is held back until the end. A
downloaded file is redacted line by line as it streams; in block mode its download stops, with an error, at the
first secret (nothing of it is sent). Everything fails closed: without a caller or a policy nothing runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import grpc

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.context import call_record
from sandbox_server.errors import FieldViolation, InvalidRequest, PermissionDenied
from sandbox_server.execution.runtimes import find_runtime
from sandbox_server.guardrails.inputs import MAX_SCAN_BYTES, check_inputs
from sandbox_server.guardrails.secrets import RedactionResult, redact
from sandbox_server.interceptors._wrap import StreamBehavior, UnaryBehavior, wrap_handler
from sandbox_server.interceptors.methods import CREATE_SESSION, DOWNLOAD_FILE, EXECUTE, UPLOAD_FILE
from sandbox_server.policy.caller import TenantPolicies, caller_policy
from sandbox_server.policy.models import SecretAction, TenantPolicy
from sandbox_server.telemetry import phase
from sandbox_server.validation.static import check_code

GUARDED = EXECUTE | {CREATE_SESSION, UPLOAD_FILE, DOWNLOAD_FILE}
# Inputs up to this size are checked on the event loop (microseconds); larger ones in a worker thread.
INLINE_CHECK_BYTES = 32 * 1024
# A stream line longer than this is redacted as it stands rather than held back for its newline.
MAX_HELD_LINE = 64 * 1024
LOG_CONTENT_BYTES = 4096  # of output, when a policy puts it in the logs


def check_request(request: pb.ExecuteRequest, policy: TenantPolicy) -> None:
    """Raise InvalidRequest with every static-validation and input-guardrail violation. Requests the
    servicer will reject anyway (unknown language, code that is not UTF-8) are left to it."""
    runtime = find_runtime(request.language)
    try:
        code = request.code.decode("utf-8")
    except UnicodeDecodeError:
        return
    violations = [
        FieldViolation("code", f"line {v.line}, column {v.column}: {v.message}", reason=v.rule)
        for v in (check_code(runtime.language, code, policy.static_validation) if runtime else [])
    ]
    files = [(f.path, f.content) for f in request.files]
    violations += [
        FieldViolation(v.field, v.message, reason=v.rule)
        for v in check_inputs(code, request.stdin, files, policy.guardrails)
    ]
    if violations:
        raise InvalidRequest(violations)


async def checked(request: pb.ExecuteRequest, policy: TenantPolicy) -> None:
    """check_request, off the event loop when the input is big enough for the checks to take milliseconds."""
    size = len(request.code) + len(request.stdin) + sum(len(f.content) for f in request.files)
    with phase("validation", **{"sandbox.input_bytes": size}):
        if size > INLINE_CHECK_BYTES:
            await asyncio.to_thread(check_request, request, policy)
        else:
            check_request(request, policy)


def check_session_files(request: pb.CreateSessionRequest, policy: TenantPolicy) -> None:
    """A new session's files, checked as an execution's input files are."""
    violations = [FieldViolation(v.field, v.message, reason=v.rule)
                  for v in check_inputs("", b"", [(f.path, f.content) for f in request.files], policy.guardrails)]
    if violations:
        raise InvalidRequest(violations)


def check_upload(path: str, head: bytes, policy: TenantPolicy) -> None:
    """An uploaded file's name (denied_file_names) and the start of its content (prompt-injection markers)."""
    violations = [FieldViolation(v.field.replace("files[0]", "header"), v.message, reason=v.rule)
                  for v in check_inputs("", b"", [(path, head)], policy.guardrails)
                  if v.rule not in ("max_input_files", "max_input_file_bytes")]
    if violations:
        raise InvalidRequest(violations)


async def guarded_upload(requests: AsyncIterator[Any], policy: TenantPolicy) -> AsyncIterator[Any]:
    """The upload's messages, passed on once its name and the first MAX_SCAN_BYTES of its content passed."""
    held: list[Any] = []
    header: pb.UploadHeader | None = None
    head = bytearray()
    checked_yet = False
    async for message in requests:
        if not checked_yet:
            held.append(message)
            if isinstance(message, pb.UploadFileRequest):
                if message.HasField("header") and header is None:
                    header = message.header
                elif message.HasField("chunk"):
                    head += message.chunk[: MAX_SCAN_BYTES - len(head)]
            if len(head) < MAX_SCAN_BYTES:
                continue
            check_upload(header.path if header is not None else "", bytes(head), policy)
            checked_yet = True
            for early in held:
                yield early
            held = []
            continue
        yield message
    if not checked_yet:
        check_upload(header.path if header is not None else "", bytes(head), policy)
        for early in held:
            yield early


class DownloadGuard:
    """A download's content, redacted line by line as it streams (block mode: refused at the first secret)."""

    def __init__(self, action: SecretAction) -> None:
        self.action = action
        self.held = bytearray()
        self.redactions = 0

    def feed(self, data: bytes, last: bool = False) -> bytes:
        if self.action is SecretAction.OFF:
            return data
        self.held += data
        cut = len(self.held) if last else self.held.rfind(b"\n") + 1
        if not last and cut == 0 and len(self.held) > MAX_HELD_LINE:
            cut = len(self.held)
        ready, self.held = bytes(self.held[:cut]), self.held[cut:]
        if not ready:
            return b""
        scanned = redact(ready, self.action)
        if scanned.blocked:
            raise PermissionDenied("the file was withheld by the tenant's guardrail: it contains secrets ("
                                   + ", ".join(sorted(scanned.kinds)) + ")", reason="OUTPUT_WITHHELD")
        self.redactions += scanned.redactions
        return scanned.data


def guard_result(result: pb.ExecuteResult, action: SecretAction) -> pb.ExecuteResult:
    """Redact (or block) secrets in the result's stdout, stderr, files, and a session call's value, rich outputs
    and error, in place; count them."""
    if action is SecretAction.OFF:
        return result
    parts = [redact(result.stdout, action), redact(result.stderr, action)]
    file_parts = [redact(f.content, action) for f in result.files]
    value = redact(result.value.encode(), action)
    error_parts = [redact(result.error.value.encode(), action),
                   *(redact(line.encode(), action) for line in result.error.traceback)]
    display_parts = [_redact_display(d, action) for d in result.outputs]
    every = (*parts, *file_parts, value, *error_parts, *(p for d in display_parts for p in d))
    found = sum(p.redactions for p in every)
    kinds = sorted({k for p in every for k in p.kinds})
    if any(p.blocked for p in every):
        return block(result, found, kinds)
    result.stdout, result.stderr = parts[0].data, parts[1].data
    for f, p in zip(result.files, file_parts, strict=True):
        f.content = p.data
    result.value = value.data.decode("utf-8", "replace")
    if result.HasField("error"):
        result.error.value = error_parts[0].data.decode("utf-8", "replace")
        result.error.traceback[:] = [p.data.decode("utf-8", "replace") for p in error_parts[1:]]
    for display, redacted in zip(result.outputs, display_parts, strict=True):
        _apply_display(display, redacted)
    result.redactions += found
    return result


def _redact_display(display: pb.DisplayData, action: SecretAction) -> list[RedactionResult]:
    """The display's data, then its alternatives in key order, each scanned."""
    return [redact(display.data, action), *(redact(display.alternatives[k], action)
                                            for k in sorted(display.alternatives))]


def _apply_display(display: pb.DisplayData, redacted: list[RedactionResult]) -> None:
    display.data = redacted[0].data
    for key, part in zip(sorted(display.alternatives), redacted[1:], strict=True):
        display.alternatives[key] = part.data


def block(result: pb.ExecuteResult, found: int, kinds: list[str]) -> pb.ExecuteResult:
    result.stdout, result.stderr = b"", b""
    del result.files[:]
    result.value = ""
    del result.outputs[:]
    result.ClearField("error")
    result.status = pb.STATUS_REJECTED
    result.redactions += found
    result.message = ("output withheld by the tenant's guardrail: it contained secrets ("
                      + ", ".join(kinds) + ")")
    return result


class StreamGuard:
    """Line-by-line redaction of streamed output; in block mode, everything is held until the result."""

    def __init__(self, action: SecretAction) -> None:
        self.action = action
        self.held: dict[int, bytearray] = {pb.STREAM_STDOUT: bytearray(), pb.STREAM_STDERR: bytearray()}
        self.displays: list[pb.ExecuteEvent] = []  # block mode: held until the verdict
        self.redactions = 0
        self.kinds: set[str] = set()
        self.blocked = False

    def feed(self, event: pb.ExecuteEvent) -> Iterator[pb.ExecuteEvent]:
        if self.action is SecretAction.OFF:
            yield event
            return
        if event.HasField("display"):
            yield from self._display(event)
            return
        buf = self.held[event.output.stream]
        buf += event.output.data
        if self.action is SecretAction.BLOCK:
            return
        cut = buf.rfind(b"\n") + 1
        # A key block arrives over many lines: hold from its BEGIN line until its END line is in, so it is
        # redacted whole (bounded: past MAX_HELD_LINE it goes out redacted as it stands).
        begin = buf.rfind(b"-----BEGIN", 0, cut)
        if begin >= 0 and buf.find(b"-----END", begin, cut) < 0 and len(buf) <= MAX_HELD_LINE:
            cut = buf.rfind(b"\n", 0, begin) + 1
        if cut == 0 and len(buf) > MAX_HELD_LINE:
            cut = len(buf)
        if cut:
            ready = bytes(buf[:cut])
            del buf[:cut]
            yield from self._emit(event.output.stream, ready)

    def _display(self, event: pb.ExecuteEvent) -> Iterator[pb.ExecuteEvent]:
        redacted = _redact_display(event.display, self.action)
        self.redactions += sum(p.redactions for p in redacted)
        self.kinds.update(k for p in redacted for k in p.kinds)
        if any(p.blocked for p in redacted):
            self.blocked = True
        if self.action is SecretAction.BLOCK:
            self.displays.append(event)
            return
        _apply_display(event.display, redacted)
        yield event

    def finish(self, event: pb.ExecuteEvent) -> Iterator[pb.ExecuteEvent]:
        """Release what was held, then the result (with the count, or REJECTED)."""
        if self.action is SecretAction.BLOCK:
            scans = {stream: redact(bytes(buf), self.action) for stream, buf in self.held.items()}
            self.redactions += sum(s.redactions for s in scans.values())
            self.kinds.update(k for s in scans.values() for k in s.kinds)
            self.blocked = self.blocked or any(s.blocked for s in scans.values())
            if not self.blocked:
                for stream, buf in self.held.items():
                    if buf:
                        yield _chunk(stream, bytes(buf))
                yield from self.displays
        else:
            for stream, buf in self.held.items():
                if buf:
                    yield from self._emit(stream, bytes(buf))
        result = guard_result(event.result, self.action)
        if self.blocked and result.status != pb.STATUS_REJECTED:
            result = block(result, 0, [])
        result.redactions += self.redactions
        if self.blocked:
            result.message = ("output withheld by the tenant's guardrail: it contained secrets ("
                              + ", ".join(sorted(self.kinds)) + ")")
        yield pb.ExecuteEvent(result=result)

    def _emit(self, stream: int, data: bytes) -> Iterator[pb.ExecuteEvent]:
        scanned = redact(data, self.action)
        self.redactions += scanned.redactions
        self.kinds.update(scanned.kinds)
        if scanned.data:
            yield _chunk(stream, scanned.data)


async def _guard_download(responses: AsyncIterator[Any], policy: TenantPolicy) -> AsyncIterator[Any]:
    guard = DownloadGuard(policy.guardrails.output_secrets)
    async for message in responses:
        if isinstance(message, pb.DownloadFileResponse) and message.chunk:
            message.chunk = guard.feed(message.chunk)
            message.redactions = guard.redactions
            if not message.chunk:
                continue
        yield message
    tail = guard.feed(b"", last=True)
    if tail or guard.redactions:
        yield pb.DownloadFileResponse(chunk=tail, redactions=guard.redactions)


def _chunk(stream: int, data: bytes) -> pb.ExecuteEvent:
    return pb.ExecuteEvent(output=pb.OutputChunk(stream=cast("pb.Stream", stream), data=data))


class GuardrailsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policies: TenantPolicies) -> None:
        self.policies = policies

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if method not in GUARDED:
            return handler
        policies = self.policies

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _, policy = caller_policy(policies)
                if method == CREATE_SESSION:
                    if isinstance(request, pb.CreateSessionRequest):
                        check_session_files(request, policy)
                    return await behavior(request, context)
                if method == UPLOAD_FILE:
                    return await behavior(guarded_upload(request, policy), context)
                if isinstance(request, pb.ExecuteRequest):
                    await checked(request, policy)
                result = await behavior(request, context)
                with phase("guardrails.output"):
                    guarded = guard_result(result, policy.guardrails.output_secrets)
                call = call_record()
                if call is not None and policy.log_content.output:  # after redaction: no secret reaches the log
                    call.log_extra["stdout"] = guarded.stdout[:LOG_CONTENT_BYTES].decode(errors="replace")
                    call.log_extra["stderr"] = guarded.stderr[:LOG_CONTENT_BYTES].decode(errors="replace")
                return guarded

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _, policy = caller_policy(policies)
                if method == DOWNLOAD_FILE:
                    async for out in _guard_download(behavior(request, context), policy):
                        yield out
                    return
                if isinstance(request, pb.ExecuteRequest):
                    await checked(request, policy)
                guard = StreamGuard(policy.guardrails.output_secrets)
                async for event in behavior(request, context):
                    events = guard.finish(event) if event.HasField("result") else guard.feed(event)
                    for out in events:
                        yield out

            return wrapped

        return wrap_handler(handler, unary, stream)
