"""The report as one self-contained HTML file: inline CSS, an inline SVG latency histogram drawn here (no
plotting library, no external asset, no script), and every run of every case with its outcome.

Everything taken from the suite or the server (ids, output, messages) is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from sandbox_client.evaluation.report import Report, ms, reason_text
from sandbox_client.evaluation.runner import CaseResult, Outcome

__all__ = ["Bins", "histogram_bins", "latency_histogram_svg", "render_html"]

MAX_BINS: Final = 24
LOG_SCALE_RATIO: Final = 20.0
"""Bins are spaced logarithmically when the slowest run is this many times the fastest (latencies are skewed:
most runs are fast, a timeout case is seconds)."""

_CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.1rem; margin: 1.8rem 0 .5rem; }
.muted { color: #667085; } .passed { color: #107a3e; } .failed { color: #c0262d; } .error { color: #8e24aa; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0; }
.card { border: 1px solid #d0d5dd; border-radius: 8px; padding: .6rem .9rem; min-width: 8rem; }
.card b { display: block; font-size: 1.3rem; }
table { border-collapse: collapse; margin: .25rem 0; }
th, td { border-bottom: 1px solid #e4e7ec; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f4f7; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, tr.error td { background: #fff5f5; }
pre { white-space: pre-wrap; margin: .3rem 0 0; font-size: 12px; max-width: 70rem; }
details summary { cursor: pointer; }
svg text { font: 11px system-ui, sans-serif; fill: #344054; }
"""


@dataclass(frozen=True)
class Bins:
    """Histogram bins: ``edges`` (one more than ``counts``), in seconds."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    log_scale: bool


def histogram_bins(values: Sequence[float], max_bins: int = MAX_BINS) -> Bins:
    """Bin ``values`` (seconds, all > 0 for a log scale): about the square root of their number of bins, at
    most ``max_bins``, log-spaced when they span more than ``LOG_SCALE_RATIO``.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("no values to bin")
    low, high = min(values), max(values)
    if high <= low:  # one value, or all equal: one bin around it
        pad = max(abs(low) * 0.05, 1e-4)
        return Bins((low - pad, high + pad), (len(values),), log_scale=False)
    n = max(1, min(max_bins, math.ceil(math.sqrt(len(values))) * 2))
    log_scale = low > 0 and high / low > LOG_SCALE_RATIO
    if log_scale:
        a, b = math.log(low), math.log(high)
        edges = tuple(math.exp(a + (b - a) * i / n) for i in range(n + 1))
    else:
        edges = tuple(low + (high - low) * i / n for i in range(n + 1))
    counts = [0] * n
    for v in values:
        counts[min(n - 1, max(0, int(_share(v, low, high, log_scale=log_scale) * n)))] += 1
    return Bins(edges, tuple(counts), log_scale)


