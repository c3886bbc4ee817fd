"""Replicas sharing one Redis (``redis_url``): a tenant's rate limit and concurrency limit hold exactly across
three servers under a concurrent burst; a request retried on another replica with its idempotency key never
runs twice; and with Redis down nothing is admitted (UNAVAILABLE, retryable)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from production_helpers import server_with_policy
from redis_server import Redis

from sandbox_client import (
    ExecutionResult,
    InvalidRequestError,
    ResourceExhaustedError,
    SandboxClient,
    UnavailableError,
)
from sandbox_server.testing import RunningServer


@contextlib.contextmanager
def replicas(tmp_path: Path, policy: str, redis_server: Redis, n: int = 3) -> Iterator[list[RunningServer]]:
    redis_server.flush()
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(n):
            (tmp_path / f"r{i}").mkdir()
            servers.append(stack.enter_context(server_with_policy(
                tmp_path / f"r{i}", policy, redis_url=redis_server.url, max_running=8, max_queued=32)))
        yield servers


def _burst(servers: list[RunningServer], n: int, code: str) -> list[str]:
    start = threading.Barrier(n)

    def one(i: int) -> str:
        with SandboxClient(servers[i % len(servers)].target, retry=None, timeout=60) as sbx:
            start.wait()
            try:
                sbx.execute(code)
            except ResourceExhaustedError as exc:
                return "+".join(v.subject.rsplit("/", 1)[-1] for v in exc.quota_violations)
            return "ran"

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_rate_limit_holds_exactly_across_three_replicas(tmp_path: Path, redis_server: Redis) -> None:
    with replicas(tmp_path, "rate: {requests_per_minute: 10}", redis_server) as servers:
        outcomes = _burst(servers, 30, "print(1)")
        assert outcomes.count("ran") == 10, outcomes
        assert outcomes.count("requests_per_minute") == 20, outcomes
        # Each replica alone would have let 10 through: the window is the one in Redis.
        with SandboxClient(servers[2].target, retry=None) as sbx, pytest.raises(ResourceExhaustedError):
            sbx.execute("print('over')")


def test_a_concurrency_limit_holds_exactly_across_three_replicas(tmp_path: Path, redis_server: Redis) -> None:
    with replicas(tmp_path, "rate: {concurrent_executions: 2}", redis_server) as servers:
        outcomes = _burst(servers, 9, "import time\ntime.sleep(1.0)")
        assert outcomes.count("ran") == 2, outcomes
        assert outcomes.count("concurrent_executions") == 7, outcomes
        # The slots were given back when those two ended: two more run at once again.
        assert _burst(servers, 2, "print(1)") == ["ran", "ran"]


def test_with_redis_down_nothing_is_admitted(tmp_path: Path, redis_server: Redis) -> None:
    try:
        with replicas(tmp_path, "rate: {requests_per_minute: 100, concurrent_executions: 4}", redis_server,
                      n=1) as (server,), SandboxClient(server.target, retry=None, timeout=60) as sbx:
            assert sbx.execute("print(1)").status == "OK"
            redis_server.halt()
            started = time.monotonic()
            with pytest.raises(UnavailableError) as info:
                sbx.execute("print('must not run')")
            # The client names every request (an idempotency key): the shared keys are the first to be asked.
            assert info.value.reason == "SHARED_STATE_UNAVAILABLE"
            assert info.value.retry_after is not None
            assert time.monotonic() - started < 10  # fails fast, never queues
            redis_server.resume()
            deadline = time.monotonic() + 30
            while True:  # back by itself once Redis is
                try:
                    assert sbx.execute("print(2)").status == "OK"
                    break
                except UnavailableError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            assert server.app.stores is not None
            assert server.app.stores.audit.count() == 2  # the refused one never ran
    finally:
        if redis_server.proc is None:
            redis_server.resume()


def test_a_retry_on_another_replica_gets_the_first_response(tmp_path: Path, redis_server: Redis) -> None:
    code = "import os, time\ntime.sleep(0.5)\nprint(os.urandom(8).hex())"
    with replicas(tmp_path, "", redis_server) as servers:
        with SandboxClient(servers[0].target, retry=None) as first:
            done = first.execute(code, idempotency_key="k-done")
        with SandboxClient(servers[1].target, retry=None) as other:
            again = other.execute(code, idempotency_key="k-done")  # after it completed, elsewhere
            assert (again.execution_id, again.stdout) == (done.execution_id, done.stdout)
            streamed = list(other.execute_stream(code, idempotency_key="k-done"))
            assert isinstance(streamed[-1], ExecutionResult)
            assert streamed[-1].execution_id == done.execution_id
            with pytest.raises(InvalidRequestError):
                other.execute("print('another request')", idempotency_key="k-done")

        # While it runs: the same key sent to all three at once runs once, and all get its response.
        start = threading.Barrier(3)

        def one(i: int) -> tuple[str, str]:
            with SandboxClient(servers[i].target, retry=None, timeout=60) as sbx:
                start.wait()
                r = sbx.execute(code, idempotency_key="k-running")
                return r.execution_id, r.stdout

        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(one, range(3)))
        assert len(set(results)) == 1, results
        audited = sum(s.app.stores.audit.count() for s in servers if s.app.stores is not None)
        assert audited == 2  # k-done and k-running, once each, on whichever replica ran them


def test_with_redis_down_a_keyed_request_is_refused_not_run(tmp_path: Path, redis_server: Redis) -> None:
    try:
        with replicas(tmp_path, "", redis_server, n=1) as (server,), \
                SandboxClient(server.target, retry=None, timeout=60) as sbx:
            redis_server.halt()
            with pytest.raises(UnavailableError) as info:
                sbx.execute("print('must not run')", idempotency_key="k")
            assert info.value.reason == "SHARED_STATE_UNAVAILABLE"
            assert server.app.stores is not None
            assert server.app.stores.audit.count() == 0
    finally:
        if redis_server.proc is None:
            redis_server.resume()
