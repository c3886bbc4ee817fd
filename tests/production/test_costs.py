"""Cost and budgets through a real server: pricing, reservation before running, settlement after, refusals
naming the budget, no overspend under concurrency, reported LLM usage, warnings at the configured fraction."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from production_helpers import metric, scrape, server_with_policy

from sandbox_client import InvalidRequestError, Limits, ResourceExhaustedError, SandboxClient

FLAT = """
pricing: {per_execution: 1.0}
budget: {per_session: 3, per_day: 5, warn_fraction: 0.5}
"""


def test_each_execution_is_priced_and_recorded_with_its_cost(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, "pricing: {per_execution: 0.25, cpu_second: 2.0}") as srv, \
            SandboxClient(srv.target, retry=None) as sbx:
        r = sbx.execute("sum(range(3_000_000))", session_id="priced")
        assert r.cost == pytest.approx(0.25 + 2.0 * r.usage.cpu_time_s)
        assert len(r.trace_id) == 32
        assert srv.app.stores is not None
        rec = srv.app.stores.audit.get(r.execution_id)
        assert rec is not None
        assert (rec.cost, rec.trace_id) == (r.cost, r.trace_id)
        (row,) = srv.app.stores.costs.report("session", "default")
        assert row.key == "default/priced"
        assert row.execution_cost == pytest.approx(r.cost)
        assert metric(scrape(srv), "sandbox_cost_total", tenant="default") == pytest.approx(r.cost)


def test_budgets_refuse_before_running_and_name_the_budget(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, FLAT) as srv, SandboxClient(srv.target, retry=None) as sbx:
        for _ in range(3):
            assert sbx.execute("print(1)", session_id="s1").cost == 1.0
        with pytest.raises(ResourceExhaustedError) as info:
            sbx.execute("print('never runs')", session_id="s1")
        err = info.value
        assert err.reason == "BUDGET_EXCEEDED"
        assert [v.subject for v in err.quota_violations] == ["session:default/s1/budget.per_session"]
        assert "3 spent or held" in err.quota_violations[0].description
        assert err.retry_after is None  # a session budget never frees up
        # Another session may go on until the tenant's day budget (5) is reached.
        assert sbx.execute("print(1)", session_id="s2").cost == 1.0
        assert sbx.execute("print(1)").cost == 1.0
        with pytest.raises(ResourceExhaustedError) as info:
            sbx.execute("print(1)", session_id="s3")
        err = info.value
        assert [v.subject for v in err.quota_violations] == ["tenant:default/budget.per_day"]
        now = datetime.now(UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        assert err.retry_after is not None
        assert abs(err.retry_after - (midnight - now).total_seconds()) < 60
        assert srv.app.stores is not None
        assert srv.app.stores.audit.count() == 5  # the refused ones never ran
        text = scrape(srv, calls=7)
        assert metric(text, "sandbox_rejections_total", reason="budget") == 2
        assert metric(text, "sandbox_budget_used_ratio", tenant="default", budget="day") == 1.0
        assert metric(text, "sandbox_budget_warnings_total", tenant="default", budget="day") == 1
        assert metric(text, "sandbox_budget_warnings_total", tenant="default", budget="session") == 1


def test_concurrent_requests_cannot_overspend(tmp_path: Path) -> None:
    policy = "pricing: {per_execution: 1.0}\nbudget: {per_day: 5}"
    with server_with_policy(tmp_path, policy, max_running=2, max_queued=32) as srv:

        def one(i: int) -> str:
            with SandboxClient(srv.target, retry=None) as sbx:
                try:
                    sbx.execute("import time; time.sleep(0.3)", session_id=f"c{i}")
                except ResourceExhaustedError as exc:
                    return exc.reason or ""
                return "ran"

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(12)))
        assert outcomes.count("ran") == 5
        assert outcomes.count("BUDGET_EXCEEDED") == 7
        assert srv.app.stores is not None
        assert srv.app.stores.costs.spent("default", "").day == 5.0


def test_the_reservation_is_the_worst_case_and_the_settlement_the_actual(tmp_path: Path) -> None:
    # wall_second 1.0: a 2 s wall limit reserves 2.0 of the 2.5 budget, so a second one cannot start while the
    # first runs; once it settles at its (short) actual time, the budget has room again.
    policy = "pricing: {wall_second: 1.0}\nbudget: {per_day: 2.5}"
    with server_with_policy(tmp_path, policy) as srv, SandboxClient(srv.target, retry=None) as sbx:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(sbx.execute, "import time; time.sleep(1)", limits=Limits(wall_time_s=2))
            time.sleep(0.5)
            with SandboxClient(srv.target, retry=None) as other, pytest.raises(ResourceExhaustedError):
                other.execute("print(1)", limits=Limits(wall_time_s=2))
            first = slow.result()
        assert first.cost == pytest.approx(first.usage.wall_time_s)
        assert 1.0 <= first.cost < 2.0
        second = sbx.execute("print(1)", limits=Limits(wall_time_s=1))
        assert second.cost < 1.0


MODELS = """
pricing:
  per_execution: 0.5
  models:
    gpt-test: {input_per_million_tokens: 2.0, output_per_million_tokens: 8.0}
budget: {per_session: 2.0}
"""


def test_reported_llm_usage_counts_toward_the_session_budget(tmp_path: Path) -> None:
    with server_with_policy(tmp_path, MODELS) as srv, SandboxClient(srv.target, retry=None) as sbx:
        assert sbx.execute("print(1)", session_id="agent-1").cost == 0.5
        report = sbx.record_usage("agent-1", "gpt-test", input_tokens=100_000, output_tokens=50_000,
                                  idempotency_key="call-1")
        assert report.cost == pytest.approx(0.2 + 0.4)
        assert report.session_cost == pytest.approx(1.1)
        (state,) = report.budgets
        assert (state.budget, state.limit, state.exceeded) == ("session", 2.0, False)
        assert state.spent == pytest.approx(1.1)
        again = sbx.record_usage("agent-1", "gpt-test", input_tokens=100_000, output_tokens=50_000,
                                 idempotency_key="call-1")  # a retry: recorded once
        assert again.cost == 0.0
        assert again.session_cost == pytest.approx(1.1)
        with pytest.raises(InvalidRequestError) as info:
            sbx.record_usage("agent-1", "unpriced-model", input_tokens=1)
        assert info.value.field_violations[0].field == "model"
        with pytest.raises(InvalidRequestError) as info:
            sbx.record_usage("", "gpt-test", input_tokens=-1)
        assert {v.field for v in info.value.field_violations} == {"session_id", "input_tokens"}
        # Usage past the budget is still recorded (the tokens were spent); executions are then refused.
        over = sbx.record_usage("agent-1", "gpt-test", output_tokens=200_000)
        assert over.budgets[0].exceeded
        with pytest.raises(ResourceExhaustedError, match="budget exceeded"):
            sbx.execute("print(1)", session_id="agent-1")
        assert sbx.execute("print(1)", session_id="agent-2").ok
