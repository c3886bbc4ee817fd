"""The text a model sees of the session tools: a call's result (its value, exception and rich outputs besides
the streams), a refusal (a session gone, a path not there, a busy session), and the replies of the tools that
start, close and manage a session's files."""

from __future__ import annotations

import codecs
import html
import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

from sandbox_client._errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SandboxError,
    SessionBusyError,
    SessionNotFoundError,
)
from sandbox_client._models import DisplayData, ExecutionResult, FileInfo, SessionInfo, Status
from sandbox_client.adapters._specs import CLOSE_SESSION, CREATE_SESSION, RUN_IN_SESSION, SESSION_FILES, TOOL_NAME
from sandbox_client.adapters._text import (
    DEFAULT_MAX_OUTPUT_CHARS,
    _exit_code_words,
    _limit_words,
    _listed_files,
    _retry,
    _size,
    _status_words,
    _stream_block,
    _usage_lines,
    format_error,
    truncate_middle,
)

_MAX_TRACEBACK_CHARS: Final = 4000
_TRACEBACK_HEAD_LINES: Final = 6
_TRACEBACK_TAIL_LINES: Final = 30
_MAX_OUTPUT_NOTES: Final = 20
_PREVIEW_CHARS: Final = 400
_MAX_LISTED_ENTRIES: Final = 200
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RULE_RE: Final = re.compile(r"-{10,}")
_TAG_RE: Final = re.compile(r"<[^>]*>")
_INTERRUPTIBLE: Final = frozenset({Status.TIMEOUT, Status.CPU_LIMIT, Status.OUTPUT_LIMIT})


def format_session_result(
    result: ExecutionResult,
    *,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    tool_name: str = RUN_IN_SESSION,
    timeout_argument: str = "timeout_s",
) -> str:
    """The tool-result text for code that ran in a session: the status in words and what to do next, whether
    the kernel was restarted (its state lost) and the server's warnings, the value of the last expression
    (``Out[n]``), the exception with a trimmed traceback, a note for each rich output (its type and size; a short
    preview of HTML and JSON), then stdout and stderr cut to ``max_output_chars`` (head and tail). The traceback
    is shown once: stderr leaves it out when it ends with it. ``tool_name`` is what the advice calls the tool
    that runs code in the session, ``timeout_argument`` its wall-time argument ("": it has none)."""
    python = result.language == "python"
    headline, advice = _session_status_words(result, python, tool_name, timeout_argument)
    lines = [f"Status: {headline}"]
    if result.status not in (Status.OK, Status.NONZERO_EXIT) and result.message:
        lines.append(f"Reason: {result.message}")
    if result.kernel_restarted:
        lines.append("Kernel: restarted during this call, so every Python variable, import and function of the "
                     "session is gone (the files in its working directory are kept).")
        advice += "; run the set-up code again (imports, variables) before going on"
    lines.extend(f"Warning: {warning}" for warning in result.warnings)
    lines.append(f"What to do: {advice}.")
    if not python or result.signal:
        lines.append(f"Exit code: {_exit_code_words(result)}")
    lines.extend(_usage_lines(result))
    if result.value:
        label = f"Out[{result.execution_count}]" if result.execution_count else "Out"
        value = truncate_middle(result.value, max_output_chars)
        lines.append(f"{label}:\n{value}" if "\n" in value else f"{label}: {value}")
    stderr = result.stderr
    if result.error is not None:
        error = result.error
        interrupted = result.status in _INTERRUPTIBLE and error.name == "KeyboardInterrupt"
        lines.append("Interrupted at (the interrupt raised KeyboardInterrupt):" if interrupted
                     else f"Error: {_error_line(error.name, error.value)}")
        if error.traceback:
            lines.append(f"<traceback>\n{_trim_traceback(error.traceback, max_output_chars)}\n</traceback>")
        stderr = _without_traceback(stderr, error.traceback)
    notes = [_output_note(output, result.value) for output in result.outputs[:_MAX_OUTPUT_NOTES]]
    if len(result.outputs) > _MAX_OUTPUT_NOTES:
        notes.append(f"[... and {len(result.outputs) - _MAX_OUTPUT_NOTES} more rich outputs]")
    if notes:
        lines.append(f"Rich outputs ({len(result.outputs)}):")
        lines.extend(f"- {note}" for note in notes)
    if result.files:
        lines.append(f"Files the call reported: {_listed_files(result.files)}")
    lines.append(_stream_block("stdout", result.stdout, max_output_chars))
    lines.append(_stream_block("stderr", stderr, max_output_chars))
    return "\n".join(lines)


