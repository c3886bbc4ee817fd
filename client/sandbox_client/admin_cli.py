"""``sandbox-admin``: the sandbox server's admin command line (install with ``pip install 'sandbox-client[cli]'``).

    sandbox-admin policies list | show [--version N] [--file NAME] | diff FILE | validate FILE [--offline] | apply FILE
                       | rollback --to VERSION
    sandbox-admin tenants list
    sandbox-admin keys create --tenant T [--role admin] [--label L] | revoke KEY_ID | list [--tenant T]
    sandbox-admin incidents list [--open] [--tenant T] [--limit N] | show ID | resolve ID [--note TEXT]
    sandbox-admin costs report [--by tenant|session|day] [--tenant T] [--since ISO] [--until ISO]
    sandbox-admin executions list [--tenant T] [--session S] [--running] [--limit N] | show ID | kill ID
    sandbox-admin quarantine list [--all] | lift ID
    sandbox-admin sessions list [--tenant T] [--all] [--limit N] | show SESSION_ID | close SESSION_ID

Global options: ``--target`` (env SANDBOX_TARGET, default 127.0.0.1:50051), ``--api-key`` (env SANDBOX_ADMIN_KEY),
``--json`` (machine-readable output on stdout; errors as JSON on stderr; the operational commands also take it
after their name), ``--timeout`` (seconds). Times given as ISO 8601 without a zone are UTC.

Exit codes: 0 success; 1 the server refused or failed (or a policy does not validate), with the server's
message and field violations on stderr; 2 a usage error (bad option, unreadable file, offline validation
without the server package).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

from sandbox_client._errors import SandboxError
from sandbox_client.admin import (
    DEFAULT_ADMIN_TIMEOUT,
    AdminClient,
    AdminSession,
    ApiKey,
    Execution,
    Incident,
    Mitigation,
    PolicyProblem,
    SessionInfo,
)
from sandbox_client.evaluation.cli import register as register_eval
from sandbox_client.redteam.cli import register as register_redteam

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


class GroupChoice(StrEnum):
    tenant = "tenant"
    session = "session"
    day = "day"


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
    help="Administer a sandbox server: tenant policies, API keys, incidents, costs, executions, quarantines, "
    "sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policies_app = typer.Typer(help="Tenant policies: list, show, diff, validate, apply, rollback.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants of the current policy.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create, revoke, list.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
incidents_app = typer.Typer(help="Incidents the server opened on its own: list, show, resolve.", no_args_is_help=True)
costs_app = typer.Typer(help="Costs from the cost ledger.", no_args_is_help=True)
executions_app = typer.Typer(help="Executions, running and audited: list, show, kill.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Mitigations (throttled or quarantined sessions and tenants, disabled languages): list, lift.",
    no_args_is_help=True,
)
app.add_typer(incidents_app, name="incidents")
app.add_typer(costs_app, name="costs")
app.add_typer(executions_app, name="executions")
sessions_app = typer.Typer(
    help="Sessions of every tenant, live and recently closed: list, show, close.", no_args_is_help=True
)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(sessions_app, name="sessions")
register_eval(app)
register_redteam(app)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (like the global --json).")]
Limit = Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")]


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


@policies_app.command("rollback")
def policies_rollback(
    ctx: typer.Context,
    to: Annotated[int, typer.Option("--to", min=1, help="The version to go back to (see `policies show`).")],
) -> None:
    """Make version VERSION's files the whole policy again; in force at once, recorded as a new version."""
    opts = _options(ctx)
    with _server_call(opts), opts.client() as admin:
        rolled = admin.rollback_policy(to)
    if opts.json:
        _print_json(asdict(rolled))
        return
    tenants = ", ".join(rolled.tenants) or "none"
    _stdout().print(Text(f"Rolled back to version {rolled.rolled_back_to}: policy version {rolled.version} "
                         f"(tenants: {tenants})."))


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


# -- incidents --------------------------------------------------------------------------------------------------


