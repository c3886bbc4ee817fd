"""The policy a server starts with when no policy directory is configured: one tenant, ``default``, with every
model default (all languages, the server's limits, static validation and output secret redaction on).
Seeded once into ``<data_dir>/policies``; edit it there, or apply changes with ``sandbox-admin policies apply``."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_POLICY = """\
# The embedded default policy (see policies/default.yaml in the project for every setting, documented).
version: 1
tenants:
  default:
    description: the built-in tenant (development mode calls run as this tenant)
"""


def seed_policies(directory: Path) -> Path:
    """Create ``directory`` with the embedded default policy unless it already holds a policy file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not any(directory.glob("*.yaml")) and not any(directory.glob("*.yml")):
        target = directory / "default.yaml"
        tmp = directory / ".default.yaml.tmp"
        tmp.write_text(EMBEDDED_POLICY)
        tmp.replace(target)
    return directory
