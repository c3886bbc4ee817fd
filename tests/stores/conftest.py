"""Fixtures for the store contract suite: one backing per implementation (store_backings.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import store_backings
from postgres_server import Postgres
from store_backings import IMPLEMENTATIONS, Backing

from sandbox_server.stores import KeyStore, PolicyVersionStore
from sandbox_server.stores.base import AuditStore


@pytest.fixture(params=IMPLEMENTATIONS)
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    if request.param == "postgres":
        server: Postgres = request.getfixturevalue("postgres")
        made = store_backings.postgres(server.create_database())
    else:
        made = store_backings.sqlite(tmp_path)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def keys(backing: Backing) -> KeyStore:
    return backing.keys()


@pytest.fixture
def versions(backing: Backing) -> PolicyVersionStore:
    return backing.versions()


@pytest.fixture
def audit(backing: Backing) -> AuditStore:
    return backing.audit()