@incidents_app.command("list")
def incidents_list(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only open incidents.")] = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's incidents.")] = None,
    limit: Limit = 50,
    json_output: JsonFlag = False,
) -> None:
    """Incidents, newest first, with their mitigations."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        incidents = admin.list_incidents(open_only=open_only, tenant=tenant, limit=limit)
    if opts.json:
        _print_json([_incident_json(i) for i in incidents])
        return
    if not incidents:
        _stdout().print(Text("No open incidents." if open_only else "No incidents."))
        return
    table = Table()
    table.add_column("ID", no_wrap=True)
    table.add_column("Rule", no_wrap=True)
    table.add_column("Severity")
    table.add_column("Subject")
    table.add_column("Count", justify="right")
    table.add_column("Opened (UTC)", no_wrap=True)
    table.add_column("State")
    table.add_column("Mitigations")
    now = datetime.now(UTC)
    for i in incidents:
        table.add_row(
            Text(i.id),
            Text(f"{i.rule} (exercise)" if i.exercise else i.rule),
            Text(i.severity, style=_SEVERITY_STYLES.get(i.severity, "")),
            Text(f"{i.scope} {i.subject}"),
            str(i.count),
            _when(i.opened_at, zone=False),
            Text("open", style="bold") if i.open else Text(f"resolved by {i.resolved_by}"),
            Text(", ".join(f"{m.action} ({_mitigation_state(m, now)})" for m in i.mitigations)),
        )
    _stdout().print(table)


@incidents_app.command("show")
def incidents_show(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="The incident's id.")],
    json_output: JsonFlag = False,
) -> None:
    """One incident: what the rule saw, and its mitigations."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        incident = admin.get_incident(incident_id)
    if opts.json:
        _print_json(_incident_json(incident))
        return
    out = _stdout()
    state = "open" if incident.open else f"resolved by {incident.resolved_by} at {_when(incident.resolved_at)}"
    out.print(Text(f"Incident {incident.id} ({state})", style="bold"), soft_wrap=True)
    rows: list[tuple[str, str]] = [
        ("rule", incident.rule),
        ("severity", incident.severity),
        ("subject", f"{incident.scope} {incident.subject}"),
        ("summary", incident.summary),
        ("count", str(incident.count)),
        ("opened", _when(incident.opened_at)),
        *([("exercise", "yes: counted apart, never mitigated, logged only")] if incident.exercise else []),
        *((f"details.{k}", v) for k, v in incident.details.items()),
    ]
    out.print(_fields_table(rows))
    if incident.mitigations:
        out.print(_mitigations_table(incident.mitigations))


@incidents_app.command("resolve")
def incidents_resolve(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(metavar="ID", help="The incident's id.")],
    note: Annotated[str, typer.Option(help="Why; kept in the incident's details (at most 1000 characters).")] = "",
    json_output: JsonFlag = False,
) -> None:
    """Resolve an incident and lift its active mitigations."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        incident = admin.resolve_incident(incident_id, note=note)
    if opts.json:
        _print_json(_incident_json(incident))
        return
    lifted = [m for m in incident.mitigations if m.lifted_at is not None]
    _stdout().print(
        Text(
            f"Incident {incident.id} is resolved (by {incident.resolved_by} at {_when(incident.resolved_at)}); "
            f"mitigations lifted: {len(lifted)} of {len(incident.mitigations)}."
        ),
        soft_wrap=True,
    )


# -- costs ------------------------------------------------------------------------------------------------------


@costs_app.command("report")
def costs_report(
    ctx: typer.Context,
    by: Annotated[GroupChoice, typer.Option(help="One row per tenant, per tenant/session or per UTC day.")] = (
        GroupChoice.tenant
    ),
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's costs.")] = None,
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 time or date (UTC without a zone); default: the beginning.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time or date, excluded; default: now.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Cost per tenant, session or day over a time range, by descending total."""
    opts = _options(ctx, json_output)
    start = _parse_when(opts, "--since", since)
    end = _parse_when(opts, "--until", until)
    with _server_call(opts), opts.client() as admin:
        report = admin.cost_report(group_by=by.value, tenant=tenant, since=start, until=end)
    if opts.json:
        _print_json(
            {
                "group_by": by.value,
                "tenant": tenant,
                "since": start,
                "until": end,
                "rows": [asdict(r) for r in report.rows],
                "total": report.total,
            }
        )
        return
    span = f"{_when(start) if start else 'the beginning'} to {_when(end) if end else 'now'}"
    table = Table(title=f"Costs by {by.value}, {span}", title_justify="left", show_footer=True)
    table.add_column(by.value.capitalize(), "Total", no_wrap=True)
    table.add_column("Executions", str(sum(r.executions for r in report.rows)), justify="right")
    table.add_column("Execution cost", _money(sum(r.execution_cost for r in report.rows)), justify="right")
    table.add_column("Usage cost", _money(sum(r.usage_cost for r in report.rows)), justify="right")
    table.add_column("Input tokens", str(sum(r.input_tokens for r in report.rows)), justify="right")
    table.add_column("Output tokens", str(sum(r.output_tokens for r in report.rows)), justify="right")
    table.add_column("Total", _money(report.total), justify="right")
    for r in report.rows:
        table.add_row(
            Text(r.key),
            str(r.executions),
            _money(r.execution_cost),
            _money(r.usage_cost),
            str(r.input_tokens),
            str(r.output_tokens),
            _money(r.total),
        )
    _stdout().print(table)


