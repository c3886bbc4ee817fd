"""Cost charts as inline SVG, drawn here on the server: no script and nothing fetched to draw them.

Every label is escaped; colours come from the console's style sheet (classes), since the page's
Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 720
BAR_HEIGHT = 20
GAP = 6
LABEL_WIDTH = 220
VALUE_WIDTH = 90
MAX_BARS = 30
"""Bars drawn at most (the largest); the table under a chart has every row."""
DAY_CHART_HEIGHT = 180


def _label(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(rows: Sequence[tuple[str, float]], title: str) -> Markup:
    """Horizontal bars, one per (label, value), in the order given."""
    shown = list(rows[:MAX_BARS])
    if not shown:
        return Markup("")
    top = max(value for _, value in shown) or 1.0
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    height = len(shown) * (BAR_HEIGHT + GAP) + GAP
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i, (label, value) in enumerate(shown):
        y = GAP + i * (BAR_HEIGHT + GAP)
        length = max(1.0, span * max(value, 0.0) / top)
        parts.append(
            f'<g><title>{escape(label)}: {value:.6f}</title>'
            f'<text class="chart-label" x="{LABEL_WIDTH - 8}" y="{y + BAR_HEIGHT - 5}" text-anchor="end">'
            f'{escape(_label(label, 30))}</text>'
            f'<rect class="bar" x="{LABEL_WIDTH}" y="{y}" width="{length:.1f}" height="{BAR_HEIGHT}"/>'
            f'<text class="chart-value" x="{LABEL_WIDTH + length + 6:.1f}" y="{y + BAR_HEIGHT - 5}">'
            f'{value:.4f}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece of text above is escaped


def day_chart(rows: Sequence[tuple[str, float]], title: str) -> Markup:
    """Vertical bars, one per UTC day ("YYYY-MM-DD", value), oldest on the left."""
    days = sorted(rows)[-MAX_BARS:]
    if not days:
        return Markup("")
    top = max(value for _, value in days) or 1.0
    left, bottom, plot_top = 60, DAY_CHART_HEIGHT - 30, 12
    step = (WIDTH - left - 10) / len(days)
    bar = min(48.0, max(2.0, step * 0.7))
    every = -(-len(days) // 15)  # a date under every n-th bar only, so labels never overlap
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {DAY_CHART_HEIGHT}" width="{WIDTH}" '
             f'height="{DAY_CHART_HEIGHT}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{left}" y1="{bottom}" x2="{WIDTH - 10}" y2="{bottom}"/>',
             f'<text class="chart-value" x="{left - 6}" y="{plot_top + 4}" text-anchor="end">{top:.4f}</text>',
             f'<text class="chart-value" x="{left - 6}" y="{bottom}" text-anchor="end">0</text>']
    for i, (day, value) in enumerate(days):
        height = (bottom - plot_top) * max(value, 0.0) / top
        x = left + i * step + (step - bar) / 2
        label = (f'<text class="chart-label" x="{x + bar / 2:.1f}" y="{bottom + 16}" text-anchor="middle">'
                 f'{escape(day[5:])}</text>') if i % every == 0 else ""
        parts.append(
            f'<g><title>{escape(day)}: {value:.6f}</title>'
            f'<rect class="bar" x="{x:.1f}" y="{bottom - height:.1f}" width="{bar:.1f}" height="{height:.1f}"/>'
            f'{label}</g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece of text above is escaped
