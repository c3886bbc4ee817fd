"""Session requests checked and turned into what the session layer runs, with the tenant's policy applied.

Shape first (INVALID_ARGUMENT with every bad field, as for Execute), then the policy (PERMISSION_DENIED naming
the rule). A session's limits: the request's, else the tenant's ``sessions.defaults``, else the server's
``session_defaults``; never above the tenant's ``sessions.ceilings`` or the server's ceilings. A call in a
session takes its wall, CPU and output limits from its request or the session's; its memory, pids, workspace
and file size are the session's and cannot be set per call.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.egress.env import sandbox_env
from sandbox_server.egress.policy import egress_for
from sandbox_server.errors import FieldViolation, InvalidRequest, PermissionDenied
from sandbox_server.execution.runtimes import RUNTIMES, find_runtime
from sandbox_server.execution.spec import EgressSpec, ExecutionSpec, InputFile, Limits
from sandbox_server.policy.models import TenantPolicy
from sandbox_server.sessions.ids import is_snapshot_id
from sandbox_server.settings import LimitValues, Settings
from sandbox_server.validation.request import (
    Bad,
    build_spec,
    check_env,
    check_files,
    check_id,
    check_limits,
    path_problem,
)

MAX_LABELS = 16
MAX_LABEL_VALUE = 256
_LABEL_KEY_RE = re.compile(r"[a-z0-9]([a-z0-9_.-]{0,62})")
MAX_NAME_CHARS = 200
# Fixed for a session's life: a call may not change them.
SESSION_WIDE = ("memory_bytes", "max_pids", "scratch_bytes", "file_size_bytes", "egress_bytes")
PER_CALL = ("wall_time_ms", "cpu_time_ms", "output_bytes")


@dataclass(frozen=True)
class SessionParams:
    """A CreateSession request, checked, with the tenant's policy applied."""

    languages: tuple[str, ...]
    limits: Limits
    cpu_total_ms: int
    idle_timeout_s: int
    max_lifetime_s: int
    env: tuple[tuple[str, str], ...]
    files: tuple[InputFile, ...]
    labels: tuple[tuple[str, str], ...]
    snapshot_id: str
    idempotency_key: str
    exercise: bool = False  # an admin's exercise (CreateSessionRequest.exercise; the auth link checked who)
    egress: EgressSpec | None = None  # the session's network (None: none), for its whole life

    @property
    def kernel(self) -> bool:
        return "python" in self.languages


