"""deploy/grafana/*.json: every dashboard is well formed, every query parses (promtool), and every query reads
only metrics the server exports or recordings deploy/prometheus/alerts.yml defines."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import Counter, Histogram, UpDownCounter
from prometheus_client import generate_latest
from test_prometheus_rules import EXPORTED, recording_names, run_promtool

from sandbox_server.settings import Settings
from sandbox_server.telemetry import build_telemetry

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
EXPECTED = frozenset({"overview.json", "tenants-and-costs.json", "sandboxes-and-latency.json", "incidents.json"})
DATASOURCE_UIDS = frozenset({"${datasource}", "$datasource"})
GRID_COLUMNS = 24
# Series Prometheus itself makes: its alert states and its scrape health.
PROMETHEUS_OWN = frozenset({"ALERTS", "up"})

# Grafana's built-in interval variables, replaced by values of the PromQL type they stand for (a duration, or a
# number of seconds or milliseconds).
BUILTINS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__interval_ms": "30000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# A dashboard's own variables stand inside label matchers (`instance=~"$instance"`), so any regex fits there; one
# used anywhere else makes the expression unparsable, which is the point.
VARIABLE_VALUE = ".*"
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"(?<![\w:])(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
# Not after a digit or a dot: the "e3" of 1e3, the "m" of an offset's 5m, the "x1f" of 0x1f are no names.
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
# PromQL's keywords (case-insensitive); functions and aggregations are told apart by the "(" that follows them.
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "atan2", "inf", "nan",
})
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard, and where it is (for the failure messages)."""

    where: str
    expr: str
    variables: frozenset[str]


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict), f"{path.name} is not a JSON object"
    return doc


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside a collapsed row."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def variable_names(doc: dict[str, Any]) -> frozenset[str]:
    return frozenset(v["name"] for v in doc.get("templating", {}).get("list", []))


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def queries(name: str, doc: dict[str, Any]) -> Iterator[Query]:
    """The panels' expressions, and the series selector of every label_values() variable query."""
    defined = variable_names(doc)
    for panel in all_panels(doc.get("panels", [])):
        for target in panel.get("targets", []):
            where = f"{name}: panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
            yield Query(where, target["expr"], defined)
    for variable in doc.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        text = variable_query(variable)
        match = _LABEL_VALUES.match(text)
        assert match is not None, f"{name}: variable {variable['name']}: only label_values(...) is checked: {text!r}"
        if match["selector"] is not None:
            yield Query(f"{name}: variable {variable['name']}", match["selector"], defined)


def substitute(expr: str, defined: frozenset[str]) -> str:
    """``expr`` with Grafana's variables replaced by valid PromQL; an undefined variable is a ValueError."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in defined:
            return VARIABLE_VALUE
        raise ValueError(f"${name} is neither a Grafana built-in nor a variable of the dashboard")

    return _VARIABLE.sub(value, expr)


def metrics_read(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once string literals, label matchers,
    ranges and label lists (by, on, group_left, …) are gone, that neither are keywords nor call something."""
    names: set[str] = set()
    for op, literal in _NAME_MATCHER.findall(expr):
        if op != "=":
            raise ValueError(f"__name__{op}{literal} selects metrics no check can name")
        names.add(literal[1:-1])
    code = _STRING.sub('""', expr)
    code = _MATCHERS.sub("{}", code)
    code = _BRACKETS.sub("[]", code)
    code = _LABEL_LIST.sub(" ", code)
    for identifier, call in _IDENTIFIER.findall(code):
        if not call and identifier.lower() not in KEYWORDS:
            names.add(identifier)
    return names


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Every series name of the server's own exposition, each instrument of Metrics recorded once (an instrument
    appears only once used): histograms as _bucket/_sum/_count, counters with _total, as Prometheus sees them."""
    telemetry = build_telemetry(Settings())
    try:
        for instrument in vars(telemetry.metrics).values():
            if isinstance(instrument, Counter | UpDownCounter):
                instrument.add(1)
            elif isinstance(instrument, Histogram):
                instrument.record(1)
            elif callable(setter := getattr(instrument, "set", None)):
                setter(1)  # a synchronous gauge; its API class is private
        page = generate_latest(telemetry.registry).decode()
    finally:
        telemetry.shutdown()
    return frozenset(
        re.split(r"[{\s]", line, maxsplit=1)[0] for line in page.splitlines() if line and not line.startswith("#")
    )


def promql(query: Query) -> str:
    """The query with Grafana's variables replaced; an undefined one fails the test, naming the panel."""
    try:
        return substitute(query.expr, query.variables)
    except ValueError as e:
        pytest.fail(f"{query.where}: {e}")


