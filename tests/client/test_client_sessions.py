"""Sessions through both clients against a real server (nsjail, one per module): the documented contract, the
kernel's state across calls, rich outputs, workspace files, snapshots, paging, attaching, and the typed errors
of a session that is gone.

One session (``shared``) serves the tests that only add to it; the tests about a session's life open their own,
and every session opened here is closed (the module's teardown checks that none is left live).
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from real_servers import server_with_policy

from sandbox_client import (
    AsyncSandboxClient,
    AsyncSession,
    DisplayData,
    ExecutionResult,
    FileInfo,
    InvalidRequestError,
    Limits,
    NotFoundError,
    OutputChunk,
    SandboxClient,
    Session,
    SessionBusyError,
    SessionInfo,
    SessionNotFoundError,
    SessionState,
    SnapshotInfo,
    Status,
)
from sandbox_server.testing import RunningServer

MIB = 1024 * 1024
NEVER_EXISTED = "ses_" + "a" * 32
POLICY = """
allowed_env: ["*"]
sessions: {max_active: 16, max_waiting_calls: 0}
"""
PLOT = "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()"
# A server bug (see the report of the change that added these tests): the idempotency interceptor takes an
# ExecuteStream's first `display` event for its result, so a keyed stream (the client keys every one) that
# streams a DisplayData ends without its result event.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with server_with_policy(tmp_path_factory.mktemp("sessions"), POLICY) as srv:
        yield srv


@pytest.fixture(scope="module")
def sbx(server: RunningServer) -> Iterator[SandboxClient]:
    with SandboxClient(server.target, timeout=120) as client:
        yield client
        assert list(client.list_sessions()) == [], "a test left a session open"


@pytest.fixture(scope="module")
def shared(sbx: SandboxClient) -> Iterator[Session]:
    """A Python and bash session for the tests that only add to it (each under names of its own)."""
    with sbx.session(languages=["python", "bash"], idle_timeout_s=600) as s:
        yield s


@pytest.fixture
async def asbx(server: RunningServer) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(server.target, timeout=120) as client:
        yield client


def unique_label() -> dict[str, str]:
    return {"test": uuid.uuid4().hex[:12]}


# ---- the contract ----------------------------------------------------------------------------------------------


def test_the_documented_contract(sbx: SandboxClient) -> None:
    with sbx.session(language="python", idle_timeout_s=300) as s:
        assert s.run("x = 41").ok
        assert s.run("x + 1").value == "42"
        assert s.files.upload("data.csv", b"a,b\n1,2\n").size == 8
        assert s.run("import pandas as pd; len(pd.read_csv('data.csv'))").value == "1"
        r = s.run(PLOT)
        assert [o.mime_type for o in r.outputs] == ["image/png"]
        assert r.outputs[0].data.startswith(b"\x89PNG")
        assert isinstance(r.outputs[0], DisplayData)
        assert s.run("echo hi > f.txt", language="bash").ok
        assert s.files.download("f.txt") == b"hi\n"
        listed = s.files.list()
        assert [(f.path, f.size, f.type) for f in listed] == [("data.csv", 8, "file"), ("f.txt", 3, "file")]
        assert all(isinstance(f, FileInfo) and f.mtime.tzinfo is not None for f in listed)
        session_id = s.id
        assert session_id.startswith("ses_")
    for error in (SessionNotFoundError, NotFoundError):
        with pytest.raises(error):
            sbx.get_session(session_id)
    with pytest.raises(SessionNotFoundError) as info:
        sbx.get_session(session_id)
    assert (info.value.session_id, info.value.close_reason, info.value.resource_type) == (
        session_id, "closed", "session")


def test_the_session_as_created(sbx: SandboxClient) -> None:
    labels = unique_label()
    before = datetime.now(UTC)
    with sbx.session(language="bash", languages=["bash"], idle_timeout_s=120, max_lifetime_s=900, cpu_total_s=30,
                     limits=Limits(memory_bytes=256 * MIB, wall_time_s=5), labels=labels,
                     files={"in/seed.txt": "seed"}) as s:
        info = s.info
        assert isinstance(info, SessionInfo)
        assert (s.language, info.id, info.state, info.languages) == ("bash", s.id, SessionState.READY, ("bash",))
        assert (info.idle_timeout_s, info.max_lifetime_s, info.cpu_total_s) == (120, 900, 30.0)
        assert (info.limits.memory_bytes, info.limits.wall_time_s) == (256 * MIB, 5.0)
        assert info.labels == labels
        assert info.closed_at is None
        assert info.close_reason == info.snapshot_id == ""
        assert info.expires_at is not None
        assert before.replace(microsecond=0) <= info.created_at < info.expires_at
        assert s.run("cat in/seed.txt").stdout == "seed"
        assert s.refresh().usage.calls == 1
        final = s.close()
        assert final is not None
        assert (final.state, final.close_reason, final.expires_at, final.usage.calls) == (
            SessionState.CLOSED, "closed", None, 1)
        assert final.closed_at is not None


# ---- Python in a session ----------------------------------------------------------------------------------------


def test_an_exception_is_a_result_and_the_kernel_keeps_its_state(shared: Session) -> None:
    shared.run("exc_kept = 'still here'")
    r = shared.run("1/0")
    assert r.status is Status.NONZERO_EXIT
    assert r.error is not None
    assert (r.error.name, r.error.value) == ("ZeroDivisionError", "division by zero")
    assert r.error.traceback
    assert "ZeroDivisionError" in r.stderr
    after = shared.run("exc_kept")
    assert (after.status, after.value, after.error) == (Status.OK, "'still here'", None)
    assert after.execution_count > r.execution_count


def test_run_takes_a_language_files_and_env_of_its_own(shared: Session) -> None:
    r = shared.run("cat run-input.txt; echo \"$RUN_VAR\"", language="bash", files={"run-input.txt": "in\n"},
                   env={"RUN_VAR": "from env"}, stdin="ignored")
    assert (r.status, r.stdout, r.language) == (Status.OK, "in\nfrom env\n", "bash")
    assert shared.run("open('run-input.txt').read()").value == "'in\\n'"  # one workspace for every language


def test_run_stream_yields_the_output_then_the_result(shared: Session) -> None:
    items = list(shared.run_stream("for i in range(3):\n    print(i, flush=True)\n'done'"))
    assert all(isinstance(i, OutputChunk) for i in items[:-1])
    result = items[-1]
    assert isinstance(result, ExecutionResult)
    assert (result.status, result.stdout, result.value) == (Status.OK, "0\n1\n2\n", "'done'")


def test_run_stream_yields_display_data(shared: Session) -> None:
    items = list(shared.run_stream(f"print('before', flush=True)\n{PLOT}\nprint('after')"))
    displays = [i for i in items if isinstance(i, DisplayData)]
    assert [d.mime_type for d in displays] == ["image/png"]
    result = items[-1]
    assert isinstance(result, ExecutionResult)
    assert result.outputs == tuple(displays)  # the streamed rich outputs, as execute would have returned them
    assert result.stdout == "before\nafter\n"


# ---- workspace files ------------------------------------------------------------------------------------------


def test_a_file_bigger_than_a_chunk_round_trips(shared: Session, tmp_path: Path) -> None:
    content = bytes(range(256)) * (5 * MIB // 256)
    info = shared.files.upload("big/five.bin", content)
    assert (info.path, info.size, info.type) == ("big/five.bin", 5 * MIB, "file")
    assert shared.run("import os; os.path.getsize('big/five.bin')").value == str(5 * MIB)
    chunks = list(shared.files.iter_download("big/five.bin"))
    assert len(chunks) > 1
    assert all(len(c) <= MIB for c in chunks)
    assert b"".join(chunks) == content
    assert shared.files.download("big/five.bin") == content
    with (tmp_path / "five.bin").open("wb") as out:
        assert shared.files.download_to("big/five.bin", out) == 5 * MIB
    assert (tmp_path / "five.bin").read_bytes() == content
    with (tmp_path / "five.bin").open("rb") as source:  # a stream, read as it is sent
        assert shared.files.upload("big/copy.bin", source).size == 5 * MIB
    assert shared.files.download("big/copy.bin") == content
    assert shared.files.upload("big/text.txt", "é").size == 2  # str goes as UTF-8
    shared.files.delete("big", recursive=True)


def test_list_recursive_and_delete(shared: Session) -> None:
    shared.files.upload("tree/a.txt", b"a")
    shared.files.upload("tree/sub/b.txt", b"bb")
    shared.run("ln -s a.txt tree/link", language="bash")

    def entries(listing: list[FileInfo]) -> list[tuple[str, str]]:
        return [(f.path, f.type) for f in listing]

    assert entries(shared.files.list("tree")) == [
        ("tree/a.txt", "file"), ("tree/link", "symlink"), ("tree/sub", "directory")]
    assert entries(shared.files.list("tree", recursive=True)) == [
        ("tree/a.txt", "file"), ("tree/link", "symlink"), ("tree/sub", "directory"), ("tree/sub/b.txt", "file")]
    assert "tree/sub/b.txt" in [f.path for f in shared.files.list(recursive=True)]
    assert "tree/sub/b.txt" not in [f.path for f in shared.files.list()]

    shared.files.delete("tree/a.txt")
    with pytest.raises(NotFoundError) as info:
        shared.files.download("tree/a.txt")
    assert not isinstance(info.value, SessionNotFoundError)
    assert (info.value.resource_type, info.value.resource_name) == ("file", "tree/a.txt")
    with pytest.raises(InvalidRequestError):
        shared.files.download("tree/link")  # a link is never followed
    with pytest.raises(InvalidRequestError):
        shared.files.delete("tree")  # a directory that is not empty needs recursive=True
    shared.files.delete("tree", recursive=True)
    assert not [f for f in shared.files.list(recursive=True) if f.path.startswith("tree")]


class BrokenReader(io.RawIOBase):
    """A stream that fails after 3 MiB."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 3:
            raise OSError("the source went away")
        return b"x" * MIB