# -- executions -------------------------------------------------------------------------------------------------


@executions_app.command("list")
def executions_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's executions.")] = None,
    session: Annotated[str | None, typer.Option(help="Only this session's executions.")] = None,
    running: Annotated[bool, typer.Option("--running", help="Only the ones running now.")] = False,
    outcome: Annotated[
        list[str] | None,
        typer.Option(
            metavar="OUTCOME",
            help="Only this outcome (repeat for any of several): RUNNING, a status (OK, TIMEOUT, ...), CANCELLED, "
            "ERROR:<grpc code>, or ERROR for every ERROR:<code>.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Started at or after: ISO 8601 time or date (UTC without a zone).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Started before: ISO 8601 time or date, excluded.")] = None,
    limit: Limit = 50,
    json_output: JsonFlag = False,
) -> None:
    """Executions, newest first: the running ones and the audit trail's. The server filters, so --limit counts
    the executions that match."""
    opts = _options(ctx, json_output)
    start = _parse_when(opts, "--since", since)
    end = _parse_when(opts, "--until", until)
    with _server_call(opts), opts.client() as admin:
        executions = admin.list_executions(
            tenant=tenant, session_id=session, running_only=running, limit=limit, outcomes=outcome or (),
            since=start, until=end,
        )
    if opts.json:
        _print_json([asdict(e) for e in executions])
        return
    if not executions:
        filtered = bool(outcome) or start is not None or end is not None
        empty = "No running executions" if running else "No executions"
        _stdout().print(Text(f"{empty} match." if filtered else f"{empty}."))
        return
    table = Table()
    table.add_column("Execution ID", no_wrap=True)
    table.add_column("Tenant", no_wrap=True)
    table.add_column("Session")
    table.add_column("Language")
    table.add_column("Outcome", no_wrap=True)
    table.add_column("Exit", justify="right")
    table.add_column("Wall (s)", justify="right")
    table.add_column("Cost", justify="right")
    table.add_column("Started (UTC)", no_wrap=True)
    for e in executions:
        table.add_row(
            Text(e.execution_id),
            Text(e.tenant),
            Text(e.session_id),
            Text(e.language),
            Text(f"{e.outcome} (exercise)" if e.exercise else e.outcome, style=_outcome_style(e)),
            "" if e.running else str(e.exit_code),
            f"{e.wall_time_s:.3f}",
            _money(e.cost),
            _when(e.started_at, zone=False),
        )
    _stdout().print(table)


