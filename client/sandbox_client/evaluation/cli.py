"""``sandbox-admin eval``: run a suite of cases through the server and report how it did.

Only typer is imported here: sandbox-admin imports this module on every start, and the evaluation's own
modules (pydantic models, the runner) are loaded when ``eval`` runs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer

from sandbox_client._exercise_cli import EXERCISE_HELP, require_exercise_rights

if TYPE_CHECKING:
    from rich.console import Console

    from sandbox_client.admin_cli import Options
    from sandbox_client.evaluation.models import CaseLimits
    from sandbox_client.evaluation.report import Report
    from sandbox_client.evaluation.runner import CaseResult
    from sandbox_client.evaluation.suite import Suite

__all__ = ["EVAL_HELP", "EXIT_INTERRUPTED", "register"]

EXIT_INTERRUPTED: Final = 130
"""Interrupted (Ctrl-C), as shells report SIGINT."""
_SESSION_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")
"""What the server accepts as a session id: printable ASCII without spaces, at most 128 characters."""

EVAL_HELP: Final = (
    # Typer's rich help keeps single newlines: one line per item, each wrapped to the terminal by rich.
    "Run a suite of cases through the sandbox server; report the success rate, latency (p50/p90/p99, client and "
    "server-side), statuses, errors by type, cost and the slowest cases. Exit code 0 when every case passed, 1 "
    "otherwise, 2 for a usage error (a suite that does not load: each problem with its file:line).\n\n"
    "SUITE: a file, or a shipped suite by name: basic (Python, JavaScript, bash: output, stdin, files, JSON, "
    "recursion, a check program, exit codes, TIMEOUT, MEMORY_LIMIT, OUTPUT_LIMIT), humaneval-sample, or sessions "
    "(multi-step agent workflows, each in one session: a helper defined then used, a CSV with pandas, a "
    "matplotlib figure, an exception then recovery, files between bash, Python and JavaScript, input(), values)."
    "\n\n"
    "Our format: YAML (a list of cases, or a mapping of name, description, defaults and cases; the defaults "
    "apply to every case, a case's own value wins) or JSONL (one JSON object per line). A case has:\n"
    "- id, code; language (default python); stdin; files (name: text); env; tags;\n"
    "- limits: wall_time_s, cpu_time_s, memory_bytes, max_pids, output_bytes, file_size_bytes, scratch_bytes, "
    "egress_bytes (sizes in bytes or like 64MiB);\n"
    "- expected_status (default OK; NONZERO_EXIT, TIMEOUT, MEMORY_LIMIT, ...) and expected_exit_code;\n"
    "- expected_stdout: exact, or ignoring trailing whitespace and blank lines with strip_trailing_whitespace: "
    "true;\n"
    "- expected_files: name: the exact text of a file the program wrote;\n"
    "- check (instead of expected_stdout): a program in the same language, run next in a fresh sandbox with the "
    "case's stdout on its stdin and the files the case wrote in its working directory (server default "
    "limits); the case passes when it exits 0;\n"
    "- expected_error: the server must refuse the case (e.g. InvalidRequestError or INVALID_ARGUMENT);\n"
    "- max_time_s: a client-side ceiling; past it the call is cancelled and the case fails as too slow.\n\n"
    "A multi-step case gives steps instead of code: calls run in order in one session (docs/sessions.md), created "
    "for the case (with its files in the workspace, its env and its limits) and closed after it. Each step has "
    "code; language, stdin, files, env (bash and JavaScript), limits (wall_time_s, cpu_time_s, output_bytes) and "
    "the expectations of a case (expected_status, expected_exit_code, expected_stdout, expected_files: the "
    "workspace's files after the call, check, expected_error), plus expected_value (a Python call's last "
    "expression, as its repr) and expected_outputs (the MIME types of its rich outputs in order: a list holding "
    "image/png for one figure). The "
    "first step that does not pass ends the case; the report names it (failed_step, \"at step 2/3\"). Each "
    "multi-step case in flight holds a session: keep --concurrency within the tenant's sessions.max_active (8 by "
    "default).\n\n"
    "HumanEval problems (JSONL lines with task_id, prompt, canonical_solution and/or completion, test, "
    "entry_point) are taken as they are, mixed with our cases or not: the program run is prompt + completion "
    "(else canonical_solution) + test + check(entry_point), passing when it exits 0, as HumanEval's own harness "
    "runs it (3 s wall time, as there). --completions FILE (JSONL of task_id + completion, as code-generation "
    "models write them; several per task are separate runs) runs those instead; tasks without one are skipped. "
    "The report then gives pass@1.\n\n"
    "All executions of a run share one session id (--session-id, or a fresh eval-...), which also labels the "
    "sessions of multi-step cases (eval_run). Each call's deadline is the global --timeout, raised for a case to "
    "its wall-time limit plus 30 s.\n\n"
    "The runs are exercises by default (an admin key, or a server in development mode): incident response records "
    "what they provoke (a refused eval or exec, a run of timeouts) apart from real traffic and mitigates nothing. "
    "--no-exercise runs them as the key's tenant's ordinary traffic."
)

ConcurrencyOption = Annotated[int, typer.Option(min=1, max=256, help="Cases in flight at once.")]
RepeatOption = Annotated[
    int, typer.Option(min=1, max=1000, help="Run every case K times (latency statistics); a case passes only if "
                                            "every run does.", metavar="K")
]


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the sandbox-admin app."""
    app.command(
        "eval", help=EVAL_HELP, no_args_is_help=True,
        short_help="Run a suite of cases (ours or HumanEval's) through the server and report how it did.",
    )(eval_command)


