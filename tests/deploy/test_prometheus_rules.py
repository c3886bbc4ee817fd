"""deploy/prometheus/alerts.yml: promtool accepts it, its unit tests pass, it reads only metrics the server exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts_test.yml"
PROMTOOL_TIMEOUT_S = 120

# The metric names of the server's Prometheus exposition (the contract of sandbox_server.telemetry).
COUNTERS_AND_GAUGES = frozenset({
    "sandbox_executions_total",
    "sandbox_rpcs_total",
    "sandbox_execution_cpu_seconds_total",
    "sandbox_rejections_total",
    "sandbox_cost_total",
    "sandbox_active_sandboxes",
    "sandbox_shedding",
    "sandbox_budget_used_ratio",
    "sandbox_budget_warnings_total",
    "sandbox_teardown_failures_total",
    "sandbox_incidents_total",
    "sandbox_sessions_active",
    "sandbox_sessions_closed_total",
    "sandbox_sessions_kernel_restarts_total",
    "sandbox_audit_outbox_records",
})
HISTOGRAMS = frozenset({
    "sandbox_execution_duration_seconds",
    "sandbox_queue_wait_seconds",
    "sandbox_execution_peak_memory_bytes",
    "sandbox_sessions_lifetime_seconds",
})
# A histogram exists in the exposition only as these three series; its bare name selects nothing.
EXPORTED = COUNTERS_AND_GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

REQUIRED_ALERTS = frozenset({
    "SandboxExecuteSuccessRateLow",
    "SandboxExecutionLatencyHigh",
    "SandboxServerErrorRateHigh",
    "SandboxTenantBudgetHigh",
    "SandboxTeardownFailed",
    "SandboxActiveSandboxesStuck",
})
SEVERITIES = frozenset({"critical", "warning"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SANDBOX_METRIC = re.compile(r"(?<![\w:])sandbox_\w+")
_RECORDED = re.compile(r"(?<![\w:])sandbox:[\w:]+")


def promtool() -> str:
    """The promtool binary; skip without it, except in CI, where a missing promtool is a failure."""
    found = shutil.which("promtool")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is not installed (scripts/setup.sh installs Debian's prometheus package)")
    pytest.skip("promtool is not installed (scripts/setup.sh installs Debian's prometheus package)")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def metrics_read(expr: str) -> tuple[set[str], set[str]]:
    """The exported metrics and the recorded series an expression reads (string literals, i.e. label values and
    regexes, left out)."""
    code = _STRING.sub('""', expr)
    return set(_SANDBOX_METRIC.findall(code)), set(_RECORDED.findall(code))


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_read_only_exported_metrics_and_defined_recordings() -> None:
    defined = recording_names()
    exported_used: set[str] = set()
    for rule in rules():
        exported, recorded = metrics_read(rule["expr"])
        name = rule.get("record") or rule["alert"]
        assert exported <= EXPORTED, f"{name} reads metrics the server does not export: {exported - EXPORTED}"
        assert recorded <= defined, f"{name} reads recordings no rule defines: {recorded - defined}"
        assert exported or recorded or name == "SandboxServerDown", f"{name} reads no sandbox metric at all"
        exported_used |= exported
    # The regex finds what it should: the rules do read the core metrics.
    assert {"sandbox_rpcs_total", "sandbox_execution_duration_seconds_bucket"} <= exported_used


def test_the_metric_scan_ignores_label_values_and_sees_suffixes() -> None:
    exported, recorded = metrics_read(
        'sum(rate(sandbox_queue_wait_seconds_bucket{reason="sandbox_escape"}[5m])) / sandbox:rpcs:rate5m'
    )
    assert exported == {"sandbox_queue_wait_seconds_bucket"}
    assert recorded == {"sandbox:rpcs:rate5m"}


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= REQUIRED_ALERTS
    for alert in alerts:
        assert alert.get("labels", {}).get("severity") in SEVERITIES, alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), alert["alert"]
        assert annotations.get("description"), alert["alert"]


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts <= tested, f"alerts never shown to fire: {alerts - tested}"
