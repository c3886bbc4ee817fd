"""A request's network (``Network``, ``EgressRule``) and the egress fields of limits and usage: the models' checks,
their conversions, and that both clients put ``network=`` on the wire (the fake server of fake_sandbox.py records
every request) and read the egress usage back."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterable

import pytest
from fake_sandbox import SESSION_ID, FakeSandbox
from hypothesis import given
from hypothesis import strategies as st

from sandbox_client import (
    AsyncSandboxClient,
    EgressRule,
    ExecutionResult,
    Limits,
    Network,
    ResourceUsage,
    SandboxClient,
)
from sandbox_client._convert import build_request, build_session_request, network_from_proto, network_to_proto
from sandbox_client._proto.sandbox.v1 import sandbox_pb2
from sandbox_client.evaluation.models import CALL_LIMITS
from sandbox_client.evaluation.models import CaseLimits as EvalLimits
from sandbox_client.redteam.schema import SESSION_LIMITS
from sandbox_client.redteam.schema import CaseLimits as RedteamLimits

API = EgressRule("api.example.com", [443])
API_WIRE = sandbox_pb2.Network(
    mode=sandbox_pb2.Network.MODE_ALLOWLIST, allow=[sandbox_pb2.EgressRule(host="api.example.com", ports=[443])]
)
NONE_WIRE = sandbox_pb2.Network(mode=sandbox_pb2.Network.MODE_NONE)


# --- EgressRule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ports", [[443, 80], (80, 443), {443, 80}, range(80, 81), iter([443, 80, 443])])
def test_a_rule_takes_any_iterable_of_ports_and_keeps_them_sorted_without_repeats(ports: Iterable[int]) -> None:
    rule = EgressRule("example.com", ports)
    assert rule.ports in {(80, 443), (80,)}
    assert isinstance(rule.ports, tuple)
    assert list(rule.ports) == sorted(set(rule.ports))


def test_equal_rules_are_equal_hashable_and_picklable() -> None:
    rule = EgressRule("*.example.com", [8443, 443])
    assert rule == EgressRule("*.example.com", (443, 8443))
    assert len({rule, EgressRule("*.example.com", [443, 8443, 443])}) == 1
    assert pickle.loads(pickle.dumps(rule)) == rule  # noqa: S301 (our own bytes)
    assert dataclasses.replace(rule, ports=(80,)) == EgressRule("*.example.com", [80])
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.host = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "ports", "error", "match"),
    [
        ("example.com", [], ValueError, "no port"),
        ("example.com", [0], ValueError, "1 to 65535"),
        ("example.com", [65536], ValueError, "1 to 65535"),
        ("example.com", [-443], ValueError, "1 to 65535"),
        ("example.com", [True], TypeError, "ints"),
        ("example.com", ["443"], TypeError, "ints"),
        ("example.com", [443.0], TypeError, "ints"),
        ("example.com", 443, TypeError, "iterable of ints"),
        ("example.com", "443", TypeError, "iterable of ints"),
        ("", [443], ValueError, "host is empty"),
        ("  ", [443], ValueError, "host is empty"),
        (b"example.com", [443], TypeError, "host must be a str"),
    ],
)
def test_a_rule_checks_its_host_and_ports(host: object, ports: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EgressRule(host, ports)  # type: ignore[arg-type]


def test_the_ports_at_the_ends_of_the_range_are_valid() -> None:
    assert EgressRule("10.0.0.1", [65535, 1]).ports == (1, 65535)


# --- Network ------------------------------------------------------------------------------------------


def test_none_is_no_network() -> None:
    assert Network.none() == Network(mode="none")
    assert Network.none().allow == ()


def test_allowlist_takes_rules_pairs_and_mappings() -> None:
    expected = Network(mode="allowlist", allow=(API, EgressRule("*.pypi.org", [443, 80])))
    assert Network.allowlist(API, EgressRule("*.pypi.org", [80, 443])) == expected
    assert Network.allowlist(("api.example.com", [443]), ("*.pypi.org", (443, 80))) == expected
    assert Network.allowlist({"host": "api.example.com", "ports": [443]},
                             {"host": "*.pypi.org", "ports": [443, 80]}) == expected
    assert hash(Network.allowlist(API)) == hash(Network.allowlist(("api.example.com", [443])))


def test_an_allowlist_keeps_the_order_of_its_rules() -> None:
    other = EgressRule("files.example.com", [443])
    assert Network.allowlist(other, API).allow == (other, API)


def test_an_empty_allowlist_is_valid() -> None:
    # The server's meaning: the proxy, and nothing through it.
    assert Network.allowlist() == Network(mode="allowlist")


@pytest.mark.parametrize(
    ("rule", "error", "match"),
    [
        ({"host": "example.com"}, ValueError, "exactly the keys"),
        ({"host": "example.com", "ports": [443], "proto": "tcp"}, ValueError, "exactly the keys"),
        (("example.com",), TypeError, "an egress rule is"),
        (("example.com", [443], "tcp"), TypeError, "an egress rule is"),
        ("example.com:443", TypeError, "an egress rule is"),
        (["example.com", [443]], TypeError, "an egress rule is"),
        (("example.com", []), ValueError, "no port"),
        ({"host": "example.com", "ports": [70000]}, ValueError, "1 to 65535"),
        ({"host": 1, "ports": [443]}, TypeError, "host must be a str"),
    ],
)
def test_allowlist_checks_each_rule(rule: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Network.allowlist(rule)  # type: ignore[arg-type]


def test_a_network_checks_its_mode_and_rules() -> None:
    with pytest.raises(ValueError, match="only for mode 'allowlist'"):
        Network(mode="none", allow=(API,))
    with pytest.raises(ValueError, match="'none' or 'allowlist'"):
        Network(mode="all")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must hold EgressRule"):
        Network(mode="allowlist", allow=(("api.example.com", [443]),))  # type: ignore[arg-type]


def test_a_network_given_a_list_of_rules_freezes_it() -> None:
    network = Network(mode="allowlist", allow=[API])  # type: ignore[arg-type]
    assert network.allow == (API,)
    assert network == Network.allowlist(API)
    assert pickle.loads(pickle.dumps(network)) == network  # noqa: S301 (our own bytes)


# --- conversions --------------------------------------------------------------------------------------


def test_network_to_proto() -> None:
    assert network_to_proto(Network.none()) == NONE_WIRE
    assert network_to_proto(Network.allowlist(API)) == API_WIRE
    assert network_to_proto(Network.allowlist()) == sandbox_pb2.Network(mode=sandbox_pb2.Network.MODE_ALLOWLIST)


def test_network_from_proto() -> None:
    assert network_from_proto(NONE_WIRE) == Network.none()
    assert network_from_proto(API_WIRE) == Network.allowlist(API)
    assert network_from_proto(sandbox_pb2.Network()) is None  # MODE_UNSPECIFIED: the tenant's network
    assert network_from_proto(sandbox_pb2.Network(mode=7)) is None  # type: ignore[arg-type]  # a newer mode


hosts = st.sampled_from(["example.com", "*.example.com", "api.example.com", "10.0.0.1", "::1"])
port_lists = st.lists(st.integers(min_value=1, max_value=65535), min_size=1, max_size=5)


@given(rules=st.lists(st.tuples(hosts, port_lists), max_size=4))
def test_network_round_trip(rules: list[tuple[str, list[int]]]) -> None:
    network = Network.allowlist(*rules)
    message = network_to_proto(network)
    assert [(r.host, list(r.ports)) for r in message.allow] == [(h, sorted(set(p))) for h, p in rules]
    assert network_from_proto(message) == network
    assert network_from_proto(sandbox_pb2.Network.FromString(message.SerializeToString())) == network


def _request(**kwargs: object) -> sandbox_pb2.ExecuteRequest:
    arguments: dict[str, object] = {"language": "python", "stdin": b"", "files": None, "env": None, "limits": None,
                                    "session_id": "", "idempotency_key": "k"}
    return build_request("1", **{**arguments, **kwargs})  # type: ignore[arg-type]


def test_build_request_sends_the_network() -> None:
    assert _request(network=Network.allowlist(API)).network == API_WIRE
    assert _request(network=Network.none()).network == NONE_WIRE
    assert not _request(network=None).HasField("network")


def test_build_request_refuses_a_network_in_a_session() -> None:
    with pytest.raises(ValueError, match="set it when the session is created"):
        _request(network=Network.none(), session_id=SESSION_ID)
    assert _request(session_id=SESSION_ID).session_id == SESSION_ID  # without a network, a session call as ever


@pytest.mark.parametrize("label", ["agent-run-1", "ses_1", "ses_" + "C" * 32, "ses_" + "c" * 33, "x" + SESSION_ID])
def test_a_network_goes_with_a_session_id_that_is_only_a_label(label: str) -> None:
    # Not of a session's shape: a one-shot execution grouped under a label, which may narrow its network.
    request = _request(network=Network.none(), session_id=label)
    assert (request.session_id, request.network) == (label, NONE_WIRE)


@pytest.mark.parametrize("network", [{"mode": "none"}, "none", sandbox_pb2.Network()])
def test_a_network_must_be_a_network(network: object) -> None:
    with pytest.raises(TypeError, match="network must be a Network"):
        _request(network=network)
    with pytest.raises(TypeError, match="network must be a Network"):
        build_session_request(languages=None, limits=None, idle_timeout_s=None, max_lifetime_s=None,
                              cpu_total_s=None, env=None, files=None, labels=None, snapshot_id="",
                              idempotency_key="", network=network)  # type: ignore[arg-type]


def test_build_session_request_sends_the_network_and_the_egress_limit() -> None:
    request = build_session_request(languages=None, limits=Limits(egress_bytes=2**20), idle_timeout_s=None,
                                    max_lifetime_s=None, cpu_total_s=None, env=None, files=None, labels=None,
                                    snapshot_id="", idempotency_key="k", network=Network.allowlist(API))
    assert request == sandbox_pb2.CreateSessionRequest(
        limits=sandbox_pb2.Limits(egress_bytes=2**20), idempotency_key="k", network=API_WIRE)


# --- on the wire: the sync client ---------------------------------------------------------------------


def _requests(fake: FakeSandbox, method: str) -> list[sandbox_pb2.ExecuteRequest]:
    found = []
    for call in fake.calls:
        if call.method == method:
            assert isinstance(call.request, sandbox_pb2.ExecuteRequest)
            found.append(call.request)
    return found


def _creates(fake: FakeSandbox) -> list[sandbox_pb2.CreateSessionRequest]:
    found = []
    for call in fake.calls:
        if call.method == "CreateSession":
            assert isinstance(call.request, sandbox_pb2.CreateSessionRequest)
            found.append(call.request)
    return found


def _assert_egress_usage(result: ExecutionResult) -> None:
    """The fake's canned result carries egress usage and an egress limit."""
    assert result.usage == ResourceUsage(wall_time_s=0.25, cpu_time_s=0.125, peak_memory_bytes=12_345_678,
                                         egress_bytes_sent=1_234, egress_bytes_received=56_789, egress_connections=3)
    assert result.limits.egress_bytes == 8 * 2**20


