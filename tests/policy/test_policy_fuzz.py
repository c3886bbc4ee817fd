"""Whatever the input, the loader either loads it or returns PolicyErrors: it never raises anything else."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import POLICIES

from sandbox_server.policy.loader import PolicyError, PolicyLoadError, load_directory, validate_text
from sandbox_server.policy.models import (
    BudgetSettings,
    Guardrails,
    LimitSet,
    PythonRules,
    RateSettings,
    StaticValidation,
    TenantPolicy,
)

FIELD_NAMES = sorted(
    {"version", "tenants", "acme", "x"}
    | {
        name
        for model in (TenantPolicy, LimitSet, StaticValidation, PythonRules, Guardrails, RateSettings, BudgetSettings)
        for name in model.model_fields
    }
)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["python", "bash", "cobol", "none", "redact", "block", "(", ".*", "2001-13-01", "1e999"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=10), st.integers(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
policy_like = st.fixed_dictionaries(
    {"tenants": st.dictionaries(st.sampled_from(["acme", "b", "Bad Name", "x" * 70]), values, max_size=3)},
    optional={"version": st.sampled_from([1, 2, "1", None]), "x": values},
)


def check(text: str) -> None:
    errors = validate_text("p.yaml", text, {})
    assert isinstance(errors, list)
    assert all(isinstance(e, PolicyError) for e in errors)
    assert all(isinstance(e.location, str) and e.message for e in errors)
    with tempfile.TemporaryDirectory() as d:
        try:
            (Path(d) / "p.yaml").write_text(text, encoding="utf-8")
        except UnicodeEncodeError:
            return
        if errors:
            with pytest.raises(PolicyLoadError) as info:
                load_directory(Path(d))
            assert [(e.location, e.message) for e in info.value.errors] == [(e.location, e.message) for e in errors]
        else:
            assert load_directory(Path(d)).tenants


@SETTINGS
@given(policy_like)
def test_policy_like_dicts(data: dict[str, Any]) -> None:
    check(yaml.safe_dump(data, allow_unicode=True))


@SETTINGS
@given(values)
def test_any_yaml_value(data: Any) -> None:
    check(yaml.safe_dump(data))


@SETTINGS
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@SETTINGS
@given(st.data())
def test_mutated_shipped_files(data: st.DataObject) -> None:
    original = (POLICIES / "examples" / "multi-tenant" / "acme.yaml").read_text()
    start = data.draw(st.integers(0, len(original)))
    end = data.draw(st.integers(start, min(len(original), start + 40)))
    insert = data.draw(st.text(alphabet=" \n\t:-[]{}#&*!|>'\"x0", max_size=10))
    check(original[:start] + insert + original[end:])
