"""A real Prometheus scrapes a real server's /metrics, loads deploy/prometheus/alerts.yml, and its rules see the
server's actual label values (method, code) the way the unit tests assume them."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import yaml

from sandbox_client import AsyncSandboxClient, InvalidRequestError, Status
from sandbox_server.testing import running_server

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
LOOPBACK = "127.0.0.1"
WAIT_S = 30.0  # Prometheus starts in a second or two; each scrape and rule evaluation runs every second
STOP_S = 10.0

T = TypeVar("T")


def prometheus_binary() -> str:
    """The prometheus binary; skip without it, except in CI, where a missing prometheus is a failure."""
    found = shutil.which("prometheus")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("prometheus is not installed (scripts/setup.sh installs Debian's prometheus package)")
    pytest.skip("prometheus is not installed (scripts/setup.sh installs Debian's prometheus package)")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def write_config(directory: Path, metrics_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            # The job name SandboxServerDown selects, as in deploy/prometheus/prometheus.yml.
            {"job_name": "sandbox-server", "static_configs": [{"targets": [f"{LOOPBACK}:{metrics_port}"]}]}
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start_prometheus(binary: str, config: Path, tsdb: Path, web_port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start Prometheus on loopback, its output to ``log``; the caller terminates it."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tsdb}",
                f"--web.listen-address={LOOPBACK}:{web_port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class Prometheus:
    """The HTTP API of the Prometheus process this test started."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def _get(self, path: str) -> Any:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            return None  # e.g. 503 while the TSDB is still opening
        decoded = json.loads(body)
        return decoded["data"] if decoded.get("status") == "success" else None

    async def get(self, path: str, **params: str) -> Any:
        """The `data` of an API answer, or None if Prometheus is not (yet) answering."""
        query = f"?{urlencode(params)}" if params else ""
        try:
            return await asyncio.to_thread(self._get, path + query)
        except (OSError, ValueError):
            return None

    async def value(self, promql: str) -> float | None:
        """The value of a single-sample instant query; None when it has no sample."""
        data = await self.get("/api/v1/query", query=promql)
        if not data or not data["result"]:
            return None
        assert len(data["result"]) == 1, data
        return float(data["result"][0]["value"][1])

    async def wait_for(self, what: str, check: Callable[[], Awaitable[T | None]]) -> T:
        deadline = time.monotonic() + WAIT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            got = await check()
            if got is not None:
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {WAIT_S:.0f}s; prometheus log:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def equals(prom: Prometheus, promql: str, expected: float) -> Callable[[], Awaitable[bool | None]]:
    # Sums of rates are added in no fixed order, so a ratio may be off in its last bits: compare rounded.
    async def check() -> bool | None:
        got = await prom.value(promql)
        return True if got is not None and math.isclose(got, expected, rel_tol=1e-9) else None

    return check


async def run_ok(sbx: AsyncSandboxClient, count: int) -> None:
    for i in range(count):
        result = await sbx.execute(f"print({i})")
        assert result.status == Status.OK, result


async def refused(sbx: AsyncSandboxClient) -> None:
    with pytest.raises(InvalidRequestError):
        await sbx.execute("print(1)", language="cobol")


@pytest.mark.timeout(180)
async def test_prometheus_scrapes_the_server_and_evaluates_the_alert_rules(tmp_path: Path) -> None:
    binary = prometheus_binary()
    rule_file = yaml.safe_load(RULES.read_text())
    defined = {r.get("alert") or r["record"] for g in rule_file["groups"] for r in g["rules"]}

    async with running_server(metrics_port=0) as srv, AsyncSandboxClient(srv.target, timeout=60) as sbx:
        metrics_port = srv.app.metrics_port
        assert metrics_port, "the server did not report its metrics port"
        # One of each before the first scrape: the exporter creates a counter on its first increment, and rate()
        # needs two samples of a series to see it grow, so the later traffic is what the rules will see.
        await run_ok(sbx, 1)
        await refused(sbx)

        web_port = free_loopback_port()
        log = tmp_path / "prometheus.log"
        proc = start_prometheus(binary, write_config(tmp_path, metrics_port), tmp_path / "tsdb", web_port, log)
        try:
            prom = Prometheus(proc, web_port, log)
            scrape_url = f"http://{LOOPBACK}:{metrics_port}/metrics"

            async def target_up() -> bool | None:
                data = await prom.get("/api/v1/targets")
                targets = data["activeTargets"] if data else []
                return True if any(t["scrapeUrl"] == scrape_url and t["health"] == "up" for t in targets) else None

            await prom.wait_for("healthy target", target_up)
            await prom.wait_for("first scrape", equals(prom, 'sum(sandbox_executions_total{status="OK"})', 1))

            await run_ok(sbx, 2)
            await refused(sbx)

            await prom.wait_for("3 OK executions", equals(prom, 'sum(sandbox_executions_total{status="OK"})', 3))
            assert await prom.value('sum(sandbox_rpcs_total{method=~".*Execute", code="OK"})') == 3
            assert await prom.value('sum(sandbox_rpcs_total{code="INVALID_ARGUMENT"})') == 2
            # The rules' label matchers fit the real labels: the refusals are left out of the success rate.
            await prom.wait_for("a success ratio of 1", equals(prom, "sandbox:execute_success:ratio_rate5m", 1))
            assert (await prom.value('sum(sandbox:rpcs:rate5m{code="INVALID_ARGUMENT"})') or 0) > 0

            async def rules_evaluated() -> list[dict[str, Any]] | None:
                data = await prom.get("/api/v1/rules")
                loaded = [r for g in (data["groups"] if data else []) for r in g["rules"]]
                return loaded if loaded and all(r["health"] != "unknown" for r in loaded) else None

            loaded = await prom.wait_for("evaluated rules", rules_evaluated)
            assert {r["name"] for r in loaded} == defined
            broken = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
            assert not broken, broken
            alerts = (await prom.get("/api/v1/alerts") or {"alerts": []})["alerts"]
            assert not [a for a in alerts if a["state"] == "firing"], alerts
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
