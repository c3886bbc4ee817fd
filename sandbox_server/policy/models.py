"""The policy schema. Every model is frozen and rejects unknown keys; a file that does not validate whole is
rejected whole. Regexes are compiled at load time, so a bad pattern fails the load (fail closed), never a
request. Units are in the field names."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


Pattern = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_compiles)]


class LimitSet(_Model):
    """A set of limits; unset fields fall back to the next level (tenant defaults -> server defaults)."""

    wall_time_ms: int | None = Field(default=None, gt=0)
    cpu_time_ms: int | None = Field(default=None, gt=0)
    memory_bytes: int | None = Field(default=None, gt=0)
    max_pids: int | None = Field(default=None, gt=0)
    output_bytes: int | None = Field(default=None, gt=0)
    file_size_bytes: int | None = Field(default=None, gt=0)
    scratch_bytes: int | None = Field(default=None, gt=0)


class PythonRules(_Model):
    """Checked on the parsed AST (never by regex)."""

    denied_imports: tuple[str, ...] = Field(
        default=("ctypes", "cffi", "importlib", "builtins", "socket", "ssl", "http.client", "http.server",
                 "urllib.request", "ftplib", "smtplib", "telnetlib", "pty"),
        description="modules (and their submodules) a program may not import",
    )
    allowed_imports: tuple[str, ...] | None = Field(
        default=None, description="if set, only these modules (and submodules) may be imported"
    )
    denied_calls: tuple[str, ...] = Field(
        default=("eval", "exec", "compile", "__import__", "breakpoint", "os.system", "os.popen", "os.exec*",
                 "os.spawn*", "os.posix_spawn*", "os.fork", "os.forkpty", "os.kill", "os.killpg",
                 "getattr:module"),
        description="dotted names; a trailing * matches a prefix; getattr:module denies getattr on modules",
    )
    open_modes: tuple[str, ...] = Field(
        default=("r", "rb", "rt", "w", "wb", "wt", "a", "ab", "at", "x", "xb", "r+", "rb+", "w+", "wb+"),
        description="modes open() may use (a mode that is not a literal is refused)",
    )
    max_nesting_depth: int = Field(default=64, gt=0, le=1000)


class JavaScriptRules(_Model):
    """Rule-based (patterns over the source): a first filter, not a proof; the sandbox contains the rest."""

    denied_modules: tuple[str, ...] = Field(
        default=("child_process", "cluster", "worker_threads", "net", "dgram", "dns", "http", "https", "http2",
                 "tls", "inspector", "vm", "v8")
    )
    deny_eval: bool = True  # eval(...) and new Function(...)


class BashRules(_Model):
    denied_commands: tuple[str, ...] = Field(
        default=("curl", "wget", "nc", "ncat", "netcat", "socat", "ssh", "scp", "telnet", "sudo", "su", "mount",
                 "umount", "nsenter", "unshare", "chroot", "insmod", "modprobe", "dd", "mkfs", "iptables")
    )


class StaticValidation(_Model):
    enabled: bool = True
    max_code_bytes: int = Field(default=1024 * 1024, gt=0, description="tenants may tighten the server's cap")
    python: PythonRules = PythonRules()
    javascript: JavaScriptRules = JavaScriptRules()
    bash: BashRules = BashRules()


class SecretAction(StrEnum):
    REDACT = "redact"
    BLOCK = "block"
    OFF = "off"


class Guardrails(_Model):
    """Content guardrails on the way in (code, stdin, files) and on the way out (stdout, stderr, files)."""

    blocked_patterns: tuple[Pattern, ...] = Field(default=(), description="regexes refused in code and stdin")
    prompt_injection: bool = Field(default=False, description="refuse inputs carrying prompt-injection markers")
    max_input_files: int = Field(default=64, ge=0)
    max_input_file_bytes: int = Field(default=16 * 1024 * 1024, ge=0, description="all input files together")
    denied_file_names: tuple[Pattern, ...] = Field(default=(r"(^|/)\.ssh(/|$)", r"(^|/)\.env$"))
    output_secrets: SecretAction = SecretAction.REDACT


class RateSettings(_Model):
    """Read by the rate-limit interceptor."""

    requests_per_second: float | None = Field(default=None, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)
    concurrent_executions: int | None = Field(default=None, gt=0)
    session_requests_per_minute: float | None = Field(default=None, gt=0)


class BudgetSettings(_Model):
    """Read by the cost interceptor; amounts in the tenant's currency units."""

    per_session: float | None = Field(default=None, gt=0)
    per_day: float | None = Field(default=None, gt=0)
    per_month: float | None = Field(default=None, gt=0)
    warn_fraction: float = Field(default=0.8, gt=0, le=1)


class ModelPrice(_Model):
    """What one LLM's tokens cost (the usual unit: per million tokens)."""

    input_per_million_tokens: float = Field(ge=0)
    output_per_million_tokens: float = Field(ge=0)