def session_params(request: pb.CreateSessionRequest, settings: Settings, tenant: str,
                   policy: TenantPolicy) -> SessionParams:
    """Raises InvalidRequest (a malformed request) or PermissionDenied (the tenant's policy refuses it)."""
    violations: list[FieldViolation] = []
    bad = violations.append
    languages: list[str] = []
    for i, name in enumerate(request.languages):
        runtime = find_runtime(name)
        if runtime is None:
            bad(FieldViolation(f"languages[{i}]", f"unknown language {name[:40]!r}; one of "
                                                  + ", ".join(rt.language for rt in RUNTIMES)))
        elif runtime.language not in languages:
            languages.append(runtime.language)
    limits = check_limits(request.limits, settings, _defaults(settings, policy), bad)
    env = check_env(request.env, settings, bad)
    files = check_files(request.files, settings, None, bad)
    labels = _labels(request.labels, bad)
    for name in ("idle_timeout_s", "max_lifetime_s"):
        if getattr(request, name) < 0:
            bad(FieldViolation(name, "must not be negative (0: the tenant's default)"))
    if request.HasField("cpu_total_ms") and request.cpu_total_ms <= 0:
        bad(FieldViolation("cpu_total_ms", "must be positive; leave unset for the tenant's default"))
    if request.snapshot_id and not is_snapshot_id(request.snapshot_id):
        bad(FieldViolation("snapshot_id", "not a snapshot id (snap_ + 32 base-32 characters)"))
    check_id(request.idempotency_key, "idempotency_key", bad)
    if limits is not None and files:
        needed = sum(len(f.content) + 4096 for f in files)
        if needed > limits.scratch_bytes:
            bad(FieldViolation("files", f"the files need about {needed} bytes; scratch_bytes is "
                                        f"{limits.scratch_bytes}"))
    if violations or limits is None:
        raise InvalidRequest(violations or [FieldViolation("limits", "invalid")])

    rules = policy.sessions
    reasons: list[str] = []
    meta: dict[str, str] = {"tenant": tenant}
    if not rules.enabled:
        raise PermissionDenied(f"tenant {tenant!r} may not create sessions", reason="SESSIONS_DISABLED",
                               metadata=meta)
    allowed = list(policy.languages)
    for lang in languages:
        if lang not in allowed:
            reasons.append(f"language {lang!r} is not allowed for tenant {tenant!r} (allowed: {', '.join(allowed)})")
            meta["language"] = lang
    for name in Limits.__dataclass_fields__:
        value = getattr(limits, name)
        for ceiling, label in ((getattr(rules.ceilings, name), "sessions.ceilings"),
                               (getattr(policy.ceilings, name) if name in PER_CALL else None, "ceilings")):
            if ceiling is not None and value > ceiling and request.limits.HasField(name):
                reasons.append(f"limits.{name}={value} is above the {label} of {ceiling} for tenant {tenant!r}")
                meta[f"ceiling.{name}"] = str(ceiling)
    idle = _bounded(request.idle_timeout_s, rules.idle_timeout_s.default, rules.idle_timeout_s.max,
                    "idle_timeout_s", "sessions.idle_timeout_s.max", tenant, reasons, meta)
    lifetime = _bounded(request.max_lifetime_s, rules.max_lifetime_s.default, rules.max_lifetime_s.max,
                        "max_lifetime_s", "sessions.max_lifetime_s.max", tenant, reasons, meta)
    cpu_total = _bounded(request.cpu_total_ms if request.HasField("cpu_total_ms") else 0,
                         rules.cpu_total_ms.default, rules.cpu_total_ms.max, "cpu_total_ms",
                         "sessions.cpu_total_ms.max", tenant, reasons, meta)
    reasons += _env_policy(env, tenant, policy, meta)
    if request.snapshot_id and not rules.snapshots.enabled:
        reasons.append(f"tenant {tenant!r} may not use snapshots")
    if reasons:
        raise PermissionDenied("; ".join(reasons), reason="POLICY_DENIED", metadata=meta)
    egress = egress_for(policy.network, request.network if request.HasField("network") else None, tenant)
    return SessionParams(
        languages=tuple(languages) or tuple(lang for lang in ("python", "javascript", "bash") if lang in allowed),
        limits=limits, cpu_total_ms=cpu_total, idle_timeout_s=idle, max_lifetime_s=lifetime,
        env=sandbox_env(env, settings, session=True, network=egress is not None), files=files,
        labels=labels, snapshot_id=request.snapshot_id, idempotency_key=request.idempotency_key,
        exercise=request.exercise, egress=egress)


def _defaults(settings: Settings, policy: TenantPolicy) -> LimitValues:
    """The session limits a request leaves unset: the tenant's session defaults, else the server's, each capped
    by the tenant's session ceiling and the server's ceiling."""
    values: dict[str, int] = {}
    rules = policy.sessions
    for name in LimitValues.model_fields:
        value = getattr(rules.defaults, name)
        if value is None:
            value = getattr(settings.session_defaults, name)
        for ceiling in (getattr(rules.ceilings, name), getattr(settings.ceilings, name),
                        getattr(policy.ceilings, name) if name in PER_CALL else None):
            if ceiling is not None:
                value = min(value, ceiling)
        values[name] = value
    return LimitValues(**values)


def _bounded(requested: int, default: int, ceiling: int, name: str, rule: str, tenant: str,
             reasons: list[str], meta: dict[str, str]) -> int:
    if requested == 0:
        return default
    if requested > ceiling:
        reasons.append(f"{name}={requested} is above the {rule} of {ceiling} for tenant {tenant!r}")
        meta[f"ceiling.{name}"] = str(ceiling)
    return requested


def _env_policy(env: tuple[tuple[str, str], ...], tenant: str, policy: TenantPolicy,
                meta: dict[str, str]) -> list[str]:
    reasons = []
    for name, _ in env:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in policy.allowed_env):
            reasons.append(f"env {name!r} is not in tenant {tenant!r}'s allowed_env")
            meta.setdefault("env", name)
    return reasons


