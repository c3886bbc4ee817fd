"""The text a model sees of a one-shot run (``execute_code``): the result, with the status in words and what to do
about it, or the refusal; and the pieces the session texts (``_session_text``) word the same way."""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Final

from sandbox_client._errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    PermissionDeniedError,
    RequestCancelledError,
    ResourceExhaustedError,
    SandboxError,
    UnavailableError,
)
from sandbox_client._models import ExecutionResult, OutputFile, Status
from sandbox_client.adapters._specs import TOOL_NAME

DEFAULT_MAX_OUTPUT_CHARS: Final = 10_000
"""Characters of stdout, and as many of stderr, a model sees of one run (head and tail kept)."""
# Request fields the server may name in a refusal, in terms of the tool's own arguments.
_FIELD_ARGUMENTS: Final[Mapping[str, str]] = {
    "code": "code", "language": "language", "stdin": "stdin",
    "limits.wall_time_ms": "timeout_s (sent as limits.wall_time_ms, in milliseconds)",
}
_MAX_LISTED_FILES: Final = 20


def truncate_middle(text: str, max_chars: int) -> str:
    """``text`` unchanged when it has at most ``max_chars`` characters; else its head and tail (about half of
    ``max_chars`` each) around a line ``[... N more characters truncated ...]``, N being the characters left out.
    The tail is kept because that is where errors and final results usually are."""
    if len(text) <= max_chars:
        return text
    head = max_chars - max_chars // 2
    tail = max_chars - head
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[... {left_out} more characters truncated ...]\n{text[len(text) - tail:]}"


def format_result(result: ExecutionResult, *, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """The tool-result text for a program that ran: status in words, why it was killed and what to do about it,
    exit code, time and memory, then stdout and stderr, each cut to ``max_output_chars`` (head and tail)."""
    headline, advice = _status_words(result)
    lines = [f"Status: {headline}"]
    if result.status not in (Status.OK, Status.NONZERO_EXIT) and result.message:
        lines.append(f"Reason: {result.message}")
    if advice:
        lines.append(f"What to do: {advice}.")
    lines.append(f"Exit code: {_exit_code_words(result)}")
    lines.extend(_usage_lines(result))
    if result.files:
        lines.append(f"Files the program left in its working directory: {_listed_files(result.files)}")
    lines.append(_stream_block("stdout", result.stdout, max_output_chars))
    lines.append(_stream_block("stderr", result.stderr, max_output_chars))
    return "\n".join(lines)


def _usage_lines(result: ExecutionResult) -> list[str]:
    """The time and memory a run used, and what the sandbox did to its output (redacted, kept only part of)."""
    usage = result.usage
    lines = [f"Time: {usage.wall_time_s:.2f} s wall, {usage.cpu_time_s:.2f} s CPU; "
             f"peak memory {_size(usage.peak_memory_bytes)}"]
    if result.redactions:
        lines.append(f"Note: the sandbox redacted {result.redactions} secret(s) found in the output.")
    for stream, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut and result.status is not Status.OUTPUT_LIMIT:
            lines.append(f"Note: the sandbox kept only the first part of {stream} (its output limit).")
    return lines


def _listed_files(files: Sequence[OutputFile]) -> str:
    """The first files with their sizes, and how many more there are."""
    listed = ", ".join(f"{f.path} ({_size(f.size)})" for f in files[:_MAX_LISTED_FILES])
    more = len(files) - _MAX_LISTED_FILES
    return listed + (f" and {more} more" if more > 0 else "")


def _stream_block(name: str, text: str, max_chars: int) -> str:
    if not text:
        return f"<{name}></{name}>"
    body = truncate_middle(text, max_chars)
    closing = f"</{name}>" if body.endswith("\n") else f"\n</{name}>"  # the closing tag on a line of its own
    return f"<{name}>\n{body}{closing}"


# Each status in words, and advice for the model ("": none); {limit} is where the limit it was stopped at goes
# (_limit_words), {signal} the signal that killed it.
_STATUS_WORDS: Final[Mapping[Status, tuple[str, str]]] = {
    Status.OK: ("succeeded", ""),
    Status.NONZERO_EXIT: ("failed (the program exited with a non-zero code)",
                          "read stderr and stdout below, fix the program and run it again"),
    Status.TIMEOUT: ("killed: timed out (it ran past the wall-time limit{limit})",
                     "make the program faster or do less per call, or pass a larger timeout_s"),
    Status.CPU_LIMIT: ("killed: it used up the CPU-time limit{limit}", "make the program do less computation per call"),
    Status.MEMORY_LIMIT: ("killed: it ran out of memory{limit}",
                          "use less memory, e.g. process the data in pieces or use smaller data structures"),
    Status.OUTPUT_LIMIT: ("killed: stdout and stderr together passed the output limit{limit}",
                          "print less: a summary, a count or the first lines instead of everything"),
    Status.FILE_SIZE_LIMIT: ("killed: it wrote a file larger than the file-size limit{limit}", "write smaller files"),
    Status.KILLED: ("killed by {signal}",
                    "the program crashed or was stopped (e.g. too many processes or threads); simplify it"),
    Status.REJECTED: ("rejected by the sandbox after it ran (an output check refused the result)",
                      "do not print secrets or credentials"),
}


def _status_words(result: ExecutionResult) -> tuple[str, str]:
    """(the status in words, advice for the model or "")."""
    headline, advice = _STATUS_WORDS.get(result.status, ("ended with a status this client does not know", ""))
    return headline.format(limit=_limit_words(result), signal=_signal_name(result.signal)), advice


def _limit_words(result: ExecutionResult) -> str:
    """The limit a run was stopped at, as its status words end (" of 2 s", " (limit 256 MiB)"); "" when the result
    does not name one."""
    limits = result.limits
    match result.status:
        case Status.TIMEOUT if limits.wall_time_s:
            return f" of {_seconds(limits.wall_time_s)}"
        case Status.CPU_LIMIT if limits.cpu_time_s:
            return f" of {_seconds(limits.cpu_time_s)}"
        case Status.MEMORY_LIMIT if limits.memory_bytes:
            return f" (limit {_size(limits.memory_bytes)})"
        case Status.OUTPUT_LIMIT if limits.output_bytes:
            return f" of {_size(limits.output_bytes)}"
        case Status.FILE_SIZE_LIMIT if limits.file_size_bytes:
            return f" of {_size(limits.file_size_bytes)}"
        case _:
            return ""


def _exit_code_words(result: ExecutionResult) -> str:
    if result.signal:
        return f"none (killed by {_signal_name(result.signal)})"
    return str(result.exit_code)


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name}, signal {number}"
    except ValueError:
        return f"signal {number}"


