"""Isolation, part of the backend contract: what a sandboxed program must not see, reach or change.

Every test takes the ``server`` fixture (through ``sbx``), so it runs once per backend in
``conftest.BACKENDS``, and ``no_leftovers``. The server runs in this process, so the host side of each check
(a listener, the environment, the file system) is this process's own.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandbox_client import Limits, SandboxClient, Status

pytestmark = pytest.mark.usefixtures("no_leftovers")

# The only variables a program may find besides the request's own.
BASE_ENV_NAMES = {"PATH", "HOME", "TMPDIR", "LANG", "XDG_CACHE_HOME", "MPLCONFIGDIR"}


def host_shadow() -> bytes:
    try:
        return Path("/etc/shadow").read_bytes()
    except OSError:
        return b""


NET_PY = """
import json, os, socket
port = int(os.environ["PORT"])
out = {}
for host in os.environ["HOSTS"].split(","):
    try:
        socket.create_connection((host, port), timeout=1).close()
        out[host] = "connected"
    except OSError as e:
        out[host] = "failed " + type(e).__name__
print(json.dumps(out, sort_keys=True))
"""
NET_JS = """
const net = require('net');
const port = Number(process.env.PORT);
const hosts = process.env.HOSTS.split(',');
const out = {};
let pending = hosts.length;
for (const host of hosts) {
  let settled = false;
  const settle = (what) => {
    if (settled) return;
    settled = true;
    out[host] = what;
    if (--pending === 0) console.log(JSON.stringify(out, Object.keys(out).sort()));
  };
  const s = net.connect({host, port});
  s.setTimeout(1000, () => { settle('failed timeout'); s.destroy(); });
  s.on('connect', () => { settle('connected'); s.destroy(); });
  s.on('error', (e) => settle('failed ' + e.code));
}
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


def host_ipv4_addresses() -> list[str]:
    addrs = {"127.0.0.1"}
    for entries in psutil.net_if_addrs().values():
        addrs.update(a.address for a in entries if a.family == socket.AF_INET)
    return sorted(addrs)


@pytest.mark.parametrize(("language", "code"), [("python", NET_PY), ("javascript", NET_JS)])
def test_no_network(sbx: SandboxClient, listener: socket.socket, language: str, code: str) -> None:
    hosts = host_ipv4_addresses()
    port = listener.getsockname()[1]
    result = sbx.execute(code, language=language, env={"PORT": str(port), "HOSTS": ",".join(hosts)},
                         limits=Limits(wall_time_s=3))
    assert result.status is Status.OK, (result.message, result.stderr)
    outcome = json.loads(result.stdout)
    assert sorted(outcome) == hosts
    assert all(v.startswith("failed") for v in outcome.values()), outcome
    listener.settimeout(0)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached the host's listener


def test_runs_as_non_root(sbx: SandboxClient) -> None:
    code = (
        "import os\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith(('Uid:', 'Gid:', 'Groups:')):\n"
        "        print(line.strip())\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    print('setuid ok')\n"
        "except OSError:  # EPERM, or EINVAL where uid 0 is not even mapped\n"
        "    print('setuid denied')\n"
    )
    result = sbx.execute(code)
    assert result.status is Status.OK, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    uids, gids = lines["Uid"].split(), lines["Gid"].split()
    assert len(uids) == 4  # real, effective, saved, filesystem
    assert len(gids) == 4
    assert "0" not in uids, uids
    assert "0" not in gids, gids
    assert "0" not in lines["Groups"].split()
    assert result.stdout.splitlines()[-1] == "setuid denied"


