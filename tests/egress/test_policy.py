"""The network part of a tenant's policy, and a request's own narrower list (egress/policy.py), and what a
sandbox's environment names (egress/env.py). Pure: no server, no sandbox."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.egress.env import ONE_SHOT_PACKAGES, PROXY_ENV, SESSION_PACKAGES, package_env, with_proxy_env
from sandbox_server.egress.policy import egress_for
from sandbox_server.errors import InvalidRequest, PermissionDenied
from sandbox_server.policy.models import NetworkPolicy, PolicyFile, TenantPolicy
from sandbox_server.validation.request import RESERVED_ENV

DOCS = Path(__file__).resolve().parents[2] / "docs" / "egress.md"


def network(**values: object) -> NetworkPolicy:
    return TenantPolicy.model_validate({"network": values}).network


def test_the_documented_policy_validates() -> None:
    block = re.search(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    loaded = PolicyFile.model_validate({"version": 1, **yaml.safe_load(block.group(1))})
    acme = loaded.tenants["acme"].network
    assert acme.mode == "allowlist"
    assert [a.host for a in acme.allow] == ["*.example.com", "api.example.com", "127.0.0.1"]
    assert acme.allow[1].credentials[0].env == "EXAMPLE_API_TOKEN"


def test_the_short_form_stays_valid_and_is_the_default() -> None:
    assert TenantPolicy().network.mode == "none"
    assert TenantPolicy.model_validate({"network": "none"}).network == NetworkPolicy()


@pytest.mark.parametrize("bad", [
    {"mode": "none", "allow": [{"host": "a.example.com", "ports": [443]}]},
    {"mode": "allowlist", "allow": [{"host": "*.com", "ports": [443]}]},
    {"mode": "allowlist", "allow": [{"host": "0x7f.1", "ports": [80]}]},
    {"mode": "allowlist", "allow": [{"host": "a.example.com", "ports": []}]},
    {"mode": "allowlist", "allow": [{"host": "a.example.com", "ports": [70000]}]},
    {"mode": "allowlist", "allow": [{"host": "a.example.com", "ports": [443],
                                     "credentials": [{"header": "Authorization", "value": "inline"}]}]},
    {"mode": "allowlist", "allow": [{"host": "a.example.com", "ports": [443],
                                     "credentials": [{"header": "Host", "env": "X"}]}]},
    {"mode": "allowlist", "allow": [{"host": "a.example.com", "ports": [443],
                                     "credentials": [{"header": "X-Key", "env": "X", "secret": "y"}]}]},
    {"mode": "open"},
])
def test_a_policy_that_would_not_mean_what_it_says_fails_the_load(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        network(**bad)


TENANT = network(mode="allowlist", allow=[
    {"host": "*.example.com", "ports": [443, 8443]},
    {"host": "api.example.com", "ports": [443], "credentials": [{"header": "Authorization", "env": "TOKEN"}]},
    {"host": "127.0.0.1", "ports": [8080]},
])


def rule(host: str, *ports: int) -> pb.EgressRule:
    return pb.EgressRule(host=host, ports=list(ports))


def test_a_request_without_its_own_list_gets_its_tenants() -> None:
    spec = egress_for(TENANT, None, "acme")
    assert spec is not None
    assert [e.host for e in spec.rules.entries] == ["*.example.com", "api.example.com", "127.0.0.1"]
    assert spec.tenant == "acme"


def test_a_request_may_narrow_and_keeps_the_covering_credentials() -> None:
    spec = egress_for(TENANT, pb.Network(mode=pb.Network.MODE_ALLOWLIST, allow=[
        rule("a.b.example.com", 443), rule("API.example.com.", 443)]), "acme")
    assert spec is not None
    assert [(e.host, e.ports) for e in spec.rules.entries] == [("a.b.example.com", (443,)),
                                                               ("api.example.com", (443,))]
    assert spec.rules.entries[1].credentials == TENANT_RULES_CREDENTIALS()


def TENANT_RULES_CREDENTIALS() -> tuple[object, ...]:
    spec = egress_for(TENANT, None, "acme")
    assert spec is not None
    return spec.rules.entries[1].credentials


@pytest.mark.parametrize("wider", [
    rule("example.com", 443),            # the wildcard does not cover its own suffix
    rule("*.com", 443),                  # wider pattern (refused as a host before it is compared)
    rule("a.example.com", 80),           # a port the tenant does not list
    rule("127.0.0.2", 8080),             # another address
    rule("localhost", 8080),             # a name for an address entry
])
def test_a_request_may_never_widen(wider: pb.EgressRule) -> None:
    with pytest.raises((PermissionDenied, InvalidRequest)):
        egress_for(TENANT, pb.Network(mode=pb.Network.MODE_ALLOWLIST, allow=[wider]), "acme")


def test_none_asks_for_nothing_and_a_tenant_without_network_cannot_ask_for_any() -> None:
    assert egress_for(TENANT, pb.Network(mode=pb.Network.MODE_NONE), "acme") is None
    with pytest.raises(InvalidRequest):
        egress_for(TENANT, pb.Network(mode=pb.Network.MODE_NONE, allow=[rule("a.example.com", 443)]), "acme")
    with pytest.raises(PermissionDenied):
        egress_for(NetworkPolicy(), pb.Network(mode=pb.Network.MODE_ALLOWLIST, allow=[rule("a.example.com", 443)]),
                   "acme")
    assert egress_for(NetworkPolicy(), None, "acme") is None


def test_malformed_rules_are_invalid_arguments_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        egress_for(TENANT, pb.Network(mode=pb.Network.MODE_ALLOWLIST, allow=[
            rule("a b", 443), rule("a.example.com"), rule("a.example.com", 0)]), "acme")
    assert [v.field for v in info.value.violations] == [
        "network.allow[0].host", "network.allow[1].ports", "network.allow[2].ports"]


def test_the_proxy_variables_are_the_servers_own() -> None:
    assert {name for name, _ in PROXY_ENV} - {"NODE_OPTIONS"} <= RESERVED_ENV
    env = dict(with_proxy_env((("NODE_OPTIONS", "--max-old-space-size=64"), ("A", "1"))))
    assert env["NODE_OPTIONS"].startswith("--import=data:text/javascript;base64,")
    assert env["NODE_OPTIONS"].endswith(" --max-old-space-size=64")  # the request's own, kept after the preload
    assert env["A"] == "1"
    assert env["HTTP_PROXY"] == "http://127.0.0.1:3128"


def test_package_variables_follow_where_packages_may_come_from() -> None:
    assert package_env(session=False, network=False, wheelhouse=False, index_url=None, npm_registry=None) == ()
    offline = dict(package_env(session=False, network=False, wheelhouse=True, index_url="http://m/simple",
                               npm_registry="http://n/"))
    assert offline["PIP_TARGET"] == offline["PYTHONPATH"] == ONE_SHOT_PACKAGES
    assert offline["PIP_NO_INDEX"] == "1"
    assert "PIP_INDEX_URL" not in offline  # no network: the mirror is unreachable anyway
    assert offline["npm_config_offline"] == "true"
    mirrored = dict(package_env(session=True, network=True, wheelhouse=True, index_url="http://m.example/simple",
                                npm_registry="https://n.example/"))
    assert mirrored["PIP_TARGET"] == SESSION_PACKAGES
    assert (mirrored["PIP_INDEX_URL"], mirrored["PIP_TRUSTED_HOST"]) == ("http://m.example/simple", "m.example")
    assert "PIP_NO_INDEX" not in mirrored
    assert mirrored["npm_config_registry"] == "https://n.example/"
