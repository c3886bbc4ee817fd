"""The backend contract: what every backend in ``conftest.BACKENDS`` must do, tested through a real server.

This module: running code, files, exit codes, every limit, teardown and lifetime, concurrency, streaming.
test_isolation.py: what a program must not see or reach.

Every test takes the ``server`` fixture (through ``sbx``), so the whole suite runs once per backend, and
``no_leftovers``, so each one also proves that nothing (scratch, cgroup, mount) outlived its executions.
Limits are kept small so the suite stays fast; every assertion is on exact values where the contract
gives one.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from sandbox_client import (
    DeadlineExceededError,
    DisplayData,
    ExecutionResult,
    Limits,
    OutputChunk,
    SandboxClient,
    Status,
)
from sandbox_server.testing import RunningServer

pytestmark = pytest.mark.usefixtures("no_leftovers")

KIB = 1024
MIB = 1024 * KIB
TAG_VAR = "CONTRACT_TEST_TAG"


# ---- helpers ----------------------------------------------------------------------------------------------
def tagged_processes(tag: str) -> list[int]:
    """Host pids of the processes whose environment holds ``TAG_VAR=tag``: the sandboxes of one test.

    A request's env reaches only the jailed programs, so the tag finds exactly them, and keeps finding a
    process that escaped its jail however it was reparented.
    """
    needle = f"{TAG_VAR}={tag}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone, or a kernel thread
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def sandbox_descendants(uid: int, since: float) -> list[psutil.Process]:
    """Processes of the sandbox ``uid`` started after ``since`` whose parent chain includes this process
    (the server runs in this process, in a thread). Other test sessions on the host are not counted."""
    me = os.getpid()
    out: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if proc.uids().real != uid or proc.create_time() < since:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # dead, holding nothing: a warm sandbox's PID 1 is reaped by its zygote just after
            if any(parent.pid == me for parent in proc.parents()):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def leftover_sandbox_processes(server: RunningServer, since: float, wait_s: float = 2.0) -> list[psutil.Process]:
    """sandbox_descendants, but for the warm paths' ready sandboxes: their interpreters (fresh Python, node) run as
    the sandbox user ahead of any request (their own namespaces; nothing of a request is in them). A sandbox
    still being set up joins the pool within moments, and a finished one's init (which has reported only once
    everything the program started was gone) exits within moments of the reply, so what is left is looked at
    again for ``wait_s``."""
    backend = server.app.backend
    paths = [w for w in (getattr(backend, "warm", None), getattr(backend, "warm_js", None)) if w is not None]
    deadline = time.monotonic() + wait_s
    while True:
        found = sandbox_descendants(server.settings.sandbox_uid, since)
        # Looked at after the processes were listed: a sandbox that joined the pool since is counted as ready
        ready = {r.init_pid for w in paths for r in w._pool}
        left = [p for p in found if not any(parent.pid in ready for parent in _parents(p))]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _parents(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.parents())
    except psutil.Error:
        return []


def run_tagged(sbx: SandboxClient, code: str, *, language: str = "python",
               limits: Limits | None = None) -> tuple[ExecutionResult, str]:
    """Execute with a unique TAG_VAR in the env; return the result and the tag."""
    tag = uuid.uuid4().hex
    return sbx.execute(code, language=language, env={TAG_VAR: tag}, limits=limits), tag


# ---- running code -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", 'print("hello, world")'),
        ("javascript", 'console.log("hello, world")'),
        ("bash", 'echo "hello, world"'),
    ],
)
def test_hello_world(sbx: SandboxClient, server: RunningServer, language: str, code: str) -> None:
    result = sbx.execute(code, language=language)
    assert result.status is Status.OK, result.message
    assert result.stdout == "hello, world\n"
    assert result.stderr == ""
    assert (result.exit_code, result.signal) == (0, 0)
    assert result.message == ""
    assert result.language == language
    assert result.backend == server.settings.backend.value
    assert result.stdout_truncated is False
    assert result.files == ()
    d = server.settings.defaults
    assert result.limits == Limits(
        wall_time_s=d.wall_time_ms / 1000, cpu_time_s=d.cpu_time_ms / 1000, memory_bytes=d.memory_bytes,
        max_pids=d.max_pids, output_bytes=d.output_bytes, file_size_bytes=d.file_size_bytes,
        scratch_bytes=d.scratch_bytes, egress_bytes=d.egress_bytes,
    )
    assert 0 < result.usage.wall_time_s < d.wall_time_ms / 1000


@pytest.mark.parametrize(("alias", "language"), [("py", "python"), ("node", "javascript"), ("sh", "bash")])
def test_language_alias_reports_canonical_name(sbx: SandboxClient, alias: str, language: str) -> None:
    code = {"python": "print(1)", "javascript": "console.log(1)", "bash": "echo 1"}[language]
    result = sbx.execute(code, language=alias)
    assert (result.status, result.stdout, result.language) == (Status.OK, "1\n", language)


STDIN_ECHO = {
    "python": "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())",
    "javascript": "process.stdin.pipe(process.stdout)",
    "bash": "cat",
}


@pytest.mark.parametrize("language", sorted(STDIN_ECHO))
def test_stdin_round_trip_is_binary_safe(sbx: SandboxClient, language: str) -> None:
    data = bytes(range(256)) * 8 + b"\x00\r\n\xff\xfe" + "✓ unicode".encode()
    result = sbx.execute(STDIN_ECHO[language], language=language, stdin=data)
    assert result.status is Status.OK, result.stderr
    assert result.stdout_bytes == data


def test_large_stdin_while_writing_output_does_not_deadlock(sbx: SandboxClient) -> None:
    """2 MiB in, copied out as it is read: stdin feeding and output reading must run concurrently."""
    data = os.urandom(2 * MIB)
    code = (
        "import sys\n"
        "while chunk := sys.stdin.buffer.read1(65536):\n"
        "    sys.stdout.buffer.write(chunk)\n"
    )
    result = sbx.execute(code, stdin=data, limits=Limits(wall_time_s=3, output_bytes=4 * MIB))
    assert result.status is Status.OK, result.message
    assert result.stdout_bytes == data


def test_input_files_in_and_output_files_out(sbx: SandboxClient) -> None:
    blob = bytes(range(256))
    files = {
        "data/in.txt": b"hello input",
        "deep/a/b/c/blob.bin": blob,
        "keep.txt": b"left alone",
        "mod.txt": b"old",
    }
    code = (
        "import os, shutil\n"
        "text = open('data/in.txt', 'rb').read()\n"
        "os.makedirs('out/sub', exist_ok=True)\n"
        "open('out/sub/upper.txt', 'wb').write(text.upper())\n"
        "shutil.copy('deep/a/b/c/blob.bin', 'copy.bin')\n"
        "open('mod.txt', 'wb').write(b'new')\n"
        "print(open('keep.txt').read(), len(open('deep/a/b/c/blob.bin', 'rb').read()))\n"
    )
    result = sbx.execute(code, files=files)
    assert result.status is Status.OK, result.stderr
    assert result.stdout == "left alone 256\n"
    got = {f.path: (f.content, f.size, f.truncated) for f in result.files}
    assert got == {
        "copy.bin": (blob, 256, False),
        "mod.txt": (b"new", 3, False),
        "out/sub/upper.txt": (b"HELLO INPUT", 11, False),
    }
    assert [f.path for f in result.files] == sorted(got)
    assert result.files_truncated is False


def test_output_files_are_capped_in_number(sbx: SandboxClient, server: RunningServer) -> None:
    cap = server.settings.caps.output_files
    result = sbx.execute(f"for i in range({cap + 10}):\n    open(f'f{{i:04}}', 'w').write(str(i))")
    assert result.status is Status.OK, result.stderr
    assert [f.path for f in result.files] == [f"f{i:04}" for i in range(cap)]
    assert result.files_truncated is True


def test_output_files_are_capped_in_bytes(sbx: SandboxClient, server: RunningServer) -> None:
    """Three 5 MiB files against the total cap (8 MiB by default): the cap is used to the byte, each file says
    its real size and whether its content is cut."""
    cap = server.settings.caps.output_file_bytes
    size = 5 * MIB
    code = f"for i in range(3):\n    open(f'big{{i}}', 'wb').write(bytes([65 + i]) * {size})\n"
    result = sbx.execute(code, limits=Limits(wall_time_s=5))
    assert result.status is Status.OK, result.stderr
    assert result.files_truncated is True
    big = [f for f in result.files if f.path.startswith("big")]
    assert {f.path for f in big} <= {"big0", "big1", "big2"}
    assert sum(len(f.content) for f in big) == cap
    for f in big:
        assert f.size == size
        assert f.truncated is (len(f.content) < size)
        assert f.content == bytes([65 + int(f.path[-1])]) * len(f.content)


def test_unchanged_inputs_stay_out_when_the_byte_budget_is_spent(sbx: SandboxClient, server: RunningServer) -> None:
    """One output file takes the whole output-file budget; the code file and an input the program left alone
    are still not output files (not even as empty, 'truncated' ones)."""
    cap = server.settings.caps.output_file_bytes
    result = sbx.execute(f"open('big.bin', 'wb').write(b'F' * {cap})", files={"zz.txt": b"unchanged input"},
                         limits=Limits(wall_time_s=5))
    assert result.status is Status.OK, result.stderr
    assert [f.path for f in result.files] == ["big.bin"]


def test_large_stdout_arrives_whole(sbx: SandboxClient) -> None:
    """6 MiB of stdout under a 6 MiB output limit is a normal result, larger than gRPC's 4 MiB default."""
    size = 6 * MIB
    result = sbx.execute(f"import sys\nsys.stdout.write('L' * {size})",
                         limits=Limits(output_bytes=size, wall_time_s=5))
    assert result.status is Status.OK, result.message
    assert result.stdout_bytes == b"L" * size