def _session_status_words(result: ExecutionResult, python: bool, tool_name: str,
                          timeout_argument: str) -> tuple[str, str]:
    """(the status in words, what to do next) for a call in a session; as ``_status_words`` where a session
    changes nothing (a non-zero exit without an exception, a crash, a refusal)."""
    limit = _limit_words(result)
    # The kernel is interrupted at a time or output limit and keeps its state; a bash or JavaScript process is
    # killed, as a kernel that did not stop in time is (and then restarted).
    verb = "interrupted" if python and not result.kernel_restarted else "killed"
    larger = f", or pass a larger {timeout_argument}" if timeout_argument else ""
    match result.status:
        case Status.OK if python:
            return "succeeded", f"go on in this session: what this call defined stays there for the next {tool_name}"
        case Status.OK:
            return "succeeded", (f"go on in this session: the files this call wrote stay in the working directory "
                                 f"for the next {tool_name} (its shell or JavaScript variables do not)")
        case Status.NONZERO_EXIT if result.error is not None:
            return (f"failed: the code raised {result.error.name}",
                    "read the error below, fix the code and run only the fixed part again (the session kept "
                    "everything defined before)")
        case Status.TIMEOUT:
            return (f"{verb}: timed out (it ran past the wall-time limit{limit})",
                    "make the code faster, or do less per call: the session keeps its state, so long work can "
                    f"be split over several calls{larger}")
        case Status.CPU_LIMIT:
            return (f"{verb}: it used up the CPU-time limit{limit}",
                    "do less computation per call: the session keeps its state, so split the work over calls")
        case Status.OUTPUT_LIMIT:
            return (f"{verb}: its output (stdout, stderr and rich outputs) passed the output limit{limit}",
                    "print less: a summary, a count or the first lines instead of everything")
        case Status.MEMORY_LIMIT:
            return (f"killed: the session ran out of memory{limit}",
                    "use less memory: the limit is the whole session's, so what earlier calls keep counts too "
                    "(delete large variables you no longer need), or process the data in pieces")
        case _:
            return _status_words(result)


def _error_line(name: str, value: str) -> str:
    value = _ANSI_RE.sub("", value).strip()
    return f"{name}: {truncate_middle(value, _PREVIEW_CHARS)}" if value else name


def _trim_traceback(frames: Sequence[str], max_chars: int) -> str:
    """The traceback without colour codes and rule lines, its first and last lines kept when it is long."""
    text = "\n".join(_ANSI_RE.sub("", frame).rstrip("\n") for frame in frames)
    lines = [line for line in text.splitlines() if not _RULE_RE.fullmatch(line.strip())]
    if len(lines) > _TRACEBACK_HEAD_LINES + _TRACEBACK_TAIL_LINES + 1:
        left_out = len(lines) - _TRACEBACK_HEAD_LINES - _TRACEBACK_TAIL_LINES
        lines = [*lines[:_TRACEBACK_HEAD_LINES], f"[... {left_out} lines of the traceback left out ...]",
                 *lines[-_TRACEBACK_TAIL_LINES:]]
    return truncate_middle("\n".join(lines).strip("\n"), min(max_chars, _MAX_TRACEBACK_CHARS))


def _without_traceback(stderr: str, frames: Sequence[str]) -> str:
    """stderr without the traceback the kernel printed at its end (shown once, under Error)."""
    if not frames:
        return stderr
    printed = "\n".join(frames)
    for ending in (printed + "\n", printed):
        if stderr.endswith(ending):
            return stderr[:len(stderr) - len(ending)]
    return stderr


def _output_note(output: DisplayData, value: str) -> str:
    """One line about a rich output: "[image/png output, 15.7 KiB] <Figure size 640x480 with 1 Axes>"."""
    note = f"[{output.mime_type} output, {_size(len(output.data))}]"
    if output.update:
        note += " (replaces an earlier output)"
    plain = output.alternatives.get("text/plain")
    plain_text = plain.decode("utf-8", errors="replace").strip() if plain else ""
    if output.mime_type.startswith("image/") and output.mime_type != "image/svg+xml":
        return f"{note} {_one_line(plain_text)}" if plain_text else note
    if output.is_result and value and plain_text == value.strip():
        return f"{note} the value shown as Out above, as {output.mime_type}"
    if output.mime_type == "application/json":
        try:
            preview = json.dumps(json.loads(output.data), ensure_ascii=False)
        except ValueError:
            preview = output.text
    elif output.mime_type.startswith("text/"):
        preview = _html_text(output.text) if output.mime_type == "text/html" else output.text
    else:
        preview = plain_text
    preview = preview.strip()
    return f"{note} preview: {_short(preview, _PREVIEW_CHARS)}" if preview else note


def _html_text(markup: str) -> str:
    return " ".join(html.unescape(_TAG_RE.sub(" ", markup)).split())


def _one_line(text: str) -> str:
    return _short(" ".join(text.split()), 200)


