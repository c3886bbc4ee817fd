"""Fixtures for the incident tests: a real SQLite store on tmp_path, a fake clock, started managers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from incident_helpers import FakeClock, RecordingSink, StartManager

from sandbox_server.incidents import AlertSink, IncidentManager, IncidentSettings
from sandbox_server.stores.sqlite_incidents import SqliteIncidentStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "incidents.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteIncidentStore]:
    opened = SqliteIncidentStore(db_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def start_manager(
    store: SqliteIncidentStore, sink: RecordingSink, clock: FakeClock
) -> AsyncIterator[StartManager]:
    """Starts managers over the test's store (closed at the end); ``settings`` and ``sinks`` are optional."""
    started: list[IncidentManager] = []

    async def start(
        settings: IncidentSettings | None = None, sinks: Sequence[AlertSink] | None = None
    ) -> IncidentManager:
        manager = IncidentManager(store, settings or IncidentSettings(), [sink] if sinks is None else sinks, clock)
        await manager.start()
        started.append(manager)
        return manager

    try:
        yield start
    finally:
        for manager in started:
            await manager.aclose()
