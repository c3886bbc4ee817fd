"""What every backend shares about how an execution ends: the wall/CPU watchdog and the status decision."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from sandbox_server.execution.output import OutputCapture
from sandbox_server.execution.spec import (
    ExecutionResult,
    ExecutionSpec,
    Limits,
    OutputFile,
    Status,
    StreamName,
    Usage,
)

CPU_POLL_S = 0.1


async def watchdog(
    started: float,
    limits: Limits,
    running: Callable[[], bool],
    cpu_time_ns: Callable[[], int] | None,
    kill: Callable[[Status], None],
) -> None:
    """Kill at the wall-time limit, or at the CPU-time limit summed over the whole sandbox (polled)."""
    deadline = started + limits.wall_time_ms / 1000
    cpu_limit_ns = limits.cpu_time_ms * 1_000_000
    while running():
        now = time.monotonic()
        if now >= deadline:
            kill(Status.TIMEOUT)
            return
        if cpu_time_ns is not None and cpu_time_ns() >= cpu_limit_ns:
            kill(Status.CPU_LIMIT)
            return
        await asyncio.sleep(min(CPU_POLL_S, deadline - now))


def classify(
    killed_for: Status | None,
    exit_code: int | None,
    sig: int | None,
    oom_killed: int,
    cpu_s: float,
    limits: Limits,
) -> tuple[Status, str]:
    """Why the program ended: our own kill reasons first, then the kernel's counters, then the exit."""
    failed = sig is not None or (exit_code or 0) != 0
    if killed_for is Status.KILLED:
        return Status.KILLED, "killed by an operator"
    if killed_for is Status.OUTPUT_LIMIT:
        return killed_for, f"stdout + stderr passed the output limit of {limits.output_bytes} bytes"
    if killed_for is Status.TIMEOUT:
        return killed_for, f"killed at the wall-time limit of {limits.wall_time_ms} ms"
    if oom_killed and failed:
        return Status.MEMORY_LIMIT, (
            f"the kernel's OOM killer ended {oom_killed} process(es) at the memory limit of "
            f"{limits.memory_bytes} bytes"
        )
    if killed_for is Status.CPU_LIMIT or sig == signal.SIGXCPU:
        return Status.CPU_LIMIT, f"killed at the CPU-time limit of {limits.cpu_time_ms} ms (used {cpu_s:.2f} s)"
    if sig == signal.SIGXFSZ:
        return Status.FILE_SIZE_LIMIT, f"wrote a file larger than the limit of {limits.file_size_bytes} bytes"
    if sig is not None:
        return Status.KILLED, f"ended by signal {sig} ({_signame(sig)})"
    if exit_code:
        return Status.NONZERO_EXIT, f"exited with code {exit_code}"
    return Status.OK, ""


def finish(
    spec: ExecutionSpec,
    *,
    backend: str,
    limits: Limits,
    killed_for: Status | None,
    exit_code: int | None,
    sig: int | None,
    oom_kills: int,
    usage: Usage,
    capture: OutputCapture,
    files: tuple[OutputFile, ...],
    files_truncated: bool,
) -> ExecutionResult:
    """The ExecutionResult every backend returns, with its status decided by ``classify``."""
    status, message = classify(killed_for, exit_code, sig, oom_kills, usage.cpu_time_s, limits)
    return ExecutionResult(
        execution_id=spec.execution_id,
        status=status,
        exit_code=exit_code if exit_code is not None else -1,
        signal=sig or 0,
        stdout=capture.data(StreamName.STDOUT),
        stdout_truncated=capture.truncated(StreamName.STDOUT),
        stderr=capture.data(StreamName.STDERR),
        stderr_truncated=capture.truncated(StreamName.STDERR),
        files=files,
        files_truncated=files_truncated,
        usage=usage,
        message=message,
        limits=limits,
        language=spec.runtime.language,
        backend=backend,
    )


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"