class Pricing(_Model):
    """Read by the cost interceptor: an execution costs cpu_second * CPU-seconds + memory_gb_second * peak
    memory (GB) * wall seconds + wall_second * wall seconds + per_execution; a session's held time costs
    session_memory_gb_second * its memory limit (GB) * seconds alive, on top of its calls; reported LLM usage is
    priced from ``models``. Amounts in the tenant's currency units."""

    cpu_second: float = Field(default=0.0, ge=0)
    memory_gb_second: float = Field(default=0.0, ge=0)
    session_memory_gb_second: float = Field(
        default=0.0, ge=0, description="a live session's held memory (its memory limit, in GB) per second")
    wall_second: float = Field(default=0.0, ge=0)
    per_execution: float = Field(default=0.0, ge=0)
    models: dict[Annotated[str, Field(min_length=1, max_length=200)], ModelPrice] = Field(
        default_factory=dict, description="model name -> token prices, for RecordUsage"
    )


class Bounded(_Model):
    """A duration a request may choose: ``default`` when it does not, never above ``max``."""

    default: int = Field(gt=0)
    max: int = Field(gt=0)

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.default > self.max:
            raise ValueError(f"default ({self.default}) is above max ({self.max})")
        return self


class LoopDetection(_Model):
    """The same failing call (same code, same error) repeated ``repeats`` times in a row in one session: the
    result carries a warning and an incident opens. 0 turns it off."""

    repeats: int = Field(default=3, ge=0, le=1000)


class SnapshotSettings(_Model):
    enabled: bool = True
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="one snapshot's files, together")
    max_count: int = Field(default=32, ge=0, description="snapshots a tenant keeps at once")


class SessionSettings(_Model):
    """Sessions: sandboxes kept across calls (docs/sessions.md). Limits left unset take the server's session
    defaults (the ``session_defaults`` setting); the server's own ceilings always hold."""

    enabled: bool = True
    max_active: int = Field(default=8, gt=0, description="live sessions of the tenant at once")
    idle_timeout_s: Bounded = Bounded(default=600, max=3600)
    max_lifetime_s: Bounded = Bounded(default=3600, max=86400)
    cpu_total_ms: Bounded = Field(default=Bounded(default=600_000, max=3_600_000),
                                  description="CPU time of a session's whole life")
    defaults: LimitSet = Field(default=LimitSet(), description="the session's limits when CreateSession sets none")
    ceilings: LimitSet = LimitSet()
    max_waiting_calls: int = Field(default=4, ge=0, description="calls that may wait while one runs; more: refused")
    loop_detection: LoopDetection = LoopDetection()
    snapshots: SnapshotSettings = SnapshotSettings()

    @model_validator(mode="after")
    def _defaults_within_ceilings(self) -> Self:
        for name in LimitSet.model_fields:
            default, ceiling = getattr(self.defaults, name), getattr(self.ceilings, name)
            if default is not None and ceiling is not None and default > ceiling:
                raise ValueError(f"sessions.defaults.{name} ({default}) is above sessions.ceilings.{name} ({ceiling})")
        return self


class LogContent(_Model):
    """What the structured logs may carry beyond ids and numbers; off by default (code and output can hold
    secrets and personal data)."""

    code: bool = False
    output: bool = False


class TenantPolicy(_Model):
    """Who may run what, with which limits, for one tenant."""

    description: str = ""
    languages: tuple[Literal["python", "javascript", "bash"], ...] = ("python", "javascript", "bash")
    defaults: LimitSet = LimitSet()
    ceilings: LimitSet = LimitSet()
    allowed_env: tuple[Annotated[str, Field(pattern=r"^(\*|[A-Za-z_][A-Za-z0-9_]*\*?)$")], ...] = Field(
        default=(), description="env var names a request may set; a trailing * matches a prefix, * any name"
    )
    network: Literal["none"] = "none"
    static_validation: StaticValidation = StaticValidation()
    guardrails: Guardrails = Guardrails()
    rate: RateSettings = RateSettings()
    budget: BudgetSettings = BudgetSettings()
    pricing: Pricing = Pricing()
    sessions: SessionSettings = SessionSettings()
    log_content: LogContent = LogContent()

    @model_validator(mode="after")
    def _defaults_within_ceilings(self) -> Self:
        for name in LimitSet.model_fields:
            default, ceiling = getattr(self.defaults, name), getattr(self.ceilings, name)
            if default is not None and ceiling is not None and default > ceiling:
                raise ValueError(f"defaults.{name} ({default}) is above ceilings.{name} ({ceiling})")
        return self


class PolicyFile(_Model):
    """One YAML file: any number of tenants. Tenant names are unique across the whole policy directory."""

    version: Literal[1] = 1
    tenants: dict[Annotated[str, Field(pattern=NAME_RE)], TenantPolicy]