def test_execute_sends_the_network_and_reads_the_egress_usage(client: SandboxClient, fake: FakeSandbox) -> None:
    result = client.execute("import urllib.request", network=Network.allowlist(API),
                            limits=Limits(egress_bytes=2**20))
    client.execute("1", network=Network.none())
    client.execute("1")
    first, second, third = _requests(fake, "Execute")
    assert first.network == API_WIRE
    assert first.limits == sandbox_pb2.Limits(egress_bytes=2**20)
    assert second.network == NONE_WIRE
    assert not third.HasField("network")
    _assert_egress_usage(result)


def test_execute_stream_sends_the_network(client: SandboxClient, fake: FakeSandbox) -> None:
    items = list(client.execute_stream("1", network=Network.allowlist(API)))
    assert [r.network for r in _requests(fake, "ExecuteStream")] == [API_WIRE]
    final = items[-1]
    assert isinstance(final, ExecutionResult)
    _assert_egress_usage(final)


def test_a_network_with_a_session_id_is_refused_before_sending(client: SandboxClient, fake: FakeSandbox) -> None:
    with pytest.raises(ValueError, match="set it when the session is created"):
        client.execute("1", session_id=SESSION_ID, network=Network.none())
    with pytest.raises(ValueError, match="set it when the session is created"):
        client.execute_stream("1", session_id=SESSION_ID, network=Network.none())
    assert fake.calls == []
    client.execute("1", session_id="agent-run-1", network=Network.none())  # a label: a one-shot execution
    assert [(r.session_id, r.network) for r in _requests(fake, "Execute")] == [("agent-run-1", NONE_WIRE)]


