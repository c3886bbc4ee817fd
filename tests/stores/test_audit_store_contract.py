"""The contract every AuditStore implementation keeps (SQLite and PostgreSQL: see conftest.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from store_backings import Backing

from sandbox_server.stores.base import AuditRecord, AuditStore


def _record(n: int, *, tenant: str = "acme", session: str = "", started: float | None = None,
            outcome: str = "OK") -> AuditRecord:
    at = time.time() if started is None else started
    return AuditRecord(
        execution_id=f"exec-{n}", tenant=tenant, key_id="k1", session_id=session, language="python",
        code_sha256="ab" * 32, limits={"wall_time_ms": 10_000, "memory_bytes": 256 << 20, "max_pids": 64},
        outcome=outcome, exit_code=0, wall_time_s=0.0123, cpu_time_s=0.004567, peak_memory_bytes=12_345_678,
        started_at=at, ended_at=at + 0.0123, trace_id="f" * 32, cost=0.000125, exercise=n % 2 == 1,
        egress_bytes_sent=10 * n, egress_bytes_received=20 * n, egress_connections=n)


def test_a_record_reads_back_exactly(audit: AuditStore) -> None:
    rec = _record(1, session="s1")
    audit.record(rec)
    got = audit.get("exec-1")
    assert got is not None
    assert got == rec
    assert dict(got.limits) == dict(rec.limits)
    assert audit.get("exec-2") is None
    assert audit.count() == 1


def test_an_execution_has_one_record(audit: AuditStore) -> None:
    audit.record(_record(1))
    with pytest.raises(ValueError, match="already has an audit record"):
        audit.record(_record(1, tenant="other"))
    got = audit.get("exec-1")
    assert got is not None
    assert got.tenant == "acme"
    assert audit.count() == 1


def test_list_is_newest_first_filtered_and_limited(audit: AuditStore) -> None:
    base = time.time()
    for n in range(6):
        audit.record(_record(n, tenant="a" if n % 2 else "b", session="s" if n < 3 else "", started=base + n))
    assert [r.execution_id for r in audit.list()] == [f"exec-{n}" for n in range(5, -1, -1)]
    assert [r.execution_id for r in audit.list(tenant="a")] == ["exec-5", "exec-3", "exec-1"]
    assert [r.execution_id for r in audit.list(session_id="s")] == ["exec-2", "exec-1", "exec-0"]
    assert [r.execution_id for r in audit.list(tenant="a", session_id="s")] == ["exec-1"]
    assert [r.execution_id for r in audit.list(limit=2)] == ["exec-5", "exec-4"]
    assert audit.list(tenant="nobody") == []


def test_list_filters_by_outcome_and_start_time_before_the_limit(audit: AuditStore) -> None:
    """The filters are applied before ``limit``: the latest matches come back however many newer records do not
    match."""
    base = 1_700_000_000.0
    outcomes = ["OK", "TIMEOUT", "ERROR:INTERNAL", "OK", "CANCELLED", "ERROR:UNAVAILABLE", "OK", "OK", "OK", "OK"]
    for n, outcome in enumerate(outcomes):
        audit.record(_record(n, tenant="a" if n < 5 else "b", started=base + n, outcome=outcome))

    def ids(**filters: Any) -> list[str]:
        return [r.execution_id for r in audit.list(**filters)]

    assert ids(outcomes=["TIMEOUT"]) == ["exec-1"]
    assert ids(outcomes=["TIMEOUT", "CANCELLED"]) == ["exec-4", "exec-1"]
    assert ids(outcomes=["ERROR"]) == ["exec-5", "exec-2"]  # every ERROR:<code>
    assert ids(outcomes=["ERROR:INTERNAL"]) == ["exec-2"]
    assert ids(outcomes=["ERROR", "TIMEOUT"], limit=2) == ["exec-5", "exec-2"]  # newest first, then cut
    assert ids(outcomes=["ERROR", "TIMEOUT"], tenant="a") == ["exec-2", "exec-1"]
    assert ids(outcomes=["ERROR:"]) == []  # exact values only: no prefix but ERROR's
    assert ids(outcomes=["ok"]) == []  # and case-sensitive in both stores
    assert ids(outcomes=["KILLED"]) == []
    assert ids(outcomes=[]) == ids()  # empty: any

    # [since, until): since included, until excluded.
    assert ids(since=base + 7) == ["exec-9", "exec-8", "exec-7"]
    assert ids(until=base + 2) == ["exec-1", "exec-0"]
    assert ids(since=base + 2, until=base + 5) == ["exec-4", "exec-3", "exec-2"]
    assert ids(since=base + 2.5, until=base + 2.75) == []
    assert ids(since=base + 1, until=base + 9, outcomes=["OK"], limit=2) == ["exec-8", "exec-7"]
    assert ids(since=base + 1, until=base + 9, outcomes=["OK", "ERROR"], tenant="a") == ["exec-3", "exec-2"]
    assert ids(since=base + 100) == []


def test_records_survive_a_restart(backing: Backing) -> None:
    first = backing.audit()
    first.record(_record(1))
    first.close()
    second = backing.audit()
    assert second.get("exec-1") == _record(1, started=second.get("exec-1").started_at)  # type: ignore[union-attr]
    assert second.count() == 1


def test_two_writers_at_once_never_lose_or_double_a_record(backing: Backing) -> None:
    """Two stores over one backing, as two replicas: every execution id is recorded once, whoever wins."""
    one, two = backing.audit(), backing.audit()
    outcomes: list[str] = []

    def write(n: int) -> None:
        store = one if n % 2 else two
        for rec in (_record(n // 2),):
            try:
                store.record(rec)
                outcomes.append("written")
            except ValueError:
                outcomes.append("refused")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(80)))
    assert outcomes.count("written") == 40
    assert outcomes.count("refused") == 40
    assert one.count() == two.count() == 40
