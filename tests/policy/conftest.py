"""Fixtures for the policy tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_helpers import tenant_file


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A directory with one valid file: tenant ``alpha`` (description "v1") in ``a.yaml``."""
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text(tenant_file("alpha", description="v1"))
    return d