def test_session_sends_the_network_and_reads_the_egress_usage(client: SandboxClient, fake: FakeSandbox) -> None:
    with client.session(network=Network.allowlist(API), limits=Limits(egress_bytes=2**24)) as session:
        assert session.info.usage.egress_bytes == 4_096
        assert session.info.limits.egress_bytes == 16 * 2**20
        session.run("1")  # its calls carry no network: the session's holds
    with client.session():
        pass
    with_network, without = _creates(fake)
    assert with_network.network == API_WIRE
    assert with_network.limits.egress_bytes == 2**24
    assert not without.HasField("network")
    (call,) = _requests(fake, "Execute")
    assert call.session_id == SESSION_ID
    assert not call.HasField("network")


def test_session_checks_the_network_before_sending(client: SandboxClient, fake: FakeSandbox) -> None:
    with pytest.raises(TypeError, match="network must be a Network"):
        client.session(network="none")  # type: ignore[arg-type]
    assert fake.calls == []


# --- on the wire: the asyncio client ------------------------------------------------------------------


async def test_async_execute_and_stream_send_the_network(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    result = await aclient.execute("1", network=Network.allowlist(API))
    items = [item async for item in aclient.execute_stream("1", network=Network.none())]
    assert [r.network for r in _requests(fake, "Execute")] == [API_WIRE]
    assert [r.network for r in _requests(fake, "ExecuteStream")] == [NONE_WIRE]
    _assert_egress_usage(result)
    assert items[-1] == result


async def test_async_session_sends_the_network(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    async with aclient.session(network=Network.none()) as session:
        assert session.info.usage.egress_bytes == 4_096
        await session.run("1")
    (create,) = _creates(fake)
    assert create.network == NONE_WIRE
    (call,) = _requests(fake, "Execute")
    assert not call.HasField("network")


async def test_async_refuses_a_network_with_a_session_id(aclient: AsyncSandboxClient, fake: FakeSandbox) -> None:
    with pytest.raises(ValueError, match="set it when the session is created"):
        await aclient.execute("1", session_id=SESSION_ID, network=Network.none())
    with pytest.raises(TypeError, match="network must be a Network"):
        aclient.session(network={"mode": "none"})  # type: ignore[arg-type]
    assert fake.calls == []


# --- the egress limit in the suites' limits -----------------------------------------------------------


def test_an_evaluation_suite_may_set_the_egress_limit_with_a_unit() -> None:
    limits = EvalLimits.model_validate({"egress_bytes": "64MiB", "wall_time_s": 5})
    assert limits.to_client() == Limits(wall_time_s=5, egress_bytes=64 * 2**20)
    # A session's egress is for its whole life: never one call's.
    assert "egress_bytes" not in CALL_LIMITS
    assert limits.call_part() == EvalLimits(wall_time_s=5)


def test_a_redteam_step_sets_the_egress_limit_with_its_session() -> None:
    limits = RedteamLimits(egress_bytes=1000, wall_time_s=2)
    assert "egress_bytes" in SESSION_LIMITS
    assert limits.session_part() == Limits(egress_bytes=1000)
    assert limits.call_part() == Limits(wall_time_s=2)
    assert limits.sets_session_limits()
