"""The seccomp allow-list (sandbox_server/backends/seccomp.py): its definition, its three renderings, and what it
does inside real sandboxes on every backend.

The definition tests need no server. The sandbox tests take the ``server`` fixture, so they run once per backend
in ``conftest.BACKENDS`` (sessions: the backends whose sessions differ), whose tenant has static validation off:
the probes call syscall(2) through ctypes, and programs may use child_process. A corpus of real programs (the
shipped evaluation suites, the data stack, node, bash and the coreutils, a session's kernel) must work under the
filter; the calls it refuses must fail with EPERM, and numbers the profile's kernel did not have with ENOSYS.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import platform
import random
import subprocess
from pathlib import Path

import pytest

from sandbox_client import AsyncSandboxClient, Limits, SandboxClient, Status
from sandbox_client.evaluation.runner import RunOptions, new_session_id, run_cases
from sandbox_client.evaluation.suite import LoadedCase, load_suite, shipped_suites
from sandbox_server.backends import seccomp
from sandbox_server.backends.seccomp import (
    DENIED_SYSCALLS,
    Action,
    ArgTest,
    Cube,
    complement,
    docker_profile,
    kafel_policy,
    libseccomp_config,
    syscall_filter,
)
from sandbox_server.backends.seccomp_data import DOCKER_PROFILE, SYSCALL_NUMBERS
from sandbox_server.testing import RunningServer

MIB = 1024 * 1024
SESSION_BACKENDS = ["nsjail", "docker", "nsjail-rootfs"]  # the warm path's modes do not change sessions
ZYGOTE = Path(seccomp.__file__).with_name("zygote.py")


# ---- the definition -----------------------------------------------------------------------------------------
def _profile_names(arch: str) -> tuple[set[str], set[str]]:
    """What Docker's profile allows a container with no capability on ``arch``: unconditionally, and under
    argument conditions."""
    docker_arch = seccomp.ARCHES[arch][0]
    plain: set[str] = set()
    conditional: set[str] = set()
    for entry in DOCKER_PROFILE:
        if entry.caps or (entry.arches and docker_arch not in entry.arches) or docker_arch in entry.not_arches:
            continue
        if entry.action == "SCMP_ACT_ALLOW":
            (conditional if entry.args else plain).update(entry.names)
    return plain, conditional


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_each_call_of_the_abi_is_decided_once(arch: str) -> None:
    filt = syscall_filter(arch)
    groups = [set(filt.allowed), set(filt.refused), set(filt.enosys), set(filt.conditional)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == len(SYSCALL_NUMBERS[arch])
    assert filt.enosys == ("clone3",)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_allow_list_is_dockers_default_without_capabilities_less_ours(arch: str) -> None:
    filt = syscall_filter(arch)
    plain, conditional = _profile_names(arch)
    assert set(filt.allowed) == (plain - set(DENIED_SYSCALLS) - set(filt.conditional)) & set(filt.numbers)
    # Every call allowed under conditions is one the profile allows, at least under conditions of its own.
    assert set(filt.conditional) <= plain | conditional
    assert {"clone", "socket", "personality"} <= set(filt.conditional)
    for entry in DOCKER_PROFILE:  # the calls Docker gates on capabilities are refused, or decided by arguments
        if entry.caps:
            for name in set(entry.names) & set(filt.numbers):
                assert name in filt.refused or name in filt.conditional or name in filt.enosys, name


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_what_we_deny_and_what_the_issue_names_are_refused(arch: str) -> None:
    filt = syscall_filter(arch)
    denied = set(DENIED_SYSCALLS) & set(filt.numbers)
    assert denied <= set(filt.refused)
    assert {"kcmp", "get_mempolicy", "mbind", "move_pages", "ptrace", "bpf", "io_uring_setup", "keyctl",
            "userfaultfd", "perf_event_open", "process_vm_readv", "mount", "unshare", "setns", "kexec_load",
            "init_module", "clock_settime", "adjtimex", "name_to_handle_at"} <= set(filt.refused)


def test_counts_per_architecture() -> None:
    """Pinned, so that a change of the profile or of our lists is a deliberate one."""
    counts = {arch: (len(f.numbers), len(f.allowed), len(f.conditional), len(f.refused), len(f.enosys))
              for arch in ("x86_64", "aarch64") for f in [syscall_filter(arch)]}
    assert counts == {"x86_64": (379, 292, 10, 76, 1), "aarch64": (322, 250, 10, 61, 1)}


def test_another_architecture_has_no_filter() -> None:
    with pytest.raises(ValueError, match="riscv64"):
        syscall_filter("riscv64")


def _holds(cube: Cube, args: tuple[int, ...]) -> bool:
    return all(args[t.index] & t.mask == t.value for t in cube)


def test_complement_covers_exactly_the_rest() -> None:
    """Brute force over two 4-bit arguments, for random cube sets."""
    rng = random.Random(7)
    for _ in range(200):
        cubes = []
        for _ in range(rng.randint(0, 4)):
            tests = []
            for index in rng.sample([0, 1], rng.randint(1, 2)):
                mask = rng.randint(1, 15)
                tests.append(ArgTest(index, mask, rng.randint(0, 15) & mask))
            cubes.append(tuple(sorted(tests)))
        rest = complement(cubes)
        for args in itertools.product(range(16), repeat=2):
            inside = any(_holds(c, args) for c in cubes)
            assert inside != any(_holds(c, args) for c in rest), (cubes, args)


@pytest.mark.parametrize("name", sorted(syscall_filter("x86_64").conditional))
def test_argument_rules_read_the_low_32_bits_of_an_int(name: str) -> None:
    """Each conditional call's two rule sets cover every argument value once; what decides is the 32 bits the
    kernel reads, so high bits set change nothing."""
    cond = syscall_filter("x86_64").conditional[name]
    rng = random.Random(name)
    interesting = [0, 1, 2, 3, 8, 38, 39, 40, 0x20000, 0x20008, 0xFFFFFFFF, 0x7E020000, 0x10000000, 0x11]
    values = [*interesting, *(rng.getrandbits(32) for _ in range(20))]
    for a0, a1 in itertools.product(values, values[:8]):
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            args = (a0 | high, a1, 0, 0, 0, 0)
            exception = any(_holds(c, args) for c in cond.when)
            otherwise = any(_holds(c, args) for c in cond.otherwise_cubes)
            assert exception != otherwise, (name, hex(a0), hex(a1), hex(high))
            if name != "clone":  # clone's flags are a whole unsigned long
                assert exception == any(_holds(c, (a0, a1, 0, 0, 0, 0)) for c in cond.when)


def test_pid_1_rules() -> None:
    filt = syscall_filter("x86_64")

    def decide(name: str, *args: int) -> Action:
        cond = filt.conditional[name]
        padded = (*args, 0, 0, 0, 0, 0, 0)[:6]
        return cond.exception if any(_holds(c, padded) for c in cond.when) else cond.otherwise

    assert decide("prlimit64", 1) is Action.EPERM
    assert decide("prlimit64", (1 << 32) | 1) is Action.EPERM
    assert decide("prlimit64", 0) is decide("prlimit64", 2) is Action.ALLOW
    assert decide("setpriority", seccomp.PRIO_USER, 0) is Action.EPERM
    assert decide("setpriority", seccomp.PRIO_PROCESS, 1) is decide("setpriority", seccomp.PRIO_PGRP, 1) is Action.EPERM
    assert decide("setpriority", seccomp.PRIO_PROCESS, 0) is decide("setpriority", seccomp.PRIO_PGRP, 2) is Action.ALLOW
    assert decide("ioprio_set", seccomp.IOPRIO_WHO_USER, 5) is Action.EPERM
    assert decide("ioprio_set", seccomp.IOPRIO_WHO_PROCESS, 0) is Action.ALLOW
    assert decide("clone", 0x11 | 0x10000000) is Action.EPERM  # CLONE_NEWUSER
    assert decide("clone", 0x3D0F00) is Action.ALLOW  # a thread
    assert decide("socket", 38) is decide("socket", (1 << 32) | 40) is Action.EPERM
    assert decide("socket", 1) is decide("socket", 39) is Action.ALLOW
    assert decide("personality", 0xFFFFFFFF) is Action.ALLOW
    assert decide("personality", 0x0040000) is Action.EPERM  # ADDR_NO_RANDOMIZE


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_three_renderings_say_the_same(arch: str) -> None:
    filt = syscall_filter(arch)
    # Docker: names, EPERM as the default (as Docker's own profile); clone3's ENOSYS a rule.
    profile = docker_profile(arch)
    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", errno.EPERM)
    assert profile["architectures"] == [seccomp.ARCHES[arch][1]]
    plain = [r for r in profile["syscalls"] if "args" not in r]
    assert plain == [{"names": list(filt.allowed), "action": "SCMP_ACT_ALLOW"},
                     {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    conditional = [r for r in profile["syscalls"] if "args" in r]
    assert {n for r in conditional for n in r["names"]} == set(filt.conditional)
    assert {r["action"] for r in conditional} == {"SCMP_ACT_ALLOW"}
    # libseccomp: numbers.
    config = libseccomp_config(arch)
    assert config["arch"] == arch
    by_number: dict[int, list[tuple[int | None, list[list[int]]]]] = {nr: [] for nr in filt.numbers.values()}
    for err, nr, tests in config["rules"]:
        by_number[nr].append((err, tests))
    for name in filt.allowed:
        assert by_number[filt.numbers[name]] == [(None, [])]
    for name in filt.refused:
        assert by_number[filt.numbers[name]] == [(errno.EPERM, [])]
    assert by_number[filt.numbers["clone3"]] == []  # the default's ENOSYS
    # kafel: numbers, each call's exception first (kafel takes the first rule that matches).
    text = kafel_policy(arch)
    assert text.rstrip().endswith(f"DEFAULT ERRNO({errno.ENOSYS})")
    for name in filt.allowed + filt.refused:
        assert text.count(f"SYSCALL[{filt.numbers[name]}] /* {name} */") == 1, name
    for name in filt.conditional:
        assert text.index(f"SYSCALL[{filt.numbers[name]}](") < text.index(f"SYSCALL[{filt.numbers[name]}] /*")


def test_libseccomp_compiles_the_host_filter() -> None:
    """The zygote's compiler, run by the host's python3 as the zygote is, on this machine's config."""
    code = ("import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('zygote', sys.argv[1])\n"
            "zygote = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(zygote)\n"
            "print(len(zygote._compile_seccomp(json.loads(sys.stdin.read()))) // 8)")
    run = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(ZYGOTE)], input=json.dumps(libseccomp_config()),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert 0 < int(run.stdout) < 4096  # BPF_MAXINSNS


