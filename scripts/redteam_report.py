"""Regenerate the red-team report of the shipped corpus on each backend, into docs/redteam/.

    sudo .venv/bin/python scripts/redteam_report.py [--backends nsjail nsjail-fresh ...] [--docker-host URL]
                                                     [--out docs/redteam]

Each backend gets a server of its own in this process (so the host side of every check is real: canaries in
the host's /tmp, /root, /var/tmp, /dev/shm and in the server's own state and data directories, a secret in the
server's environment, loopback listeners, the host's process table) and runs the whole corpus with host
checks. The servers' tenant has static validation off, so the sandbox itself is what contains each program;
the last column is the shipped policy (policies/default.yaml, static validation on) on the default backend.
Incident response is off: this is about containment, and its refusals would end the run early.

Writes ``results.json`` (per backend and case: the verdict, the steps' statuses, why it was not contained;
no output excerpts, which hold random tokens) and ``README.md`` (the summary). Backends that cannot run here (no
dockerd at --docker-host, no root filesystem for nsjail-rootfs) are listed as not run, never left out silently.
Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox_client import AsyncSandboxClient
from sandbox_client.redteam.corpus import shipped_corpus
from sandbox_client.redteam.host import DEFAULT_CANARY_DIRS, HostChecks
from sandbox_client.redteam.runner import RunOptions, RunReport, Verdict, run_cases
from sandbox_server.testing import RunningServer, server_in_thread

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = ROOT / "policies" / "default.yaml"
ROOTFS = Path("/var/lib/sandbox-server/rootfs/bookworm")  # where `sandbox-server images build` puts it
SECRET_ENV = "REDTEAM_SERVER_SECRET"  # noqa: S105 (a variable name; its value is random)
BACKENDS = ("nsjail", "nsjail-fresh", "nsjail-fork", "nsjail-rootfs", "docker")
SHIPPED_POLICY = "shipped-policy"
UNVALIDATED = """\
version: 1
tenants:
  default:
    allowed_env: ["*"]
    static_validation: {enabled: false}
    guardrails: {output_secrets: "off", max_input_files: 1000, max_input_file_bytes: 1073741824}
