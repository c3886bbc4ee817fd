"""Helpers shared by the policy tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def tenant_file(*names: str, description: str = "") -> str:
    """A valid policy file defining ``names`` (all with the same description)."""
    return dump({"version": 1, "tenants": {n: {"description": description} for n in names}})


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` whole, as an editor or deployment tool should: the watcher never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
