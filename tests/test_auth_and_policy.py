"""Authentication and tenant policies through a real server: keys, roles, languages, ceilings, env, isolation
between tenants, hot reload under load, development mode only on loopback."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from sandbox_client import (
    AuthenticationError,
    Limits,
    PermissionDeniedError,
    SandboxClient,
)
from sandbox_client.admin import AdminClient
from sandbox_server.settings import load_settings
from sandbox_server.stores.embedded import open_stores
from sandbox_server.testing import RunningServer, private_settings, server_in_thread

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "policies" / "examples" / "multi-tenant"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    """A server requiring API keys, with the shipped multi-tenant example policies and one key per role."""
    policies = tmp_path_factory.mktemp("policies")
    for f in EXAMPLES.glob("*.yaml"):
        shutil.copy(f, policies / f.name)
    settings = private_settings(auth="api-keys", policies_dir=policies, policy_poll_interval_s=0.2)
    stores = open_stores(settings.data_dir)
    try:
        keys = {
            "acme": stores.keys.create("acme", "tenant", "test")[1],
            "research": stores.keys.create("research", "tenant", "test")[1],
            "admin": stores.keys.create("acme", "admin", "test")[1],
        }
    finally:
        stores.close()
    with server_in_thread(settings) as srv:
        yield srv, keys


def test_health_is_open_and_execute_needs_a_key(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, _ = tenants
    with grpc.insecure_channel(srv.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with SandboxClient(srv.target) as sbx, pytest.raises(AuthenticationError, match="missing API key"):
        sbx.execute("print(1)")
    with SandboxClient(srv.target, api_key="sbx_0000000000000000_nope") as sbx, pytest.raises(
        AuthenticationError, match="unknown or revoked"
    ):
        sbx.execute("print(1)")


def test_tenant_keys_run_under_their_own_policy(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with SandboxClient(srv.target, api_key=keys["acme"]) as acme, SandboxClient(
        srv.target, api_key=keys["research"]
    ) as research:
        a = acme.execute("print('a')")
        r = research.execute("print('r')")
        assert (a.stdout, r.stdout) == ("a\n", "r\n")
        assert a.limits.memory_bytes == 128 * 1024 * 1024  # acme's default
        assert r.limits.wall_time_s == 60  # research's default (the server's would be 10 s)
        assert research.execute("echo hi", language="bash").stdout == "hi\n"
        with pytest.raises(PermissionDeniedError) as info:
            acme.execute("echo hi", language="bash")
        assert "language 'bash' is not allowed for tenant 'acme'" in info.value.message
        assert info.value.reason == "POLICY_DENIED"


def test_a_limit_above_the_tenant_ceiling_is_denied_with_the_ceiling_named(
    tenants: tuple[RunningServer, dict[str, str]],
) -> None:
    srv, keys = tenants
    with SandboxClient(srv.target, api_key=keys["acme"]) as acme:
        with pytest.raises(PermissionDeniedError) as info:
            acme.execute("print(1)", limits=Limits(memory_bytes=1024 * 1024 * 1024))
        assert "is above the ceiling of 536870912 for tenant 'acme'" in info.value.message
        ok = acme.execute("print(1)", limits=Limits(memory_bytes=256 * 1024 * 1024))
        assert ok.status == "OK"
        assert ok.limits.memory_bytes == 256 * 1024 * 1024


def test_env_vars_outside_allowed_env_are_denied(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    code = "import os; print(os.environ.get('EXPERIMENT_ID'), os.environ.get('SEED'))"
    with SandboxClient(srv.target, api_key=keys["research"]) as research:
        r = research.execute(code, env={"EXPERIMENT_ID": "e7", "SEED": "1"})
        assert r.stdout == "e7 1\n"
        with pytest.raises(PermissionDeniedError, match="env 'TOKEN' is not in tenant 'research'"):
            research.execute(code, env={"TOKEN": "x"})
    with SandboxClient(srv.target, api_key=keys["acme"]) as acme, pytest.raises(PermissionDeniedError):
        acme.execute(code, env={"SEED": "1"})


def test_admin_api_needs_an_admin_key(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    with AdminClient(srv.target, api_key=keys["acme"]) as admin, pytest.raises(PermissionDeniedError):
        admin.list_tenants()
    with AdminClient(srv.target, api_key=keys["admin"]) as admin:
        assert {t.name for t in admin.list_tenants()} == {"acme", "research"}


def test_only_an_admin_key_may_mark_an_exercise(tenants: tuple[RunningServer, dict[str, str]]) -> None:
    srv, keys = tenants
    stores = srv.app.stores
    assert stores is not None
    before = stores.audit.count()
    with SandboxClient(srv.target, api_key=keys["acme"], exercise=True, retry=None) as acme:
        calls: dict[str, Callable[[], object]] = {
            "execute": lambda: acme.execute("print(1)"),
            "execute_stream": lambda: list(acme.execute_stream("print(1)")),
            "session": lambda: acme.session(),
        }
        for name, call in calls.items():
            with pytest.raises(PermissionDeniedError) as info:
                call()
            assert info.value.reason == "EXERCISE_NOT_ALLOWED", name
            assert "only an admin key" in info.value.message
    assert stores.audit.count() == before  # refused before anything ran: never run as ordinary traffic instead
    with SandboxClient(srv.target, api_key=keys["admin"], exercise=True) as admin:
        ran = admin.execute("print('drill')")
        with admin.session() as session:
            assert session.run("6 * 7").value == "42"
    audited = stores.audit.get(ran.execution_id)
    assert audited is not None
    assert (audited.tenant, audited.exercise) == ("acme", True)
    with SandboxClient(srv.target, api_key=keys["acme"]) as acme:  # without the flag, the tenant key runs as ever
        assert acme.execute("print(1)").ok


def test_hot_reload_under_load_changes_behaviour_without_failing_in_flight_requests(
    tenants: tuple[RunningServer, dict[str, str]],
) -> None:
    srv, keys = tenants
    policies_dir = srv.settings.policies_dir
    assert policies_dir is not None
    original = (policies_dir / "research.yaml").read_text()
    stop = threading.Event()
    failures: list[BaseException] = []
    completed = [0]

    def load() -> None:
        with SandboxClient(srv.target, api_key=keys["research"]) as research:
            while not stop.is_set():
                try:
                    r = research.execute("import time; time.sleep(0.05); print('ok')")
                    if r.stdout != "ok\n":
                        failures.append(AssertionError(r))
                    completed[0] += 1
                except BaseException as exc:
                    failures.append(exc)

    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            pool.submit(load)
        try:
            time.sleep(0.5)
            # Research loses bash: a whole-file swap, picked up by the watcher while requests are running.
            changed = original.replace("languages: [python, javascript, bash]", "languages: [python, javascript]")
            assert changed != original
            (policies_dir / ".research.tmp").write_text(changed)
            (policies_dir / ".research.tmp").replace(policies_dir / "research.yaml")
            deadline = time.monotonic() + 10
            with SandboxClient(srv.target, api_key=keys["research"]) as research:
                while time.monotonic() < deadline:
                    try:
                        research.execute("echo still", language="bash")
                    except PermissionDeniedError:
                        break
                    time.sleep(0.1)
                else:
                    pytest.fail("the reloaded policy never took effect")
            time.sleep(0.5)
        finally:
            stop.set()
            (policies_dir / ".research.tmp").write_text(original)
            (policies_dir / ".research.tmp").replace(policies_dir / "research.yaml")
    assert not failures, failures[:3]
    assert completed[0] > 5


def test_a_bad_policy_file_is_rejected_whole_and_the_old_policy_stays(
    tenants: tuple[RunningServer, dict[str, str]],
) -> None:
    srv, keys = tenants
    policies_dir = srv.settings.policies_dir
    assert policies_dir is not None
    registry = srv.app.policies
    assert registry is not None
    before = registry.current().version
    bad = policies_dir / "broken.yaml"
    bad.write_text("version: 1\ntenants:\n  broken:\n    languages: [python]\n    no_such_key: 1\n")
    try:
        def rejected() -> bool:
            return any(e.file == "broken.yaml" and "no_such_key" in e.location for e in registry.last_errors)

        # The watcher may catch the file half-written first (empty: rejected too), then sees it whole
        deadline = time.monotonic() + 10
        while not rejected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rejected(), registry.last_errors
        assert registry.current().version == before
        with SandboxClient(srv.target, api_key=keys["acme"]) as acme:
            assert acme.execute("print(2)").stdout == "2\n"
    finally:
        bad.unlink()


def test_development_mode_only_on_loopback() -> None:
    assert load_settings(host="127.0.0.1").dev_mode is True
    assert load_settings(host="::1").dev_mode is True
    assert load_settings(host="0.0.0.0").dev_mode is False  # auto: keys required off loopback
    with pytest.raises(ValidationError, match="only on a loopback address"):
        load_settings(host="0.0.0.0", auth="none")
