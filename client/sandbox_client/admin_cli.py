"""``sandbox-admin``: the sandbox server's admin command line (install with ``pip install 'sandbox-client[cli]'``).

    sandbox-admin policies list | show [--version N] [--file NAME] | diff FILE | validate FILE [--offline] | apply FILE
    sandbox-admin tenants list
    sandbox-admin keys create --tenant T [--role admin] [--label L] | revoke KEY_ID | list [--tenant T]

Global options: ``--target`` (env SANDBOX_TARGET, default 127.0.0.1:50051), ``--api-key`` (env SANDBOX_ADMIN_KEY),
``--json`` (machine-readable output on stdout; errors as JSON on stderr), ``--timeout`` (seconds).

Exit codes: 0 success; 1 the server refused or failed (or a policy does not validate), with the server's
message and field violations on stderr; 2 a usage error (bad option, unreadable file, offline validation
without the server package).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

from sandbox_client._errors import SandboxError
from sandbox_client.admin import (
    DEFAULT_ADMIN_TIMEOUT,
    AdminClient,
    ApiKey,
    PolicyProblem,
)

try:
    import typer
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # the console script is installed even without the extra
    raise ImportError("sandbox-admin needs the 'cli' extra: pip install 'sandbox-client[cli]'") from exc

__all__ = ["DEFAULT_TARGET", "EXIT_FAILURE", "EXIT_USAGE", "app", "main"]

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_FAILURE = 1
"""The server refused or failed, or a policy does not validate."""
EXIT_USAGE = 2
"""A usage error: bad options, an unreadable file, offline validation without the server package."""


NON_TERMINAL_WIDTH = 200
"""Columns assumed when the output is not a terminal."""


class RoleChoice(StrEnum):
    tenant = "tenant"
    admin = "admin"


@dataclass(frozen=True)
class Options:
    target: str
    api_key: str | None
    json: bool
    timeout: float

    def client(self) -> AdminClient:
        return AdminClient(self.target, api_key=self.api_key, timeout=self.timeout)


app = typer.Typer(
    name="sandbox-admin",
    help="Administer a sandbox server: tenant policies and API keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policies_app = typer.Typer(help="Tenant policies: list, show, diff, validate, apply.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants of the current policy.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create, revoke, list.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")


@app.callback()
def _global_options(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Option(envvar="SANDBOX_TARGET", help="The server's address, host:port.")
    ] = DEFAULT_TARGET,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SANDBOX_ADMIN_KEY", help="An admin API key.", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for each call.")] = DEFAULT_ADMIN_TIMEOUT,
) -> None:
    ctx.obj = Options(target=target, api_key=api_key or None, json=json_output, timeout=timeout)


# -- policies ---------------------------------------------------------------------------------------------------

PolicyPath = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A local policy file (YAML).")
]


@policies_app.command("list")
def policies_list(ctx: typer.Context) -> None:
    """The current policy version, its files and the tenants each defines."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        listing = admin.list_policies()
    if opts.json:
        _print_json(
            {
                "version": listing.version,
                "files": [{"name": f.name, "tenants": f.tenants, "bytes": len(f.text.encode())} for f in listing.files],
                "last_errors": [asdict(e) for e in listing.last_errors],
            }
        )
        return
    out = _stdout()
    table = Table(title=f"Policy version {listing.version}", title_justify="left")
    table.add_column("File", no_wrap=True)
    table.add_column("Tenants")
    table.add_column("Bytes", justify="right")
    for f in listing.files:
        table.add_row(Text(f.name), Text(", ".join(f.tenants)), str(len(f.text.encode())))
    out.print(table)
    if listing.last_errors:
        out.print(Text(f"The last reload was refused; version {listing.version} stays in force:", style="bold red"))
        _print_problems(out, listing.last_errors)


