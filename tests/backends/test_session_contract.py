"""The session contract: what every backend's sessions must do, tested through a real server.

A session keeps a sandbox, a Python kernel and a workspace across calls. This module runs on the nsjail
backend, on Docker, and on nsjail chrooted into the image's root filesystem (the warm path's modes do not
change sessions: a session's sandbox is always a jail of its own). Each test opens its own sessions and closes
them, and ``no_leftovers`` proves that nothing of them outlived the test.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from sandbox_client import (
    DisplayData,
    ExecutionResult,
    InvalidRequestError,
    Limits,
    NotFoundError,
    OutputChunk,
    ResourceExhaustedError,
    SandboxClient,
    Session,
    SessionBusyError,
    SessionNotFoundError,
    Status,
)
from sandbox_server.testing import RunningServer

SESSION_BACKENDS = ["nsjail", "docker", "nsjail-rootfs"]
pytestmark = [pytest.mark.parametrize("server", SESSION_BACKENDS, indirect=True),
              pytest.mark.usefixtures("no_leftovers")]

KIB = 1024
MIB = 1024 * KIB
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def s(sbx: SandboxClient) -> Iterator[Session]:
    with sbx.session(language="python", idle_timeout_s=300) as session:
        yield session


# ---- the kernel: state, values, errors ---------------------------------------------------------------------
def test_the_contract_of_the_issue(sbx: SandboxClient) -> None:
    with sbx.session(language="python", idle_timeout_s=300) as s:
        assert s.run("x = 41").status is Status.OK
        assert s.run("x + 1").value == "42"
        s.files.upload("data.csv", b"a,b\n1,2\n")
        assert s.run("import pandas as pd; len(pd.read_csv('data.csv'))").value == "1"
        r = s.run("import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
        assert [o.mime_type for o in r.outputs] == ["image/png"]
        assert r.outputs[0].data.startswith(PNG)
        assert s.run("echo hi > f.txt", language="bash").status is Status.OK
        assert s.files.download("f.txt") == b"hi\n"
        listed = {f.path: f for f in s.files.list()}
        assert listed["f.txt"].size == 3
        assert listed["data.csv"].size == 8
        session_id = s.id
    with pytest.raises(NotFoundError):
        sbx.get_session(session_id)


def test_globals_imports_functions_and_open_files_persist(s: Session) -> None:
    assert s.run("import json\ndef double(v):\n    return 2 * v\nlog = open('log.txt', 'w')\nlog.write('a')").ok
    assert s.run("log.write('b'); log.close(); json.dumps(double(21))").value == "'42'"
    assert s.run("open('log.txt').read()").value == "'ab'"


def test_what_a_call_writes_to_its_file_descriptors_is_that_calls_output(s: Session) -> None:
    """os.write and subprocesses bypass sys.stdout: ipykernel reads their pipe in a thread of its own, and what it
    had not read when the call ended went to the next call (seen on a loaded host, where that thread lags; a quiet
    one rarely shows it). Each call now ends with that pipe drained; UTF-8 split across reads stays whole."""
    big = "import os, subprocess\nos.write(1, b'A' * 900000 + '\u00e9'.encode() * 3000)\n" \
          "os.write(2, b'E' * 50000)\nsubprocess.run(['echo', 'from-a-child'])"
    for _ in range(3):
        first = s.run(big)
        assert first.stdout == "A" * 900000 + "\u00e9" * 3000 + "from-a-child\n"
        assert first.stderr == "E" * 50000
        second = s.run("print('only mine')")
        assert (second.stdout, second.stderr) == ("only mine\n", "")


def test_the_last_expression_is_the_value_and_statements_have_none(s: Session) -> None:
    assert s.run("'text'").value == "'text'"
    assert s.run("None").value == ""
    assert s.run("y = 3").value == ""
    assert s.run("[y] * 2").value == "[3, 3]"
    counts = [s.run("1").execution_count for _ in range(2)]
    assert counts[1] == counts[0] + 1


def test_an_exception_is_structured_and_the_kernel_survives(s: Session) -> None:
    s.run("kept = 'yes'")
    r = s.run("def f():\n    return 1 / 0\nf()")
    assert r.status is Status.NONZERO_EXIT
    assert r.exit_code == 1
    assert r.error is not None
    assert r.error.name == "ZeroDivisionError"
    assert r.error.value == "division by zero"
    assert any("1 / 0" in line for line in r.error.traceback)
    assert "ZeroDivisionError" in r.stderr
    assert r.message == "ZeroDivisionError: division by zero"
    assert not r.kernel_restarted
    assert s.run("kept").value == "'yes'"


def test_sys_exit_is_an_exit_code(s: Session) -> None:
    assert s.run("import sys; sys.exit(3)").exit_code == 3
    assert s.run("import sys; sys.exit(0)").status is Status.OK
    assert s.run("1 + 1").value == "2"


def test_input_reads_the_call_stdin_then_eof(s: Session) -> None:
    r = s.run("a = input(); b = input()\ntry:\n    input()\nexcept EOFError:\n    c = 'eof'\n(a, b, c)",
              stdin="one\ntwo\n")
    assert r.value == "('one', 'two', 'eof')"


def test_output_streams_while_the_call_runs(s: Session) -> None:
    began = time.monotonic()
    seen: list[tuple[float, OutputChunk | DisplayData | ExecutionResult]] = []
    for item in s.run_stream("import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\n"
                             "print('err', file=sys.stderr)\n'done'"):
        seen.append((time.monotonic() - began, item))
    first = next(t for t, i in seen if isinstance(i, OutputChunk) and b"first" in i.data)
    result = seen[-1][1]
    assert isinstance(result, ExecutionResult)
    assert first < seen[-1][0] - 1.0, "the first line came only with the end"
    assert result.stdout == "first\n"
    assert result.stderr == "err\n"
    assert result.value == "'done'"


# ---- limits: interrupt, restart, memory, CPU, output -----------------------------------------------------------
def test_a_call_past_its_wall_time_is_interrupted_and_the_kernel_keeps_its_state(s: Session) -> None:
    s.run("kept = 5")
    r = s.run("import time\nwhile True:\n    time.sleep(0.05)", limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT
    assert r.error is not None
    assert r.error.name == "KeyboardInterrupt"
    assert not r.kernel_restarted
    assert "kept its state" in r.message
    assert s.run("kept").value == "5"


def test_a_call_that_ignores_the_interrupt_restarts_the_kernel(s: Session) -> None:
    s.run("lost = 1")
    r = s.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
              limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT
    assert r.kernel_restarted
    assert "restarted" in r.message
    after = s.run("lost")
    assert after.error is not None
    assert after.error.name == "NameError"
    assert s.run("1 + 1").value == "2"
    assert s.refresh().usage.kernel_restarts == 1


def test_a_call_past_its_cpu_time_is_interrupted(s: Session) -> None:
    r = s.run("while True:\n    pass", limits=Limits(cpu_time_s=0.5, wall_time_s=20))
    assert r.status is Status.CPU_LIMIT
    assert not r.kernel_restarted
    assert 0.4 <= r.usage.cpu_time_s < 5


def test_the_memory_limit_holds_across_calls_and_restarts_the_kernel(sbx: SandboxClient) -> None:
    with sbx.session(limits=Limits(memory_bytes=512 * MIB)) as s:
        assert s.run("blocks = []").ok
        for _ in range(2):  # memory taken in one call stays taken in the next
            assert s.run("blocks.append(b'x' * (100 << 20))").ok
        r = s.run("blocks.append(b'x' * (400 << 20))")
        assert r.status is Status.MEMORY_LIMIT, r.message
        assert r.kernel_restarted
        assert s.run("'blocks' in globals()").value == "False"
        assert s.run("1 + 1").value == "2"


def test_output_past_the_limit_stops_the_call(s: Session) -> None:
    r = s.run("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)", limits=Limits(output_bytes=64 * KIB))
    assert r.status is Status.OUTPUT_LIMIT
    assert r.stdout_truncated
    assert len(r.stdout_bytes) <= 64 * KIB
    assert s.run("2 + 2").value == "4"


# ---- bash and JavaScript in the same sandbox ------------------------------------------------------------------
def test_bash_javascript_and_python_share_the_workspace(s: Session) -> None:
    assert s.run("open('from_python.txt', 'w').write('py')").ok
    r = s.run("cat from_python.txt; echo -n sh > from_bash.txt", language="bash")
    assert r.stdout == "py"
    r = s.run("const fs = require('fs'); console.log(fs.readFileSync('from_bash.txt', 'utf8'));"
              "fs.writeFileSync('from_js.txt', 'js');", language="javascript")
    assert r.stdout == "sh\n"
    assert s.run("open('from_js.txt').read()").value == "'js'"


def test_each_command_starts_afresh_in_the_workspace(s: Session) -> None:
    assert s.run("cd /tmp && export SESSION_VAR=1 && echo $$ > /tmp/pid", language="bash").ok
    r = s.run("pwd; echo ${SESSION_VAR:-unset}", language="bash")
    assert r.stdout == "/work\nunset\n"
    assert s.run("echo $CALL_VAR", language="bash", env={"CALL_VAR": "per-call"}).stdout == "per-call\n"


def test_a_command_sees_the_session_environment(sbx: SandboxClient) -> None:
    with sbx.session(env={"SESSION_TAG": "t1"}) as s:
        assert s.run("echo $SESSION_TAG", language="bash").stdout == "t1\n"
        assert s.run("import os; os.environ['SESSION_TAG']").value == "'t1'"


def test_a_command_failure_and_its_limits(s: Session) -> None:
    r = s.run("exit 7", language="bash")
    assert r.status is Status.NONZERO_EXIT
    assert r.exit_code == 7
    r = s.run("while true; do :; done", language="bash", limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT
    r = s.run("process.exit(3)", language="javascript")
    assert r.exit_code == 3


def test_nothing_a_call_starts_outlives_it(s: Session) -> None:
    assert s.run("import subprocess; p = subprocess.Popen(['sleep', '1000']); p.pid").ok
    assert s.run("sleep 1000 & echo started", language="bash").stdout == "started\n"
    # Alive, that is: the kernel still holds its killed child's exit status (a zombie) until it waits for it.
    alive = s.run("import os\nsorted(open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc')"
                  " if p.isdigit() and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z')").value
    assert "sleep" not in alive


def test_a_python_session_call_refuses_per_call_env(s: Session) -> None:
    with pytest.raises(InvalidRequestError) as info:
        s.run("1", env={"X": "1"})
    assert info.value.details.field_violations[0].field == "env"


def test_session_wide_limits_cannot_change_per_call(s: Session) -> None:
    with pytest.raises(InvalidRequestError) as info:
        s.run("1", limits=Limits(memory_bytes=64 * MIB))
    assert info.value.details.field_violations[0].field == "limits.memory_bytes"


# ---- rich outputs -------------------------------------------------------------------------------------------
def test_rich_outputs_come_back_as_mime_bundles(s: Session) -> None:
    r = s.run("from IPython.display import HTML, SVG, JSON, display\n"
              "display(HTML('<b>bold</b>'))\n"
              "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" height=\"1\"/>'))\n"
              "display(JSON({'a': 1}))")
    assert [o.mime_type for o in r.outputs] == ["text/html", "image/svg+xml", "application/json"]
    assert r.outputs[0].data == b"<b>bold</b>"
    assert b"<svg" in r.outputs[1].data
    assert r.outputs[2].data == b'{"a": 1}'
    assert all("text/plain" in o.alternatives for o in r.outputs)
    frame = s.run("import pandas as pd; pd.DataFrame({'a': [1, 2]})")
    assert frame.value.splitlines()[0].strip() == "a"
    assert [(o.mime_type, o.is_result) for o in frame.outputs] == [("text/html", True)]


def test_a_figure_left_as_the_last_value_is_an_image(s: Session) -> None:
    r = s.run("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1])\nfig")
    assert r.value.startswith("<Figure")
    images = [o for o in r.outputs if o.mime_type == "image/png"]
    assert len(images) == 1
    assert images[0].data.startswith(PNG)


def test_rich_outputs_stream_as_they_are_produced(s: Session) -> None:
    items = list(s.run_stream("from IPython.display import HTML, display\ndisplay(HTML('<i>a</i>'))"))
    displays = [i for i in items if isinstance(i, DisplayData)]
    result = items[-1]
    assert isinstance(result, ExecutionResult)
    assert [d.data for d in displays] == [b"<i>a</i>"]
    assert [o.data for o in result.outputs] == [b"<i>a</i>"]


# ---- the workspace's files ----------------------------------------------------------------------------------
def test_files_upload_download_list_delete(s: Session) -> None:
    big = bytes(range(256)) * (3 * MIB // 256 + 7)
    info = s.files.upload("deep/dir/big.bin", big)
    assert info.size == len(big)
    assert info.path == "deep/dir/big.bin"
    assert s.files.download("deep/dir/big.bin") == big
    assert s.run("len(open('deep/dir/big.bin', 'rb').read())").value == str(len(big))
    top = {f.path: f.type for f in s.files.list()}
    assert top["deep"] == "directory"
    everything = {f.path for f in s.files.list(recursive=True)}
    assert {"deep", "deep/dir", "deep/dir/big.bin"} <= everything
    assert [f.path for f in s.files.list("deep/dir")] == ["deep/dir/big.bin"]
    with pytest.raises(InvalidRequestError):
        s.files.delete("deep")  # a directory needs recursive
    s.files.delete("deep", recursive=True)
    assert "deep" not in {f.path for f in s.files.list()}
    with pytest.raises(NotFoundError):
        s.files.download("deep/dir/big.bin")


def test_an_upload_replaces_a_file_whole(s: Session) -> None:
    s.files.upload("f.txt", b"old content")
    s.files.upload("f.txt", b"new")
    assert s.files.download("f.txt") == b"new"
    assert [f.path for f in s.files.list()] == ["f.txt"]


def test_the_server_never_follows_what_the_sandbox_planted(s: Session) -> None:
    assert s.run("import os\nopen('real.txt', 'w').write('r')\nos.symlink('/etc/passwd', 'link')\n"
                 "os.symlink('/etc', 'linkdir')\nos.mkfifo('pipe')\nos.link('real.txt', 'hard')").ok
    kinds = {f.path: f.type for f in s.files.list()}
    assert kinds["link"] == "symlink"
    assert kinds["linkdir"] == "symlink"
    assert kinds["pipe"] == "other"
    for path in ("link", "pipe", "hard", "linkdir/passwd"):
        with pytest.raises(InvalidRequestError):
            s.files.download(path)
    with pytest.raises(InvalidRequestError):
        s.files.upload("linkdir/planted", b"x")
    s.files.upload("link", b"replaced")  # replaces the link itself, never writes through it
    assert s.run("import os; (os.path.islink('link'), open('link').read())").value == "(False, 'replaced')"
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(InvalidRequestError):
            s.files.upload(bad, b"x")


def test_uploads_are_capped_by_the_session_limits(sbx: SandboxClient) -> None:
    with sbx.session(limits=Limits(scratch_bytes=2 * MIB, file_size_bytes=MIB)) as s:
        with pytest.raises(ResourceExhaustedError) as info:
            s.files.upload("too-big.bin", b"x" * (MIB + 1))
        assert "file_size_bytes" in info.value.details.quota_violations[0].subject
        s.files.upload("a.bin", b"x" * (900 * KIB))
        s.files.upload("b.bin", b"x" * (900 * KIB))
        with pytest.raises(ResourceExhaustedError) as info:
            s.files.upload("c.bin", b"x" * (900 * KIB))
        assert "scratch_bytes" in info.value.details.quota_violations[0].subject
        assert sorted(f.path for f in s.files.list()) == ["a.bin", "b.bin"]


# ---- one call at a time; the session's end -------------------------------------------------------------------
def test_calls_to_one_session_run_one_at_a_time(s: Session) -> None:
    results: list[ExecutionResult] = []
    refused: list[BaseException] = []

    def call() -> None:
        try:
            results.append(s.run("import time\nt0 = time.time(); time.sleep(0.4)\n(t0, time.time())"))
        except SessionBusyError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not refused
    spans = sorted(tuple(map(float, r.value.strip("()").split(", "))) for r in results)
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_closed_session_is_gone(sbx: SandboxClient) -> None:
    s = sbx.session()
    s.run("1")
    info = s.close()
    assert info is not None
    assert info.state == "CLOSED"
    assert info.close_reason == "closed"
    assert info.usage.calls == 1
    with pytest.raises(SessionNotFoundError) as caught:
        s.run("1")
    assert caught.value.close_reason == "closed"
    assert s.close() is None


def test_pandas_numpy_and_matplotlib_import_in_one_shot_executions(sbx: SandboxClient, server: RunningServer) -> None:
    r = sbx.execute("import numpy, pandas, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                    "plt.plot([1, 2]); plt.savefig('plot.png')\nprint(pandas.DataFrame({'a': [1]}).shape)",
                    limits=Limits(wall_time_s=60, memory_bytes=512 * MIB))
    assert r.status is Status.OK, r.stderr
    assert r.stdout == "(1, 1)\n"
    assert [f.path for f in r.files] == ["plot.png"]


def test_busy_sessions_refuse_past_the_waiting_limit(sbx: SandboxClient, server: RunningServer) -> None:
    with sbx.session() as s:
        started = threading.Event()

        def long_call() -> None:
            started.set()
            s.run("import time; time.sleep(3)")

        runner = threading.Thread(target=long_call)
        runner.start()
        started.wait()
        time.sleep(0.5)
        waiting = [threading.Thread(target=lambda: s.run("1")) for _ in range(4)]
        for thread in waiting:
            thread.start()
        time.sleep(0.5)
        quick = SandboxClient(server.target, retry=None)
        with quick, pytest.raises(SessionBusyError):
            quick.execute("1", session_id=s.id)
        runner.join()
        for thread in waiting:
            thread.join()