def allowed_metrics() -> frozenset[str]:
    return exported_metrics() | frozenset(recording_names()) | PROMETHEUS_OWN


def unknown_metrics(expr: str, allowed: frozenset[str]) -> set[str]:
    return metrics_read(expr) - allowed


def unparsable(exprs: Mapping[str, str], directory: Path) -> str:
    """promtool's complaint about ``exprs`` (recording name to expression), "" when every one parses. promtool
    cannot parse a bare expression; checking them as recording rules parses (and type-checks) each one."""
    rules = [{"record": record, "expr": expr} for record, expr in exprs.items()]
    path = directory / "dashboard_queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "grafana", "rules": rules}]}))  # JSON is YAML
    result = run_promtool("check", "rules", str(path))
    return "" if result.returncode == 0 else result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------------ structure
def test_the_four_dashboards_are_there() -> None:
    assert {path.name for path in DASHBOARDS.glob("*.json")} >= EXPECTED
    assert (DASHBOARDS / "README.md").is_file()


def test_dashboards_have_unique_uids_and_titles() -> None:
    docs = dashboards()
    uids = [doc.get("uid") for doc in docs.values()]
    titles = [doc.get("title") for doc in docs.values()]
    assert all(isinstance(uid, str) and uid for uid in uids), uids
    assert all(isinstance(title, str) and title for title in titles), titles
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles
    for name, doc in docs.items():
        assert isinstance(doc.get("schemaVersion"), int), name
        assert doc["schemaVersion"] >= 39, name


def test_dashboards_take_their_prometheus_from_a_variable() -> None:
    for name, doc in dashboards().items():
        variables = {v["name"]: v for v in doc.get("templating", {}).get("list", [])}
        datasource = variables.get("datasource")
        assert datasource is not None, f"{name} has no datasource variable"
        assert datasource["type"] == "datasource", name
        assert datasource["query"] == "prometheus", name
        for variable in variables.values():
            if variable.get("type") == "query":
                assert variable["datasource"].get("uid") in DATASOURCE_UIDS, f"{name}: {variable['name']}"


def test_every_panel_is_described_placed_and_queries_the_variable_datasource() -> None:
    for name, doc in dashboards().items():
        panels = list(all_panels(doc.get("panels", [])))
        assert panels, f"{name} has no panels"
        ids = [panel.get("id") for panel in panels]
        assert all(isinstance(i, int) for i in ids), f"{name}: panel ids {ids}"
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids {ids}"
        for panel in panels:
            where = f"{name}: panel {panel['id']}"
            assert panel.get("title"), where
            assert panel.get("type"), where
            grid = panel.get("gridPos", {})
            assert all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), f"{where}: gridPos {grid}"
            assert grid["w"] > 0, where
            assert grid["h"] > 0, where
            assert 0 <= grid["x"] <= GRID_COLUMNS - grid["w"], where
            if panel["type"] == "row":  # a row only groups panels; it queries nothing
                continue
            assert panel.get("description"), f"{where} has no description"
            assert panel.get("datasource", {}).get("uid") in DATASOURCE_UIDS, where
            targets = panel.get("targets", [])
            assert targets, f"{where} has no query"
            refs = [target.get("refId") for target in targets]
            assert len(set(refs)) == len(refs), f"{where}: duplicate refIds {refs}"
            for target in targets:
                assert isinstance(target.get("expr"), str), f"{where}: {target}"
                assert target["expr"].strip(), f"{where}: {target}"
                assert target.get("datasource", {"uid": "${datasource}"}).get("uid") in DATASOURCE_UIDS, where


def test_panels_do_not_overlap() -> None:
    for name, doc in dashboards().items():
        boxes = [(p["id"], p["gridPos"]) for p in doc.get("panels", [])]
        for i, (a_id, a) in enumerate(boxes):
            for b_id, b in boxes[i + 1:]:
                apart = (
                    a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                    or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
                )
                assert apart, f"{name}: panels {a_id} and {b_id} overlap"