@executions_app.command("show")
def executions_show(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="The execution's id.")],
    json_output: JsonFlag = False,
) -> None:
    """One execution: its audit record, or its live state while it runs."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        e = admin.get_execution(execution_id)
    if opts.json:
        _print_json(asdict(e))
        return
    out = _stdout()
    out.print(Text(f"Execution {e.execution_id} ({e.outcome})", style="bold"), soft_wrap=True)
    rows: list[tuple[str, str]] = [
        ("tenant", e.tenant),
        ("key", e.key_id),
        ("session", e.session_id),
        ("language", e.language),
        ("code sha256", e.code_sha256),
        ("outcome", e.outcome),
        *([("exercise", "yes")] if e.exercise else []),
        *([] if e.running else [("exit code", str(e.exit_code))]),
        ("wall time", f"{e.wall_time_s:.3f} s" + (" so far" if e.running else "")),
        *(
            []
            if e.running
            else [("cpu time", f"{e.cpu_time_s:.3f} s"), ("peak memory", f"{e.peak_memory_bytes} bytes")]
        ),
        ("cost", _money(e.cost)),
        ("trace", e.trace_id),
        ("started", _when(e.started_at)),
        ("ended", _when(e.ended_at) if e.ended_at else "running"),
        *((f"limits.{k}", str(v)) for k, v in e.limits.items()),
    ]
    out.print(_fields_table(rows))


@executions_app.command("kill")
def executions_kill(
    ctx: typer.Context,
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="A running execution's id.")],
    json_output: JsonFlag = False,
) -> None:
    """Kill a running execution; its caller gets a result with status KILLED."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        killed = admin.kill_execution(execution_id)
    if opts.json:
        _print_json({"execution_id": execution_id, "killed": killed})
        return
    _stdout().print(Text(f"Execution {execution_id} is killed; its caller gets status KILLED."))


# -- quarantine -------------------------------------------------------------------------------------------------