def _share(value: float, low: float, high: float, *, log_scale: bool) -> float:
    """Where ``value`` lies between ``low`` and ``high`` (0 to 1, not clamped), on a linear or log scale."""
    if log_scale:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def latency_histogram_svg(values: Sequence[float], *, width: int = 720, height: int = 240,
                          markers: Sequence[tuple[str, float]] = ()) -> str:
    """An inline ``<svg>`` histogram of latencies (seconds, shown in ms), with a dashed line per marker
    (e.g. ("p50", 0.031)). An empty ``values`` gives a note instead of bars."""
    left, right, top, bottom = 48, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" class="histogram"><title>Latency histogram</title>']
    if not values:
        parts.append(f'<text x="{left}" y="{top + 20}">No finished runs.</text></svg>')
        return "".join(parts)
    bins = histogram_bins(values)
    lo, hi = bins.edges[0], bins.edges[-1]

    def x_of(v: float) -> float:
        share = _share(max(v, lo), lo, hi, log_scale=bins.log_scale)  # max(): no log of a marker <= 0
        return left + plot_w * min(1.0, max(0.0, share))

    peak = max(bins.counts)
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#98a2b3"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#98a2b3"/>')
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for i, count in enumerate(bins.counts):
        if not count:
            continue
        x0, x1 = x_of(bins.edges[i]), x_of(bins.edges[i + 1])
        h = plot_h * count / peak
        label = f"{ms(bins.edges[i])}-{ms(bins.edges[i + 1])} ms: {count} run{'s' if count > 1 else ''}"
        parts.append(
            f'<rect x="{x0 + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(1.0, x1 - x0 - 1):.1f}" '
            f'height="{h:.1f}" fill="#4e79a7"><title>{escape(label)}</title></rect>'
        )
    step = max(1, len(bins.counts) // 6)
    for i in sorted({*range(0, len(bins.edges), step), len(bins.edges) - 1}):
        if 0 < len(bins.edges) - 1 - i < step / 2:
            continue  # too close to the last edge's label
        x = x_of(bins.edges[i])
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle">{ms(bins.edges[i])}</text>')
    scale = "log scale" if bins.log_scale else "linear scale"
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                 f"client latency per run, ms ({scale})</text>")
    for name, value in markers:
        x = x_of(value)
        # The label sits right of its line, or left of it near the right edge (p99 often is the maximum).
        anchor, dx = ("end", -3) if x > left + plot_w - 30 else ("start", 3)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#e15759" '
                     f'stroke-dasharray="4 3"><title>{escape(name)} {ms(value)} ms</title></line>'
                     f'<text x="{x + dx:.1f}" y="{top + 10}" fill="#e15759" text-anchor="{anchor}">'
                     f"{escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report) -> str:
    """The whole report as one HTML document."""
    client = report.client_latency
    markers = [(name, v) for name, v in (("p50", client.p50), ("p99", client.p99)) if v is not None]
    title = f"Evaluation: {report.suite.name}"
    verdict = "passed" if report.all_passed else "failed"
    cards = [
        ("Success rate", f"{report.success_rate:.1%}", verdict),
        ("Passed", str(report.count(Outcome.PASSED)), "passed"),
        ("Failed", str(report.count(Outcome.FAILED)), "failed" if report.count(Outcome.FAILED) else ""),
        ("Errors", str(report.count(Outcome.ERROR)), "error" if report.count(Outcome.ERROR) else ""),
        ("Not run", str(report.run.not_run), ""),
        ("p50 / p99 (ms)", f"{ms(client.p50)} / {ms(client.p99)}", ""),
        ("Total cost", f"{report.total_cost:,.6f}", ""),
    ]
    if report.pass_at_1 is not None:
        cards.append(("pass@1", f"{report.pass_at_1:.3f}", ""))
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<div class="muted">{escape(report.suite.path)} · {len(report.suite.cases)} cases &times; {report.repeat} · '
        f"target {escape(report.target)} · session {escape(report.run.session_id)} · "
        f"started {escape(report.started_at.isoformat(timespec='seconds'))} · "
        f"{report.run.duration_s:.2f} s · concurrency {report.concurrency}</div>",
    ]
    if report.suite.description:
        body.append(f"<p>{escape(report.suite.description)}</p>")
    body.append('<div class="cards">' + "".join(
        f'<div class="card"><span class="muted">{escape(label)}</span><b class="{css}">{escape(value)}</b></div>'
        for label, value, css in cards) + "</div>")
    body.append("<h2>Latency</h2>")
    body.append(latency_histogram_svg([r.client_time_s for r in report.results], markers=markers))
    body.append(_latency_table(report))
    body.append("<h2>Statuses, reasons and errors</h2>")
    body.append(_counts_table(report))
    body.append("<h2>Every run</h2>")
    body.append(_results_table(report.results))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _latency_table(report: Report) -> str:
    rows = []
    for label, stats in (("client", report.client_latency), ("server wall", report.server_latency)):
        cells = [str(stats.count), *(ms(v) for v in (stats.mean, stats.min, stats.p50, stats.p90, stats.p99,
                                                    stats.max))]
        rows.append(f"<tr><td>{label}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    head = "".join(f'<th class="num">{h}</th>' for h in ("runs", "mean", "min", "p50", "p90", "p99", "max"))
    return f"<table><tr><th>ms</th>{head}</tr>{''.join(rows)}</table>"


def _counts_table(report: Report) -> str:
    rows = [
        f'<tr><td>{kind}</td><td>{escape(name)}</td><td class="num">{n}</td></tr>'
        for kind, counts in (("status", report.statuses), ("not passed", report.reasons),
                             ("error", report.errors_by_type))
        for name, n in counts.items()
    ]
    if not rows:
        return '<p class="muted">No runs finished.</p>'
    return f'<table><tr><th>kind</th><th>name</th><th class="num">runs</th></tr>{"".join(rows)}</table>'


def _results_table(results: Sequence[CaseResult]) -> str:
    head = ("case", "run", "language", "outcome", "reason", "status", "exit", "client ms", "server ms", "cost",
            "source")
    rows = []
    for r in results:
        detail = (f'<details><summary>{escape(r.detail.splitlines()[0][:160])}</summary>'
                  f"<pre>{escape(r.detail)}</pre></details>") if r.detail else ""
        cells = [
            f"<td>{escape(r.case_id)}{detail}</td>",
            f'<td class="num">{r.repeat + 1}</td>',
            f"<td>{escape(r.language)}</td>",
            f'<td class="{r.outcome.value}">{r.outcome.value}</td>',
            f"<td>{escape(reason_text(r))}</td>",
            f"<td>{r.status.value if r.status else '-'}</td>",
            f'<td class="num">{"" if r.exit_code is None else r.exit_code}</td>',
            f'<td class="num">{ms(r.client_time_s)}</td>',
            f'<td class="num">{ms(r.server_wall_time_s)}</td>',
            f'<td class="num">{r.cost:,.6f}</td>',
            f'<td class="muted">{escape(r.source)}</td>',
        ]
        rows.append(f'<tr class="{r.outcome.value}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"