def test_large_output_files_arrive(sbx: SandboxClient, server: RunningServer) -> None:
    """Output files up to the server's byte cap come back through the default client."""
    size = server.settings.caps.output_file_bytes - 64 * KIB
    result = sbx.execute(f"open('big.bin', 'wb').write(b'F' * {size})", limits=Limits(wall_time_s=5))
    assert result.status is Status.OK, result.stderr
    [f] = result.files
    assert (f.path, f.size, f.content, f.truncated) == ("big.bin", size, b"F" * size, False)


def test_output_file_name_that_is_not_utf8(sbx: SandboxClient) -> None:
    """A program may name a file with any bytes; that must not cost it its whole result (or be INTERNAL)."""
    code = "open(b'bad-\\xff.txt', 'w').write('x')\nopen('ok.txt', 'w').write('fine')\nprint('done')"
    result = sbx.execute(code)
    assert (result.status, result.stdout) == (Status.OK, "done\n")
    assert result.file("ok.txt") is not None
    assert result.file("ok.txt").content == b"fine"  # type: ignore[union-attr]
    assert len(result.files) == 2


def test_unread_stdin_does_not_block(sbx: SandboxClient) -> None:
    """A program that exits without reading its stdin ends the call at once (timeout=10: fail fast)."""
    start = time.monotonic()
    result = sbx.execute("print('ignored stdin')", stdin=bytes(4 * MIB), limits=Limits(wall_time_s=3),
                         timeout=10)
    assert (result.status, result.stdout) == (Status.OK, "ignored stdin\n")
    assert time.monotonic() - start < 3


