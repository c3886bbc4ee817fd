"""The committed JSON Schema is the models' schema."""

from __future__ import annotations

import json
import subprocess
import sys

from policy_helpers import POLICIES, REPO

from sandbox_server.policy.models import PolicyFile
from sandbox_server.policy.schema import SCHEMA_DIALECT, json_schema, render


def test_the_committed_schema_matches_the_models() -> None:
    committed = (POLICIES / "schema.json").read_text()
    assert committed == render(), (
        "policies/schema.json is out of date: run `python -m sandbox_server.policy.schema > policies/schema.json`"
    )


def test_the_schema_describes_a_policy_file() -> None:
    schema = json_schema()
    assert schema["$schema"] == SCHEMA_DIALECT
    assert list(schema)[:2] == ["$schema", "title"]
    assert schema["properties"].keys() == PolicyFile.model_fields.keys()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["tenants"]["additionalProperties"] is False
    assert schema["$defs"]["TenantPolicy"]["additionalProperties"] is False


def test_the_module_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandbox_server.policy.schema"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout
    assert json.loads(out) == json_schema()
    assert out == render()
