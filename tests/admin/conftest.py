"""Fixtures for the admin tests: a real Admin server per test (admin_server.py) and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_server import AdminServer, serve_admin

from sandbox_client.admin import AdminClient


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[AdminServer]:
    with serve_admin(tmp_path) as server:
        yield server


@pytest.fixture
def admin(srv: AdminServer) -> Iterator[AdminClient]:
    with AdminClient(srv.target, api_key=srv.admin_token, timeout=30) as client:
        yield client