# ---- inside the sandboxes -----------------------------------------------------------------------------------
def _probe_code() -> str:
    """A program that makes raw system calls and prints how each ended: "ok" or the errno's name."""
    numbers = syscall_filter(platform.machine()).numbers
    calls = {
        # What the issue names: refused (EPERM), and a number no kernel of the profile's had (ENOSYS).
        "kcmp": (numbers["kcmp"], "os.getpid()", "os.getpid()", 0, 0, 0),
        "get_mempolicy": (numbers["get_mempolicy"], 0, 0, 0, 0, 0),
        "mbind": (numbers["mbind"], 0, 0, 0, 0, 0, 0),
        "move_pages": (numbers["move_pages"], 0, 0, 0, 0, 0, 0),
        "unknown 1000": (1000,),
        # The rules kept from before, and argument rules reading only an int's 32 bits.
        "clone3": (numbers["clone3"], 0, 0),
        "unshare user": (numbers["unshare"], 0x10000000),
        "ptrace": (numbers["ptrace"], 0, 0, 0, 0),
        "io_uring_setup": (numbers["io_uring_setup"], 1, 0),
        "prlimit64 pid 1": (numbers["prlimit64"], 1, 7, 0, "ctypes.addressof(old)"),
        "prlimit64 pid 1 high bits": (numbers["prlimit64"], (1 << 32) | 1, 7, 0, "ctypes.addressof(old)"),
        "prlimit64 self": (numbers["prlimit64"], 0, 7, 0, "ctypes.addressof(old)"),
        "setpriority user": (numbers["setpriority"], 2, 0, 19),
        "socket AF_ALG high bits": (numbers["socket"], (1 << 32) | 38, 5, 0),
        "socket AF_UNIX": (numbers["socket"], 1, 1, 0),
        "personality query": (numbers["personality"], 0xFFFFFFFF),
        "personality ADDR_NO_RANDOMIZE": (numbers["personality"], 0x0040000),
    }
    lines = ["import ctypes, errno, json, os",
             "libc = ctypes.CDLL(None, use_errno=True)",
             "libc.syscall.restype = ctypes.c_long",
             "old = (ctypes.c_uint64 * 2)()",
             "def call(nr, *args):",
             "    ctypes.set_errno(0)",
             "    r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))",
             "    return 'ok' if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))",
             "out = {}"]
    for label, (nr, *args) in calls.items():
        lines.append(f"out[{label!r}] = call({nr}, {', '.join(str(a) for a in args)})")
    lines.append("print(json.dumps(out))")
    return "\n".join(lines) + "\n"


