"""``sandbox-admin redteam``: run the hostile-program corpus against a server and report what it contained.

    sandbox-admin redteam [--category C ...] [--case ID ...] [--corpus DIR] [--concurrency N] [--session-cases N]
                          [--host-checks] [--canary-dir DIR ...] [--no-exercise] [--list] [--json]

It uses the global ``--target``, ``--api-key`` (the programs run as the key's tenant, under its policy) and
``--timeout`` (seconds a call may take past its program's wall-time limit). The runs are exercises by default
(``--exercise``): the key must be an admin's, or the server in development mode; the server's incident response
then records what the corpus provokes apart from real traffic, without quarantining the tenant.
``--no-exercise`` runs them as the tenant's ordinary traffic, with any key of the tenant (to test incident
response itself).
Exit codes: 0 every case was contained; 1 a case was NOT CONTAINED, NOT EXERCISED or could not be judged
(ERROR), the server could not be reached, or the key may not mark exercises; 2 a usage error (an unknown case
or category, a corpus that does not load, the corpus's dependencies missing).

The corpus and the runner need pydantic and pyyaml; they are imported when the command runs, so the rest of
``sandbox-admin`` works without them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sandbox_client._exercise_cli import EXERCISE_HELP, require_exercise_rights
from sandbox_client.redteam.categories import Category

if TYPE_CHECKING:
    from sandbox_client.admin_cli import Options
    from sandbox_client.redteam.runner import CaseReport, RunOptions, RunReport
    from sandbox_client.redteam.schema import Case, Step

__all__ = ["register"]

DEFAULT_CONCURRENCY = 4  # runner.DEFAULT_CONCURRENCY, repeated here so that --help needs no pydantic
DEFAULT_SESSION_CASES = 2  # runner.DEFAULT_SESSION_CASES, likewise
NON_TERMINAL_WIDTH = 200
EVIDENCE_CHARS = 160

_VERDICT_STYLES = {"contained": "green", "not_contained": "bold red", "error": "yellow", "not_exercised": "magenta"}


def register(app: typer.Typer) -> None:
    """Add the ``redteam`` command to the sandbox-admin app."""
    app.command("redteam")(redteam)


def redteam(
    ctx: typer.Context,
    category: Annotated[
        list[Category] | None,
        typer.Option("--category", help="Only the cases of this category (repeatable)."),
    ] = None,
    case: Annotated[
        list[str] | None, typer.Option("--case", metavar="ID", help="Only this case (repeatable; adds to --category).")
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="A directory of corpus YAML files instead of the shipped one."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Programs running at once.")
    ] = DEFAULT_CONCURRENCY,
    session_cases: Annotated[
        int, typer.Option(min=1, max=16, help="Cases with sessions running at once (each keeps up to 3 sessions "
                                              "open; the tenant's sessions.max_active is 8 by default).")
    ] = DEFAULT_SESSION_CASES,
    host_checks: Annotated[
        bool,
        typer.Option(
            "--host-checks",
            help="Also check on this host (run it on the server's host, as root): plant canary files and look for "
            "them in every output, listen on loopback, look for leftover files and processes.",
        ),
    ] = False,
    canary_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--canary-dir", file_okay=False, help="Another host directory to plant a canary in with --host-checks, "
            "e.g. the server's state or data directory (repeatable).",
        ),
    ] = None,
    exercise: Annotated[bool, typer.Option("--exercise/--no-exercise", help=EXERCISE_HELP)] = True,
    list_only: Annotated[bool, typer.Option("--list", help="List the selected cases; run nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON (like the global --json).")] = False,
) -> None:
    """Run hostile programs (escapes, host reads and writes, network, resource bombs, persistence, info leaks,
    validator bypasses, attacks across a session's calls and across sessions) and report which were contained.
    Exit 0 only if every case was."""
    from sandbox_client.admin_cli import EXIT_FAILURE, EXIT_USAGE

    opts = _options(ctx, json_output)
    try:
        from sandbox_client.redteam.corpus import CorpusError, load_corpus, shipped_corpus
        from sandbox_client.redteam.host import DEFAULT_CANARY_DIRS, HostChecks
        from sandbox_client.redteam.runner import RunOptions
    except ImportError as exc:
        _fail(opts, f"sandbox-admin redteam needs pydantic and pyyaml ({exc.name} is missing): "
              "pip install 'pydantic>=2.7' pyyaml", EXIT_USAGE)
    try:
        loaded = load_corpus(corpus) if corpus is not None else shipped_corpus()
        cases = loaded.select(category or (), case or ())
    except CorpusError as exc:
        _fail(opts, str(exc), EXIT_USAGE)
    if not cases:
        _fail(opts, "no case matches the selection", EXIT_USAGE)
    if list_only:
        _print_cases(opts, cases)
        return
    checks = None
    if host_checks:
        checks = HostChecks(canary_dirs=(*DEFAULT_CANARY_DIRS, *(canary_dir or ())))
    options = RunOptions(concurrency=concurrency, host_checks=checks, host_ports=_target_port(opts.target),
                         call_grace_s=opts.timeout, session_cases=session_cases)
    if exercise:
        require_exercise_rights(opts)
    report = asyncio.run(_run(opts, cases, options, exercise))
    if report is None:
        raise typer.Exit(EXIT_FAILURE)
    if opts.json:
        typer.echo(report.to_json())
    else:
        _print_report(report)
    if not report.all_contained:
        raise typer.Exit(EXIT_FAILURE)


async def _run(opts: Options, cases: Sequence[Case], options: RunOptions, exercise: bool) -> RunReport | None:
    """Check that the server answers, then run; None (after saying why) when it cannot be reached."""
    from sandbox_client import AsyncSandboxClient, SandboxError
    from sandbox_client.redteam.runner import run_cases

    total = len(cases)
    done = 0
    err = _console(stderr=True)

    def progress(report: CaseReport) -> None:
        nonlocal done
        done += 1
        if not opts.json:
            err.print(Text.assemble(f"[{done}/{total}] ", _verdict_text(report.verdict.value), f" {report.case_id}"))

    async with AsyncSandboxClient(opts.target, api_key=opts.api_key, timeout=opts.timeout,
                                  exercise=exercise) as client:
        try:
            await client.runtimes()
        except SandboxError as exc:
            _print_error(opts, f"cannot run the corpus: {exc.message} ({exc.code.name})")
            return None
        return await run_cases(client, cases, options, progress)


def _options(ctx: typer.Context, json_output: bool) -> Options:
    from dataclasses import replace

    from sandbox_client.admin_cli import Options

    opts = ctx.find_root().obj
    if not isinstance(opts, Options):  # invoked without the app's callback
        raise RuntimeError("sandbox-admin: global options are missing")
    return replace(opts, json=True) if json_output else opts


def _target_port(target: str) -> tuple[int, ...]:
    """The server's port, worth knocking on from inside (on the sandbox's own loopback)."""
    _, _, port = target.rpartition(":")
    return (int(port),) if port.isdigit() and 0 < int(port) < 65536 else ()


def _print_cases(opts: Options, cases: Sequence[Case]) -> None:
    if opts.json:
        typer.echo(json.dumps([{"id": c.id, "category": c.category.value, "title": c.title,
                                "languages": [s.language.value for s in c.steps],
                                "sessions": [s.session for s in c.steps]} for c in cases], indent=2))
        return
    table = Table()
    table.add_column("Case", no_wrap=True)
    table.add_column("Category", no_wrap=True)
    table.add_column("Languages", no_wrap=True)
    table.add_column("Title")
    for c in cases:
        table.add_row(Text(c.id), c.category.value, " → ".join(map(_step_label, c.steps)), Text(c.title))
    out = _console(stderr=False)
    out.print(table)
    out.print(Text(f"{len(cases)} cases"))


def _step_label(step: Step) -> str:
    """A step's language, with its session's name when it runs in one (``a:python``)."""
    return f"{step.session}:{step.language.value}" if step.session else step.language.value


def _print_report(report: RunReport) -> None:
    out = _console(stderr=False)
    table = Table(title="Red-team corpus", title_justify="left")
    table.add_column("Case", no_wrap=True)
    table.add_column("Category", no_wrap=True)
    table.add_column("Verdict", no_wrap=True)
    table.add_column("Evidence")
    for c in report.cases:
        table.add_row(Text(c.case_id), c.category, _verdict_text(c.verdict.value), Text(_evidence(c)))
    out.print(table)
    for c in report.cases:
        if not c.contained:
            _print_details(out, c)
    counts = ", ".join(f"{n} {v.label}" for v, n in report.counts().items() if n)
    style = "bold green" if report.all_contained else "bold red"
    out.print(Text(f"{len(report.cases)} cases in {report.duration_s:.1f} s: {counts}", style=style))
    if not report.host_checks:
        out.print(Text("Host checks were not run (--host-checks, on the server's host): canaries, listeners, "
                       "leftover files and processes were not checked.", style="dim"))
    else:
        out.print(Text(f"Host checks: canaries planted in {', '.join(report.canaries) or 'no directory'}.",
                       style="dim"), soft_wrap=True)


def _print_details(out: Console, c: CaseReport) -> None:
    out.print(Text.assemble("── ", (c.case_id, "bold"), " ", _verdict_text(c.verdict.value), f": {c.title}"),
              soft_wrap=True)
    for problem in c.problems:
        out.print(Text(f"  • {problem}"), soft_wrap=True)
    for s in c.steps:
        head = f"  step {s.index + 1} ({f'session {s.session}, ' if s.session else ''}{s.language}): "
        for retry in s.session_retries:
            out.print(Text(head + f"its session failed to start, and was asked for again: {retry}"), soft_wrap=True)
        if s.refusal:
            out.print(Text(head + f"refused: {s.refusal}"), soft_wrap=True)
            continue
        if not s.status:
            continue
        out.print(Text(head + f"{s.status}, exit {s.exit_code}" + (f" ({s.message})" if s.message else "")
                       + f", {s.wall_time_s or 0:.2f} s, {s.peak_memory_bytes or 0} bytes peak"
                       + (f", files {list(s.files)}" if s.files else "")), soft_wrap=True)
        for name, text in (("stdout", s.stdout_excerpt), ("stderr", s.stderr_excerpt)):
            if text.strip():
                out.print(Text(f"    {name}: " + text.rstrip().replace("\n", "\n      ")), soft_wrap=True)


def _evidence(c: CaseReport) -> str:
    if c.problems:
        text = c.problems[0] + (f" (+{len(c.problems) - 1} more)" if len(c.problems) > 1 else "")
    else:
        parts = []
        for s in c.steps:
            if s.refusal:
                parts.append("refused: " + s.refusal.split(":", 1)[0])
            else:
                parts.append(f"{s.status}, exit {s.exit_code}")
        text = "; ".join(parts)
    return text if len(text) <= EVIDENCE_CHARS else text[: EVIDENCE_CHARS - 1] + "…"


def _verdict_text(verdict: str) -> Text:
    label = "contained" if verdict == "contained" else verdict.replace("_", " ").upper()
    return Text(label, style=_VERDICT_STYLES.get(verdict, ""))


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:  # piped or captured: do not cut table cells at 80 columns
        console = Console(stderr=stderr, highlight=False, width=NON_TERMINAL_WIDTH)
    return console


def _print_error(opts: Options, message: str) -> None:
    if opts.json:
        typer.echo(json.dumps({"error": {"message": message}}, ensure_ascii=False), err=True)
    else:
        _console(stderr=True).print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


def _fail(opts: Options, message: str, code: int) -> NoReturn:
    _print_error(opts, message)
    raise typer.Exit(code)
