"""The report of a run: statistics, the JSON document (stable keys), and the rich tables for a terminal.

Latency percentiles interpolate linearly between the two nearest ranks (numpy's default, "linear"), over
every finished run; ``client`` is the execute call as the client timed it, ``server`` the server's own
``usage.wall_time_s`` (only runs that produced a result have one).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from sandbox_client.evaluation.models import CaseLimits
from sandbox_client.evaluation.runner import CaseResult, Outcome, RunResult
from sandbox_client.evaluation.suite import Suite

__all__ = ["SLOWEST", "LatencyStats", "Report", "percentile", "reason_text"]

SLOWEST: Final = 5
"""Slowest runs listed."""
_OUTCOME_STYLES: Final = {Outcome.PASSED: "green", Outcome.FAILED: "bold red", Outcome.ERROR: "bold magenta"}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolating linearly between the nearest ranks.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q!r}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencyStats:
    """Seconds; every field None when there were no values."""

    count: int
    mean: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        if not values:
            return cls(0, None, None, None, None, None, None)
        return cls(
            count=len(values),
            mean=sum(values) / len(values),
            min=min(values),
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            max=max(values),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count, "mean": self.mean, "min": self.min, "p50": self.p50, "p90": self.p90,
            "p99": self.p99, "max": self.max,
        }


@dataclass(frozen=True)
class Report:
    """A finished run of a suite, and everything said about it."""

    suite: Suite
    run: RunResult
    target: str
    started_at: datetime
    concurrency: int
    repeat: int
    limits: CaseLimits | None
    fail_fast: bool

    @property
    def results(self) -> tuple[CaseResult, ...]:
        return self.run.results

    @property
    def runs(self) -> int:
        """Runs planned: cases times repeats (some are not run after ``--fail-fast``)."""
        return len(self.suite.cases) * self.repeat

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def all_passed(self) -> bool:
        return self.count(Outcome.PASSED) == self.runs

    @property
    def success_rate(self) -> float:
        """Passed runs over planned runs."""
        return self.count(Outcome.PASSED) / self.runs if self.runs else 0.0

    @property
    def cases_passed(self) -> int:
        """Cases whose every run passed."""
        passed = Counter(r.case_id for r in self.results if r.passed)
        return sum(1 for c in self.suite.cases if passed[c.case.id] == self.repeat)

    @property
    def pass_at_1(self) -> float | None:
        """HumanEval's pass@1: the mean over tasks of each task's share of passing samples (runs); None
        without HumanEval cases."""
        by_task: dict[str, list[bool]] = {}
        for r in self.results:
            if r.task_id is not None:
                by_task.setdefault(r.task_id, []).append(r.passed)
        if not by_task:
            return None
        return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)

    @property
    def client_latency(self) -> LatencyStats:
        return LatencyStats.of([r.client_time_s for r in self.results])

    @property
    def server_latency(self) -> LatencyStats:
        return LatencyStats.of([r.server_wall_time_s for r in self.results if r.server_wall_time_s is not None])

    @property
    def statuses(self) -> dict[str, int]:
        """Runs by the status of their result (runs without one are not counted)."""
        return _sorted_counts(r.status.value for r in self.results if r.status is not None)

    @property
    def reasons(self) -> dict[str, int]:
        """Runs that did not pass, by reason."""
        return _sorted_counts(r.reason.value for r in self.results if r.reason is not None)

    @property
    def errors_by_type(self) -> dict[str, int]:
        """Runs the server refused or the client failed, by exception class."""
        return _sorted_counts(r.error_type for r in self.results if r.error_type is not None)

    @property
    def total_cost(self) -> float:
        return sum(r.cost for r in self.results)

    def slowest(self, n: int = SLOWEST) -> list[CaseResult]:
        return sorted(self.results, key=lambda r: r.client_time_s, reverse=True)[:n]

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report; its keys are stable (new ones may be added, none renamed)."""
        return {
            "suite": {
                "name": self.suite.name,
                "path": self.suite.path,
                "description": self.suite.description,
                "cases": len(self.suite.cases),
                "skipped_tasks": list(self.suite.skipped_tasks),
            },
            "run": {
                "target": self.target,
                "session_id": self.run.session_id,
                "started_at": self.started_at.isoformat(),
                "duration_s": self.run.duration_s,
                "concurrency": self.concurrency,
                "repeat": self.repeat,
                "limits": self.limits.model_dump(exclude_none=True) if self.limits is not None else None,
                "fail_fast": self.fail_fast,
            },
            "summary": {
                "runs": self.runs,
                "passed": self.count(Outcome.PASSED),
                "failed": self.count(Outcome.FAILED),
                "errors": self.count(Outcome.ERROR),
                "not_run": self.run.not_run,
                "success_rate": self.success_rate,
                "cases": len(self.suite.cases),
                "cases_passed": self.cases_passed,
                "pass_at_1": self.pass_at_1,
                "total_cost": self.total_cost,
            },
            "latency_s": {"client": self.client_latency.to_json(), "server": self.server_latency.to_json()},
            "statuses": self.statuses,
            "reasons": self.reasons,
            "errors_by_type": self.errors_by_type,
            "slowest": [
                {"id": r.case_id, "repeat": r.repeat, "client_time_s": r.client_time_s,
                 "server_wall_time_s": r.server_wall_time_s, "outcome": r.outcome.value}
                for r in self.slowest()
            ],
            "results": [_result_json(r) for r in self.results],
        }

    def render(self, console: Console) -> None:
        """Print the report as rich tables: the summary, latency, statuses and errors, what did not pass, and
        the slowest runs."""
        console.print(_headline(self), soft_wrap=True)
        console.print(Group(_latency_table(self), _counts_table(self)))
        failing = [r for r in self.results if not r.passed]
        if failing:
            console.print(_failures_table(failing))
        console.print(_slowest_table(self.slowest()))
        if self.suite.skipped_tasks:
            console.print(Text(f"{len(self.suite.skipped_tasks)} HumanEval tasks had no completion and were not run: "
                               + ", ".join(self.suite.skipped_tasks), style="yellow"), soft_wrap=True)


