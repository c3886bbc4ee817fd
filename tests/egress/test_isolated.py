"""Refused addresses end to end, from inside a network namespace the test makes with only loopback up
(isolated_scenario.py): names and literals that resolve to metadata, link-local, multicast and private
addresses are refused by the proxy on what they resolve to, a name with one bad address among good ones is
refused whole, the server's own port is refused even when listed, and nothing reaches the upstream that a
refused request named. A proxy bug here could reach no address beyond the namespace's loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .isolation import run_isolated

SCENARIO = Path(__file__).resolve().parent / "isolated_scenario.py"


@pytest.fixture(params=["nsjail", "docker"])
def outcome(request: pytest.FixtureRequest) -> dict[str, Any]:
    return run_isolated(SCENARIO, request, timeout_s=300)


def test_refused_addresses_are_refused_on_what_they_resolve_to(outcome: dict[str, Any]) -> None:
    assert [line.split(":")[1].strip() for line in outcome["links"].splitlines()] == ["lo"]
    assert "default" not in outcome["routes"]  # nothing beyond loopback, whatever happens below
    assert outcome["status"] == "OK", outcome["stderr"]
    seen = {url.split("//", 1)[1].split("/", 1)[0]: answer for url, answer in outcome["seen"].items()}
    port = next(h for h in seen if h.startswith("ok.test:")).split(":")[1]

    def reason(host: str) -> str:
        return str(seen[host].get("refused", "")).removeprefix("refused; reason=")

    assert reason(f"169.254.169.254:{port}") == "metadata_or_link_local"
    assert reason("169.254.169.254") == "metadata_or_link_local"
    assert reason("[fd00:ec2::254]") == "metadata_or_link_local"
    assert reason(f"224.0.0.251:{port}") == "multicast"
    assert reason(f"meta.test:{port}") == "metadata_or_link_local"
    assert reason(f"private.test:{port}") == "private_address"
    assert reason(f"mapped.test:{port}") == "metadata_or_link_local"
    assert reason(f"mixed.test:{port}") == "metadata_or_link_local"  # one bad address refuses the name
    assert seen[f"ok.test:{port}"]["status"] == 200
    # Listed by address, so the rules let it through; there is no route to it: the proxy says so.
    assert seen[f"10.1.2.3:{port}"].get("status") in (502, 504)
    assert outcome["upstream_paths"] == ["/echo/ok"]  # only ok.test's request arrived
    assert "server_port" in outcome["own_port"]
