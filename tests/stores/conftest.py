"""Fixtures for the store contract suite: one backing per implementation (store_backings.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_backings import FACTORIES, IMPLEMENTATIONS, Backing

from sandbox_server.stores import KeyStore, PolicyVersionStore


@pytest.fixture(params=IMPLEMENTATIONS)
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    made = FACTORIES[request.param](tmp_path)
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
