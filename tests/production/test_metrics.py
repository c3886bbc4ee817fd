"""The metrics endpoint after known traffic: executions by tenant, language and status; calls by code;
rejections by reason (auth, rate, budget, validation, guardrail, queue); cost; latency histograms."""

from __future__ import annotations

import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from production_helpers import metric, scrape, server_with_policy

from sandbox_client import (
    AuthenticationError,
    InvalidRequestError,
    ResourceExhaustedError,
    SandboxClient,
)
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import private_settings, server_in_thread

ACME = """\
version: 1
tenants:
  acme:
    rate: {requests_per_minute: 7}
    guardrails: {blocked_patterns: ["FORBIDDEN"]}
    pricing: {per_execution: 0.5}
    budget: {per_day: 2.0}
"""


def test_counters_after_known_traffic(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "acme.yaml").write_text(ACME)
    settings = private_settings(auth="api-keys", policies_dir=policies, metrics_port=0,
                                incidents={"enabled": False})  # deterministic: no automatic throttling
    stores = open_stores(settings.data_dir)
    try:
        _, key = stores.keys.create("acme", "tenant", "metrics test")
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        with SandboxClient(srv.target, retry=None) as anonymous, pytest.raises(AuthenticationError):
            anonymous.execute("print(1)")
        with SandboxClient(srv.target, api_key=key, retry=None) as sbx:
            for _ in range(3):
                assert sbx.execute("print(1)").ok
            assert sbx.execute("exit 3", language="bash").exit_code == 3
            with pytest.raises(InvalidRequestError):
                sbx.execute("import ctypes")
            with pytest.raises(InvalidRequestError):
                sbx.execute("print('FORBIDDEN')")
            with pytest.raises(ResourceExhaustedError, match="budget"):
                sbx.execute("print(1)")  # the 4 executions spent the 2.0 day budget
            with pytest.raises(ResourceExhaustedError, match="rate limit"):
                sbx.execute("print(1)")  # the 8th request this minute (auth refused the first)
        text = scrape(srv, calls=10)
    assert metric(text, "sandbox_executions_total", tenant="acme", language="python", status="OK") == 3
    assert metric(text, "sandbox_executions_total", tenant="acme", language="bash", status="NONZERO_EXIT") == 1
    assert metric(text, "sandbox_executions_total") == 4
    assert metric(text, "sandbox_executions_total", exercise="false") == 4
    for reason, count in {"auth": 1, "validation": 1, "guardrail": 1, "budget": 1, "rate": 1}.items():
        assert metric(text, "sandbox_rejections_total", reason=reason) == count, reason
    assert metric(text, "sandbox_rpcs_total", method="Execute", code="OK") == 4
    assert metric(text, "sandbox_rpcs_total", method="Execute", code="UNAUTHENTICATED") == 1
    assert metric(text, "sandbox_rpcs_total", method="Execute", code="INVALID_ARGUMENT") == 2
    assert metric(text, "sandbox_rpcs_total", method="Execute", code="RESOURCE_EXHAUSTED") == 2
    assert metric(text, "sandbox_cost_total", tenant="acme") == pytest.approx(2.0)
    assert metric(text, "sandbox_budget_used_ratio", tenant="acme", budget="day") == pytest.approx(1.0)
    assert metric(text, "sandbox_execution_duration_seconds_count", tenant="acme") == 4
    assert metric(text, "sandbox_execution_duration_seconds_bucket", tenant="acme", language="python",
                  le="+Inf") == 3
    assert metric(text, "sandbox_queue_wait_seconds_count") == 4
    assert metric(text, "sandbox_execution_cpu_seconds_total", tenant="acme") > 0
    assert metric(text, "sandbox_execution_peak_memory_bytes_sum", tenant="acme") > 1_000_000
    assert metric(text, "sandbox_active_sandboxes") == 0


def test_an_exercise_is_counted_apart(tmp_path: Path) -> None:
    """An admin's exercise (a red-team or eval run) is labelled exercise="true"; an agent's work "false"."""
    with server_in_thread(private_settings(metrics_port=0)) as srv:  # development mode: the caller may say so
        with SandboxClient(srv.target, exercise=True) as drill, SandboxClient(srv.target) as agent:
            assert drill.execute("print(1)").ok
            assert agent.execute("print(2)").ok
            assert agent.execute("print(3)").ok
        text = scrape(srv, calls=3)
    assert metric(text, "sandbox_executions_total", exercise="true") == 1
    assert metric(text, "sandbox_executions_total", exercise="false") == 2


def test_active_sandboxes_and_queue_rejections(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", max_running=1, max_queued=0) as srv, ThreadPoolExecutor(1) as pool:
        with SandboxClient(srv.target, retry=None) as sbx:
            slow = pool.submit(sbx.execute, "import time; time.sleep(1.5)")
            deadline = time.monotonic() + 10
            while metric(scrape(srv), "sandbox_active_sandboxes") != 1:
                assert time.monotonic() < deadline, "the running sandbox never showed"
                time.sleep(0.05)
            with SandboxClient(srv.target, retry=None) as other, pytest.raises(ResourceExhaustedError):
                other.execute("print(1)")
            assert slow.result().ok
        text = scrape(srv, calls=2)
    assert metric(text, "sandbox_rejections_total", reason="queue") == 1
    assert metric(text, "sandbox_active_sandboxes") == 0


def test_queue_depth_counts_the_requests_waiting_for_a_slot(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "", max_running=1, max_queued=4) as srv, ThreadPoolExecutor(3) as pool, \
            SandboxClient(srv.target, retry=None, timeout=60) as sbx:
        assert metric(scrape(srv), "sandbox_queue_depth") == 0
        calls = [pool.submit(sbx.execute, "import time; time.sleep(1.0)") for _ in range(3)]
        deadline = time.monotonic() + 10
        while metric(scrape(srv), "sandbox_queue_depth") != 2:  # one runs, two wait
            assert time.monotonic() < deadline, "the waiting requests never showed"
            time.sleep(0.05)
        assert all(c.result().ok for c in calls)
        assert metric(scrape(srv), "sandbox_queue_depth") == 0


def test_metrics_are_off_unless_a_port_is_set(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, textwrap.dedent(""), metrics_port=None) as srv:
        assert srv.app.metrics_port is None
