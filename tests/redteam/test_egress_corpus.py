"""The shipped corpus's egress cases (corpus/egress.yaml) against real servers on each backend, from inside a
network namespace the test makes with only loopback up (egress_scenario.py, run under ``unshare --net``): one
server, its tenant "net" with an allow-list (allowed.redteam.test and, on purpose, the metadata address and the
server's own port, which must be refused all the same), its tenant "nonet" without network. A proxy bug here could
reach nothing beyond the namespace's loopback, where fake refused targets count every connection.

For each tenant: every egress case is contained (with host checks), and its "-proof" copy too, which must also
print the lines that show why (the proxy's reason on "net"; no proxy at all on "nonet"). Nothing reached a
refused target, and the allowed upstream only ever saw its own name as Host.

The rest of the shipped corpus (and these cases again, on every backend and on the shipped default policy, without
network) is tests/redteam/test_redteam.py's.
"""

from __future__ import annotations

import ipaddress
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from egress.isolation import run_isolated

from sandbox_client.redteam.categories import Category, Language
from sandbox_client.redteam.corpus import shipped_corpus

SCENARIO = Path(__file__).resolve().parent / "egress_scenario.py"
TENANTS = ("net", "nonet")
ALLOWED_HOST = "allowed.redteam.test"
# How a program may go anywhere but the proxy, by language, and the route check that must come first (a UDP
# connect: a route lookup that sends nothing), so that even a sandbox with a route out sends nothing out.
DIRECT = {
    Language.PYTHON: re.compile(r"create_connection\(\(|\.sendto\(|getaddrinfo\(|ProxyHandler\(\{\}\)"),
    Language.JAVASCRIPT: re.compile(r"net\.connect\(|fetch\(|dgram\.createSocket\("),
    Language.BASH: re.compile(r"/dev/(tcp|udp)/\$|getent "),
}
ROUTE_CHECK = {Language.PYTHON: "def routable(", Language.JAVASCRIPT: "const routable = ",
               Language.BASH: 'exec 3>"/dev/udp/'}
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.])")


@pytest.fixture(scope="module", params=["nsjail", "docker"])
def outcome(request: pytest.FixtureRequest) -> dict[str, Any]:
    return run_isolated(SCENARIO, request, timeout_s=900)


def describe(case_id: str, case: dict[str, Any]) -> str:
    lines = [f"{case_id}: {case['verdict']}", *(f"  problem: {p}" for p in case["problems"])]
    for stdout, stderr, refusal in zip(case["stdout"], case["stderr"], case["refusal"], strict=True):
        lines.append(textwrap.indent(f"refusal: {refusal}\nstdout: {stdout}\nstderr: {stderr}", "    "))
    return "\n".join(lines)


def test_the_scenario_ran_with_only_loopback(outcome: dict[str, Any]) -> None:
    assert "default" not in outcome["routes"]  # nothing beyond the namespace's loopback, whatever happened
    assert [line.split(":")[1].strip() for line in outcome["links"].splitlines()] == ["lo"]
    # The refused targets were there to be reached, had the proxy let anything through.
    assert {"169.254.169.254/32", "10.20.30.40/32"} <= set(outcome["added_addresses"])


@pytest.mark.parametrize("tenant", TENANTS)
def test_every_egress_case_is_contained(outcome: dict[str, Any], tenant: str) -> None:
    results = outcome["results"][tenant]
    assert outcome["egress_cases"]
    failed = [describe(i, results[i]) for i in outcome["egress_cases"] if results[i]["verdict"] != "contained"]
    assert not failed, "\n\n".join(failed)
    # Host checks ran (canaries, listeners); a missing host secret kind is the only thing allowed to go unchecked.
    notes = [n for i in outcome["egress_cases"] for n in results[i]["notes"] if "not checked: none found" not in n]
    assert not notes


@pytest.mark.parametrize("tenant", TENANTS)
def test_every_egress_case_was_refused_for_the_right_reason(outcome: dict[str, Any], tenant: str) -> None:
    """The "-proof" copies: contained, and printing why (the proxy's refusal reasons, or no proxy at all)."""
    assert outcome["without_proof"] == []
    results = outcome["results"][tenant]
    proofs = [f"{i}-proof" for i in outcome["egress_cases"]]
    failed = [describe(p, results[p]) for p in proofs if results[p]["verdict"] != "contained"]
    assert not failed, "\n\n".join(failed)


def test_nothing_reached_a_refused_target(outcome: dict[str, Any]) -> None:
    reached = {name: fake for name, fake in outcome["fakes"].items() if fake["connections"] or fake["requests"]}
    assert not reached
    allowed = outcome["allowed_requests"]
    assert allowed  # the allowed upstream was reached (redirects, Host-header probes): the list did its part
    assert {r["host"] for r in allowed} == {ALLOWED_HOST}  # never a forged Host
    assert not [r for r in allowed if "meta-data" in r["path"] and not r["path"].startswith("/redirect")]


def test_the_upstream_never_gets_two_framings(outcome: dict[str, Any]) -> None:
    """A request whose body could be framed two ways is refused (request smuggling, RFC 9112 6.3)."""
    both = [r for r in outcome["allowed_requests"] if r["content_length"] and r["transfer_encoding"]]
    assert not both


# ---- the cases themselves, without a server ----------------------------------------------------------------------


def test_the_egress_cases_are_shipped() -> None:
    cases = shipped_corpus().select([Category.EGRESS])
    assert len(cases) >= 15
    assert all(c.id.startswith("egress-") for c in cases)
    assert {s.language for c in cases for s in c.steps} == set(Language)
    assert any(c.host_check.listener for c in cases)  # a host-check listener that must see nothing
    ids = {c.id for c in cases}
    assert {"egress-metadata-proxy-python", "egress-metadata-direct-python", "egress-dns-rebinding-python",
            "egress-unlisted-port-python", "egress-redirect-to-refused-python", "egress-dns-tunnel-python",
            "egress-forged-proxy-requests-python", "egress-ip-literal-forms-python", "egress-raw-udp-out-python",
            "egress-unlisted-ip-literal-python"} <= ids


def test_egress_cases_send_nothing_out_where_there_is_a_route() -> None:
    """The corpus file's rule for this category, checked mechanically: a program that connects anywhere but the
    proxy's port on its own loopback first looks for a route (sending nothing), and a program naming a
    non-loopback address with no such path aims it only at the proxy."""
    for case in shipped_corpus().select([Category.EGRESS]):
        for step in case.steps:
            if DIRECT[step.language].search(step.code):
                assert ROUTE_CHECK[step.language] in step.code, case.id
            outside = [a for a in IPV4.findall(step.code) if not ipaddress.ip_address(a).is_loopback]
            if outside and not DIRECT[step.language].search(step.code):
                assert "3128" in step.code, (case.id, outside)