def _short(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


_CLOSE_REASONS: Final[Mapping[str, str]] = {
    "closed": "it was closed",
    "idle_timeout": "it was idle (no call) for longer than its idle timeout",
    "max_lifetime": "it reached its maximum lifetime",
    "cpu_limit": "it used up its total CPU time",
    "budget_exceeded": "the spending budget for running code ran out",
    "sandbox_failed": "its sandbox failed",
    "admin": "an operator closed it",
    "server_shutdown": "the sandbox server shut down",
    "server_restart": "the sandbox server restarted",
}


def _gone_reason(error: SessionNotFoundError) -> str:
    """Why a session is gone, in words ("it was idle (no call) for longer than its idle timeout")."""
    return _CLOSE_REASONS.get(error.close_reason, f"it closed ({error.close_reason})" if error.close_reason
                              else "it does not exist, or it closed")


def format_session_error(
    error: SandboxError,
    *,
    tool_name: str = RUN_IN_SESSION,
    session_id: str = "",
    create_tool: str = CREATE_SESSION,
    files_tool: str = SESSION_FILES,
) -> str:
    """The tool-result text for a session tool's call the sandbox refused or could not serve: a session that is
    gone (why, and that its state is lost), a workspace path that is not there, a busy session, a full
    workspace, too many sessions; anything else as ``format_error`` words it. ``create_tool`` and ``files_tool``
    are what the advice calls the tools that start a session and list its files ("": there is none)."""
    if isinstance(error, SessionNotFoundError):
        name = session_id or error.session_id or "named"
        lines = [f"Status: the session {name} is gone: {_gone_reason(error)} (nothing ran)"]
        if error.close_reason == "budget_exceeded":
            lines.append("What to do: do not start another session: no more code can run. Finish without running "
                         "code, or tell the user.")
        else:
            start = f"call {create_tool} to start a new one" if create_tool else "a new session starts afresh"
            lines.append(f"What to do: its variables and files are lost; {start}, then set up again what you "
                         "need (imports, variables, files).")
        return "\n".join(lines)
    if isinstance(error, NotFoundError) and error.resource_type == "file":
        where = error.resource_name or "the path"
        look = (f"list the files with {files_tool} (action 'list')" if files_tool
                else "list the files with code (e.g. os.listdir() in Python)")
        return (f"Status: not found: {where!r} is not in the session's working directory (nothing was done)\n"
                f"What to do: check the path: {look}.")
    if isinstance(error, SessionBusyError):
        wait = f"retry after {_retry(error.retry_after)}" if error.retry_after is not None else "retry shortly"
        return (f"Status: refused: the session is busy with other calls (nothing ran)\nReason: {error.message}\n"
                f"What to do: calls to one session run one at a time; {wait}, and do not send several calls to "
                "the same session at once.")
    if isinstance(error, InvalidRequestError) and any(v.field == "path" for v in error.field_violations):
        lines = ["Status: refused: the path cannot be used (nothing was done)"]
        for v in error.field_violations:
            rule = f" [{v.reason}]" if v.reason else ""
            lines.append(f"- {v.field}: {v.description}{rule}")
        lines.append(f"What to do: call {tool_name} again with a path relative to the working directory, e.g. "
                     "'data/input.csv' (a file for upload, download and delete; a directory for list).")
        return "\n".join(lines)
    if isinstance(error, PermissionDeniedError) and error.reason == "POLICY_DENIED" and tool_name == RUN_IN_SESSION:
        return (f"Status: refused: the sandbox's policy does not allow this call (nothing ran)\nReason: {error.message}"
                "\nWhat to do: change the call (a language the session has, a smaller timeout_s), or start a "
                f"session that allows it with {create_tool or CREATE_SESSION}.")
    if isinstance(error, PermissionDeniedError) and error.reason == "SESSIONS_DISABLED":
        return (f"Status: refused: this sandbox does not allow sessions (nothing was started)\nReason: {error.message}"
                f"\nWhat to do: use {TOOL_NAME} instead: each call runs a complete program in a fresh sandbox.")
    if isinstance(error, PermissionDeniedError) and error.reason == "POLICY_DENIED" and tool_name == CREATE_SESSION:
        return (f"Status: refused: the sandbox's policy does not allow this session (nothing was started)\n"
                f"Reason: {error.message}\nWhat to do: ask for less (a smaller idle_timeout_s, other languages), "
                f"or call {CREATE_SESSION} without those arguments to take the defaults.")
    if isinstance(error, ResourceExhaustedError):
        subjects = " ".join(v.subject for v in error.quota_violations)
        if "file_size_bytes" in subjects or "scratch_bytes" in subjects:
            return ("Status: refused: the file does not fit: it is over the session's file size limit, or the "
                    f"working directory is full (nothing was written)\nReason: {error.message}\n"
                    "What to do: write less data, or delete files you no longer need.")
        if "max_active" in subjects or "max_sessions" in subjects:
            return (f"Status: refused: too many sessions are open (no session was started)\nReason: {error.message}"
                    "\nWhat to do: go on in a session you already have, or close one you no longer need first.")
    return format_error(error, tool_name=tool_name)


def _created_text(info: SessionInfo) -> str:
    lifetime = f", and at the latest {info.max_lifetime_s} s after it started" if info.max_lifetime_s else ""
    return "\n".join([
        "Status: session started",
        f"session_id: {info.id}",
        f"Languages: {', '.join(info.languages) or 'the sandbox default'}",
        f"It closes by itself after {info.idle_timeout_s} s without a call{lifetime}.",
        f"What to do: pass session_id \"{info.id}\" to {RUN_IN_SESSION} to run code in it (Python state persists from "
        f"one call to the next) and to {SESSION_FILES} to manage its files; call {CLOSE_SESSION} when you are "
        "done.",
    ])


def _closed_text(session_id: str, final: SessionInfo | None, gone: SessionNotFoundError | None = None) -> str:
    if gone is not None:
        return (f"Status: the session {session_id} was already closed: {_gone_reason(gone)}\n"
                "What to do: nothing; its state is gone.")
    lines = [f"Status: closed the session {session_id}: its sandbox, variables and files are gone"]
    if final is not None:
        usage = final.usage
        lines.append(f"Usage: {usage.calls} call(s), {usage.cpu_time_s:.2f} s CPU, peak memory "
                     f"{_size(usage.peak_memory_bytes)}")
    lines.append(f"What to do: call {CREATE_SESSION} if you need a session again.")
    return "\n".join(lines)


def _uploaded_text(info: FileInfo, run_tool: str) -> str:
    return (f"Status: uploaded {info.path} ({_size(info.size)})\n"
            f"What to do: the code {run_tool} runs can open it by this path (relative to its working directory).")


def _deleted_text(path: str) -> str:
    return f"Status: deleted {path}"


def _listing_text(path: str, entries: Sequence[FileInfo], recursive: bool) -> str:
    where = f"'{path}'" if path else "the top of the working directory"
    how = " (recursively)" if recursive else ""
    if not entries:
        return f"Status: {where} is empty{how}"
    lines = [f"Status: listed {where}{how}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"]
    for entry in entries[:_MAX_LISTED_ENTRIES]:
        match entry.type:
            case "file":
                lines.append(f"- {entry.path} ({_size(entry.size)})")
            case "directory":
                lines.append(f"- {entry.path}/ (directory)")
            case _:
                lines.append(f"- {entry.path} ({entry.type})")
    if len(entries) > _MAX_LISTED_ENTRIES:
        lines.append(f"[... and {len(entries) - _MAX_LISTED_ENTRIES} more entries]")
    return "\n".join(lines)


def _download_text(path: str, data: bytes, complete: bool, size: int | None, max_chars: int, run_tool: str) -> str:
    """A downloaded file for the model: its text (cut to ``max_chars``), or a note when it is not UTF-8 text.
    ``complete``: ``data`` is the whole file (else its first part, of ``size`` bytes in all when known)."""
    if complete:
        total = _size(len(data))
    elif size is not None:
        total = _size(size)
    else:
        total = f"more than {_size(len(data))}"
    text = _utf8_text(data, final=complete)
    if text is None:
        return (f"Status: downloaded {path}: {total} of binary data (not UTF-8 text), not shown\n"
                f"What to do: look into it with code in {run_tool} (e.g. read it in Python).")
    if complete:
        body = truncate_middle(text, max_chars)
        cut = len(body) != len(text)
    else:
        body = text[:max_chars] + f"\n[... the rest of the file is not shown ({total} in all) ...]"
        cut = True
    lines = [f"Status: downloaded {path} ({total}, text)"]
    if cut:
        lines.append(f"Note: the file is long: only part of it is shown; read the rest with code in {run_tool}.")
    closing = "</file>" if body.endswith("\n") else "\n</file>"
    lines.append(f"<file path={json.dumps(path, ensure_ascii=False)}>\n{body}{closing}")
    return "\n".join(lines)


def _utf8_text(data: bytes, *, final: bool) -> str | None:
    """``data`` as UTF-8 text, or None for binary data (NUL bytes, or not UTF-8). A first part (``final``
    False) may end in the middle of a character."""
    if b"\0" in data:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=final)
    except UnicodeDecodeError:
        return None




def _restarted_note(error: SessionNotFoundError) -> str:
    """The line that opens a result run in a new session because the one before was gone."""
    return (f"Note: the session had closed ({_gone_reason(error)}), so this ran in a new session: the "
            "variables, imports and files from before are gone; set up again what you need.")

