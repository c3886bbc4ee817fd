"""Run a scenario script inside a network namespace made for it, with only loopback up: what tests about refused
addresses (metadata, link-local, other ranges) use, so that even a proxy bug could send no packet off the
machine. The script prints one JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def run_isolated(script: Path, request: pytest.FixtureRequest, timeout_s: float) -> dict[str, Any]:
    """``script BACKEND [DOCKER_HOST]`` under ``unshare --net`` for the fixture's backend parameter."""
    args = [request.param]
    if request.param == "docker":
        args.append(request.getfixturevalue("dockerd").host)
    done = subprocess.run(["unshare", "--net", "--", sys.executable, str(script), *args],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