def _seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def format_error(error: SandboxError, *, tool_name: str = TOOL_NAME) -> str:
    """The tool-result text for a call the sandbox refused or could not serve (nothing ran, or it is unknown
    whether it did): what happened, the server's details (field violations, quota violations, when to retry),
    and what the model can do (``tool_name``: what the advice calls the tool)."""
    lines: list[str]
    match error:
        case InvalidRequestError():
            lines = _invalid_request_lines(error, tool_name)
        case ResourceExhaustedError():
            lines = _exhausted_lines(error, tool_name)
        case PermissionDeniedError():
            lines = _permission_lines(error)
        case UnavailableError():
            wait = f"retry after {_retry(error.retry_after)}" if error.retry_after is not None else "retry shortly"
            lines = ["Status: not run: the sandbox is unavailable right now", f"Reason: {error.message}",
                     f"What to do: {wait}; if it keeps failing, tell the user the code-execution tool is down."]
        case DeadlineExceededError():
            lines = ["Status: unknown: the sandbox did not answer before the call's deadline",
                     f"Reason: {error.message}",
                     "What to do: the program may or may not have run; run a program that does less, "
                     "or pass a smaller timeout_s."]
        case AuthenticationError():
            lines = ["Status: refused: the sandbox did not accept this application's credentials (nothing ran)",
                     f"Reason: {error.message}",
                     "What to do: do not retry; this is a configuration problem only the user can fix. "
                     "Tell the user the code-execution tool is not set up correctly."]
        case RequestCancelledError():
            lines = ["Status: cancelled before it completed", f"Reason: {error.message}",
                     "What to do: run it again if you still need the result."]
        case _:
            lines = ["Status: error: the sandbox failed to handle the request", f"Reason: {error.message}",
                     "What to do: retry once; if it fails again, tell the user the code-execution tool has a "
                     "problem."]
    return "\n".join(lines)


def _invalid_request_lines(error: InvalidRequestError, tool_name: str) -> list[str]:
    violations = error.field_violations
    if any(v.field == "code" for v in violations):
        lines = ["Status: refused: the sandbox's checks rejected the code before running it (nothing ran)"]
        advice = ("rewrite the program without what is listed above (the same code will be refused again); "
                  "some modules, calls and commands are not allowed in this sandbox.")
    else:
        lines = ["Status: refused: the request was invalid (nothing ran)"]
        advice = f"call {tool_name} again with corrected arguments."
    if not violations:
        lines.append(f"Reason: {error.message}")
    for v in violations:
        where = _FIELD_ARGUMENTS.get(v.field, v.field)
        rule = f" [{v.reason}]" if v.reason else ""
        lines.append(f"- {where}: {v.description}{rule}")
    lines.append(f"What to do: {advice}")
    return lines


def _exhausted_lines(error: ResourceExhaustedError, tool_name: str) -> list[str]:
    if error.reason == "BUDGET_EXCEEDED":
        lines = ["Status: refused: the spending budget for running code is used up (nothing ran)"]
        if error.retry_after is not None:
            advice = (f"no more code can run until the budget renews in {_retry(error.retry_after)}; "
                      "finish the task without running code, or tell the user.")
        else:
            advice = "do not retry: no more code can run in this session. Finish without running code."
    elif error.reason == "QUEUE_FULL":
        lines = ["Status: refused: the sandbox is busy (nothing ran)"]
        advice = f"retry after {_retry(error.retry_after)}." if error.retry_after is not None else "retry shortly."
    else:
        lines = ["Status: refused: a rate limit or quota was reached (nothing ran)"]
        advice = (f"wait {_retry(error.retry_after)} before calling {tool_name} again; batch work into fewer "
                  "calls." if error.retry_after is not None else f"call {tool_name} less often.")
    lines.append(f"Reason: {error.message}")
    lines.extend(f"- {v.subject}: {v.description}" for v in error.quota_violations)
    lines.append(f"What to do: {advice}")
    return lines


def _permission_lines(error: PermissionDeniedError) -> list[str]:
    if error.reason == "QUARANTINED":
        return ["Status: refused: quarantined by the sandbox's incident response (nothing ran)",
                f"Reason: {error.message}",
                "What to do: do not retry and do not try to get around it; no code will run until an operator "
                "lifts the quarantine. Tell the user."]
    if error.reason == "LANGUAGE_DISABLED":
        return ["Status: refused: this language is disabled for now (nothing ran)", f"Reason: {error.message}",
                "What to do: use another language."]
    return ["Status: refused: the sandbox's policy does not allow this request (nothing ran)",
            f"Reason: {error.message}",
            "What to do: change the request (another language, a smaller timeout_s), or tell the user."]


def _retry(seconds: float | None) -> str:
    if seconds is None:
        return "a while"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s"