def eval_command(
    ctx: typer.Context,
    suite: Annotated[
        str,
        typer.Argument(metavar="SUITE", show_default=False,
                       help="A suite file (.yaml, .yml, .json, .jsonl) or a shipped suite's name (basic, "
                            "humaneval-sample, sessions)."),
    ],
    completions: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, show_default=False,
                     help="A JSONL of task_id + completion to run against the suite's HumanEval problems."),
    ] = None,
    concurrency: ConcurrencyOption = 4,
    repeat: RepeatOption = 1,
    session_id: Annotated[
        str | None, typer.Option(help="The session id of every execution (default: a fresh eval-... id).",
                                 show_default=False)
    ] = None,
    limits: Annotated[
        str | None,
        typer.Option("--limits", metavar="NAME=VALUE,...", show_default=False,
                     help="Override every case's limits, e.g. wall_time_s=5,memory_bytes=128MiB."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Run only the cases with this tag (repeatable: any of them).",
                                       show_default=False)
    ] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Start no new case after the first that does "
                                                                "not pass.")] = False,
    html: Annotated[
        Path | None, typer.Option(dir_okay=False, show_default=False, metavar="PATH",
                                  help="Also write a self-contained HTML report here.")
    ] = None,
    exercise: Annotated[bool, typer.Option("--exercise/--no-exercise", help=EXERCISE_HELP)] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON (like the global "
                                                             "--json).")] = False,
) -> None:
    from sandbox_client.admin_cli import EXIT_FAILURE, _options

    opts = _options(ctx, json_output)
    try:
        from sandbox_client.evaluation.suite import SuiteError, load_suite, resolve_suite
    except ImportError as exc:  # pydantic: the evaluation's one dependency beyond the cli extra's
        _usage(opts, f"sandbox-admin eval needs pydantic>=2 ({exc.name} is missing): pip install 'pydantic>=2'")

    override = _parse_limits(opts, limits) if limits is not None else None
    if session_id is not None and not _SESSION_RE.fullmatch(session_id):
        _usage(opts, "--session-id: at most 128 printable ASCII characters, no spaces")
    if html is not None and not html.parent.is_dir():
        _usage(opts, f"--html: no such directory: {html.parent}")
    try:
        loaded = load_suite(resolve_suite(suite), completions=completions)
    except SuiteError as exc:
        what = suite if completions is None else f"{suite} with {completions}"
        _usage(opts, f"{what}: the suite does not load", problems=[(p.location, p.message) for p in exc.problems])
    if tag:
        loaded = loaded.only_tags(tag)
        if not loaded.cases:
            _usage(opts, f"no case of {suite} has the tag(s) {', '.join(tag)}")

    if exercise:
        require_exercise_rights(opts)
    try:
        report = asyncio.run(_evaluate(opts, loaded, override, concurrency, repeat, session_id, fail_fast, exercise))
    except KeyboardInterrupt:
        # asyncio.run has cancelled the calls in flight; there is no whole report to give.
        typer.echo("interrupted: no report", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None

    if opts.json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        report.render(_console(stderr=False))
    if html is not None:
        from sandbox_client.evaluation.html_report import render_html

        try:
            html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            _usage(opts, f"--html: cannot write {html}: {exc.strerror or exc}")
    if not report.all_passed:
        raise typer.Exit(EXIT_FAILURE)


async def _evaluate(
    opts: Options,
    suite: Suite,
    override: CaseLimits | None,
    concurrency: int,
    repeat: int,
    session_id: str | None,
    fail_fast: bool,
    exercise: bool,
) -> Report:
    from sandbox_client import AsyncSandboxClient
    from sandbox_client.evaluation.report import Report
    from sandbox_client.evaluation.runner import RunOptions, new_session_id, run_cases

    options = RunOptions(
        session_id=session_id or new_session_id(),
        concurrency=concurrency,
        repeat=repeat,
        limits=override,
        fail_fast=fail_fast,
        call_timeout_s=opts.timeout,
    )
    started_at = datetime.now(UTC)
    total = len(suite.cases) * repeat
    async with AsyncSandboxClient(opts.target, api_key=opts.api_key, timeout=opts.timeout,
                                  exercise=exercise) as client:
        with _progress(opts, suite.name, total) as advance:
            run = await run_cases(client, suite.cases, options, on_result=advance)
    return Report(suite=suite, run=run, target=opts.target, started_at=started_at, concurrency=concurrency,
                  repeat=repeat, limits=override, fail_fast=fail_fast)


@contextmanager
def _progress(opts: Options, name: str, total: int) -> Iterator[Callable[[CaseResult], None] | None]:
    """A progress bar on stderr while the suite runs, when stderr is a terminal and the output is not JSON."""
    err = _console(stderr=True)
    if opts.json or not err.is_terminal:
        yield None
        return
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sandbox_client.evaluation.runner import Outcome

    # A neutral bar: rich's default pink reads as "failing"; failures are counted beside it in red.
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(complete_style="cyan"), MofNCompleteColumn(),
                  TextColumn("{task.fields[failing]}"), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(escape(name), total=total, failing="")
        not_passed = 0

        def advance(result: CaseResult) -> None:
            nonlocal not_passed
            not_passed += result.outcome is not Outcome.PASSED
            bar.update(task, advance=1, failing=f"[red]{not_passed} not passed[/]" if not_passed else "")

        yield advance


def _parse_limits(opts: Options, spec: str) -> CaseLimits:
    """``--limits name=value,...`` as limits; exit 2 when it does not parse or validate."""
    import yaml
    from pydantic import ValidationError

    from sandbox_client.evaluation.models import CaseLimits
    from sandbox_client.evaluation.suite import describe_error

    values: dict[str, Any] = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            _usage(opts, f"--limits: expected name=value, got {item.strip()!r}")
        # As YAML: 5 and 0.5 are numbers, 128MiB stays a string for the size parser.
        try:
            values[name.strip()] = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            values[name.strip()] = value.strip()  # for pydantic to refuse with its own message
    try:
        return CaseLimits.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors())
        _usage(opts, f"--limits: {problems}")


def _usage(opts: Options, message: str, *, problems: list[tuple[str, str]] | None = None) -> NoReturn:
    """Print a usage error (as JSON on stderr with ``--json``) and exit 2."""
    from sandbox_client.admin_cli import EXIT_USAGE

    if opts.json:
        error: dict[str, Any] = {"message": message}
        if problems is not None:
            error["problems"] = [{"location": loc, "message": msg} for loc, msg in problems]
        typer.echo(json.dumps({"error": error}, ensure_ascii=False), err=True)
    else:
        from rich.text import Text

        err = _console(stderr=True)
        err.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
        for loc, msg in problems or ():
            err.print(Text(f"  {loc}: {msg}"), soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    from sandbox_client.admin_cli import NON_TERMINAL_WIDTH

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        # Piped or captured: rich would assume 80 columns and wrap the report's tables to pieces.
        console = Console(stderr=stderr, highlight=False, width=NON_TERMINAL_WIDTH)
    return console
