"""``sandbox-server`` entry point: load Settings, run the app. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from sandbox_server.app import App
from sandbox_server.errors import SandboxFailure
from sandbox_server.logs import configure_logging
from sandbox_server.policy.loader import PolicyLoadError
from sandbox_server.settings import Backend, CgroupFallback, LogFormat, load_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="The sandbox code-execution server.")

# scripts/setup.sh installs docker.io but starts no daemon; the sandboxes use network mode none, so Docker's
# default bridge is never needed.
START_DOCKERD = ("start dockerd first: `systemctl enable --now docker` with systemd, otherwise "
                 "`dockerd --bridge=none --iptables=false >/var/log/dockerd.log 2>&1 &`")


def _raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one: every call, sandbox pipe and egress connection holds
    descriptors of the server's, and the usual soft limit (1024) is a handful of busy sandboxes. Sandboxes set
    their own (RLIMIT_NOFILE in the jail, ulimits in the container)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@cli.callback()
def _root() -> None:
    """The sandbox code-execution server."""


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind [default: 50051]")] = None,
    backend: Annotated[Backend | None, typer.Option(help="sandbox backend [default: nsjail]")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file (also SANDBOX_CONFIG_FILE)")] = None,
    max_running: Annotated[int | None, typer.Option(help="sandboxes running at once")] = None,
    max_queued: Annotated[int | None, typer.Option(help="requests waiting for a sandbox")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where scratch mounts live")] = None,
    cgroup_fallback: Annotated[CgroupFallback | None, typer.Option(help="when cgroups are unusable")] = None,
    policies_dir: Annotated[Path | None, typer.Option("--policies-dir", "--policies", help="tenant policies (YAML)")]
    = None,
    data_dir: Annotated[Path | None, typer.Option(help="durable stores (SQLite)")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="PostgreSQL for every durable store (postgresql://...) instead of SQLite in --data-dir")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis for rate limits and concurrency counts shared by replicas (redis://...)")] = None,
    advertise_address: Annotated[str | None, typer.Option(
        help="host:port other replicas reach this server at (sessions' calls are forwarded to their server)")]
    = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics at /metrics (0: any port)")]
    = None,
    console_port: Annotated[int | None, typer.Option(
        help="serve the operators' web console on this port (0: any port; docs/console.md) [default: off]")] = None,
    otlp_endpoint: Annotated[str | None, typer.Option(help="OTLP/gRPC collector for spans")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="json lines or text [default: json]")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ... [default: INFO]")] = None,
    wheelhouse: Annotated[Path | None, typer.Option(
        help="a directory of wheels sandboxes may `pip install` from offline (bound read-only)")] = None,
) -> None:
    """Serve the Sandbox API until SIGTERM/SIGINT, then drain in-flight requests."""
    try:
        settings = load_settings(
            host=host, port=port, backend=backend, config_file=config, max_running=max_running,
            max_queued=max_queued, state_dir=state_dir, cgroup_fallback=cgroup_fallback,
            policies_dir=policies_dir, data_dir=data_dir, database_url=database_url, redis_url=redis_url,
            advertise_address=advertise_address, metrics_port=metrics_port, console_port=console_port,
            otlp_endpoint=otlp_endpoint,
            log_format=log_format, log_level=log_level.upper() if log_level else None, wheelhouse=wheelhouse,
        )
    except (ValidationError, ValueError) as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings)
    _raise_open_files_limit()
    app = App(settings)
    try:
        asyncio.run(_run(app))
    except SandboxFailure as exc:
        typer.echo(f"sandbox-server cannot start: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except PolicyLoadError as exc:
        typer.echo("sandbox-server cannot start: the policies do not validate:", err=True)
        for error in exc.errors:
            typer.echo(f"  {error}", err=True)
        raise typer.Exit(1) from exc


images_cli = typer.Typer(no_args_is_help=True, help="Runtime images of the Docker backend.")
cli.add_typer(images_cli, name="images")


@images_cli.command("build")
def images_build(
    docker_host: Annotated[str | None, typer.Option(help="dockerd address [default: settings]")] = None,
    script: Annotated[Path | None, typer.Option(help="the offline build script")] = None,
) -> None:
    """Build the runtime images offline (debootstrap + docker import; cached): images/build-offline.sh."""
    settings = load_settings(docker_host=docker_host)
    path = script or Path(__file__).resolve().parent.parent / "images" / "build-offline.sh"
    if not path.is_file():
        typer.echo(f"{path} not found: pass --script (it lives in the repository's images/ directory)", err=True)
        raise typer.Exit(2)
    code = subprocess.call(["bash", str(path), "--docker-host", settings.docker_host])
    raise typer.Exit(code)


@images_cli.command("list")
def images_list(
    docker_host: Annotated[str | None, typer.Option(help="dockerd address [default: settings]")] = None,
) -> None:
    """Show which runtime images are present and which are missing."""
    import docker

    from sandbox_server.backends.docker import image_for
    from sandbox_server.execution.runtimes import RUNTIMES

    settings = load_settings(docker_host=docker_host)
    try:
        api = docker.APIClient(base_url=settings.docker_host, version="auto", timeout=30)
    except docker.errors.DockerException as exc:
        typer.echo(f"cannot reach dockerd at {settings.docker_host}: {exc}\n{START_DOCKERD}", err=True)
        raise typer.Exit(1) from exc
    missing = 0
    for rt in RUNTIMES:
        image = image_for(settings, rt)
        try:
            api.inspect_image(image)
            typer.echo(f"present  {image}  ({rt.language})")
        except docker.errors.ImageNotFound:
            missing += 1
            typer.echo(f"MISSING  {image}  ({rt.language}): run `sandbox-server images build`")
    raise typer.Exit(1 if missing else 0)


keys_cli = typer.Typer(no_args_is_help=True, help="API keys, straight in the server's store (bootstrap).")
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts as")] = "default",
    role: Annotated[str, typer.Option(help="tenant or admin")] = "tenant",
    label: Annotated[str, typer.Option(help="a note for operators")] = "",
    data_dir: Annotated[Path | None, typer.Option(help="where the store lives [default: settings]")] = None,
    database_url: Annotated[str | None, typer.Option(help="the PostgreSQL store instead [default: settings]")]
    = None,
) -> None:
    """Create a key in the local store and print it once (the first admin key comes from here)."""
    from sandbox_server.stores.embedded import open_stores

    if role not in ("tenant", "admin"):
        typer.echo("--role is tenant or admin", err=True)
        raise typer.Exit(2)
    settings = load_settings(data_dir=data_dir, database_url=database_url)
    stores = open_stores(settings.data_dir, settings.database_url)
    try:
        record, secret = stores.keys.create(tenant, role, label)  # type: ignore[arg-type]
    finally:
        stores.close()
    typer.echo(f"key_id {record.key_id} (tenant {record.tenant}, role {record.role}); shown once:", err=True)
    typer.echo(secret)


async def _run(app: App) -> None:
    await app.serve_until_signalled(on_started=lambda: _banner(app))


def _banner(app: App) -> None:
    from sandbox_server.stores.embedded import redacted

    s = app.settings
    lines = [f"sandbox-server listening on {s.host}:{app.port}"]
    lines += [f"  {k}: {v}" for k, v in app.backend.describe().items()]
    if s.dev_mode:
        lines.append("  auth: DEVELOPMENT MODE: no API keys (allowed on loopback only); calls run as tenant 'default'")
    else:
        lines.append(f"  auth: API keys (store: {app.stores.where if app.stores else s.data_dir / 'state.db'})")
    tls = "off" if s.tls_cert_file is None else ("mTLS" if s.tls_client_ca_file else "on")
    lines.append(f"  tls: {tls}")
    if app.policies is not None:
        current = app.policies.current()
        lines.append(f"  policies: {app.policies.directory} (version {current.version}, "
                     f"tenants: {', '.join(sorted(current.tenants))})")
        if s.dev_mode and "default" not in current.tenants:
            lines.append("  WARNING: development mode runs calls as tenant 'default', which these policies do not "
                         "define: every call will be refused")
    lines.append(f"  admission: {s.max_running} running, {s.max_queued} queued")
    if app.stores is not None:
        lines.append(f"  stores: {app.stores.where}")
    shared = f"Redis at {redacted(s.redis_url)}" if s.redis_url else "this process only"
    lines.append(f"  rate limits and concurrency counts: {shared}")
    lines.append(f"  sessions: at most {s.max_sessions} live, {s.session_pool_size} started ahead "
                 f"(a Python kernel each; see docs/sessions.md)")
    metrics = f"http://{s.metrics_host}:{app.metrics_port}/metrics" if app.metrics_port is not None else "off"
    lines.append(f"  metrics: {metrics}")
    lines.append(f"  console: {app.console.describe() if app.console is not None else 'off'}")
    lines.append(f"  traces: {'OTLP to ' + s.otlp_endpoint if s.otlp_endpoint else 'not exported'}")
    incidents = "on" + (" (webhook alerts)" if s.incidents.webhook_url else "") if s.incidents.enabled else "OFF"
    lines.append(f"  incident response: {incidents}")
    lines.append(f"  logs: {s.log_format.value} on stderr, level {s.log_level}")
    print("\n".join(lines), flush=True)


def main() -> None:
    if sys.platform != "linux":
        sys.exit("sandbox-server runs on Linux only")
    cli()


if __name__ == "__main__":
    main()
