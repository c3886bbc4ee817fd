"""Building the warm zygote's native fork loop and PID 1 (native.py): once per source, only into a directory
only root can write, and a clear reason (the Python PID 1 stays) when it cannot be built."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandbox_server.backends import native


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tmp_path.chmod(0o755)
    directory = tmp_path / "cache" / "native"
    monkeypatch.setattr(native, "CACHE_DIR", directory)
    return directory


def build(state_dir: Path) -> tuple[Path | None, str]:
    return asyncio.run(native.build(state_dir))


def test_built_once_then_reused(cache: Path, tmp_path: Path) -> None:
    path, problem = build(tmp_path / "state")
    assert problem == ""
    assert path is not None
    assert path.parent == cache
    assert path.name.startswith("zygote-native-")
    assert path.suffix == ".so"
    st = path.stat()
    assert st.st_uid == 0
    assert not st.st_mode & 0o022
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    again, _ = build(tmp_path / "state")
    assert again == path
    assert path.stat().st_mtime_ns == st.st_mtime_ns  # not rebuilt


def test_a_cache_others_can_write_is_not_used(cache: Path, tmp_path: Path) -> None:
    cache.mkdir(parents=True)
    cache.chmod(0o777)  # anyone could plant an object here for a root process to load
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    path, problem = build(state)
    assert problem == ""
    assert path is not None
    assert path.parent == state / "native"


def test_a_planted_object_is_not_loaded(cache: Path, tmp_path: Path) -> None:
    first, _ = build(tmp_path / "state")
    assert first is not None
    first.unlink()
    first.write_bytes(b"not ours")
    os.chown(first, 65534, 65534)  # someone else's file under the expected name
    path, problem = build(tmp_path / "state")
    assert problem == ""
    assert path == first
    assert first.stat().st_uid == 0
    assert first.read_bytes() != b"not ours"  # rebuilt, replacing it


def test_no_compiler(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "COMPILERS", ("no-such-compiler",))
    assert build(tmp_path / "state") == (None, "no C compiler (cc) on this host")


def test_a_failing_build_says_why(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "COMPILERS", ("false",))
    path, problem = build(tmp_path / "state")
    assert path is None
    assert problem.startswith("building the native PID 1 failed")
    assert "exited 1" in problem
    assert list(cache.iterdir()) == []  # the temporary file is gone