PROBE_EXPECTED = {
    "kcmp": "EPERM", "get_mempolicy": "EPERM", "mbind": "EPERM", "move_pages": "EPERM", "unknown 1000": "ENOSYS",
    "clone3": "ENOSYS", "unshare user": "EPERM", "ptrace": "EPERM", "io_uring_setup": "EPERM",
    "prlimit64 pid 1": "EPERM", "prlimit64 pid 1 high bits": "EPERM", "prlimit64 self": "ok",
    "setpriority user": "EPERM", "socket AF_ALG high bits": "EPERM", "socket AF_UNIX": "ok",
    "personality query": "ok", "personality ADDR_NO_RANDOMIZE": "EPERM",
}


@pytest.mark.usefixtures("no_leftovers")
def test_refused_calls_fail_with_eperm_and_unknown_ones_with_enosys(sbx: SandboxClient) -> None:
    result = sbx.execute(_probe_code())
    assert result.status is Status.OK, (result.message, result.stderr)
    assert json.loads(result.stdout) == PROBE_EXPECTED


DATA_STACK = """
import json, os, subprocess, sys, threading, concurrent.futures
import numpy as np
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

a = np.random.default_rng(0).normal(size=(200, 50))
u, s, vt = np.linalg.svd(a @ a.T)
frame = pd.DataFrame({"g": np.arange(1000) % 7, "v": np.arange(1000.0)})
summary = frame.groupby("g")["v"].agg(["mean", "count"]).reset_index()
summary.to_csv("summary.csv", index=False)
fig, ax = plt.subplots()
ax.plot(summary["g"], summary["mean"])
fig.savefig("plot.png")
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    squares = list(pool.map(lambda x: x * x, range(10)))
child = subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True, check=True)
print(json.dumps({"svd": len(s), "groups": len(summary), "squares": sum(squares), "child": child.stdout.strip()}))
"""


