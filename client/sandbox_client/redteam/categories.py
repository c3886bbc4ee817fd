"""The corpus's categories and languages: plain enums, importable without the corpus's dependencies (the
``sandbox-admin`` command line builds its options from them)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Category", "Language"]


class Category(StrEnum):
    """The corpus categories; each shipped file holds one."""

    ESCAPE = "escape"
    HOST_READ = "host_read"
    HOST_WRITE = "host_write"
    NETWORK = "network"
    EGRESS = "egress"
    """Past the egress proxy of a sandbox a policy gives network: refused addresses, names and ports, redirects,
    forged proxy requests, and around the proxy (direct, raw, UDP, DNS)."""
    RESOURCES = "resources"
    PERSISTENCE = "persistence"
    INFO_LEAK = "info_leak"
    VALIDATOR_BYPASS = "validator_bypass"
    SESSION = "session"
    """Across the calls of one session and across sessions (corpus file ``sessions.yaml``)."""


class Language(StrEnum):
    PYTHON = "python"
    JAVASCRIPT = "javascript"
    BASH = "bash"