@policies_app.command("show")
def policies_show(
    ctx: typer.Context,
    version: Annotated[int, typer.Option(min=0, help="A recorded version; 0: the current one.")] = 0,
    file: Annotated[str | None, typer.Option(help="Print only this file's text, exactly.")] = None,
) -> None:
    """The policy files of a version, with their texts."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        snapshot = admin.get_policy(version)
    files = snapshot.files
    if file is not None:
        files = tuple(f for f in files if f.name == file)
        if not files:
            _fail(opts, f"policy version {snapshot.version} has no file {file!r}", EXIT_FAILURE)
    if opts.json:
        _print_json({**asdict(snapshot), "files": [asdict(f) for f in files]})
        return
    out = _stdout()
    if file is not None:
        out.file.write(files[0].text)
        return
    by = f" by {snapshot.actor}" if snapshot.actor else ""
    at = f" at {_when(snapshot.at)}" if snapshot.at else ""
    out.print(Text(f"Policy version {snapshot.version}{by}{at}", style="bold"))
    for f in files:
        out.print(Text(f"── {f.name} (tenants: {', '.join(f.tenants) or 'none'})", style="bold"), soft_wrap=True)
        out.print(f.text, markup=False, highlight=False, soft_wrap=True, end="" if f.text.endswith("\n") else "\n")


@policies_app.command("diff")
def policies_diff(ctx: typer.Context, path: PolicyPath) -> None:
    """A unified diff from the server's current file of the same name to the local FILE."""
    opts = _options(ctx)
    local = _read_policy(opts, path)
    with _server_call(opts), opts.client() as admin:
        listing = admin.list_policies()
    on_server = listing.file(path.name)
    server_text = on_server.text if on_server is not None else ""
    lines = list(
        difflib.unified_diff(
            server_text.splitlines(keepends=True),
            local.splitlines(keepends=True),
            fromfile=f"server/{path.name} (version {listing.version})" if on_server else "/dev/null",
            tofile=str(path),
        )
    )
    lines = [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines]
    if opts.json:
        _print_json(
            {
                "file": path.name,
                "version": listing.version,
                "on_server": on_server is not None,
                "changed": bool(lines),
                "diff": "".join(lines),
            }
        )
        return
    out = _stdout()
    if not lines:
        out.print(Text(f"{path.name} matches the server's (policy version {listing.version})."))
        return
    for line in "".join(lines).splitlines():
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.print(Text(line, style=style), soft_wrap=True)


@policies_app.command("validate")
def policies_validate(
    ctx: typer.Context,
    path: PolicyPath,
    offline: Annotated[
        bool,
        typer.Option(
            help="Validate locally, without a server (needs the sandbox-server package); checks the file alone, "
            "not against the server's other files."
        ),
    ] = False,
) -> None:
    """Check FILE as the server would apply it; nothing changes. Exit 1 if it does not validate."""
    opts = _options(ctx)
    text = _read_policy(opts, path)
    if offline:
        problems = _validate_offline(opts, path.name, text)
    else:
        with _server_call(opts), opts.client() as admin:
            problems = admin.validate_policy(path.name, text)
    if opts.json:
        _print_json(
            {"file": path.name, "valid": not problems, "offline": offline, "errors": [asdict(p) for p in problems]}
        )
    elif problems:
        err = _stderr()
        err.print(Text(f"{path.name} is not valid:", style="bold red"))
        _print_problems(err, problems)
    else:
        _stdout().print(Text(f"{path.name} is valid" + (" (checked offline)." if offline else ".")))
    if problems:
        raise typer.Exit(EXIT_FAILURE)


@policies_app.command("apply")
def policies_apply(ctx: typer.Context, path: PolicyPath) -> None:
    """Add or replace FILE (by its name) on the server; in force at once as a new policy version."""
    opts = _options(ctx)
    text = _read_policy(opts, path)
    with _server_call(opts), opts.client() as admin:
        applied = admin.apply_policy(path.name, text)
    if opts.json:
        _print_json({"file": path.name, **asdict(applied)})
        return
    tenants = ", ".join(applied.tenants) or "none"
    _stdout().print(Text(f"Applied {path.name}: policy version {applied.version} (tenants: {tenants})."))


# -- tenants ----------------------------------------------------------------------------------------------------


