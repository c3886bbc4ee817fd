"""The policy schema. Every model is frozen and rejects unknown keys; a file that does not validate whole is
rejected whole. Regexes are compiled at load time, so a bad pattern fails the load (fail closed), never a
request. Units are in the field names."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

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
    egress_bytes: int | None = Field(default=None, ge=0)


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


def egress_host(value: str) -> str:
    """An exact DNS name, a ``*.``-prefixed name or an IP literal, in the egress rules' normal form (lower case,
    A-labels, no trailing dot, the address canonical); anything the proxy would not match fails the load."""
    from sandbox_server.egress.rules import normalise_host

    text = value.strip()
    wildcard = text.startswith("*.")
    try:
        normal = normalise_host(text[2:] if wildcard else text)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a host name, a '*.'-prefixed name or an IP address ({exc})") from None
    if wildcard:
        if not isinstance(normal, str):
            raise ValueError(f"{value!r}: a wildcard covers names, not IP addresses")
        if "." not in normal:
            raise ValueError(f"{value!r}: a wildcard must stand before at least two labels ('*.example.com')")
        return "*." + normal
    return str(normal)


EgressHost = Annotated[str, Field(min_length=1, max_length=260), AfterValidator(egress_host)]
_HEADER_RE = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"


class EgressCredential(_Model):
    """A header the proxy adds to this host's requests. Its value comes from the server's environment (``env``)
    or its secrets file (``secret``), never from the policy: the policy names where the secret is."""

    header: Annotated[str, Field(pattern=_HEADER_RE)]
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    secret: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] | None = None
    template: str = Field(default="{value}", max_length=200, description="e.g. 'Bearer {value}'")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        from sandbox_server.egress.rules import Credential

        try:  # the proxy's own checks (headers it owns, like Host and Content-Length, are refused)
            Credential(header=self.header, env=self.env, secret=self.secret, template=self.template)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if (self.env is None) == (self.secret is None):
            raise ValueError(f"credential for header {self.header!r}: set exactly one of env and secret")
        if self.template.count("{value}") != 1 or self.template.replace("{value}", "").count("{") \
                or self.template.replace("{value}", "").count("}"):
            raise ValueError(f"credential for header {self.header!r}: template must hold '{{value}}' once, "
                             "and no other braces")
        return self


class EgressAllow(_Model):
    """One allowed destination: a host (exact name, ``*.`` + name, or an IP literal) and its ports."""

    host: EgressHost
    ports: tuple[Annotated[int, Field(ge=1, le=65535)], ...] = Field(min_length=1, max_length=64)
    credentials: tuple[EgressCredential, ...] = Field(default=(), max_length=8)


class NetworkPolicy(_Model):
    """A tenant's egress: ``none`` (the default: no network at all), or ``allowlist``: only the listed hosts and
    ports, through the server's proxy (docs/egress.md)."""

    mode: Literal["none", "allowlist"] = "none"
    allow: tuple[EgressAllow, ...] = Field(default=(), max_length=256)
    max_connections: int = Field(default=256, gt=0, description="connections a sandbox may open, in total")
    connections_per_s: float = Field(default=20.0, gt=0, description="connections a sandbox may open per second")
    refusals_before_incident: int = Field(
        default=10, gt=0, description="refused connections in one session (or session label) that open an incident")

    @model_validator(mode="after")
    def _allow_needs_allowlist(self) -> Self:
        if self.mode == "none" and self.allow:
            raise ValueError("network.allow is set but network.mode is 'none'")
        return self


def _network(value: object) -> object:
    # The short form stays valid: ``network: none``.
    return {"mode": "none"} if value == "none" else value


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
    egress_gb: float = Field(default=0.0, ge=0, description="per decimal GB through the egress proxy, both ways")
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
    network: Annotated[NetworkPolicy, BeforeValidator(_network)] = NetworkPolicy()
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