@pytest.mark.usefixtures("no_leftovers")
def test_the_data_stack_works(sbx: SandboxClient) -> None:
    result = sbx.execute(DATA_STACK, limits=Limits(wall_time_s=60, memory_bytes=512 * MIB))
    assert result.status is Status.OK, (result.message, result.stderr)
    assert json.loads(result.stdout) == {"svd": 200, "groups": 7, "squares": 285, "child": "child"}
    files = {f.path: f.content for f in result.files}
    assert files["plot.png"].startswith(b"\x89PNG")
    assert files["summary.csv"].startswith(b"g,mean,count\n")


NODE_PROGRAM = """
const fs = require('fs');
const crypto = require('crypto');
const { Worker } = require('worker_threads');
const { execFileSync } = require('child_process');
fs.mkdirSync('out', { recursive: true });
fs.writeFileSync('out/data.txt', 'abc'.repeat(1000));
const digest = crypto.createHash('sha256').update(fs.readFileSync('out/data.txt')).digest('hex');
const key = crypto.scryptSync('secret', 'salt', 16).toString('hex');
const random = crypto.randomBytes(8).length;
const child = execFileSync('sh', ['-c', 'echo from-child']).toString().trim();
const worker = new Worker('const { parentPort } = require("worker_threads"); parentPort.postMessage(6 * 7);',
                          { eval: true });
worker.on('message', (answer) => {
  console.log(JSON.stringify({ digest: digest.slice(0, 12), key: key.length, random, child, answer,
                               entries: fs.readdirSync('out') }));
});
"""


@pytest.mark.usefixtures("no_leftovers")
def test_node_works(sbx: SandboxClient) -> None:
    result = sbx.execute(NODE_PROGRAM, language="javascript", limits=Limits(wall_time_s=30))
    assert result.status is Status.OK, (result.message, result.stderr)
    assert json.loads(result.stdout) == {"digest": "328de8f1895f", "key": 32, "random": 8, "child": "from-child",
                                         "answer": 42, "entries": ["data.txt"]}