def test_an_upload_whose_stream_fails_leaves_no_file(shared: Session) -> None:
    with pytest.raises(OSError, match="the source went away"):
        shared.files.upload("broken.bin", BrokenReader())  # type: ignore[arg-type]
    assert "broken.bin" not in [f.path for f in shared.files.list()]


# ---- snapshots --------------------------------------------------------------------------------------------------


def test_a_snapshot_starts_a_new_session_with_the_files(sbx: SandboxClient) -> None:
    with sbx.session(language="bash", languages=["bash"]) as s:
        s.files.upload("notes/keep.txt", b"kept")
        s.run("ln -s keep.txt notes/link")
        snap = s.snapshot("checkpoint")
    assert isinstance(snap, SnapshotInfo)
    assert (snap.session_id, snap.name, snap.files, snap.skipped, snap.size_bytes) == (
        s.id, "checkpoint", 1, 1, 4)
    assert snap.id.startswith("snap_")
    assert snap.created_at.tzinfo is not None
    assert snap.id in [x.id for x in sbx.list_snapshots()]
    with sbx.session(language="bash", languages=["bash"], snapshot_id=snap.id) as restored:
        assert restored.info.snapshot_id == snap.id
        assert restored.files.download("notes/keep.txt") == b"kept"
        assert restored.run("cat notes/keep.txt").stdout == "kept"
    sbx.delete_snapshot(snap.id)
    assert snap.id not in [x.id for x in sbx.list_snapshots()]
    with pytest.raises(NotFoundError):
        sbx.delete_snapshot(snap.id)
    with pytest.raises(NotFoundError):
        sbx.session(snapshot_id=snap.id)