def test_unread_stdin_and_wall_time(sbx: SandboxClient) -> None:
    """A program that sleeps without reading its stdin is still stopped at the wall-time limit."""
    start = time.monotonic()
    result = sbx.execute("import time\ntime.sleep(30)", stdin=bytes(4 * MIB), limits=Limits(wall_time_s=1),
                         timeout=10)
    assert result.status is Status.TIMEOUT, result.message
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("language", ["bash", "javascript"])
def test_input_files_reach_other_languages(sbx: SandboxClient, language: str) -> None:
    code = {
        "bash": "wc -c < d/e/blob.bin; cat d/note.txt",
        "javascript": "const fs = require('fs');\n"
                      "console.log(fs.readFileSync('d/e/blob.bin').length);\n"
                      "process.stdout.write(fs.readFileSync('d/note.txt'));",
    }[language]
    result = sbx.execute(code, language=language, files={"d/e/blob.bin": bytes(1000), "d/note.txt": b"note\n"})
    assert result.status is Status.OK, result.stderr
    assert result.stdout.split() == ["1000", "note"]
    assert result.files == ()


@pytest.mark.parametrize(
    ("language", "code", "exit_code"),
    [
        ("python", "import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise SystemExit(3)", 3),
        ("javascript", "console.log('out'); console.error('err'); process.exit(7)", 7),
        ("bash", "echo out; echo err >&2; exit 42", 42),
    ],
)
def test_nonzero_exit(sbx: SandboxClient, language: str, code: str, exit_code: int) -> None:
    result = sbx.execute(code, language=language)
    assert result.status is Status.NONZERO_EXIT
    assert (result.exit_code, result.signal) == (exit_code, 0)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert str(exit_code) in result.message


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys\nsys.stdout.write('out')\nsys.stderr.write('last words')"),
        ("bash", "printf out; printf 'last words' >&2"),
    ],
)
def test_output_written_just_before_the_end_is_all_there(sbx: SandboxClient, language: str, code: str) -> None:
    """Each stream's last bytes, written as the program ends, arrive whole, every time (on Docker the two
    streams used to travel apart, and stderr could come after the server had stopped reading)."""
    for _ in range(8):
        result = sbx.execute(code, language=language)
        assert result.status is Status.OK, result
        assert (result.stdout, result.stderr) == ("out", "last words")