@tenants_app.command("list")
def tenants_list(ctx: typer.Context) -> None:
    """The tenants of the current policy, with their active API keys."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        tenants = admin.list_tenants()
    if opts.json:
        _print_json([asdict(t) for t in tenants])
        return
    table = Table()
    table.add_column("Tenant", no_wrap=True)
    table.add_column("Description")
    table.add_column("Languages")
    table.add_column("Active keys", justify="right")
    for t in tenants:
        table.add_row(Text(t.name), Text(t.description), Text(", ".join(t.languages)), str(t.active_keys))
    _stdout().print(table)


# -- keys -------------------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="A tenant of the current policy.")],
    role: Annotated[RoleChoice, typer.Option(help="admin keys may also use this admin API.")] = RoleChoice.tenant,
    label: Annotated[str, typer.Option(help="A note for people (at most 200 characters).")] = "",
) -> None:
    """Create an API key. Its secret is printed this once: the server keeps only a hash."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        created = admin.create_api_key(tenant, role=role.value, label=label)
    if opts.json:
        _print_json({"key": _key_json(created.key), "secret": created.secret})
        return
    out = _stdout()
    out.print(_keys_table([created.key]))
    out.print(Text("The key (shown once; store it now, the server cannot show it again):", style="bold"))
    out.print(created.secret, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke an API key for good."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        key = admin.revoke_api_key(key_id)
    if opts.json:
        _print_json(_key_json(key))
        return
    _stdout().print(Text(f"Key {key.key_id} of tenant {key.tenant} is revoked (since {_when(key.revoked_at)})."))


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """API keys (revoked ones too), oldest first; never their secrets."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        keys = admin.list_api_keys(tenant)
    if opts.json:
        _print_json([_key_json(k) for k in keys])
        return
    _stdout().print(_keys_table(keys))


def main() -> None:
    """The ``sandbox-admin`` console script."""
    app(prog_name="sandbox-admin")


# -- helpers ----------------------------------------------------------------------------------------------------


def _options(ctx: typer.Context) -> Options:
    opts = ctx.find_root().obj
    if not isinstance(opts, Options):  # a command invoked without the app's callback
        raise RuntimeError("sandbox-admin: global options are missing")
    return opts


def _stdout() -> Console:
    return _console(stderr=False)


def _stderr() -> Console:
    return _console(stderr=True)


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and cut table cells (key ids) short.
        console = Console(stderr=stderr, highlight=False, width=NON_TERMINAL_WIDTH)
    return console


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@contextmanager
def _server_call(opts: Options) -> Iterator[None]:
    """A failed call: print the server's message and field violations on stderr, exit 1."""
    try:
        yield
    except SandboxError as exc:
        if opts.json:
            error = {
                "code": exc.code.name,
                "message": exc.message,
                "reason": exc.reason,
                "field_violations": [asdict(v) for v in exc.details.field_violations],
            }
            typer.echo(json.dumps({"error": error}, indent=2, ensure_ascii=False), err=True)
        else:
            err = _stderr()
            err.print(Text(f"error: {exc.message} ({exc.code.name})", style="bold red"), soft_wrap=True)
            for v in exc.details.field_violations:
                err.print(Text(f"  {v.field}: {v.description}"), soft_wrap=True)
        raise typer.Exit(EXIT_FAILURE) from None


def _fail(opts: Options, message: str, code: int) -> NoReturn:
    if opts.json:
        typer.echo(json.dumps({"error": {"message": message}}, ensure_ascii=False), err=True)
    else:
        _stderr().print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def _read_policy(opts: Options, path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(opts, f"{path} is not valid UTF-8 (at byte {exc.start})", EXIT_USAGE)
    except OSError as exc:
        _fail(opts, f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)


def _validate_offline(opts: Options, file_name: str, text: str) -> tuple[PolicyProblem, ...]:
    """The server's own checks on the file alone (as if it were the whole policy directory)."""
    try:
        # Imported here: the client distribution never needs the server package, only this option does.
        from sandbox_server.policy.loader import validate_text
    except ImportError:
        _fail(
            opts,
            "offline validation needs the sandbox-server package installed (it holds the policy schema); "
            "install it, or validate against a server without --offline",
            EXIT_USAGE,
        )
    return tuple(PolicyProblem(e.file, e.location, e.message) for e in validate_text(file_name, text, {}))


def _print_problems(console: Console, problems: Sequence[PolicyProblem]) -> None:
    for p in problems:
        where = f"{p.file}: {p.location}" if p.location else p.file
        console.print(Text(f"  {where}: {p.message}"), soft_wrap=True)


def _keys_table(keys: Sequence[ApiKey]) -> Table:
    table = Table()
    table.add_column("Key ID", no_wrap=True)
    table.add_column("Tenant", no_wrap=True)
    table.add_column("Role")
    table.add_column("Label")
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Revoked (UTC)", no_wrap=True)
    for k in keys:
        table.add_row(
            Text(k.key_id),
            Text(k.tenant),
            k.role,
            Text(k.label),
            _when(k.created_at, zone=False),
            _when(k.revoked_at, zone=False) if k.revoked_at else "",
        )
    return table


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {**asdict(key), "active": key.active}


def _when(moment: datetime | None, *, zone: bool = True) -> str:
    if moment is None:
        return "unknown"
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    main()