BASH_PROGRAM = r"""
set -euo pipefail
mkdir -p tree/a tree/b
printf 'pear\napple\npear\nfig\napple\npear\n' > tree/a/fruit.txt
seq 1 100 > tree/b/numbers.txt
sort tree/a/fruit.txt | uniq -c | sort -rn | awk '{print $2 "=" $1}' | paste -sd, -
wc -l < tree/b/numbers.txt
find tree -type f -name '*.txt' | sort
sed -n 's/^\(9[0-9]\)$/n\1/p' tree/b/numbers.txt | head -3 | tr '\n' ' '; echo
awk '{s += $1} END {print s}' tree/b/numbers.txt
tar -cf tree.tar tree && tar -tf tree.tar | sort | tail -1
if command -v gzip >/dev/null; then gzip -9 tree.tar && gzip -dc tree.tar.gz | tar -tf - | wc -l; else echo 5; fi
cut -d, -f1 <<< "x,y" ; date +%Y >/dev/null; cp tree/a/fruit.txt copy.txt; chmod 600 copy.txt; stat -c %a copy.txt
(sleep 0.1; echo background) & wait
"""


@pytest.mark.usefixtures("no_leftovers")
def test_bash_and_the_coreutils_work(sbx: SandboxClient) -> None:
    result = sbx.execute(BASH_PROGRAM, language="bash", limits=Limits(wall_time_s=30))
    assert result.status is Status.OK, (result.message, result.stderr)
    assert result.stdout.splitlines() == [
        "pear=3,apple=2,fig=1", "100", "tree/a/fruit.txt", "tree/b/numbers.txt", "n90 n91 n92 ", "5050",
        "tree/b/numbers.txt", "5", "x", "600", "background",
    ]


def _shipped_cases(name: str) -> list[LoadedCase]:
    # A case that expects the server to refuse it tests static validation, which this tenant has off.
    return [c for c in load_suite(shipped_suites()[name]).cases if c.case.expected_error is None]


async def _run_suite(server: RunningServer, name: str) -> list[tuple[str, str, str]]:
    async with AsyncSandboxClient(server.target, timeout=120) as client:
        run = await run_cases(client, _shipped_cases(name), RunOptions(session_id=new_session_id(), concurrency=2))
    return [(r.case_id, str(r.reason), r.detail) for r in run.results if not r.passed]


@pytest.mark.usefixtures("no_leftovers")
def test_the_basic_suite_passes(server: RunningServer) -> None:
    assert asyncio.run(_run_suite(server, "basic")) == []


@pytest.mark.parametrize("server", SESSION_BACKENDS, indirect=True)
@pytest.mark.usefixtures("no_leftovers")
def test_the_sessions_suite_passes(server: RunningServer) -> None:
    assert asyncio.run(_run_suite(server, "sessions")) == []


@pytest.mark.parametrize("server", SESSION_BACKENDS, indirect=True)
@pytest.mark.usefixtures("no_leftovers")
def test_a_sessions_kernel_works_and_is_filtered(sbx: SandboxClient) -> None:
    """The agent (PID 1) and its kernel under the filter: code, a figure, bash and JavaScript calls, and the
    probe from the kernel (prlimit64 on PID 1 is the agent's own limit)."""
    with sbx.session(language="python", idle_timeout_s=300, limits=Limits(memory_bytes=512 * MIB)) as s:
        assert s.run("import numpy as np\nx = np.arange(10)").ok
        assert s.run("int(x.sum())").value == "45"
        r = s.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
        assert [o.mime_type for o in r.outputs] == ["image/png"]
        r = s.run("printf '3\\n1\\n2\\n' | sort | tr '\\n' ' '", language="bash")
        assert (r.status, r.stdout) == (Status.OK, "1 2 3 ")
        r = s.run("const crypto = require('crypto'); console.log(crypto.randomBytes(4).length)", language="javascript")
        assert (r.status, r.stdout) == (Status.OK, "4\n")
        r = s.run(_probe_code())
        assert r.status is Status.OK, r.stderr
        assert json.loads(r.stdout) == PROBE_EXPECTED
        assert s.run("1 + 1").value == "2"  # the agent is fine after all of it