@quarantine_app.command("list")
def quarantine_list(
    ctx: typer.Context,
    include_lifted: Annotated[bool, typer.Option("--all", help="Lifted and expired ones too.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Active mitigations, newest first."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        mitigations = admin.list_quarantines(include_lifted=include_lifted)
    if opts.json:
        now = datetime.now(UTC)
        _print_json([_mitigation_json(m, now) for m in mitigations])
        return
    if not mitigations:
        _stdout().print(Text("No mitigations." if include_lifted else "No active mitigations."))
        return
    _stdout().print(_mitigations_table(mitigations))


@quarantine_app.command("lift")
def quarantine_lift(
    ctx: typer.Context,
    mitigation_id: Annotated[str, typer.Argument(metavar="ID", help="The mitigation's id.")],
    json_output: JsonFlag = False,
) -> None:
    """Lift one mitigation; its incident stays open (``incidents resolve`` lifts them all)."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        mitigation = admin.lift_quarantine(mitigation_id)
    if opts.json:
        _print_json(_mitigation_json(mitigation, datetime.now(UTC)))
        return
    _stdout().print(
        Text(
            f"Mitigation {mitigation.id} ({mitigation.action} of {mitigation.scope} {mitigation.subject}) is lifted "
            f"(by {mitigation.lifted_by} at {_when(mitigation.lifted_at)})."
        ),
        soft_wrap=True,
    )


# -- sessions ---------------------------------------------------------------------------------------------------

SessionId = Annotated[str, typer.Argument(metavar="SESSION_ID", help="The session's id (ses_...).")]


@sessions_app.command("list")
def sessions_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's sessions.")] = None,
    include_closed: Annotated[
        bool, typer.Option("--all", help="Recently closed sessions too, after the live ones.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """Live sessions, oldest first; with --all, then recently closed ones, newest first."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        sessions = admin.list_sessions(tenant, include_closed=include_closed, limit=limit)
    if opts.json:
        _print_json([_session_json(s) for s in sessions])
        return
    if not sessions:
        _stdout().print(Text("No sessions." if include_closed else "No live sessions."))
        return
    table = Table()
    table.add_column("Session ID", no_wrap=True)
    table.add_column("Tenant", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Last used / closed (UTC)", no_wrap=True)
    table.add_column("Calls", justify="right")
    table.add_column("CPU (s)", justify="right")
    table.add_column("Memory", justify="right")
    table.add_column("Cost", justify="right")
    table.add_column("Close reason")
    for s in sessions:
        info = s.session
        ended = info.closed_at if info.closed_at is not None else _last_used(info)
        table.add_row(
            Text(info.id),
            Text(s.tenant),
            Text(info.state, style=_SESSION_STATE_STYLES.get(info.state, "")),
            _when(info.created_at, zone=False),
            _when(ended, zone=False) if ended is not None else "",
            str(info.usage.calls),
            f"{info.usage.cpu_time_s:.3f}",
            _size(info.usage.memory_bytes) if info.closed_at is None else "",
            _money(info.usage.cost),
            Text(info.close_reason),
        )
    _stdout().print(table)


@sessions_app.command("show")
def sessions_show(ctx: typer.Context, session_id: SessionId, json_output: JsonFlag = False) -> None:
    """One session, live or closed: its state, limits, usage, labels and lifecycle events."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        found = admin.get_session(session_id)
    if opts.json:
        _print_json(_session_json(found))
        return
    out = _stdout()
    info = found.session
    out.print(Text(f"Session {info.id} ({info.state})", style="bold"), soft_wrap=True)
    out.print(_fields_table(_session_rows(found)))
    if not found.events:
        out.print(Text("No lifecycle events recorded."))
        return
    table = Table(title="Lifecycle events", title_justify="left")
    table.add_column("At (UTC)", no_wrap=True)
    table.add_column("Event", no_wrap=True)
    table.add_column("Detail")
    for e in found.events:
        table.add_row(
            _when(e.at, zone=False), Text(e.event), Text(", ".join(f"{k}={v}" for k, v in e.detail.items()))
        )
    out.print(table)


@sessions_app.command("close")
def sessions_close(ctx: typer.Context, session_id: SessionId, json_output: JsonFlag = False) -> None:
    """Close a live session now (a call running in it ends KILLED); its tenant's next call gets NOT_FOUND with
    close reason "admin"."""
    opts = _options(ctx, json_output)
    with _server_call(opts), opts.client() as admin:
        closed = admin.close_session(session_id)
    if opts.json:
        _print_json(_session_json(closed))
        return
    info = closed.session
    calls = f"{info.usage.calls} call" + ("" if info.usage.calls == 1 else "s")
    _stdout().print(
        Text(
            f"Session {info.id} of tenant {closed.tenant} is closed ({info.close_reason or 'admin'}) after "
            f"{calls}; its tenant's next call on it gets NOT_FOUND."
        ),
        soft_wrap=True,
    )


def main() -> None:
    """The ``sandbox-admin`` console script."""
    app(prog_name="sandbox-admin")


# -- helpers ----------------------------------------------------------------------------------------------------


def _options(ctx: typer.Context, json_output: bool = False) -> Options:
    """The global options; a command's own ``--json`` turns JSON on as the global one does."""
    opts = ctx.find_root().obj
    if not isinstance(opts, Options):  # a command invoked without the app's callback
        raise RuntimeError("sandbox-admin: global options are missing")
    return replace(opts, json=True) if json_output else opts


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
    if isinstance(value, Mapping):  # the frozen mappings of the models (labels, details)
        return dict(value)
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


_SEVERITY_STYLES = {"low": "", "medium": "yellow", "high": "bold red", "critical": "bold red"}


def _parse_when(opts: Options, option: str, value: str | None) -> datetime | None:
    """An ISO 8601 time or date from the command line; without a zone it is UTC. Exit 2 if it does not parse."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(opts, f"{option}: not an ISO 8601 time or date: {value!r} (e.g. 2024-05-01 or 2024-05-01T12:00Z)",
              EXIT_USAGE)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _money(amount: float) -> str:
    return f"{amount:,.4f}"


def _outcome_style(execution: Execution) -> str:
    if execution.running:
        return "bold cyan"
    return "green" if execution.outcome == "OK" else "red"


def _mitigation_state(mitigation: Mitigation, now: datetime) -> str:
    if mitigation.lifted_at is not None:
        return "lifted"
    return "active" if mitigation.active(now) else "expired"


def _mitigation_json(mitigation: Mitigation, now: datetime) -> dict[str, Any]:
    return {**asdict(mitigation), "state": _mitigation_state(mitigation, now)}


def _incident_json(incident: Incident) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        **asdict(incident),
        "open": incident.open,
        "mitigations": [_mitigation_json(m, now) for m in incident.mitigations],
    }


def _mitigations_table(mitigations: Sequence[Mitigation]) -> Table:
    table = Table()
    table.add_column("Mitigation ID", no_wrap=True)
    table.add_column("Incident", no_wrap=True)
    table.add_column("Action", no_wrap=True)
    table.add_column("Subject")
    table.add_column("Per minute", justify="right")
    table.add_column("Created (UTC)", no_wrap=True)
    table.add_column("Expires (UTC)", no_wrap=True)
    table.add_column("State")
    now = datetime.now(UTC)
    for m in mitigations:
        state = _mitigation_state(m, now)
        table.add_row(
            Text(m.id),
            Text(m.incident_id),
            Text(m.action),
            Text(f"{m.scope} {m.subject}"),
            f"{m.throttle_per_minute:g}" if m.action == "throttle" else "",
            _when(m.created_at, zone=False),
            _when(m.expires_at, zone=False) if m.expires_at else "when lifted",
            Text(f"lifted by {m.lifted_by}" if state == "lifted" else state, style="bold" if state == "active" else ""),
        )
    return table


_SESSION_STATE_STYLES = {"READY": "green", "BUSY": "bold cyan", "CLOSED": ""}


def _last_used(info: SessionInfo) -> datetime | None:
    """When its last call ended; None when the server did not say (a closed session's record keeps no such time:
    the field arrives unset, as the epoch)."""
    return info.last_used_at if info.last_used_at >= info.created_at else None


def _session_json(found: AdminSession) -> dict[str, Any]:
    """The model as JSON, with an unknown ``last_used_at`` as null rather than the epoch."""
    data = asdict(found)
    data["session"]["last_used_at"] = _last_used(found.session)
    return data


def _size(count: int) -> str:
    """Bytes for people: "0 B", "512 B", "1.5 KiB", "120.0 MiB"."""
    if count < 1024:
        return f"{count} B"
    amount, unit = count / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, larger
    return f"{amount:.1f} {unit}"


def _session_rows(found: AdminSession) -> list[tuple[str, str]]:
    """The name/value lines of ``sessions show``. Settings a closed session's record does not keep (its timeouts
    and CPU total, figures of its sandbox) are left out rather than shown as zero."""
    info, usage = found.session, found.session.usage
    live = info.closed_at is None
    last_used = _last_used(info)
    limits = {k: v for k, v in asdict(info.limits).items() if v is not None}
    settings = (
        ("idle timeout", f"{info.idle_timeout_s} s", info.idle_timeout_s > 0),
        ("max lifetime", f"{info.max_lifetime_s} s", info.max_lifetime_s > 0),
        ("cpu total", f"{info.cpu_total_s:g} s", info.cpu_total_s > 0),
    )
    return [
        ("tenant", found.tenant),
        ("key", found.key_id),
        ("state", info.state),
        *([] if live else [("close reason", info.close_reason or "unknown")]),
        ("backend", info.backend),
        ("languages", ", ".join(info.languages)),
        ("created", _when(info.created_at)),
        *([] if last_used is None else [("last used", _when(last_used))]),
        ("expires", _when(info.expires_at)) if live else ("closed", _when(info.closed_at)),
        *((name, value) for name, value, known in settings if known),
        *([("snapshot", info.snapshot_id)] if info.snapshot_id else []),
        ("calls", str(usage.calls)),
        ("cpu time", f"{usage.cpu_time_s:.3f} s"),
        *(
            [
                ("memory", f"{_size(usage.memory_bytes)} (peak {_size(usage.peak_memory_bytes)})"),
                ("workspace", _size(usage.workspace_bytes)),
            ]
            if live
            else []
        ),
        ("cost", _money(usage.cost)),
        ("kernel restarts", str(usage.kernel_restarts)),
        *((f"labels.{k}", v) for k, v in info.labels.items()),
        *((f"limits.{k}", _limit(k, v)) for k, v in limits.items()),
    ]


def _limit(name: str, value: float) -> str:
    if name.endswith("_s"):
        return f"{value:g} s"
    return _size(int(value)) if name.endswith("_bytes") else str(value)


def _fields_table(rows: Sequence[tuple[str, str]]) -> Table:
    """Name/value pairs, one per line, for the ``show`` commands."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _when(moment: datetime | None, *, zone: bool = True) -> str:
    if moment is None:
        return "unknown"
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    main()