def _result_json(r: CaseResult) -> dict[str, Any]:
    return {
        "id": r.case_id,
        "repeat": r.repeat,
        "source": r.source,
        "language": r.language,
        "tags": list(r.tags),
        "task_id": r.task_id,
        "outcome": r.outcome.value,
        "reason": r.reason.value if r.reason is not None else None,
        "detail": r.detail,
        "status": r.status.value if r.status is not None else None,
        "exit_code": r.exit_code,
        "client_time_s": r.client_time_s,
        "server_wall_time_s": r.server_wall_time_s,
        "cost": r.cost,
        "execution_id": r.execution_id,
        "error_type": r.error_type,
        "error_code": r.error_code,
        "steps": r.steps,
        "failed_step": r.failed_step,
        "session_id": r.session_id,
    }


def reason_text(r: CaseResult) -> str:
    """Why a run did not pass, with the step that did not for a multi-step case ("wrong_output at step 2/3")."""
    if r.reason is None:
        return ""
    return r.reason.value + (f" at step {r.failed_step}/{r.steps}" if r.failed_step is not None else "")


def _sorted_counts(values: Iterable[str]) -> dict[str, int]:
    counts = Counter(values)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds for people; "-" for none."""
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def _headline(report: Report) -> Text:
    passed = report.count(Outcome.PASSED)
    style = "bold green" if report.all_passed else "bold red"
    repeat = f" x {report.repeat}" if report.repeat > 1 else ""
    n = len(report.suite.cases)
    text = Text(f"Suite {report.suite.name} ({n} case{'s' if n != 1 else ''}{repeat}) against {report.target}: ")
    text.append(f"{passed}/{report.runs} passed ({report.success_rate:.1%})", style=style)
    extra = [f"{report.count(Outcome.FAILED)} failed", f"{report.count(Outcome.ERROR)} errors"]
    if report.run.not_run:
        extra.append(f"{report.run.not_run} not run")
    text.append(f", {', '.join(extra)}, in {report.run.duration_s:.2f} s; total cost {report.total_cost:,.6f}")
    if report.pass_at_1 is not None:
        text.append(f"; pass@1 {report.pass_at_1:.3f}")
    return text


def _latency_table(report: Report) -> Table:
    table = Table(title="Latency (ms)", title_justify="left")
    table.add_column("")
    for name in ("runs", "mean", "p50", "p90", "p99", "max"):
        table.add_column(name, justify="right")
    for label, stats in (("client", report.client_latency), ("server wall", report.server_latency)):
        table.add_row(label, str(stats.count), ms(stats.mean), ms(stats.p50), ms(stats.p90), ms(stats.p99),
                      ms(stats.max))
    return table


def _counts_table(report: Report) -> Table:
    table = Table(title="Counts", title_justify="left")
    table.add_column("Kind")
    table.add_column("Name")
    table.add_column("Runs", justify="right")
    for kind, counts in (("status", report.statuses), ("not passed", report.reasons),
                         ("error", report.errors_by_type)):
        for name, n in counts.items():
            table.add_row(kind, Text(name), str(n))
    return table


def _failures_table(failing: Sequence[CaseResult]) -> Table:
    table = Table(title="Not passed", title_justify="left", show_lines=True)
    table.add_column("Case", no_wrap=True)
    table.add_column("Outcome", no_wrap=True)
    table.add_column("Reason", no_wrap=True)
    table.add_column("Detail")
    for r in failing:
        label = r.case_id + (f" (run {r.repeat + 1})" if r.repeat else "")
        table.add_row(Text(label), Text(r.outcome.value, style=_OUTCOME_STYLES[r.outcome]),
                      Text(reason_text(r)), Text(r.detail))
    return table


def _slowest_table(slowest: Sequence[CaseResult]) -> Table:
    table = Table(title="Slowest", title_justify="left")
    table.add_column("Case", no_wrap=True)
    table.add_column("Client (ms)", justify="right")
    table.add_column("Server wall (ms)", justify="right")
    table.add_column("Status")
    table.add_column("Outcome")
    for r in slowest:
        table.add_row(Text(r.case_id), ms(r.client_time_s), ms(r.server_wall_time_s),
                      r.status.value if r.status else "-", Text(r.outcome.value, style=_OUTCOME_STYLES[r.outcome]))
    return table