def test_uncaught_python_exception_is_exit_1(sbx: SandboxClient) -> None:
    result = sbx.execute("raise ValueError('boom')")
    assert (result.status, result.exit_code) == (Status.NONZERO_EXIT, 1)
    assert result.stderr.rstrip().endswith("ValueError: boom")


def test_segfault_is_killed_with_its_signal(sbx: SandboxClient) -> None:
    result = sbx.execute("import ctypes\nctypes.string_at(0)", limits=Limits(wall_time_s=3))
    assert result.status is Status.KILLED
    assert (result.exit_code, result.signal) == (-1, 11)
    assert "11" in result.message


def test_program_ended_by_its_own_signal(sbx: SandboxClient) -> None:
    """KILLED means "ended by another signal": a program that sends itself SIGTERM is ended by it."""
    result = sbx.execute("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('still alive')")
    assert result.status is Status.KILLED, (result.status, result.stdout)
    assert (result.exit_code, result.signal, result.stdout) == (-1, 15, "")


# ---- limits -----------------------------------------------------------------------------------------------
def test_memory_bomb_hits_memory_limit(sbx: SandboxClient) -> None:
    limit = 64 * MIB
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))  # touched, not just reserved\n"
    start = time.monotonic()
    result = sbx.execute(code, limits=Limits(memory_bytes=limit, wall_time_s=3))
    assert result.status is Status.MEMORY_LIMIT, (result.status, result.message, result.stderr)
    assert (result.exit_code, result.signal) == (-1, 9)
    assert result.limits.memory_bytes == limit
    assert 0 < result.usage.peak_memory_bytes <= limit
    assert time.monotonic() - start < 3


def test_infinite_loop_hits_wall_time(sbx: SandboxClient) -> None:
    start = time.monotonic()
    result = sbx.execute("while True:\n    pass", limits=Limits(wall_time_s=1, cpu_time_s=30))
    elapsed = time.monotonic() - start
    assert result.status is Status.TIMEOUT, result.message
    assert (result.exit_code, result.signal) == (-1, 9)
    assert 1.0 <= result.usage.wall_time_s < 2.0
    assert elapsed < 3.0


