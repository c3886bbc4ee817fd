"""Turn an ExecuteRequest into an ExecutionSpec, or raise InvalidRequest naming every bad field.

Pure: no I/O, no clock. Limits: unset takes the default; a set value must lie within [floor, ceiling].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.egress.env import PROXY_ENV_NAMES
from sandbox_server.errors import FieldViolation, InvalidRequest
from sandbox_server.execution.runtimes import RUNTIMES, find_runtime
from sandbox_server.execution.spec import ExecutionSpec, InputFile, Limits
from sandbox_server.settings import LIMIT_FLOORS, LimitValues, Settings

MAX_ID_CHARS = 128
MAX_MODEL_CHARS = 200
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX: one path component, in bytes
MAX_PATH_DEPTH = 8
# Per-file overhead a tmpfs charges (a page each, roughly), so "does it fit" is decided before anything runs.
TMPFS_FILE_OVERHEAD = 4096
_ID_RE = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no spaces (always matched whole)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PATH_PART_RE = re.compile(r"[^\x00-\x1f\x7f/\\]+")
# Fixed by the sandbox; a request may not replace them (the rest of the env is the request's own business).
RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "PWD", "LANG", "LC_ALL", "HOSTNAME"}) | PROXY_ENV_NAMES

Bad = Callable[[FieldViolation], None]
_Bad = Bad


def build_spec(request: pb.ExecuteRequest, settings: Settings, execution_id: str,
               defaults: LimitValues | None = None) -> ExecutionSpec:
    """Validate ``request`` whole; raise InvalidRequest with every violation found. ``defaults``: the limits of
    fields the request leaves unset (the server's defaults when None; a session's own in a session)."""
    violations: list[FieldViolation] = []
    bad = violations.append
    caps = settings.caps

    runtime = find_runtime(request.language)
    if not request.language:
        bad(FieldViolation("language", "required; one of " + _languages()))
    elif runtime is None:
        bad(FieldViolation("language", f"unknown language {request.language[:40]!r}; one of {_languages()}"))

    if len(request.code) > caps.code_bytes:
        bad(FieldViolation("code", f"{len(request.code)} bytes is over the {caps.code_bytes}-byte cap"))
    else:
        _utf8(request.code, "code", bad)
        if b"\x00" in request.code:
            bad(FieldViolation("code", "contains a NUL byte"))
    if len(request.stdin) > caps.stdin_bytes:
        bad(FieldViolation("stdin", f"{len(request.stdin)} bytes is over the {caps.stdin_bytes}-byte cap"))

    files = check_files(request.files, settings, runtime.file_name if runtime else None, bad)
    env = check_env(request.env, settings, bad)
    limits = check_limits(request.limits, settings, defaults or settings.defaults, bad)
    _ids(request, bad)

    if limits is not None:
        needed = len(request.code) + sum(len(f.content) + TMPFS_FILE_OVERHEAD for f in files) + TMPFS_FILE_OVERHEAD
        if needed > limits.scratch_bytes:
            bad(FieldViolation("files", f"the code and input files need about {needed} bytes of scratch space; "
                                        f"scratch_bytes is {limits.scratch_bytes}"))
    if violations or runtime is None or limits is None:
        raise InvalidRequest(violations)
    return ExecutionSpec(
        execution_id=execution_id,
        runtime=runtime,
        code=request.code,
        stdin=request.stdin,
        files=files,
        env=env,
        limits=limits,
        cpu_cores=settings.cpu_cores,
        max_output_files=caps.output_files,
        max_output_file_bytes=caps.output_file_bytes,
        session_id=request.session_id,
    )


def _languages() -> str:
    return ", ".join(rt.language for rt in RUNTIMES)


def check_usage_request(request: pb.RecordUsageRequest) -> pb.RecordUsageRequest:
    """Validate a usage report whole (its model is priced later, by the tenant's policy); raise InvalidRequest
    with every violation found."""
    violations: list[FieldViolation] = []
    bad = violations.append
    if not request.session_id:
        bad(FieldViolation("session_id", "required: usage is recorded per session"))
    _ids(request, bad)
    if not request.model or len(request.model) > MAX_MODEL_CHARS or not request.model.isprintable():
        bad(FieldViolation("model", f"required: 1 to {MAX_MODEL_CHARS} printable characters"))
    for name in ("input_tokens", "output_tokens"):
        if getattr(request, name) < 0:
            bad(FieldViolation(name, "must not be negative"))
    if violations:
        raise InvalidRequest(violations)
    return request


def _ids(request: pb.ExecuteRequest | pb.RecordUsageRequest, bad: _Bad) -> None:
    for name in ("session_id", "idempotency_key"):
        check_id(getattr(request, name), name, bad)


def check_id(value: str, name: str, bad: _Bad) -> None:
    """An opaque id: at most MAX_ID_CHARS printable ASCII characters, no spaces."""
    if len(value) > MAX_ID_CHARS or not _ID_RE.fullmatch(value):
        bad(FieldViolation(name, f"at most {MAX_ID_CHARS} printable ASCII characters, no spaces"))


def admin_name(field: str, value: str, *, required: bool = False) -> list[FieldViolation]:
    """A tenant, key or session id an admin request names (a filter or a target): at most MAX_ID_CHARS printable
    characters. Looser than check_id (spaces pass, as in a tenant's name), but never NUL or another control
    character, which PostgreSQL's text refuses and no stored name holds."""
    if not value:
        return [FieldViolation(field, "is required")] if required else []
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        return [FieldViolation(field, f"at most {MAX_ID_CHARS} printable characters")]
    return []


def _utf8(data: bytes, field: str, bad: _Bad) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad(FieldViolation(field, f"not valid UTF-8 (byte offset {exc.start})"))


def check_files(
    files: Sequence[pb.InputFile], settings: Settings, code_name: str | None, bad: _Bad, field_name: str = "files"
) -> tuple[InputFile, ...]:
    """Input files: within the caps, each at a relative, normalised path, none clashing."""
    caps = settings.caps
    if len(files) > caps.input_files:
        bad(FieldViolation(field_name, f"{len(files)} files is over the cap of {caps.input_files}"))
        return ()
    total = sum(len(f.content) for f in files)
    if total > caps.input_file_bytes:
        bad(FieldViolation(field_name, f"{total} bytes in all is over the {caps.input_file_bytes}-byte cap"))
    out: list[InputFile] = []
    seen: set[str] = set()
    for i, f in enumerate(files):
        field = f"{field_name}[{i}].path"
        problem = path_problem(f.path)
        if problem is None and code_name is not None and (f.path == code_name or f.path.startswith(code_name + "/")):
            problem = f"{f.path!r} clashes with the code file {code_name!r}"
        if problem is None and (f.path in seen or any(s.startswith(f.path + "/") for s in seen)
                                or any(f.path.startswith(s + "/") for s in seen)):
            problem = f"{f.path!r} clashes with another input file"
        if problem is not None:
            bad(FieldViolation(field, problem))
            continue
        seen.add(f.path)
        out.append(InputFile(path=f.path, content=f.content))
    return tuple(out)


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a relative, normalised path of at most MAX_PATH_DEPTH parts, or None."""
    if not path:
        return "required"
    if len(path.encode()) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "must be relative to the working directory"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "must be normalised: no empty, '.' or '..' parts"
    if len(parts) > MAX_PATH_DEPTH:
        return f"deeper than {MAX_PATH_DEPTH} directories"
    if not all(_PATH_PART_RE.fullmatch(p) for p in parts):
        return "contains control characters or backslashes"
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    if str(PurePosixPath(path)) != path:
        return "must be normalised"
    return None


def check_env(env: Mapping[str, str], settings: Settings, bad: _Bad) -> tuple[tuple[str, str], ...]:
    """Environment variables: within the caps, well-named, none of the sandbox's own; sorted by name."""
    caps = settings.caps
    if len(env) > caps.env_vars:
        bad(FieldViolation("env", f"{len(env)} variables is over the cap of {caps.env_vars}"))
        return ()
    size = sum(len(k.encode()) + len(v.encode()) for k, v in env.items())
    if size > caps.env_bytes:
        bad(FieldViolation("env", f"{size} bytes is over the {caps.env_bytes}-byte cap"))
    out: list[tuple[str, str]] = []
    for name in sorted(env):
        value = env[name]
        if not _ENV_NAME_RE.fullmatch(name):
            bad(FieldViolation(f"env[{name[:40]!r}]", "names are letters, digits and _, not starting with a digit"))
        elif name in RESERVED_ENV:
            bad(FieldViolation(f"env[{name!r}]", "is set by the sandbox and cannot be overridden"))
        elif "\x00" in value:
            bad(FieldViolation(f"env[{name!r}]", "value contains a NUL character"))
        else:
            out.append((name, value))
    return tuple(out)


def check_limits(requested: pb.Limits, settings: Settings, defaults: LimitValues, bad: _Bad) -> Limits | None:
    """The requested limits, each within [floor, the server's ceiling]; unset ones take ``defaults``."""
    values: dict[str, int] = {}
    ok = True
    for name in Limits.__dataclass_fields__:
        default = getattr(defaults, name)
        if not requested.HasField(name):
            values[name] = default
            continue
        value = getattr(requested, name)
        floor, ceiling = getattr(LIMIT_FLOORS, name), getattr(settings.ceilings, name)
        if value <= 0:
            bad(FieldViolation(f"limits.{name}", f"must be positive (got {value}); leave unset for {default}"))
            ok = False
        elif value < floor:
            bad(FieldViolation(f"limits.{name}", f"{value} is below the minimum of {floor}"))
            ok = False
        elif value > ceiling:
            bad(FieldViolation(f"limits.{name}", f"{value} is above the server's ceiling of {ceiling}"))
            ok = False
        else:
            values[name] = value
    return Limits(**values) if ok else None