"""
WHAT = {
    "nsjail": "cold jails",
    "nsjail-fresh": "warm path, fresh interpreters",
    "nsjail-fork": "warm path, forked from the zygote (the default)",
    "nsjail-rootfs": "cold jails over the runtime images' root filesystem",
    "docker": "Docker containers",
    SHIPPED_POLICY: "the shipped policy (static validation on), default backend",
}


# Findings that are a documented choice, not a bug: said next to the evidence.
DOCUMENTED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Column:
    name: str
    report: RunReport | None
    skipped: str = ""


def server_overrides(name: str, docker_host: str, policies: Path) -> dict[str, Any]:
    """The settings of the server for one column."""
    extra: dict[str, Any] = {"policies_dir": policies, "incidents": {"enabled": False}, "max_running": 4,
                             "max_queued": 64}
    if name in ("nsjail", "nsjail-fresh", "nsjail-fork", SHIPPED_POLICY):
        warm = name != "nsjail"
        extra.update(backend="nsjail", warm_python=warm, warm_javascript=warm)
        if name in ("nsjail-fresh", "nsjail-fork"):
            extra["warm_python_mode"] = name.removeprefix("nsjail-")
    elif name == "nsjail-rootfs":
        extra.update(backend="nsjail", rootfs=ROOTFS)
    else:
        extra.update(backend="docker", docker_host=docker_host)
    return extra


def unavailable(name: str, docker_host: str) -> str:
    """Why a column cannot run here, or "" when it can."""
    if name == "nsjail-rootfs" and not (ROOTFS / "usr" / "bin").is_dir():
        return f"no root filesystem at {ROOTFS} (`sandbox-server images build` makes it)"
    if name == "docker":
        import docker

        try:
            client = docker.APIClient(base_url=docker_host, timeout=10)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure to reach it means the column cannot run
            return f"dockerd unreachable at {docker_host} ({type(exc).__name__})"
    return ""


@contextmanager
def policy_dir(text: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="redteam-policy-") as directory:
        (Path(directory) / "default.yaml").write_text(text)
        yield Path(directory)


def run_column(name: str, docker_host: str, secret: str) -> RunReport:
    text = DEFAULT_POLICY.read_text() if name == SHIPPED_POLICY else UNVALIDATED
    with policy_dir(text) as policies, server_in_thread(**server_overrides(name, docker_host, policies)) as srv:
        if name == "docker":
            wait_for_pool(srv)
        return asyncio.run(run_corpus(srv, secret))


def wait_for_pool(srv: RunningServer, timeout_s: float = 120.0) -> None:
    """Let the Docker pool fill once, so the first cases do not race its creation."""
    backend: Any = srv.app.backend
    deadline = time.monotonic() + timeout_s
    while sum(len(q) for q in backend._pool.values()) < srv.settings.docker_pool_size * 3:
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)


async def run_corpus(srv: RunningServer, secret: str) -> RunReport:
    settings = srv.settings
    checks = HostChecks(canary_dirs=(*DEFAULT_CANARY_DIRS, settings.state_dir, settings.data_dir),
                        secrets={f"the server's environment variable {SECRET_ENV}": secret})
    port = int(srv.target.rsplit(":", 1)[1])
    async with AsyncSandboxClient(srv.target, timeout=120) as client:
        return await run_cases(client, shipped_corpus().cases,
                               RunOptions(concurrency=4, host_checks=checks, host_ports=(port,)))


def results(columns: list[Column], started: datetime) -> dict[str, Any]:
    """The JSON document: per column, per case, what decided the verdict (never output excerpts or paths)."""
    out: dict[str, Any] = {
        "generated_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "corpus_cases": len(shipped_corpus().cases),
        "columns": {},
    }
    for column in columns:
        if column.report is None:
            out["columns"][column.name] = {"what": WHAT[column.name], "ran": False, "why_not": column.skipped}
            continue
        report = column.report
        out["columns"][column.name] = {
            "what": WHAT[column.name],
            "ran": True,
            "all_contained": report.all_contained,
            "host_checks": report.host_checks,
            "duration_s": round(report.duration_s, 1),
            "counts": {v.value: n for v, n in report.counts().items()},
            "cases": {
                c.case_id: {
                    "category": c.category,
                    "verdict": c.verdict.value,
                    "steps": [
                        {"language": s.language, "refusal": s.refusal, "status": s.status, "exit_code": s.exit_code}
                        for s in c.steps
                    ],
                    **({"problems": list(c.problems)} if c.problems else {}),
                }
                for c in report.cases
            },
        }
    return out


def machine() -> str:
    release = platform.release().split("-")[0]
    return f"{os.cpu_count()} cores, Linux {'.'.join(release.split('.')[:2])}, {platform.machine()}"


def summary(doc: dict[str, Any]) -> str:
    """docs/redteam/README.md: the figures, then every case's verdict per column."""
    columns: dict[str, Any] = doc["columns"]
    ran = [name for name, c in columns.items() if c["ran"]]
    lines = [
        "# Red-team results",
        "",
        "The shipped corpus (`client/sandbox_client/redteam/corpus/`, "
        f"{doc['corpus_cases']} cases) run with host checks against a server per backend, generated by "
        "`scripts/redteam_report.py` on " + doc["generated_at"][:10] + f" ({doc['machine']}). The servers' tenant "
        "has static validation off, so the sandbox itself contains each program; the last column is the shipped "
        "policy, whose static validation refuses many of them first. What each verdict means: "
        "`client/sandbox_client/redteam/runner.py`. The machine-readable results: [results.json](results.json).",
        "",
        "| column | what | contained | not contained | not exercised | error | time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in columns.items():
        if not c["ran"]:
            lines.append(f"| {name} | {c['what']} | not run: {c['why_not']} | | | | |")
            continue
        n = c["counts"]
        lines.append(f"| {name} | {c['what']} | {n['contained']} | {n['not_contained']} | {n['not_exercised']} | "
                     f"{n['error']} | {c['duration_s']:.0f} s |")
    lines += ["", "## Every case", "", "| case | category | " + " | ".join(ran) + " |",
              "| --- | --- |" + " --- |" * len(ran)]
    marks = {Verdict.CONTAINED.value: "contained", Verdict.NOT_CONTAINED.value: "**NOT CONTAINED**",
             Verdict.NOT_EXERCISED.value: "NOT EXERCISED", Verdict.ERROR.value: "ERROR"}
    case_ids = list(columns[ran[0]]["cases"]) if ran else []
    for case_id in case_ids:
        first = columns[ran[0]]["cases"][case_id]
        cells = [marks[columns[name]["cases"][case_id]["verdict"]] for name in ran]
        lines.append(f"| `{case_id}` | {first['category']} | " + " | ".join(cells) + " |")
    breaches = [(name, case_id, case) for name in ran for case_id, case in columns[name]["cases"].items()
                if case["verdict"] != Verdict.CONTAINED.value]
    if breaches:
        lines += ["", "## Not contained, and why", ""]
        for name, case_id, case in breaches:
            why = DOCUMENTED.get((name, case_id))
            lines.append(f"- `{case_id}` on {name}: " + (f"{why}. Evidence: " if why else "")
                         + "; ".join(case.get("problems", ["(no detail)"])))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=(*BACKENDS, SHIPPED_POLICY),
                        default=[*BACKENDS, SHIPPED_POLICY])
    parser.add_argument("--docker-host", default="unix:///var/run/docker.sock")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "redteam")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("redteam_report: needs root (the servers' jails, and the host checks)", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    secret = "redteam-server-secret-" + secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret
    columns: list[Column] = []
    for name in args.backends:
        why = unavailable(name, args.docker_host)
        if why:
            print(f"redteam_report: {name}: not run: {why}", file=sys.stderr)
            columns.append(Column(name, None, why))
            continue
        print(f"redteam_report: {name} ...", file=sys.stderr)
        report = run_column(name, args.docker_host, secret)
        counts = report.counts()
        print(f"redteam_report: {name}: {counts[Verdict.CONTAINED]}/{len(report.cases)} contained "
              f"in {report.duration_s:.0f} s", file=sys.stderr)
        columns.append(Column(name, report))
    doc = results(columns, started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (args.out / "README.md").write_text(summary(doc))
    print(f"redteam_report: wrote {args.out / 'results.json'} and {args.out / 'README.md'}", file=sys.stderr)
    undocumented = [(c.name, case.case_id) for c in columns if c.report is not None for case in c.report.cases
                    if not case.contained and (c.name, case.case_id) not in DOCUMENTED]
    return 1 if undocumented else 0


if __name__ == "__main__":
    sys.exit(main())