def _labels(labels: Mapping[str, str], bad: Bad) -> tuple[tuple[str, str], ...]:
    items = dict(labels)
    if len(items) > MAX_LABELS:
        bad(FieldViolation("labels", f"{len(items)} labels is over the cap of {MAX_LABELS}"))
        return ()
    out = []
    for key in sorted(items):
        value = str(items[key])
        if not _LABEL_KEY_RE.fullmatch(key):
            bad(FieldViolation(f"labels[{key[:40]!r}]", "keys are 1-63 of a-z 0-9 _ . -, starting with a letter "
                                                        "or digit"))
        elif len(value) > MAX_LABEL_VALUE or not value.isprintable():
            bad(FieldViolation(f"labels[{key!r}]", f"values are at most {MAX_LABEL_VALUE} printable characters"))
        else:
            out.append((key, value))
    return tuple(out)


def call_spec(request: pb.ExecuteRequest, settings: Settings, execution_id: str, session_limits: Limits,
              session_languages: tuple[str, ...], tenant: str, policy: TenantPolicy,
              session_egress: EgressSpec | None = None) -> ExecutionSpec:
    """An Execute request naming a session, checked against the session and the tenant's policy. Raises
    InvalidRequest or PermissionDenied."""
    violations: list[FieldViolation] = []
    for name in SESSION_WIDE:
        if request.limits.HasField(name):
            violations.append(FieldViolation(
                f"limits.{name}", "fixed for the session's life: set it at CreateSession"))
    if request.HasField("network"):
        violations.append(FieldViolation("network", "a session's network is fixed for its life: set it at "
                                                    "CreateSession"))
    runtime = find_runtime(request.language)
    if runtime is not None and runtime.language == "python" and request.env:
        violations.append(FieldViolation(
            "env", "a Python call runs in the session's kernel, whose environment is the session's (set at "
                   "CreateSession); per-call variables apply to bash and JavaScript calls"))
    try:
        spec = build_spec(request, settings, execution_id, defaults=LimitValues(**session_limits.as_dict()))
    except InvalidRequest as exc:
        violations = [*exc.violations, *violations]
        raise InvalidRequest(violations) from None
    if violations:
        raise InvalidRequest(violations)
    reasons: list[str] = []
    meta: dict[str, str] = {"tenant": tenant}
    language = spec.runtime.language
    if language not in policy.languages:
        reasons.append(f"language {language!r} is not allowed for tenant {tenant!r}")
        meta["language"] = language
    elif language not in session_languages:
        reasons.append(f"language {language!r} is not one of this session's ({', '.join(session_languages)})")
        meta["language"] = language
    for name in PER_CALL:
        ceiling = getattr(policy.ceilings, name)
        value = getattr(spec.limits, name)
        if ceiling is not None and value > ceiling and request.limits.HasField(name):
            reasons.append(f"limits.{name}={value} is above the ceiling of {ceiling} for tenant {tenant!r}")
            meta[f"ceiling.{name}"] = str(ceiling)
    reasons += _env_policy(spec.env, tenant, policy, meta)
    if reasons:
        raise PermissionDenied("; ".join(reasons), reason="POLICY_DENIED", metadata=meta)
    # Only the per-call limits come from the request; the rest are the session's, whatever was sent.
    limits = dataclasses.replace(session_limits, **{name: getattr(spec.limits, name) for name in PER_CALL})
    # The session's network (its proxy is the session's): the budget reserves what a call may move through it.
    return dataclasses.replace(spec, limits=limits, egress=session_egress)


def check_path(path: str, field: str = "path", *, allow_root: bool = False) -> str:
    """A workspace path from a request: relative and normalised (the rules of input files). Raises
    InvalidRequest."""
    if allow_root and path == "":
        return path
    problem = path_problem(path)
    if problem is not None:
        raise InvalidRequest([FieldViolation(field, problem)])
    return path


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidRequest([FieldViolation("name", f"at most {MAX_NAME_CHARS} printable characters")])
    return name