def test_sleeping_program_hits_wall_time(sbx: SandboxClient) -> None:
    """Wall time, not CPU time: a program that only sleeps is stopped too."""
    start = time.monotonic()
    result = sbx.execute("sleep 30", language="bash", limits=Limits(wall_time_s=1))
    assert result.status is Status.TIMEOUT, result.message
    assert result.usage.cpu_time_s < 0.5
    assert time.monotonic() - start < 3.0


def test_infinite_loop_hits_cpu_limit(sbx: SandboxClient) -> None:
    start = time.monotonic()
    result = sbx.execute("while True:\n    pass", limits=Limits(cpu_time_s=1, wall_time_s=20))
    elapsed = time.monotonic() - start
    assert result.status is Status.CPU_LIMIT, result.message
    assert result.exit_code == -1
    assert 1.0 <= result.usage.cpu_time_s <= 2.0
    assert elapsed < 6.0


def test_cpu_limit_counts_every_process(sbx: SandboxClient) -> None:
    """Three busy children share one CPU-time budget: the sandbox stops at about the limit, not 3x it."""
    code = (
        "import os\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            pass\n"
        "for _ in range(3):\n"
        "    os.wait()\n"
    )
    start = time.monotonic()
    result = sbx.execute(code, limits=Limits(cpu_time_s=1, wall_time_s=20))
    elapsed = time.monotonic() - start
    assert result.status is Status.CPU_LIMIT, (result.status, result.message)
    assert 1.0 <= result.usage.cpu_time_s <= 2.0
    assert elapsed < 6.0


def test_fork_bomb_is_contained_by_pids(sbx: SandboxClient) -> None:
    max_pids = 16
    start = time.monotonic()
    result, tag = run_tagged(sbx, ":(){ :|:& };:\nsleep 30", language="bash",
                             limits=Limits(max_pids=max_pids, wall_time_s=2))
    elapsed = time.monotonic() - start
    assert result.status is Status.TIMEOUT, (result.status, result.message)
    assert elapsed < 2 + 3
    assert tagged_processes(tag) == []
    after = sbx.execute("print('still here')")
    assert (after.status, after.stdout) == (Status.OK, "still here\n")


def test_forks_stop_below_max_pids(sbx: SandboxClient) -> None:
    max_pids = 8
    code = (
        "import errno, os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, errno.errorcode[e.errno])\n"
    )
    result = sbx.execute(code, limits=Limits(max_pids=max_pids, wall_time_s=3))
    assert result.status is Status.OK, result.stderr
    forked, err = result.stdout.split()
    assert err == "EAGAIN"
    assert 1 <= int(forked) < max_pids


def test_huge_print_hits_output_limit_without_buffering(sbx: SandboxClient) -> None:
    limit = 256 * KIB
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
    rss_before = psutil.Process().memory_info().rss
    result = sbx.execute(code, limits=Limits(output_bytes=limit, wall_time_s=3))
    rss_growth = psutil.Process().memory_info().rss - rss_before
    assert result.status is Status.OUTPUT_LIMIT, result.message
    assert len(result.stdout_bytes) == limit
    assert result.stdout_bytes == b"x" * limit
    assert result.stdout_truncated is True
    assert result.stderr_bytes == b""
    assert rss_growth < 32 * MIB, f"server RSS grew by {rss_growth >> 20} MiB"


def test_output_limit_counts_stdout_and_stderr_together(sbx: SandboxClient) -> None:
    limit = 64 * KIB
    code = (
        "import sys\n"
        "for _ in range(1000):\n"
        "    sys.stdout.write('o' * 1024); sys.stdout.flush()\n"
        "    sys.stderr.write('e' * 1024); sys.stderr.flush()\n"
    )
    result = sbx.execute(code, limits=Limits(output_bytes=limit, wall_time_s=3))
    assert result.status is Status.OUTPUT_LIMIT, result.message
    assert len(result.stdout_bytes) + len(result.stderr_bytes) == limit
    assert set(result.stdout_bytes) <= {ord("o")}
    assert set(result.stderr_bytes) <= {ord("e")}
    assert result.stdout_truncated or result.stderr_truncated


