"""The warm Python path (docs/warm-path.md): what it must add to the backend contract.

The contract and isolation suites already run against it (the "nsjail-fresh" and "nsjail-fork" params of
``conftest.BACKENDS``); this module checks, in both modes, what only the warm path can get wrong: that one
request cannot reach the next through the zygote (files, processes, environment, cwd, module state, random
state); that the zygote never holds a request's data, a secret, or anything of the host; that a program cannot
tell a warm start from a cold one (the same program gives the same result on a cold server); recycling, crash
recovery, the fallback to cold jails; and that every limit holds on executions that really took the warm path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cold_cases import SAME_AS_COLD

from sandbox_client import AsyncSandboxClient, ExecutionResult, Limits, OutputChunk, SandboxClient, Status
from sandbox_server.backends import native
from sandbox_server.backends.cgroups import CgroupLimits, CgroupManager, detect
from sandbox_server.backends.nsjail import TOP_LEVEL_DIRS, MountKind, NsjailBackend, host_view
from sandbox_server.backends.warm import POOL_CGROUP_SUFFIX, WarmPython
from sandbox_server.testing import RunningServer, server_in_thread

KIB = 1024
MIB = 1024 * KIB
ROOTFS = Path("/var/lib/sandbox-server/rootfs/bookworm")
INIT_CMDLINE = "print(open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode())"


# ---- servers and helpers ----------------------------------------------------------------------------------
def start(backend_policies: Path, mode: str | None = None, **overrides: Any) -> Iterator[RunningServer]:
    """A server of its own; ``mode`` one of MODES ("python-init": the fork mode with the Python PID 1, what a
    host without a C compiler runs)."""
    if mode is not None:
        overrides["warm_python_mode"] = mode.removesuffix("-python-init")
    with pytest.MonkeyPatch.context() as patch:
        if mode is not None and mode.endswith("-python-init"):
            async def no_compiler(state_dir: Path) -> tuple[Path | None, str]:
                return None, "no C compiler (cc) on this host"

            patch.setattr(native, "build", no_compiler)
        with server_in_thread(backend="nsjail", max_running=4, max_queued=32, policies_dir=backend_policies,
                              incidents={"enabled": False}, **overrides) as srv:
            yield srv


# The native PID 1 in both modes, and the Python one (kept for hosts without a compiler) in the fork mode
MODES = ["fork", "fresh", "fork-python-init"]


@pytest.fixture(scope="module", params=MODES)
def warm(backend_policies: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    yield from start(backend_policies, request.param, warm_python=True)


@pytest.fixture(scope="module")
def cold(backend_policies: Path) -> Iterator[RunningServer]:
    yield from start(backend_policies, warm_python=False, warm_javascript=False)


@pytest.fixture(scope="module", params=MODES)
def unpooled(backend_policies: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """Every sandbox forked when its request arrives, after the one before it has run."""
    yield from start(backend_policies, request.param, warm_python=True, warm_python_pool=0,
                     warm_python_pool_max=0)


def warm_path(srv: RunningServer) -> WarmPython:
    backend = srv.app.backend
    assert isinstance(backend, NsjailBackend)
    assert backend.warm is not None, backend.warm_problem
    return backend.warm


def test_pid1_is_the_one_asked_for(warm: RunningServer) -> None:
    """The native PID 1 wherever a compiler could build it; the Python one, with the reason, where not."""
    warm_py = warm_path(warm)
    assert warm_py.zygote is not None
    if warm_py.native is None:
        assert warm_py.zygote.init == "python"
        assert "PID 1 python (no C compiler" in warm_py.describe()
    else:
        assert warm_py.zygote.init == "native"
        assert "PID 1 native" in warm_py.describe()


def zygote_pid(srv: RunningServer, timeout_s: float = 10.0) -> int:
    """The pid of the server's ready zygote (waiting for one to be ready)."""
    warm_py = warm_path(srv)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        z = warm_py.zygote
        if z is not None and z.alive():
            return z.pid
        time.sleep(0.05)
    raise AssertionError(f"no zygote: {warm_py.problem}")


