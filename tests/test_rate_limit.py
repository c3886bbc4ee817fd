"""The rate-limit interceptor through a real server: per-tenant rates per second and per minute, per-session
rates, per-tenant concurrency (unary, streamed, cancelled), isolation between tenants and sessions, hot reload;
and failing closed when the limiter itself fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.errors import ConfigurationError
from limits.util import WindowStats

from sandbox_client import ExecutionResult, OutputChunk, ResourceExhaustedError, SandboxClient
from sandbox_server import interceptors
from sandbox_server.context import Principal, current_principal
from sandbox_server.errors import LimiterUnavailable
from sandbox_server.interceptors.rate_limit import RateLimitInterceptor, _per
from sandbox_server.policy.caller import TenantPolicies
from sandbox_server.policy.models import RateSettings, TenantPolicy
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

POLICY = """\
version: 1
tenants:
  burst:
    rate: {requests_per_second: 5}
  minute:
    rate: {requests_per_minute: 3, session_requests_per_minute: 2}
  single:
    rate: {concurrent_executions: 1}
  free: {}
"""
RELOAD_POLICY = "version: 1\ntenants:\n  reload:\n    rate: {requests_per_minute: %s}\n"
TENANTS = ("burst", "minute", "single", "free", "reload")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    policies = tmp_path_factory.mktemp("policies")
    (policies / "rates.yaml").write_text(POLICY)
    (policies / "reload.yaml").write_text(RELOAD_POLICY % 1)
    settings = private_settings(auth="api-keys", policies_dir=policies, policy_poll_interval_s=0.2)
    stores = open_stores(settings.data_dir)
    try:
        keys = {name: stores.keys.create(name, "tenant", "test")[1] for name in TENANTS}
    finally:
        stores.close()
    assert "rate_limit" in interceptors.CHAIN_ORDER
    with server_in_thread(settings) as srv:
        yield srv, keys


def _refused(exc: ResourceExhaustedError) -> list[str]:
    assert exc.retry_after is not None
    assert exc.retry_after > 0
    return [v.subject for v in exc.quota_violations]


def test_requests_per_second_refuses_exactly_the_sixth_call(limited: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = limited
    start = threading.Barrier(6)

    def call(_: int) -> ExecutionResult | ResourceExhaustedError:
        with SandboxClient(srv.target, api_key=keys["burst"], retry=None) as sbx:
            start.wait()
            try:
                return sbx.execute("print('hi')")
            except ResourceExhaustedError as exc:
                return exc

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(call, range(6)))
    ok = [o for o in outcomes if isinstance(o, ExecutionResult)]
    refused = [o for o in outcomes if isinstance(o, ResourceExhaustedError)]
    assert [r.stdout for r in ok] == ["hi\n"] * 5
    assert len(refused) == 1
    assert _refused(refused[0]) == ["tenant:burst/requests_per_second"]
    retry = refused[0].retry_after
    assert retry is not None
    assert retry <= 1.0
    assert "allows 5 requests per second" in refused[0].message
    with SandboxClient(srv.target, api_key=keys["free"], retry=None) as other:  # another tenant is not affected
        assert other.execute("print('free')").stdout == "free\n"
    time.sleep(retry + 0.05)
    with SandboxClient(srv.target, api_key=keys["burst"], retry=None) as sbx:
        assert sbx.execute("print('again')").stdout == "again\n"


def test_per_minute_limits_per_tenant_and_per_session(limited: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = limited
    with SandboxClient(srv.target, api_key=keys["minute"], retry=None) as sbx:
        assert sbx.execute("print(1)", session_id="s1").stdout == "1\n"
        assert sbx.execute("print(2)", session_id="s1").stdout == "2\n"
        with pytest.raises(ResourceExhaustedError) as session_full:
            sbx.execute("print(3)", session_id="s1")
        assert _refused(session_full.value) == ["session:s1/requests_per_minute"]
        assert 50 < (session_full.value.retry_after or 0) <= 60
        # Another session of the tenant is not affected, and the refused call did not count for the tenant.
        assert sbx.execute("print(4)", session_id="s2").stdout == "4\n"
        with pytest.raises(ResourceExhaustedError) as tenant_full:
            sbx.execute("print(5)")
        assert _refused(tenant_full.value) == ["tenant:minute/requests_per_minute"]
        with pytest.raises(ResourceExhaustedError) as both:
            list(sbx.execute_stream("print(6)", session_id="s1"))  # streams count too
        assert _refused(both.value) == ["tenant:minute/requests_per_minute", "session:s1/requests_per_minute"]
    with SandboxClient(srv.target, api_key=keys["free"], retry=None) as other:
        assert other.execute("print('free')", session_id="s1").stdout == "free\n"


def test_one_concurrent_execution_refuses_a_second_while_the_first_runs(
    limited: tuple[RunningServer, dict[str, str]],
) -> None:
    srv, keys = limited
    with SandboxClient(srv.target, api_key=keys["single"], retry=None) as sbx, ThreadPoolExecutor(1) as pool:
        first = pool.submit(sbx.execute, "import time; time.sleep(1); print('slow')")
        time.sleep(0.3)
        assert not first.done()
        with pytest.raises(ResourceExhaustedError) as info:
            sbx.execute("print('second')")
        assert _refused(info.value) == ["tenant:single/concurrent_executions"]
        assert info.value.retry_after == pytest.approx(0.5)
        with SandboxClient(srv.target, api_key=keys["free"], retry=None) as other:
            assert other.execute("print('free')").stdout == "free\n"
        assert first.result(timeout=30).stdout == "slow\n"
        assert sbx.execute("print('second')").stdout == "second\n"


def test_a_stream_holds_its_slot_until_it_ends_or_is_cancelled(
    limited: tuple[RunningServer, dict[str, str]],
) -> None:
    srv, keys = limited
    with SandboxClient(srv.target, api_key=keys["single"], retry=None) as sbx:
        stream = sbx.execute_stream("import time\nprint('started', flush=True)\ntime.sleep(1)\nprint('done')")
        assert isinstance(next(stream), OutputChunk)
        with pytest.raises(ResourceExhaustedError) as info:
            sbx.execute("print('second')")
        assert _refused(info.value) == ["tenant:single/concurrent_executions"]
        *_, result = stream
        assert isinstance(result, ExecutionResult)
        assert result.stdout == "started\ndone\n"
        assert sbx.execute("print('second')").stdout == "second\n"

        cancelled = sbx.execute_stream("import time\nprint('started', flush=True)\ntime.sleep(5)")
        assert isinstance(cancelled, Generator)
        assert isinstance(next(cancelled), OutputChunk)
        cancelled.close()  # cancels the call; the slot is freed long before the program would have ended
        deadline = time.monotonic() + 2
        while True:
            try:
                assert sbx.execute("print('after')").stdout == "after\n"
                break
            except ResourceExhaustedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_a_reloaded_policy_applies_to_the_next_request(limited: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = limited
    policies_dir = srv.settings.policies_dir
    assert policies_dir is not None
    with SandboxClient(srv.target, api_key=keys["reload"], retry=None) as sbx:
        assert sbx.execute("print(1)").stdout == "1\n"
        with pytest.raises(ResourceExhaustedError):
            sbx.execute("print(2)")
        (policies_dir / ".reload.tmp").write_text(RELOAD_POLICY % 10)
        (policies_dir / ".reload.tmp").replace(policies_dir / "reload.yaml")
        deadline = time.monotonic() + 10
        refusals: list[str] = []
        while True:
            try:
                assert sbx.execute("print(3)").stdout == "3\n"
                break
            except ResourceExhaustedError as exc:
                refusals.append(exc.message)
                if time.monotonic() > deadline:
                    pytest.fail("the reloaded rate never took effect")
                time.sleep(0.1)
        assert all("allows 1 requests per minute" in message for message in refusals)


class _Policies:
    def __init__(self, policy: TenantPolicy) -> None:
        self.policy = policy

    def tenant(self, name: str) -> TenantPolicy | None:
        return self.policy if name == "acme" else None


class _BrokenLimiter:
    """A limiter whose store is down."""

    async def hit(self, item: RateLimitItem, *identifiers: str) -> bool:
        raise ConnectionError("store unreachable")

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        raise ConnectionError("store unreachable")


async def test_an_error_inside_the_limiter_rejects_the_request() -> None:
    policies: TenantPolicies = _Policies(TenantPolicy(rate=RateSettings(requests_per_minute=100)))
    limiter = RateLimitInterceptor(policies)
    token = current_principal.set(Principal(tenant="acme", role="tenant", key_id="k"))
    try:
        (await limiter.admit(None)).release()  # works while the store does
        limiter.limiter = _BrokenLimiter()
        with pytest.raises(LimiterUnavailable) as info:
            await limiter.admit(None)
        assert info.value.message == "rate limiter unavailable for tenant 'acme'; retry later"
        assert (info.value.code, info.value.reason) == (grpc.StatusCode.UNAVAILABLE, "RATE_LIMITER_UNAVAILABLE")
        assert info.value.retry_after_s == 1.0
        assert limiter.running("acme") == 0
    finally:
        current_principal.reset(token)


def test_fractional_rates_become_whole_amounts_per_window() -> None:
    assert str(_per(5, RateLimitItemPerSecond)) == "5 per 1 second"
    assert str(_per(2.5, RateLimitItemPerSecond)) == "5 per 2 second"
    assert str(_per(0.5, RateLimitItemPerMinute)) == "1 per 2 minute"
    assert str(_per(0.0001, RateLimitItemPerSecond)) == "1 per 10000 second"


def test_an_unusable_storage_fails_at_construction() -> None:
    policies: TenantPolicies = _Policies(TenantPolicy())
    with pytest.raises(ConfigurationError, match="unknown storage scheme"):
        RateLimitInterceptor(policies, "nosuch://x")
    assert RateLimitInterceptor(policies, "async+memory://").running("acme") == 0


def test_in_process_limiter_starts_no_thread_per_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``limits``' memory store would start a fresh 10 ms Timer thread whenever its last one had fired (every
    few calls at a few ms apart); ours sweeps inline instead, and the sweep still drops expired entries."""
    import asyncio

    from sandbox_server.interceptors import _limiter

    limiter = _limiter.moving_window()
    storage = limiter._limiter.storage  # type: ignore[attr-defined]
    started: list[object] = []

    class CountingTimer(threading.Timer):
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr("limits.storage.memory.threading.Timer", CountingTimer)
    monkeypatch.setattr(_limiter, "SWEEP_INTERVAL_S", 0.5)
    per_second = RateLimitItemPerSecond(5)

    async def hits() -> list[bool]:
        got = []
        for _ in range(6):
            got.append(await limiter.hit(per_second, "t", "a"))
            await asyncio.sleep(0.02)  # past the library's 10 ms timer each time
        return got

    assert asyncio.run(hits()) == [True] * 5 + [False]
    assert started == []
    assert storage.events.get(per_second.key_for("t", "a"))
    time.sleep(1.2)  # the entries expire (1 s) and the sweep interval passes
    assert asyncio.run(limiter.hit(per_second, "t", "b"))
    assert not storage.events.get(per_second.key_for("t", "a")), "the inline sweep dropped the expired entries"
    assert started == []