def test_output_exactly_at_the_limit_is_ok(sbx: SandboxClient) -> None:
    limit = 10 * KIB
    result = sbx.execute(f"import sys\nsys.stdout.write('y' * {limit})",
                         limits=Limits(output_bytes=limit))
    assert result.status is Status.OK, result.message
    assert (len(result.stdout_bytes), result.stdout_truncated) == (limit, False)


def test_file_size_limit_truncates_a_child_write(sbx: SandboxClient) -> None:
    limit = 8 * KIB  # whole 512-byte blocks: applied exactly
    result = sbx.execute("head -c 100000 /dev/zero > big.bin\necho rc=$?", language="bash",
                         limits=Limits(file_size_bytes=limit))
    assert result.status is Status.OK, result.message
    assert result.stdout == f"rc={128 + 25}\n"  # head was ended by SIGXFSZ
    assert result.limits.file_size_bytes == limit
    [big] = result.files
    assert (big.path, big.size, big.content, big.truncated) == ("big.bin", limit, bytes(limit), False)


def test_file_size_limit_kills_the_program(sbx: SandboxClient) -> None:
    """The program itself (not a child) writing past the limit is ended by SIGXFSZ: FILE_SIZE_LIMIT."""
    limit = 8 * KIB
    result = sbx.execute("exec head -c 100000 /dev/zero > big.bin", language="bash",
                         limits=Limits(file_size_bytes=limit))
    assert result.status is Status.FILE_SIZE_LIMIT, (result.status, result.message, result.stderr)
    assert (result.exit_code, result.signal) == (-1, 25)
    [big] = result.files
    assert (big.path, big.size) == ("big.bin", limit)


def test_file_size_limit_gives_python_efbig(sbx: SandboxClient) -> None:
    limit = 8 * KIB
    code = (
        "import errno, os\n"
        "fd = os.open('f.bin', os.O_WRONLY | os.O_CREAT)\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        n += os.write(fd, b'z' * 1000)\n"
        "except OSError as e:\n"
        "    print(n, errno.errorcode[e.errno])\n"
    )
    result = sbx.execute(code, limits=Limits(file_size_bytes=limit))
    assert result.status is Status.OK, result.message
    assert result.stdout == f"{limit} EFBIG\n"
    [f] = result.files
    assert (f.path, f.size, f.content) == ("f.bin", limit, b"z" * limit)


def test_scratch_limit_gives_enospc(sbx: SandboxClient) -> None:
    scratch = 1 * MIB
    code = (
        "import errno, os\n"
        "def fill(path):\n"
        "    fd = os.open(path, os.O_WRONLY | os.O_CREAT)\n"
        "    n = 0\n"
        "    try:\n"
        "        while True:\n"
        "            n += os.write(fd, b's' * 4096)\n"
        "    except OSError as e:\n"
        "        return n, errno.errorcode[e.errno]\n"
        "    finally:\n"
        "        os.close(fd)\n"
        "n, err = fill('/work/fill.bin')\n"
        "print(n, err)\n"
        "print(*fill('/tmp/more.bin'))\n"
    )
    result = sbx.execute(code, limits=Limits(scratch_bytes=scratch, file_size_bytes=16 * MIB))
    assert result.status is Status.OK, (result.message, result.stderr)
    first, second = result.stdout.splitlines()
    written, err = first.split()
    assert err == "ENOSPC"
    assert scratch // 2 <= int(written) <= scratch
    more, err2 = second.split()
    assert err2 == "ENOSPC"
    assert scratch // 2 <= int(more) <= scratch  # /tmp is a tmpfs of its own, of the same size