# -------------------------------------------------------------------------------------------------------- queries
def test_every_query_parses(tmp_path: Path) -> None:
    found = [query for name, doc in dashboards().items() for query in queries(name, doc)]
    assert found
    records = {f"grafana:query_{i}": query for i, query in enumerate(found)}
    complaint = unparsable({r: promql(q) for r, q in records.items()}, tmp_path)
    named = [f"{r}: {q.where}: {q.expr}" for r, q in records.items() if re.search(rf"\b{r}\b", complaint)]
    assert not complaint, complaint + "\n" + "\n".join(named)


def test_every_query_reads_only_exported_metrics_and_defined_recordings() -> None:
    allowed = allowed_metrics()
    for name, doc in dashboards().items():
        for query in queries(name, doc):
            try:
                read = metrics_read(promql(query))
            except ValueError as e:
                pytest.fail(f"{query.where}: {e}")
            assert read, f"{query.where} reads no metric at all: {query.expr}"
            assert read <= allowed, f"{query.where} reads what nothing exports or records: {read - allowed}"


def test_the_exposition_has_every_metric_the_alert_rules_assume() -> None:
    exported = exported_metrics()
    # Both sides of the scan work: the exposition is complete, and it carries the suffixed series names.
    assert exported >= EXPORTED, EXPORTED - exported
    assert {"sandbox_queue_depth", "sandbox_egress_bytes_total", "sandbox_sessions_lifetime_seconds_bucket"} <= exported


# ------------------------------------------------------------------------------------- the checks can fail
def test_the_scan_ignores_label_values_label_lists_functions_and_numbers() -> None:
    expr = (
        'sum by (tenant, le) (rate(sandbox_execution_duration_seconds_bucket{tenant=~"sandbox_x", '
        'instance=~"$instance"}[$__rate_interval])) / on (tenant) group_left (language) '
        "sandbox:rpcs:rate5m offset 5m > bool 1e3 and ignoring(code) ALERTS or vector(0) * Inf"
    )
    assert metrics_read(substitute(expr, frozenset({"instance"}))) == {
        "sandbox_execution_duration_seconds_bucket",
        "sandbox:rpcs:rate5m",
        "ALERTS",
    }
    assert metrics_read('{__name__="sandbox_rpcs_total", code="OK"}') == {"sandbox_rpcs_total"}
    with pytest.raises(ValueError, match="__name__"):
        metrics_read('{__name__=~"sandbox_.*"}')


def test_an_unknown_metric_is_caught() -> None:
    allowed = allowed_metrics()
    assert unknown_metrics("sum(rate(sandbox_no_such_metric_total[5m]))", allowed) == {
        "sandbox_no_such_metric_total"
    }
    # A histogram's bare name is no series of the exposition.
    assert unknown_metrics("sandbox_execution_duration_seconds", allowed) == {"sandbox_execution_duration_seconds"}
    assert unknown_metrics("sandbox:no_such:recording", allowed) == {"sandbox:no_such:recording"}
    assert unknown_metrics("sum by (code) (sandbox:rpcs:rate5m)", allowed) == set()


def test_an_undefined_variable_is_caught() -> None:
    with pytest.raises(ValueError, match=r"\$tenant"):
        substitute('sandbox_cost_total{tenant=~"$tenant"}', frozenset({"instance"}))
    assert substitute("rate(x[$__rate_interval])", frozenset()) == "rate(x[1m])"


def test_an_unparsable_query_is_caught(tmp_path: Path) -> None:
    assert unparsable({"grafana:good": "sum(rate(sandbox_rpcs_total[1m]))"}, tmp_path) == ""
    assert unparsable({"grafana:unbalanced": "sum(rate(sandbox_rpcs_total[1m])"}, tmp_path)
    assert unparsable({"grafana:no_range": "rate(sandbox_rpcs_total)"}, tmp_path)
    # A dashboard variable standing where a duration belongs becomes ".*": not PromQL.
    assert unparsable({"grafana:bad_variable": substitute("rate(x[$window])", frozenset({"window"}))}, tmp_path)