# ---- listing, attaching, closing ----------------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, sbx: SandboxClient, method: str) -> list[Any]:
    """Every request ``method`` of the client's stub sends, from now on."""
    seen: list[Any] = []
    original: Callable[..., Any] = getattr(sbx._stub, method)

    def spy(request: Any, **kwargs: Any) -> Any:
        seen.append(type(request).FromString(request.SerializeToString()))
        return original(request, **kwargs)

    monkeypatch.setattr(sbx._stub, method, spy)
    return seen


def test_list_sessions_follows_the_pages(sbx: SandboxClient, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = unique_label()
    opened = [sbx.session(language="bash", languages=["bash"], labels=labels) for _ in range(3)]
    try:
        requests = counting(monkeypatch, sbx, "ListSessions")
        listed = list(sbx.list_sessions(labels=labels, page_size=1))
        assert [x.id for x in listed] == [s.id for s in opened]  # oldest first
        assert [r.page_size for r in requests] == [1, 1, 1]
        assert [bool(r.page_token) for r in requests] == [False, True, True]
        assert all(x.labels == labels for x in listed)
        assert [x.id for x in sbx.list_sessions(labels=labels)] == [s.id for s in opened]
    finally:
        for s in opened:
            s.close()
    assert list(sbx.list_sessions(labels=labels)) == []


def test_attach_session(sbx: SandboxClient, shared: Session) -> None:
    shared.run("attached_value = 7")
    again = sbx.attach_session(shared.id)
    assert (again.id, again.language, again.info.state) == (shared.id, "python", SessionState.READY)
    assert again.run("attached_value * 6").value == "42"
    assert sbx.attach_session(shared.id, language="bash").run("echo $((1 + 1))").stdout == "2\n"
    with pytest.raises(SessionNotFoundError) as info:
        sbx.attach_session(NEVER_EXISTED)
    assert (info.value.session_id, info.value.close_reason) == (NEVER_EXISTED, "")


def test_a_session_that_is_gone_raises_typed_errors(sbx: SandboxClient) -> None:
    s = sbx.session(language="bash", languages=["bash"])
    assert s.close() is not None
    assert s.close() is None  # idempotent
    for call in (lambda: s.run("true"), s.refresh, lambda: s.files.list(), lambda: s.files.download("x"),
                 lambda: s.files.upload("x", b"x"), lambda: s.snapshot(), lambda: sbx.close_session(s.id),
                 lambda: list(s.run_stream("true"))):
        with pytest.raises(SessionNotFoundError) as info:
            call()
        assert (info.value.session_id, info.value.close_reason) == (s.id, "closed")
    with s:  # leaving the block of a session already gone is fine
        pass
    closed_elsewhere = sbx.session(language="bash", languages=["bash"])
    with closed_elsewhere:
        sbx.close_session(closed_elsewhere.id)
    with pytest.raises(SessionNotFoundError):
        sbx.get_session(NEVER_EXISTED)


def test_a_busy_session_refuses_a_call_and_the_client_waits_it_out(
        sbx: SandboxClient, server: RunningServer) -> None:
    """max_waiting_calls is 0 here: a call that comes while one runs is refused with RetryInfo."""
    with sbx.session(language="bash", languages=["bash"]) as s, \
            SandboxClient(server.target, retry=None, timeout=60) as impatient, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(s.run, "sleep 2; echo slept")
        deadline = time.monotonic() + 10
        while s.refresh().state is not SessionState.BUSY:
            assert time.monotonic() < deadline, "the first call never ran"
            time.sleep(0.02)
        with pytest.raises(SessionBusyError) as info:
            impatient.attach_session(s.id, language="bash").run("true")
        assert (info.value.reason, info.value.retry_after) == ("SESSION_BUSY", 1.0)
        assert s.run("echo after").stdout == "after\n"  # the default policy retries until the first is done
        assert slow.result(timeout=30).stdout == "slept\n"


# ---- asyncio ---------------------------------------------------------------------------------------------------


async def test_async_the_documented_contract_with_async_with(asbx: AsyncSandboxClient) -> None:
    async with asbx.session(language="python", idle_timeout_s=300) as s:
        assert isinstance(s, AsyncSession)
        await s.run("x = 41")
        assert (await s.run("x + 1")).value == "42"
        await s.files.upload("data.csv", b"a,b\n1,2\n")
        assert (await s.run("import pandas as pd; len(pd.read_csv('data.csv'))")).value == "1"
        r = await s.run(PLOT)
        assert [o.mime_type for o in r.outputs] == ["image/png"]
        assert r.outputs[0].data.startswith(b"\x89PNG")
        await s.run("echo hi > f.txt", language="bash")
        assert await s.files.download("f.txt") == b"hi\n"
        assert [f.path for f in await s.files.list()] == ["data.csv", "f.txt"]
        session_id = s.id
    with pytest.raises(SessionNotFoundError) as info:
        await asbx.get_session(session_id)
    assert info.value.close_reason == "closed"


async def test_async_await_form_and_every_method(asbx: AsyncSandboxClient, tmp_path: Path) -> None:
    labels = unique_label()
    s = await asbx.session(labels=labels)
    try:
        assert s.info.state is SessionState.READY
        await s.run("y = 2")
        items = [i async for i in s.run_stream("print(y * 21)")]
        assert isinstance(items[-1], ExecutionResult)
        assert items[-1].stdout == "42\n"
        content = b"z" * (3 * MIB // 2)
        assert (await s.files.upload("dir/z.bin", io.BytesIO(content))).size == len(content)
        assert [len(c) async for c in s.files.iter_download("dir/z.bin")] == [MIB, MIB // 2]
        with (tmp_path / "z.bin").open("wb") as out:
            assert await s.files.download_to("dir/z.bin", out) == len(content)
        assert [f.path for f in await s.files.list(recursive=True)] == ["dir", "dir/z.bin"]
        await s.files.delete("dir", recursive=True)
        assert await s.files.list() == []
        assert [x.id async for x in asbx.list_sessions(labels=labels, page_size=1)] == [s.id]
        again = await asbx.attach_session(s.id)
        assert (await again.run("y")).value == "2"
        assert (await s.refresh()).usage.calls >= 3
        snap = await s.snapshot("async")
        assert snap.id in [x.id async for x in asbx.list_snapshots()]
        await asbx.delete_snapshot(snap.id)
    finally:
        final = await s.close()
    assert final is not None
    assert final.state is SessionState.CLOSED
    assert await s.close() is None
    with pytest.raises(SessionNotFoundError):
        await s.run("y")
    with pytest.raises(SessionNotFoundError):
        await asbx.close_session(s.id)


async def test_async_session_is_awaited_or_entered_once(asbx: AsyncSandboxClient) -> None:
    opening = asbx.session(language="bash", languages=["bash"])
    async with await opening as s:  # an AsyncSession is an async context manager too
        assert (await s.run("echo ok")).stdout == "ok\n"
        with pytest.raises(RuntimeError, match="already"):
            await opening
    with pytest.raises(SessionNotFoundError):
        await asbx.get_session(s.id)
    asbx.session(language="bash")  # never awaited: nothing is created, and nothing warns