def test_cannot_read_etc_shadow(sbx: SandboxClient) -> None:
    code = (
        "try:\n"
        "    data = open('/etc/shadow', 'rb').read()\n"
        "    print('read', len(data))\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    result = sbx.execute(code)
    assert result.status is Status.OK, result.stderr
    assert result.stdout in ("FileNotFoundError\n", "PermissionError\n")
    shadow = host_shadow()
    if shadow:
        assert shadow not in result.stdout_bytes


def test_cannot_see_server_environment(sbx: SandboxClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs in this process: a variable set here now is in its environment."""
    canary = "canary-" + uuid.uuid4().hex
    monkeypatch.setenv("CONTRACT_TEST_CANARY", canary)
    code = (
        "import json, os\n"
        "print(json.dumps(dict(os.environ)))\n"
        "print(open('/proc/self/environ', 'rb').read().count(b'\\0'))\n"
    )
    result = sbx.execute(code, env={"MINE": "yes"})
    assert result.status is Status.OK, result.stderr
    env_line, count = result.stdout.splitlines()
    env = json.loads(env_line)
    assert set(env) == BASE_ENV_NAMES | {"MINE"}
    assert env["MINE"] == "yes"
    assert env["PATH"]
    assert int(count) == len(env)
    assert canary not in result.stdout


def test_request_env_arrives(sbx: SandboxClient) -> None:
    sent = {"GREETING": "hello world", "EMPTY": "", "UNICODE": "héllo ✓", "EQUALS": "a=b=c", "lower_ok": "1"}
    result = sbx.execute("import json, os\nprint(json.dumps({k: os.environ.get(k) for k in "
                         f"{sorted(sent)!r}}}))", env=sent)
    assert result.status is Status.OK, result.stderr
    assert json.loads(result.stdout) == sent


def test_request_env_arrives_in_bash(sbx: SandboxClient) -> None:
    result = sbx.execute('printf "%s|%s" "$GREETING" "$OTHER"', language="bash",
                         env={"GREETING": "hi there", "OTHER": "x y"})
    assert (result.status, result.stdout) == (Status.OK, "hi there|x y")


def test_cannot_see_host_processes(sbx: SandboxClient) -> None:
    """/proc shows the sandbox's own processes only (the program, and at most a backend's own pid 1), all of
    them the sandbox user's."""
    code = (
        "import json, os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "uids = {}\n"
        "for pid in pids:\n"
        "    for line in open(f'/proc/{pid}/status'):\n"
        "        if line.startswith('Uid:'):\n"
        "            uids[pid] = line.split()[1:]\n"
        "print(json.dumps({'me': os.getpid(), 'uid': os.getuid(), 'pids': pids, 'uids': uids}))\n"
    )
    result = sbx.execute(code)
    assert result.status is Status.OK, result.stderr
    seen = json.loads(result.stdout)
    assert seen["me"] in seen["pids"]
    assert 1 in seen["pids"]  # a PID namespace of its own
    assert len(seen["pids"]) <= 2, seen["pids"]
    assert seen["uid"] != 0
    for uid_fields in seen["uids"].values():
        assert set(uid_fields) == {str(seen["uid"])}  # no root, no other user's process


def test_cannot_write_outside_scratch(sbx: SandboxClient) -> None:
    name = "contract-probe-" + uuid.uuid4().hex
    targets = {
        "/usr": "denied", "/etc": "denied", "/": "denied", "/bin": "denied", "/proc/sys/kernel": "denied",
        "/work": "ok", "/tmp": "ok",
    }
    code = (
        "import json, os\n"
        f"name = {name!r}\n"
        "out = {}\n"
        f"for d in {sorted(targets)!r}:\n"
        "    path = os.path.join(d, 'hostname' if d == '/proc/sys/kernel' else name)\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('x')\n"
        "        out[d] = 'ok'\n"
        "    except OSError as e:\n"
        "        out[d] = 'denied'\n"
        "print(json.dumps(out))\n"
    )
    result = sbx.execute(code)
    assert result.status is Status.OK, result.stderr
    assert json.loads(result.stdout) == targets
    for d in ("/usr", "/etc", "/", "/bin", "/tmp", "/work"):
        assert not (Path(d) / name).exists(), f"{d}/{name} appeared on the host"
    assert [(f.path, f.content) for f in result.files] == [(name, b"x")]  # /work is the working directory


def test_planted_links_and_fifos_are_not_followed(sbx: SandboxClient) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/shadow', 'leak.txt')\n"
        "os.symlink('/etc/passwd', 'passwd.txt')\n"
        "os.symlink('/etc', 'etcdir')\n"
        "os.symlink('/', 'rootdir')\n"
        "os.makedirs('sub')\n"
        "os.symlink('/proc/self/environ', 'sub/environ')\n"
        "os.mkfifo('pipe')\n"
        "os.mkfifo('sub/pipe.txt')\n"
        "os.link('in.txt', 'hard.txt')\n"
        "open('normal.txt', 'w').write('fine')\n"
        "print('planted')\n"
    )
    start = time.monotonic()
    result = sbx.execute(code, files={"in.txt": b"input data"}, limits=Limits(wall_time_s=3))
    assert time.monotonic() - start < 5
    assert result.status is Status.OK, result.stderr
    assert result.stdout == "planted\n"
    paths = {f.path for f in result.files}
    assert "normal.txt" in paths
    assert paths <= {"normal.txt", "hard.txt", "in.txt"}, paths
    for f in result.files:
        assert f.content in (b"fine", b"input data"), f
    shadow = host_shadow()
    for f in result.files:
        assert not shadow or shadow not in f.content