# ---- lifetime -----------------------------------------------------------------------------------------------
def test_deadline_exceeded_call_leaves_nothing(
    sbx: SandboxClient, server: RunningServer, assert_no_leftovers: Callable[[RunningServer], None]
) -> None:
    tag = uuid.uuid4().hex
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        sbx.execute("import time\ntime.sleep(30)", env={TAG_VAR: tag}, limits=Limits(wall_time_s=30),
                    timeout=1)
    assert time.monotonic() - start < 3
    assert_no_leftovers(server)
    assert tagged_processes(tag) == []
    assert server.app.admission.running == 0


def test_cancelled_stream_leaves_nothing(
    sbx: SandboxClient, server: RunningServer, assert_no_leftovers: Callable[[RunningServer], None]
) -> None:
    tag = uuid.uuid4().hex
    stream = sbx.execute_stream(
        "import subprocess, sys, time\n"
        "subprocess.Popen(['sleep', '30'])\n"
        "print('started', file=sys.stderr, flush=True)\n"
        "time.sleep(30)\n",
        env={TAG_VAR: tag}, limits=Limits(wall_time_s=30), timeout=20)
    first = next(stream)
    assert first == OutputChunk(stream="stderr", data=b"started\n")
    # The check sees the sandbox (program and sleep) while it runs; on a loaded host /proc may show the child a
    # moment after the program's first output.
    seen_by = time.monotonic() + 5
    while len(tagged_processes(tag)) < 2:
        assert time.monotonic() < seen_by, tagged_processes(tag)
        time.sleep(0.05)
    stream.close()  # type: ignore[attr-defined]  # a generator; closing it cancels the call
    assert_no_leftovers(server)
    deadline = time.monotonic() + 5
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tagged_processes(tag) == []
    assert server.app.admission.running == 0


def pending_queue_gets() -> list[asyncio.Task[object]]:
    """Unfinished asyncio tasks (of any loop in this process, the server's included) awaiting Queue.get."""
    return [
        obj for obj in gc.get_objects()
        if isinstance(obj, asyncio.Task) and not obj.done()
        and getattr(obj.get_coro(), "__qualname__", "") == "Queue.get"
    ]


def test_cancelled_stream_leaves_no_pending_task(
    sbx: SandboxClient, server: RunningServer, assert_no_leftovers: Callable[[RunningServer], None]
) -> None:
    """The server's side of a cancelled ExecuteStream must not leave a task waiting forever (a leak per call,
    and at loop close an 'Event loop is closed' error raised from a garbage-collected coroutine)."""
    stream = sbx.execute_stream("import sys, time\nprint('started', file=sys.stderr, flush=True)\ntime.sleep(30)",
                                limits=Limits(wall_time_s=30), timeout=20)
    assert next(stream) == OutputChunk(stream="stderr", data=b"started\n")
    stream.close()  # type: ignore[attr-defined]  # a generator
    assert_no_leftovers(server)
    deadline = time.monotonic() + 2
    while pending_queue_gets() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending_queue_gets() == []


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("bash", "nohup sleep 100 >/dev/null 2>&1 &\nsetsid sleep 100 >/dev/null 2>&1 &\n"
                 "(sleep 100 &) \necho started"),
        ("python", "import os, subprocess\n"
                   "subprocess.Popen(['sleep', '100'], start_new_session=True)\n"
                   "if os.fork() == 0:\n"
                   "    os.setsid()\n"
                   "    if os.fork() == 0:\n"
                   "        import time; time.sleep(100)\n"
                   "    os._exit(0)\n"
                   "print('started')"),
    ],
)
def test_nothing_outlives_the_request(sbx: SandboxClient, server: RunningServer, language: str,
                                      code: str) -> None:
    since = time.time() - 1
    result, tag = run_tagged(sbx, code, language=language, limits=Limits(wall_time_s=5))
    assert (result.status, result.stdout) == (Status.OK, "started\n"), result.stderr
    assert result.usage.wall_time_s < 3  # the background sleepers did not hold the call open
    assert tagged_processes(tag) == []
    assert leftover_sandbox_processes(server, since) == []