def run(srv: RunningServer, code: str, *, warm_expected: bool | None = True, **kwargs: Any) -> ExecutionResult:
    """Execute on ``srv``; with ``warm_expected`` set, check which path the execution took."""
    backend = srv.app.backend
    assert isinstance(backend, NsjailBackend)
    before = backend.warm.launched if backend.warm is not None else 0
    with SandboxClient(srv.target, timeout=60) as sbx:
        result = sbx.execute(code, **kwargs)
    after = backend.warm.launched if backend.warm is not None else 0
    if warm_expected is not None:
        assert (after - before == 1) is warm_expected, f"warm path taken: {after - before}, expected {warm_expected}"
    return result


def checked(srv: RunningServer, code: str, **kwargs: Any) -> str:
    result = run(srv, code, **kwargs)
    assert result.status is Status.OK, (result.status, result.message, result.stderr)
    return str(result.stdout)


def memory_of(pid: int) -> bytes:
    """Every private readable mapping of a process (root reads another's memory through /proc)."""
    out = bytearray()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or "p" not in fields[1] or (len(fields) > 5 and fields[5] == "[vvar]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                out += mem.read(end - start)
            except OSError:
                continue
    return bytes(out)


# ---- one request cannot reach the next -------------------------------------------------------------------
FIRST = """
import json, os, random, subprocess, sys
open('/work/left-behind', 'w').write('x')
open('/tmp/left-behind', 'w').write('x')
open('/dev/shm/left-behind', 'w').write('x')
os.environ['LEFT_BEHIND'] = 'yes'
os.chdir('/tmp')
json.dumps = lambda *a, **k: 'tampered'
os.getcwd = lambda: 'tampered'
sys.modules['left_behind'] = sys
sys.path.append('/tmp')
random.seed(1234)
print(random.random())
subprocess.Popen(['sleep', '30'], start_new_session=True)
"""
SECOND = """
import json, os, random, sys
print(json.dumps({
    'files': [p for p in ('/work/left-behind', '/tmp/left-behind', '/dev/shm/left-behind') if os.path.exists(p)],
    'env': os.environ.get('LEFT_BEHIND'),
    'cwd': os.getcwd(),
    'dumps': json.dumps([1]),
    'module': 'left_behind' in sys.modules,
    'path': '/tmp' in sys.path,
    'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
    'me': os.getpid(),
    'random': random.random(),
}))
"""


def test_consecutive_requests_share_nothing(warm: RunningServer,
                                            assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    share_nothing(warm, assert_no_leftovers)


def test_consecutive_unpooled_requests_share_nothing(unpooled: RunningServer,
                                                     assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    share_nothing(unpooled, assert_no_leftovers)


def share_nothing(srv: RunningServer, assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    """A first program litters its files, env, cwd, modules, random state and a background process; the next
    one (forked after it has run, on the unpooled server) finds none of it."""
    seeded = float(checked(srv, FIRST))
    seen = json.loads(checked(srv, SECOND))
    assert seen["files"] == []
    assert seen["env"] is None
    assert seen["cwd"] == "/work"
    assert seen["dumps"] == "[1]"
    assert seen["module"] is False
    assert seen["path"] is False
    assert seen["pids"] == [1, seen["me"]]  # its init and itself: no sleep left over
    assert seen["random"] != seeded
    assert_no_leftovers(srv)


def test_random_state_differs_between_sandboxes(unpooled: RunningServer) -> None:
    """Every fork reseeds random from os.urandom: no two programs draw the same numbers."""
    draws = {checked(unpooled, "import random\nprint(random.getrandbits(64))") for _ in range(5)}
    assert len(draws) == 5


def test_a_program_cannot_reach_its_zygote(warm: RunningServer) -> None:
    """The program runs below its sandbox's init, in PID, mount and network namespaces the zygote is not in:
    its parent is PID 1, it sees no process but its own, and signalling the zygote's pid reaches nothing."""
    zpid = zygote_pid(warm)
    code = (
        "import os, json\n"
        f"try:\n    os.kill({zpid}, 9)\n    outcome = 'sent'\nexcept OSError as e:\n    outcome = type(e).__name__\n"
        "print(json.dumps([os.getppid(), outcome, sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))\n"
    )
    ppid, outcome, pids = json.loads(checked(warm, code))
    assert ppid == 1
    assert pids == [1, 2]
    assert zpid > 2  # so the pid the program aimed at does not exist in its namespace
    assert outcome == "ProcessLookupError"
    assert zygote_pid(warm) == zpid  # still alive, still the same


# ---- the zygote holds nothing -------------------------------------------------------------------------------
def quiet_fds(srv: RunningServer, pid: int, timeout_s: float = 10.0) -> dict[str, str]:
    """The zygote's open fds while it forks nothing: forking, it holds that sandbox's socket for a moment (the
    pool refills when an execution ends, so a fork may be under way just as a test looks)."""
    warm_py = warm_path(srv)
    deadline = time.monotonic() + timeout_s
    while True:
        while warm_py._filling and time.monotonic() < deadline:
            time.sleep(0.01)
        links = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        if not warm_py._filling or time.monotonic() >= deadline:  # none began while we read
            return links


def test_zygote_has_no_environment_and_no_files(warm: RunningServer) -> None:
    pid = zygote_pid(warm)
    assert Path(f"/proc/{pid}/environ").read_bytes() == b""
    links = quiet_fds(warm, pid)
    sockets = [fd for fd, target in links.items() if target.startswith("socket:")]
    # /dev/null for stdio; a pidfd per running sandbox (the Python loop), or one signalfd (the native loop), to
    # reap each sandbox the moment it exits
    others = {fd: t for fd, t in links.items()
              if fd not in sockets and t not in ("/dev/null", "anon_inode:[pidfd]", "anon_inode:[signalfd]")}
    assert len(sockets) == 1, links  # the control socket
    if warm.settings.warm_python_mode == "fresh":  # and its own code, sealed, for the interpreters it starts
        program = [fd for fd, t in others.items() if t == "/memfd:sandbox-program (deleted)"]
        assert len(program) == 1, links
        fd = os.open(f"/proc/{pid}/fd/{program[0]}", os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):
                os.write(fd, b"x")  # sealed: no one can change what the next sandbox runs
        finally:
            os.close(fd)
        del others[program[0]]
    assert others == {}, links
    status = Path(f"/proc/{pid}/status").read_text()
    assert "CapBnd:\t0000000000000000" in status  # nothing it forks can regain a capability by exec


def test_zygote_sees_nothing_of_the_host(warm: RunningServer) -> None:
    """Its root is the read-only template a jail sees: no server code, no state dir, no host /etc."""
    pid = zygote_pid(warm)
    root = Path(f"/proc/{pid}/root")
    top = {d.lstrip("/") for d in TOP_LEVEL_DIRS if os.path.islink(d) or os.path.isdir(d)}
    assert sorted(p.name for p in root.iterdir()) == sorted(top | {"usr", "etc", "dev", "proc", "tmp", "work"})
    assert sorted(p.name for p in (root / "etc").iterdir()) <= ["group", "hosts", "ld.so.cache", "localtime",
                                                                 "passwd"]
    assert not (root / "proc" / "self").exists()  # no /proc mounted in its view
    assert not (root / str(warm.settings.state_dir).lstrip("/")).exists()
    with pytest.raises(OSError, match="Read-only file system"):
        (root / "tmp" / "probe").write_text("x")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [b"/usr/bin/python3", b"-B", b"-s"]  # the runtime's own interpreter and flags


def test_zygote_view_is_host_view(warm: RunningServer) -> None:
    """The zygote's root is built from nsjail.host_view, the list the cold path's nsjail arguments come from."""
    backend = warm.app.backend
    assert isinstance(backend, NsjailBackend)
    assert backend.layout is not None
    root = Path(f"/proc/{zygote_pid(warm)}/root")
    for view in host_view(backend.layout):
        inside = root / view.target.lstrip("/")
        if view.kind is MountKind.SYMLINK:
            assert os.readlink(inside) == view.source
        else:
            assert os.stat(inside).st_ino == os.stat(view.source).st_ino, view  # the host's file, bound


def test_zygote_never_holds_request_data(unpooled: RunningServer) -> None:
    """A request's env values and code reach its sandbox, never the zygote's memory (it only ever receives
    an fd), so no later fork can inherit them."""
    secret = "secret-" + uuid.uuid4().hex
    marker = "marker_" + uuid.uuid4().hex
    out = checked(unpooled, f"import os\n{marker} = 1\nprint(os.environ['API_KEY'] == {secret!r})",
                  env={"API_KEY": secret})
    assert out == "True\n"
    memory = memory_of(zygote_pid(unpooled))
    assert len(memory) > 1 * MIB
    assert secret.encode() not in memory
    assert marker.encode() not in memory


def test_server_environment_never_reaches_the_zygote(backend_policies: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-" + uuid.uuid4().hex
    monkeypatch.setenv("WARM_TEST_CANARY", canary)
    for srv in start(backend_policies, warm_python=True):
        pid = zygote_pid(srv)
        assert canary.encode() not in memory_of(pid)
        assert canary not in checked(srv, "import os\nprint(dict(os.environ))")


# ---- a warm start looks like a cold one -----------------------------------------------------------------------
def comparable(result: ExecutionResult) -> tuple[object, ...]:
    return (result.status, result.exit_code, result.signal, result.stdout, result.stderr,
            [(f.path, f.content) for f in result.files])


@pytest.mark.parametrize("name", sorted(SAME_AS_COLD))
def test_same_result_as_a_cold_start(name: str, warm: RunningServer, cold: RunningServer) -> None:
    code, kwargs = SAME_AS_COLD[name]
    warm_result = run(warm, code, warm_expected=True, **kwargs)
    cold_result = run(cold, code, warm_expected=None, **kwargs)
    assert comparable(warm_result) == comparable(cold_result)


def test_what_differs_from_a_cold_start(warm: RunningServer, cold: RunningServer) -> None:
    """The documented differences, and nothing more among these: the identity uid map (no user namespace),
    and PID 1 (a fork of the zygote instead of perl)."""
    code = "print(open('/proc/self/uid_map').read().split())\n" + INIT_CMDLINE
    assert checked(warm, code).splitlines() == ["['0', '0', '4294967295']", "sandbox-init"]
    assert checked(cold, code, warm_expected=None).splitlines() == ["['65534', '65534', '1']", "/usr/bin/perl"]


# ---- life of the zygote -----------------------------------------------------------------------------------------
def test_recycled_after_n_forks(backend_policies: Path) -> None:
    """A fresh zygote (its own hash seed and ASLR layout) takes over after ``warm_python_recycle_after`` forks;
    the old one drains and exits."""
    for srv in start(backend_policies, warm_python=True, warm_python_recycle_after=3, warm_python_pool=0,
                     warm_python_pool_max=0, warm_python_mode="fork"):  # fresh interpreters have a seed each
        first = zygote_pid(srv)
        code = "print(hash('same string'))"
        old_seeds = {checked(srv, code) for _ in range(3)}
        deadline = time.monotonic() + 30
        while zygote_pid(srv) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zygote_pid(srv) != first
        assert warm_path(srv).generation == 2
        new_seeds = {checked(srv, code) for _ in range(2)}
        assert len(old_seeds) == len(new_seeds) == 1  # one seed per zygote...
        assert old_seeds != new_seeds  # ...each its own
        deadline = time.monotonic() + 30
        while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{first}").exists(), "the retired zygote did not exit"


def test_zygote_crash_recovery(backend_policies: Path,
                               assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    """The zygote killed under a running execution: that execution finishes normally (its sandbox does not
    depend on the zygote); the next runs cold while a new zygote starts; then warm again."""
    for srv in start(backend_policies, warm_python=True, warm_python_pool=0, warm_python_pool_max=0):
        first = zygote_pid(srv)
        with SandboxClient(srv.target, timeout=60) as sbx:
            stream = sbx.execute_stream("import sys, time\nprint('started', flush=True)\ntime.sleep(0.5)\n"
                                        "print('done')", limits=Limits(wall_time_s=10))
            assert next(stream) == OutputChunk(stream="stdout", data=b"started\n")
            os.kill(first, signal.SIGKILL)  # the zygote this test's own server started
            *_, result = list(stream)
        assert isinstance(result, ExecutionResult)
        assert (result.status, result.stdout) == (Status.OK, "started\ndone\n")
        after = run(srv, INIT_CMDLINE, warm_expected=None)
        assert after.status is Status.OK, after.message
        assert after.stdout in ("/usr/bin/perl\n", "sandbox-init\n")  # cold, unless the restart already won
        second = zygote_pid(srv)
        assert second != first
        assert checked(srv, INIT_CMDLINE) == "sandbox-init\n"
        assert "zygote pid" in srv.app.backend.describe()["warm python"]
        assert_no_leftovers(srv)


def test_start_removes_pools_of_crashed_servers(backend_policies: Path) -> None:
    """A crashed server's pool cgroups (empty once its sandboxes saw it go) are removed by the next start, even
    when the crashed server's own parent was cleaned away by someone else; a live server's are left alone."""
    unique = uuid.uuid4().hex[:8]
    abandoned = CgroupManager(detect(f"sandbox-crashed-{unique}{POOL_CGROUP_SUFFIX}"))
    abandoned.setup()
    abandoned.create("pool-left-behind", CgroupLimits(64 * MIB, 8, 1.0))
    live = CgroupManager(detect(f"sandbox-alive-{unique}"))
    live_pool = CgroupManager(detect(f"sandbox-alive-{unique}{POOL_CGROUP_SUFFIX}"))
    live.setup()
    live_pool.setup()
    try:
        for _ in start(backend_policies, warm_python=True):
            assert not any(d.exists() for d in abandoned.hierarchy.dirs())
            assert all(d.exists() for d in live_pool.hierarchy.dirs())
    finally:
        for manager in (abandoned, live_pool, live):
            manager.reap()
            manager.remove_parents()


def test_closed_with_the_server(backend_policies: Path) -> None:
    for srv in start(backend_policies, warm_python=True):
        pid = zygote_pid(srv)
        checked(srv, "print(1)")
        pool = [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]
        assert pool, "pooled sandboxes are children of the zygote"
    assert not Path(f"/proc/{pid}").exists()
    for child in pool:
        assert not Path(f"/proc/{child}").exists()


def wait_for_ready(warm_py: WarmPython, count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(warm_py._pool) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(warm_py._pool) == count, f"{len(warm_py._pool)} ready, expected {count}: {warm_py.describe()}"


def test_pool_grows_to_the_load_and_a_burst_finds_it_ready(backend_policies: Path) -> None:
    """Four executions at once (the server's max_running) make the pool keep four ready (above its minimum of
    one, below its maximum of six); the next burst of four then forks nothing on its request's path."""
    for srv in start(backend_policies, warm_python=True, warm_python_pool=1, warm_python_pool_max=6):
        warm_py = warm_path(srv)
        zygote_pid(srv)
        wait_for_ready(warm_py, 1)

        async def burst(target: str = srv.target) -> list[ExecutionResult]:
            async with AsyncSandboxClient(target, timeout=60) as sbx:
                return list(await asyncio.gather(*(sbx.execute("import time; time.sleep(0.3); print('ok')")
                                                   for _ in range(4))))

        assert [r.stdout for r in asyncio.run(burst())] == ["ok\n"] * 4
        # An execution is in flight until its report, which its reply waits for; its teardown, after the reply,
        # no longer counts (a burst started then would have counted as a fifth to eighth, and grown the pool)
        assert warm_py.sizer.in_flight == 0
        wait_for_ready(warm_py, 4)
        forks = warm_py.zygote.forks if warm_py.zygote else 0
        launched = warm_py.launched
        assert [r.stdout for r in asyncio.run(burst())] == ["ok\n"] * 4
        assert warm_py.launched == launched + 4
        assert warm_py.zygote is not None
        # the burst took the four ready ones; what the zygote forked since is the refill, after each launch
        assert warm_py.zygote.forks - forks <= 4
        assert "target 4" in warm_py.describe()


def test_host_memory_bounds_the_pool(backend_policies: Path) -> None:
    """With almost none of the host's memory for the pool, nothing is kept ready, whatever the minimum says:
    executions still take the warm path, each forked when it arrives."""
    for srv in start(backend_policies, warm_python=True, warm_python_pool=3,
                     warm_python_pool_memory_fraction=1e-9):
        warm_py = warm_path(srv)
        zygote_pid(srv)
        assert checked(srv, "print(1)") == "1\n"
        time.sleep(1.5)  # a tending round
        assert len(warm_py._pool) == 0
        assert warm_py.sizer.target(0) == 0


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# ---- what runs cold -----------------------------------------------------------------------------------------------
def test_pid_1_is_the_sandbox_user_before_any_user_code(warm: RunningServer) -> None:
    """PID 1 takes the sandbox user before it lets the program go: the program's first instruction already sees
    it so (it could otherwise catch a root PID 1 for a moment; the red-team case info-foreign-processes)."""
    python = "print(open('/proc/1/status').read().split('Uid:')[1].split()[0])"
    js = "console.log(require('fs').readFileSync('/proc/1/status', 'utf8').split('Uid:')[1].trim().split(/\\s+/)[0])"
    for _ in range(15):
        assert checked(warm, python) == "65534\n"
        assert checked(warm, js, language="javascript", warm_expected=None) == "65534\n"


def test_bash_runs_cold(warm: RunningServer) -> None:
    code = "tr '\\0' '\\n' < /proc/1/cmdline | head -1"
    assert checked(warm, code, language="bash", warm_expected=False) == "/usr/bin/perl\n"


# ---- JavaScript: a node started ahead per sandbox -------------------------------------------------------------
JS_INIT_CMDLINE = "console.log(require('fs').readFileSync('/proc/1/cmdline', 'utf8').split('\\0')[0])"
JS_SAME_AS_COLD: dict[str, tuple[str, dict[str, Any]]] = {
    "main module": ("console.log(JSON.stringify([process.argv, process.cwd(), require.main === module, __filename, "
                    "__dirname, module.id, process.execArgv, process.argv0]))", {}),
    "environment": ("console.log(JSON.stringify(Object.entries(process.env).sort()))",
                    {"env": {"ONE": "1", "UNICODE": "héllo ✓", "EMPTY": ""}}),
    "time zone": ("console.log(new Date(0).toString(), Intl.DateTimeFormat().resolvedOptions().timeZone)",
                  {"env": {"TZ": "Europe/Paris"}}),
    "identity": ("const os = require('os'); console.log(process.getuid(), process.getgid(), process.getgroups(), "
                 "process.pid, process.ppid, os.hostname(), os.userInfo().username, os.homedir(), "
                 "os.getPriority())", {}),
    "limits": ("console.log(require('fs').readFileSync('/proc/self/limits', 'utf8'))", {}),
    "stdin": ("let d = ''; process.stdin.on('data', c => d += c).on('end', () => console.log(d.length, "
              "JSON.stringify(d.slice(0, 12))))", {"stdin": "first line\nsecond ✓\n"}),
    "exit code": ("process.exitCode = 7; console.log('set')", {}),
    "stderr and status": ("console.error('to stderr'); process.exit(3)", {}),
    "files": ("require('fs').writeFileSync('out.txt', 'written'); console.log(require('fs').readdirSync('.'))", {}),
    "fds": ("console.log(require('fs').readdirSync('/proc/self/fd').length)", {}),
    "privileges": ("console.log(require('fs').readFileSync('/proc/self/status', 'utf8').split('\\n').filter(l => "
                   "/^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp)/.test(l)).join('\\n'))", {}),
}


def js_launched(srv: RunningServer) -> int:
    backend = srv.app.backend
    assert isinstance(backend, NsjailBackend)
    return backend.warm_js.launched if backend.warm_js is not None else 0


def test_javascript_runs_warm(warm: RunningServer) -> None:
    before = js_launched(warm)
    assert checked(warm, JS_INIT_CMDLINE, language="javascript", warm_expected=None) == "sandbox-init\n"
    assert js_launched(warm) == before + 1


@pytest.mark.parametrize("name", sorted(JS_SAME_AS_COLD))
def test_javascript_same_result_as_a_cold_start(name: str, warm: RunningServer, cold: RunningServer) -> None:
    code, kwargs = JS_SAME_AS_COLD[name]
    before = js_launched(warm)
    warm_result = run(warm, code, language="javascript", warm_expected=None, **kwargs)
    assert js_launched(warm) == before + 1
    cold_result = run(cold, code, language="javascript", warm_expected=None, **kwargs)
    assert comparable(warm_result) == comparable(cold_result)


def test_javascript_uncaught_error_as_a_cold_start(warm: RunningServer, cold: RunningServer) -> None:
    """The same status and message; the stack's last frames differ (node -e's own below runMain's)."""
    code = "function f() { throw new TypeError('boom') }\nf()"
    results = [run(srv, code, language="javascript", warm_expected=None) for srv in (warm, cold)]
    assert {(r.status, r.exit_code) for r in results} == {(Status.NONZERO_EXIT, 1)}
    heads = [r.stderr.split("    at Module._compile")[0] for r in results]
    assert heads[0] == heads[1]
    assert "TypeError: boom" in heads[0]


@pytest.mark.parametrize(("name", "value"), [("NODE_OPTIONS", "--max-old-space-size=64"), ("UV_THREADPOOL_SIZE", "2"),
                                             ("LC_CTYPE", "C.UTF-8"), ("OPENSSL_CONF", "/dev/null")])
def test_javascript_startup_environment_runs_cold(warm: RunningServer, name: str, value: str) -> None:
    before = js_launched(warm)
    result = run(warm, JS_INIT_CMDLINE, language="javascript", warm_expected=None, env={name: value})
    assert (result.status, result.stdout) == (Status.OK, "/usr/bin/perl\n"), result.stderr
    assert js_launched(warm) == before


@pytest.mark.parametrize(("name", "value"), [
    ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONPATH", "/work/lib"), ("LC_CTYPE", "C.UTF-8"), ("LANGUAGE", "fr"),
    ("SETUPTOOLS_USE_DISTUTILS", "stdlib"),
])
def test_startup_environment_runs_cold(warm: RunningServer, name: str, value: str) -> None:
    """Variables the interpreter reads while it starts cannot act on an interpreter already started."""
    out = checked(warm, INIT_CMDLINE + f"\nimport os\nprint(os.environ[{name!r}])", env={name: value},
                  warm_expected=False)
    assert out == f"/usr/bin/perl\n{value}\n"


@pytest.mark.skipif(not (ROOTFS / "usr").is_dir(), reason="no rootfs built (the docker tests build it)")
def test_rootfs_runs_cold(backend_policies: Path) -> None:
    for srv in start(backend_policies, warm_python=True, rootfs=ROOTFS):
        backend = srv.app.backend
        assert isinstance(backend, NsjailBackend)
        assert backend.warm is None
        assert "rootfs" in backend.describe()["warm python"]
        assert checked(srv, INIT_CMDLINE, warm_expected=None) == "/usr/bin/perl\n"


def test_large_environments(backend_policies: Path) -> None:
    """An environment beyond the sandbox's receive buffer is still delivered whole; one beyond a socket buffer
    runs cold."""
    for srv in start(backend_policies, warm_python=True, caps={"env_bytes": 1 * MIB, "env_vars": 64}):
        code = "import os\nprint(sum(len(v) for k, v in os.environ.items() if k.startswith('BIG')))"
        big = {f"BIG{i}": "v" * 30_000 for i in range(5)}
        assert checked(srv, code, env=big) == "150000\n"
        huge = {f"BIG{i}": "v" * 30_000 for i in range(20)}
        assert checked(srv, code, env=huge, warm_expected=False) == "600000\n"


def test_zygote_that_cannot_start_leaves_python_cold(backend_policies: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail safe: a zygote that fails to start (here: a module it cannot import) turns the warm path off, with
    the reason in describe(); Python runs in cold jails meanwhile."""
    monkeypatch.setattr("sandbox_server.backends.warm.PRELOAD", ("no_such_module_anywhere",))
    for srv in start(backend_policies, warm_python=True, warm_python_mode="fork"):  # fresh mode preloads none
        described = srv.app.backend.describe()["warm python"]
        assert "no_such_module_anywhere" in described, described
        assert checked(srv, INIT_CMDLINE, warm_expected=False) == "/usr/bin/perl\n"


def test_describe(warm: RunningServer, cold: RunningServer) -> None:
    mode = warm.settings.warm_python_mode
    assert warm.app.backend.describe()["warm python"].startswith(f"on, {mode} mode: zygote pid")
    assert cold.app.backend.describe()["warm python"].startswith("off")


# ---- every limit, warm ------------------------------------------------------------------------------------------
def test_memory_limit(warm: RunningServer) -> None:
    result = run(warm, "x = []\nwhile True:\n    x.append(b'm' * (4 << 20))",
                 limits=Limits(memory_bytes=48 * MIB, wall_time_s=5))
    assert result.status is Status.MEMORY_LIMIT, (result.status, result.message)
    assert 0 < result.usage.peak_memory_bytes <= 48 * MIB


def test_cpu_limit(warm: RunningServer) -> None:
    result = run(warm, "while True:\n    pass", limits=Limits(cpu_time_s=0.5, wall_time_s=10))
    assert result.status is Status.CPU_LIMIT, (result.status, result.message)
    assert 0.5 <= result.usage.cpu_time_s <= 1.5


def test_wall_time_limit(warm: RunningServer) -> None:
    start_at = time.monotonic()
    result = run(warm, "import time\ntime.sleep(30)", limits=Limits(wall_time_s=0.5))
    assert result.status is Status.TIMEOUT, (result.status, result.message)
    assert time.monotonic() - start_at < 3


def test_pids_limit(warm: RunningServer) -> None:
    code = ("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    print(n, e.errno)")
    out = checked(warm, code, limits=Limits(max_pids=5, wall_time_s=5))
    forked, err = out.split()
    assert (int(forked), int(err)) == (4, 11)  # the program is one of its 5 pids; EAGAIN


def test_output_limit(warm: RunningServer) -> None:
    result = run(warm, "import sys\nwhile True:\n    sys.stdout.write('o' * 65536)",
                 limits=Limits(output_bytes=100 * KIB, wall_time_s=5))
    assert result.status is Status.OUTPUT_LIMIT
    assert len(result.stdout_bytes) == 100 * KIB


def test_file_size_limit(warm: RunningServer) -> None:
    out = checked(warm, "import os\nfd = os.open('f', os.O_WRONLY | os.O_CREAT)\ntry:\n"
                        "    while True:\n        os.write(fd, b'z' * 1000)\nexcept OSError as e:\n"
                        "    print(os.fstat(fd).st_size, e.errno)", limits=Limits(file_size_bytes=10_000))
    assert out == "10240 27\n"  # whole 512-byte blocks, EFBIG


def test_scratch_limit(warm: RunningServer) -> None:
    code = ("import os\nfor d in ('/work', '/tmp', '/dev/shm'):\n"
            "    fd = os.open(d + '/fill', os.O_WRONLY | os.O_CREAT)\n    n = 0\n    try:\n        while True:\n"
            "            n += os.write(fd, b's' * 4096)\n"
            "    except OSError as e:\n        print(d, n <= 1 << 20, e.errno)")
    out = checked(warm, code, limits=Limits(scratch_bytes=1 * MIB, file_size_bytes=16 * MIB))
    assert out.splitlines() == ["/work True 28", "/tmp True 28", "/dev/shm True 28"]  # ENOSPC


def test_no_network(warm: RunningServer) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = checked(warm, f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                            "    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)")
        assert out == "ConnectionRefusedError\n"  # its own loopback, where nothing listens
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_kill(warm: RunningServer,
                                         assert_no_leftovers: Callable[[RunningServer], None]) -> None:
    """An operator's kill of a running warm execution ends the whole sandbox at once."""
    with SandboxClient(warm.target, timeout=60) as sbx:
        stream = sbx.execute_stream("import subprocess, time\nsubprocess.Popen(['sleep', '60'])\n"
                                    "print('started', flush=True)\ntime.sleep(60)", limits=Limits(wall_time_s=30))
        assert next(stream) == OutputChunk(stream="stdout", data=b"started\n")
        backend = warm.app.backend
        assert isinstance(backend, NsjailBackend)
        [execution_id] = list(backend._live)

        async def kill() -> bool:  # on the server's loop, as the admin API does
            return backend.kill(execution_id)

        assert asyncio.run_coroutine_threadsafe(kill(), warm.loop).result(timeout=10)
        *_, result = list(stream)
    assert isinstance(result, ExecutionResult)
    assert result.status is Status.KILLED
    assert_no_leftovers(warm)
