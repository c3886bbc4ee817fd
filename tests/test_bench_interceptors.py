"""bench/interceptors.py still runs: a tiny measurement of both servers (no nsjail), so the bench cannot rot."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "interceptors.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The benchmark script, imported by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_interceptors", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


async def test_measures_both_servers(bench: ModuleType, tmp_path: Path) -> None:
    result = await bench.measure_stack(n=20, warmup=5, concurrency=2, round_size=10, data_dir=tmp_path)

    assert result.sandbox is None
    for stats in (result.empty, result.full):
        assert stats.n == 20
        assert all(math.isfinite(value) and value > 0 for value in asdict(stats).values())
    assert math.isfinite(result.added_p50_ms)
    assert math.isfinite(result.added_p99_ms)
