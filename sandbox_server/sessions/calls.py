"""One call in a session, on any backend: hand it to the agent, watch its wall time, its CPU time (the
session cgroup's counter) and its output, stop it at a limit, and make its ExecutionResult.

Stopping a Python call interrupts the kernel (SIGINT: KeyboardInterrupt in the code), which keeps its state;
a kernel that has not stopped INTERRUPT_GRACE_S later is restarted, and the result says so. A bash or
JavaScript call is killed with its process group. Either way the agent kills whatever the call left running
before it answers, so nothing a call started outlives it (the kernel itself aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox_server.backends.outcome import classify
from sandbox_server.execution.output import OutputCapture
from sandbox_server.execution.spec import (
    CodeError,
    DisplayData,
    ExecutionResult,
    ExecutionSpec,
    OutputCallback,
    Status,
    StreamName,
    Usage,
)
from sandbox_server.sessions.channel import AgentError, CallEvents, ChannelClosed
from sandbox_server.sessions.sandbox import SessionSandbox

log = logging.getLogger(__name__)

DisplayCallback = Callable[[DisplayData], Awaitable[None]]

POLL_S = 0.05
INTERRUPT_GRACE_S = 2.0  # a Python call's time to stop after SIGINT before its kernel is restarted
RESTART_TIMEOUT_S = 90.0  # a kernel restart (a new interpreter and ipykernel) on a loaded host
GIVE_UP_S = 10.0  # a killed command that still has not answered: the sandbox is broken
MAX_MIMES = 32
MAX_MIME_CHARS = 255
MAX_DISPLAY_ID = 128
MAX_TRACEBACK_ENTRIES = 200
MAX_TEXT = 64 * 1024  # of an error's value or a last value's repr
# The representation a rich output is shown by, richest first (text/plain is every output's fallback).
MIME_PRIORITY = ("image/png", "image/jpeg", "image/gif", "image/svg+xml", "text/html", "text/markdown",
                 "text/latex", "application/json", "application/javascript")


@dataclass
class CallFacts:
    """What the session layer learns from a call besides its result."""

    cpu_ns: int = 0
    kernel_restarted: bool = False
    session_cpu_exhausted: bool = False
    broken: str = ""  # why the sandbox cannot go on ("" if it can)
    error_signature: str = ""  # how it failed, for loop detection ("" when it did not)
    stray_processes: int = 0


class CallControl:
    """Lets the session layer stop a running call from outside (an operator's kill)."""

    def __init__(self) -> None:
        self._stop: Callable[[Status], None] | None = None
        self._pending: Status | None = None

    def bind(self, stop: Callable[[Status], None]) -> None:
        self._stop = stop
        if self._pending is not None:
            stop(self._pending)

    def stop(self, reason: Status) -> None:
        if self._stop is not None:
            self._stop(reason)
        else:
            self._pending = reason


@dataclass
class _State:
    spec: ExecutionSpec
    capture: OutputCapture
    outputs: list[DisplayData] = field(default_factory=list)
    killed_for: Status | None = None
    interrupted_at: float = 0.0
    restart: asyncio.Task[None] | None = None
    restarted: bool = False


async def run_call(sandbox: SessionSandbox, spec: ExecutionSpec, *, cpu_left_ns: int,
                   on_output: OutputCallback | None = None, on_display: DisplayCallback | None = None,
                   control: CallControl | None = None) -> tuple[ExecutionResult, CallFacts]:
    """Run one call to its end. A cancelled call is stopped (interrupted, its kernel restarted if need be)
    before the cancellation goes on, so the session is free for the next call."""
    channel = sandbox.channel
    limits = spec.limits
    state = _State(spec, OutputCapture(limits.output_bytes, on_output))
    facts = CallFacts()
    python = spec.runtime.language == "python"
    rid = channel.new_id()

    def interrupt(reason: Status) -> None:
        if state.killed_for is None:
            state.killed_for = reason
            state.interrupted_at = time.monotonic()
            _fire(channel.send("interrupt", {"call": rid}))

    async def on_out(stream: int, data: bytes) -> None:
        name = StreamName.STDERR if stream == 2 else StreamName.STDOUT
        if not await state.capture.feed(name, data):
            interrupt(Status.OUTPUT_LIMIT)

    async def on_rich(header: dict[str, Any], payload: bytes | None) -> None:
        size = len(payload) if payload is not None else int(header.get("dropped", 0))
        if not state.capture.charge(size):
            interrupt(Status.OUTPUT_LIMIT)
            return
        display = _display(header, payload)
        if display is None or (state.outputs and _same(state.outputs[-1], display)):
            return  # malformed, or the figure a cell returned and then showed again
        state.outputs.append(display)
        if on_display is not None:
            await on_display(display)

    if control is not None:
        control.bind(interrupt)
    fields: dict[str, Any]
    if python:
        op, fields = "exec", {"code_len": len(spec.code)}
    else:
        op, fields = "run", {"lang": spec.runtime.language, "env": dict(spec.env), "code_len": len(spec.code)}
    sandbox.reset_peak_memory()
    cpu0, oom0 = sandbox.cpu_time_ns(), sandbox.oom_kills()
    egress0 = _egress_counters(sandbox)
    started = time.monotonic()
    request = asyncio.create_task(channel.request(op, fields, spec.code + spec.stdin,
                                                  events=CallEvents(on_out, on_rich), rid=rid))
    reply: dict[str, Any] | None = None
    refused: AgentError | None = None
    try:
        reply = await _watch(request, state, sandbox, cpu0, cpu_left_ns, started, python, interrupt, facts)
    except asyncio.CancelledError:
        interrupt(Status.KILLED)
        await asyncio.shield(_settle(request, state, sandbox, python, facts))
        raise
    except ChannelClosed as exc:
        facts.broken = exc.reason
    except AgentError as exc:
        # The agent is there and answering: the call could not run (no kernel, its code file), the session can
        # go on.
        refused = exc
    finally:
        if state.restart is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(state.restart)
    ended = time.monotonic()
    facts.cpu_ns = max(0, sandbox.cpu_time_ns() - cpu0)
    sent, received, connections = (now - before for now, before in zip(_egress_counters(sandbox), egress0,
                                                                       strict=True))
    usage = Usage(wall_time_s=ended - started, cpu_time_s=facts.cpu_ns / 1e9,
                  peak_memory_bytes=sandbox.peak_memory_bytes(), egress_bytes_sent=sent,
                  egress_bytes_received=received, egress_connections=connections)
    oom = sandbox.oom_kills() - oom0
    result = await _result(state, reply, facts, usage, oom, python, sandbox.backend, refused)
    return result, facts


async def _watch(request: asyncio.Task[tuple[dict[str, Any], bytes]], state: _State, sandbox: SessionSandbox,
                 cpu0: int, cpu_left_ns: int, started: float, python: bool,
                 interrupt: Callable[[Status], None], facts: CallFacts) -> dict[str, Any]:
    limits = state.spec.limits
    deadline = started + limits.wall_time_ms / 1000
    cpu_limit = limits.cpu_time_ms * 1_000_000
    while True:
        done, _ = await asyncio.wait({request}, timeout=POLL_S)
        if done:
            return request.result()[0]
        now = time.monotonic()
        used = sandbox.cpu_time_ns() - cpu0
        if now >= deadline:
            interrupt(Status.TIMEOUT)
        elif used >= cpu_left_ns:
            facts.session_cpu_exhausted = True
            interrupt(Status.CPU_LIMIT)
        elif used >= cpu_limit:
            interrupt(Status.CPU_LIMIT)
        if state.killed_for is None:
            continue
        waited = now - state.interrupted_at
        if python and state.restart is None and waited >= INTERRUPT_GRACE_S:
            state.restart = asyncio.create_task(_restart(sandbox, state))
        elif not python and waited >= GIVE_UP_S:
            raise ChannelClosed("a killed call did not end")
        elif state.restart is not None and state.restart.done() and waited >= INTERRUPT_GRACE_S + GIVE_UP_S:
            raise ChannelClosed("an interrupted call did not end after its kernel was restarted")


async def _restart(sandbox: SessionSandbox, state: _State) -> None:
    """The interrupt did not stop the kernel: restart it (the pending call then ends as kernel_died)."""
    state.restarted = True
    await asyncio.wait_for(sandbox.channel.request("restart"), RESTART_TIMEOUT_S)


async def _settle(request: asyncio.Task[tuple[dict[str, Any], bytes]], state: _State, sandbox: SessionSandbox,
                  python: bool, facts: CallFacts) -> None:
    """A cancelled call: wait for it to stop (restarting the kernel if it will not), so the session is free."""
    try:
        done, _ = await asyncio.wait({request}, timeout=INTERRUPT_GRACE_S)
        if not done and python:
            state.restart = asyncio.create_task(_restart(sandbox, state))
            await asyncio.wait({request}, timeout=RESTART_TIMEOUT_S)
        elif not done:
            await asyncio.wait({request}, timeout=GIVE_UP_S)
        if state.restart is not None:
            await state.restart
    except Exception as exc:
        facts.broken = f"a cancelled call could not be stopped: {exc}"
    if not request.done():
        request.cancel()
        facts.broken = facts.broken or "a cancelled call did not stop"
    elif not request.cancelled() and request.exception() is not None:
        facts.broken = facts.broken or f"the session's sandbox failed: {request.exception()}"


def _fire(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _result(state: _State, reply: dict[str, Any] | None, facts: CallFacts, usage: Usage, oom: int,
                  python: bool, backend: str, refused: AgentError | None = None) -> ExecutionResult:
    spec, limits, capture = state.spec, state.spec.limits, state.capture
    killed_for = state.killed_for
    value, error, count = "", None, 0
    exit_code: int | None = 0
    sig: int | None = None
    message = ""
    status: Status
    restarted = state.restarted
    if refused is not None:
        status, exit_code = Status.KILLED, None
        message = f"the call could not run: {refused.message}"
    elif reply is None:
        status, exit_code, sig = Status.KILLED, None, signal.SIGKILL
        message = f"the session's sandbox ended during the call ({facts.broken or 'closed'})"
    elif python and reply.get("kernel_died"):
        restarted = True
        exit_code, sig = _int(reply.get("exit_code"), -1), _int(reply.get("signal"), 0) or None
        if state.restarted and killed_for is not None:
            status = killed_for
            message = (_why(killed_for, limits) + "; the kernel did not stop when interrupted and was restarted: "
                       "its state is gone")
        elif oom:
            status = Status.MEMORY_LIMIT
            message = (f"the kernel's OOM killer ended the kernel at the session's memory limit of "
                       f"{limits.memory_bytes} bytes; it was restarted: its state is gone")
        else:
            status = Status.KILLED
            how = f"signal {sig}" if sig else f"exit code {exit_code}"
            message = f"the kernel ended ({how}) and was restarted: its state is gone"
    elif python:
        count = _int(reply.get("execution_count"), 0)
        value = _text(reply.get("value"))
        error = _error(reply.get("error"))
        if error is not None:
            await capture.feed(StreamName.STDERR, ("\n".join(error.traceback) + "\n").encode())
        status, exit_code, message = _python_status(error, killed_for, limits)
    else:
        exit_code, sig = _int(reply.get("exit_code"), -1), _int(reply.get("signal"), 0) or None
        if sig is not None:
            exit_code = None
        status, message = classify(killed_for, exit_code, sig, oom, usage.cpu_time_s, limits)
    if reply is not None:
        facts.stray_processes = _int(reply.get("stray_processes"), 0)
        if reply.get("purged") is True:
            # Processes that kept forking (started by this call or since the last one) outran the kills by pid:
            # everything was killed at once, the kernel with them.
            restarted = True
            note = ("processes left running kept forking and were killed together with the kernel, which was "
                    "restarted: its state is gone")
            message = f"{message}; {note}" if message else note
    facts.kernel_restarted = restarted
    if status is not Status.OK:
        how = f"{error.name}:{error.value[:200]}" if error else f":{exit_code}"
        facts.error_signature = f"{status.name}:{how}"
    return ExecutionResult(
        execution_id=spec.execution_id,
        status=status,
        exit_code=exit_code if exit_code is not None else -1,
        signal=sig or 0,
        stdout=capture.data(StreamName.STDOUT),
        stdout_truncated=capture.truncated(StreamName.STDOUT),
        stderr=capture.data(StreamName.STDERR),
        stderr_truncated=capture.truncated(StreamName.STDERR),
        files=(),
        files_truncated=False,
        usage=usage,
        message=message,
        limits=limits,
        language=spec.runtime.language,
        backend=backend,
        value=value,
        outputs=tuple(state.outputs) if capture.keep else (),
        error=error,
        kernel_restarted=restarted,
        execution_count=count,
    )


def _python_status(error: CodeError | None, killed_for: Status | None, limits: Any) -> tuple[Status, int, str]:
    """(status, exit code, message) of a Python call that ended with its kernel alive."""
    if killed_for is not None:
        kept = "; the kernel kept its state" if error is None or error.name == "KeyboardInterrupt" else ""
        return killed_for, 1 if error is not None else 0, _why(killed_for, limits) + kept
    if error is None:
        return Status.OK, 0, ""
    if error.name == "SystemExit":
        code = error.value.strip()
        number = _int(code, 1) if code.lstrip("-").isdigit() else (0 if code in ("", "None") else 1)
        if number == 0:
            return Status.OK, 0, ""
        return Status.NONZERO_EXIT, number, f"SystemExit: {code}"
    return Status.NONZERO_EXIT, 1, f"{error.name}: {error.value}"[:1000]


def _why(reason: Status, limits: Any) -> str:
    if reason is Status.TIMEOUT:
        return f"interrupted at the wall-time limit of {limits.wall_time_ms} ms"
    if reason is Status.CPU_LIMIT:
        return f"interrupted at the CPU-time limit of {limits.cpu_time_ms} ms (or the session's CPU total)"
    if reason is Status.OUTPUT_LIMIT:
        return f"interrupted when its output passed the output limit of {limits.output_bytes} bytes"
    if reason is Status.KILLED:
        return "killed by an operator"
    return f"stopped ({reason.name})"


def _display(header: dict[str, Any], payload: bytes | None) -> DisplayData | None:
    """A rich output from an agent's display frame; None when it does not add up (it is untrusted)."""
    mimes = header.get("mimes")
    if payload is None or not isinstance(mimes, list) or not mimes or len(mimes) > MAX_MIMES:
        return None
    parts: list[tuple[str, bytes]] = []
    offset = 0
    for item in mimes:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or item[1] < 0):
            return None
        mime, size = item
        if not mime or len(mime) > MAX_MIME_CHARS or not mime.isprintable():
            return None
        parts.append((mime, payload[offset:offset + size]))
        offset += size
    if offset != len(payload):
        return None
    ranked = sorted(parts, key=lambda p: MIME_PRIORITY.index(p[0]) if p[0] in MIME_PRIORITY
                    else len(MIME_PRIORITY) + (1 if p[0] == "text/plain" else 0))
    (mime, data), rest = ranked[0], ranked[1:]
    display_id = header.get("display_id")
    return DisplayData(mime_type=mime, data=data, alternatives=tuple(rest),
                       is_result=header.get("result") is True,
                       display_id=display_id[:MAX_DISPLAY_ID] if isinstance(display_id, str) else "",
                       update=header.get("update") is True)


def _same(a: DisplayData, b: DisplayData) -> bool:
    return a.mime_type == b.mime_type and a.data == b.data and not b.update and not b.display_id


def _error(raw: object) -> CodeError | None:
    if not isinstance(raw, dict):
        return None
    traceback = raw.get("traceback")
    lines = [_text(line) for line in traceback[:MAX_TRACEBACK_ENTRIES]] if isinstance(traceback, list) else []
    return CodeError(name=_text(raw.get("name"))[:200], value=_text(raw.get("value")), traceback=tuple(lines))


def _text(value: object) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)
    return default


def _egress_counters(sandbox: SessionSandbox) -> tuple[int, int, int]:
    """The session's proxy counters so far (a call's are the difference across it)."""
    if sandbox.egress is None:
        return 0, 0, 0
    stats = sandbox.egress.stats
    return stats.bytes_sent, stats.bytes_received, stats.connections