def test_eight_concurrent_executions(sbx: SandboxClient) -> None:
    def one(i: int) -> ExecutionResult:
        return sbx.execute(f"import time\ntime.sleep(0.3)\nprint({i})", limits=Limits(wall_time_s=10))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    assert [(r.status, r.stdout) for r in results] == [(Status.OK, f"{i}\n") for i in range(8)]
    assert len({r.execution_id for r in results}) == 8


def test_stream_yields_chunks_in_order(sbx: SandboxClient) -> None:
    """Each line arrives while the program runs, stdout and stderr apart, in the order they were written.
    (Chunk boundaries are free; the moment each line is complete is what a streaming client sees.)"""
    code = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print('out', i, flush=True)\n"
        "    time.sleep(0.15)\n"
        "    print('err', i, file=sys.stderr, flush=True)\n"
        "    time.sleep(0.15)\n"
    )
    items: list[tuple[float, OutputChunk | DisplayData | ExecutionResult]] = [
        (time.monotonic(), item) for item in sbx.execute_stream(code, limits=Limits(wall_time_s=5))
    ]
    *chunks, (end, result) = items
    assert isinstance(result, ExecutionResult)
    assert result.status is Status.OK, result.message
    pending = {"stdout": b"", "stderr": b""}
    lines: list[tuple[str, bytes]] = []
    first_line_at = 0.0
    for at, chunk in chunks:
        assert isinstance(chunk, OutputChunk)
        assert chunk.data
        pending[chunk.stream] += chunk.data
        while b"\n" in pending[chunk.stream]:
            line, _, pending[chunk.stream] = pending[chunk.stream].partition(b"\n")
            lines.append((chunk.stream, line))
            first_line_at = first_line_at or at
    assert lines == [
        (stream, f"{name} {i}".encode())
        for i in range(3) for stream, name in (("stdout", "out"), ("stderr", "err"))
    ]
    assert pending == {"stdout": b"", "stderr": b""}
    assert result.stdout == "out 0\nout 1\nout 2\n"
    assert result.stderr == "err 0\nerr 1\nerr 2\n"
    assert end - first_line_at >= 0.6  # the first line came while the program was still running


def test_stream_output_limit(sbx: SandboxClient) -> None:
    limit = 64 * KIB
    items = list(sbx.execute_stream("import sys\nfor _ in range(100):\n    sys.stdout.write('q' * 65536)",
                                    limits=Limits(output_bytes=limit, wall_time_s=3)))
    *chunks, result = items
    assert isinstance(result, ExecutionResult)
    assert result.status is Status.OUTPUT_LIMIT
    streamed = b"".join(c.data for c in chunks if isinstance(c, OutputChunk))
    assert streamed == b"q" * limit
    assert result.stdout_bytes == streamed
    assert result.stdout_truncated is True


def test_stream_deadline_leaves_nothing(sbx: SandboxClient, server: RunningServer,
                                        assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        list(sbx.execute_stream("import time\ntime.sleep(30)", limits=Limits(wall_time_s=30), timeout=1))
    assert time.monotonic() - start < 3
    assert_no_leftovers(server)
    assert server.app.admission.running == 0


def test_server_still_healthy_after_limits(sbx: SandboxClient) -> None:
    """A run of limit violations back to back leaves a server that runs the next request normally."""
    for code, limits, status in [
        ("while True:\n    pass", Limits(cpu_time_s=0.3, wall_time_s=5), Status.CPU_LIMIT),
        ("x = []\nwhile True:\n    x.append(b'm' * (1 << 22))", Limits(memory_bytes=32 * MIB, wall_time_s=3),
         Status.MEMORY_LIMIT),
        ("print('z' * 100000)", Limits(output_bytes=1000), Status.OUTPUT_LIMIT),
        ("import time\ntime.sleep(10)", Limits(wall_time_s=0.3), Status.TIMEOUT),
    ]:
        assert sbx.execute(code, limits=limits).status is status
    result = sbx.execute("import errno\nprint(errno.ENOSPC)")
    assert (result.status, result.stdout) == (Status.OK, f"{errno.ENOSPC}\n")
