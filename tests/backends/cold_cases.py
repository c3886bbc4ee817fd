"""Python programs whose every observable result (status, exit code, signal, stdout, stderr, files) must be the
same whether the interpreter was started for the request or ahead of it: the warm zygote's forks and fresh
interpreters (test_warm.py) and the Docker backend's pre-started interpreter (test_docker.py) are each compared
with a cold start of the same program on the same backend."""

from __future__ import annotations

from typing import Any

SAME_AS_COLD: dict[str, tuple[str, dict[str, Any]]] = {
    "hello": ('print("hello")', {}),
    "exit code": ("import sys\nprint('out')\nsys.exit(3)", {}),
    "exit message": ("import sys\nsys.exit('bye')", {}),
    "exit none": ("raise SystemExit", {}),
    "exit true": ("import sys\nsys.exit(True)", {}),
    "exit wraps": ("import sys\nsys.exit(256 + 7)", {}),
    "exception": ("def f():\n    raise ValueError('boom')\nf()", {}),
    "chained exception": ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e", {}),
    "syntax error": ("def (:\n", {}),
    "keyboard interrupt": ("print('before', flush=True)\nraise KeyboardInterrupt", {}),
    "excepthook": ("import sys\nsys.excepthook = lambda t, v, tb: print('hooked', t.__name__, v)\n"
                   "raise RuntimeError('x')", {}),
    "__del__ at exit": ("class A:\n    def __del__(self):\n        print('deleted')\na = A()\nprint('end')", {}),
    "atexit": ("import atexit\natexit.register(print, 'at exit')\nprint('main')", {}),
    "threads joined": ("import threading, time\ndef w():\n    time.sleep(0.2)\n    print('thread done')\n"
                       "threading.Thread(target=w).start()\nprint('main done')", {}),
    "os._exit": ("import os\nprint('buffered, lost')\nos._exit(4)", {}),
    "no newline": ("import sys\nsys.stdout.write('no newline')", {}),
    "warning": ("import warnings\nwarnings.warn('careful')", {}),
    "annotations": ("def f(x: int) -> 'str': pass\nprint(f.__annotations__)", {}),  # no __future__ of ours
    "module globals": ("print(__name__, __file__, __package__, __spec__, type(__loader__).__name__, "
                       "sorted(globals()), __builtins__.__name__)", {}),
    "sys": ("import sys, json\nprint(json.dumps([sys.argv, sys.orig_argv, sys.path, list(sys.flags), "
            "sys._xoptions, sys.executable, sys.prefix, sys.getrecursionlimit(), sys.getdefaultencoding()]))", {}),
    "environment": ("import os, json\nprint(json.dumps(sorted(os.environ.items())))\n"
                    "print(open('/proc/self/environ', 'rb').read())",
                    {"env": {"ONE": "1", "UNICODE": "héllo ✓", "EMPTY": ""}}),
    "cmdline": ("print(open('/proc/self/cmdline', 'rb').read())", {}),
    "stdio": ("import sys, json\nprint(json.dumps([(s.encoding, s.errors, s.line_buffering, s.name, s.mode, "
              "type(s.buffer).__name__, s.buffer.raw.name) for s in (sys.stdin, sys.stdout, sys.stderr)]))", {}),
    "stdin": ("import sys\ndata = sys.stdin.read()\nprint(len(data), repr(data[:12]))",
              {"stdin": "first line\nsecond ✓\n"}),
    "locale": ("import locale, sys\nprint(locale.setlocale(locale.LC_ALL, None), locale.getpreferredencoding(False),"
               " sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())", {}),
    "time zone": ("import time\nprint(time.tzname, time.timezone, time.daylight)", {"env": {"TZ": "Europe/Paris"}}),
    "limits": ("print(open('/proc/self/limits').read())", {}),
    "identity": ("import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.getpid(), os.getppid(), "
                 "os.getpgrp(), os.getsid(0), os.getcwd(), os.umask(0o22), os.getpriority(os.PRIO_PROCESS, 0))", {}),
    "privileges": ("print(''.join(line for line in open('/proc/self/status') if line.split(':')[0] in "
                   "('Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', "
                   "'Seccomp', 'Seccomp_filters')))", {}),
    "signals": ("import signal\nprint({s.name: str(signal.getsignal(s)) for s in signal.valid_signals() "
                "if isinstance(s, signal.Signals) and s not in (signal.SIGKILL, signal.SIGSTOP)})\n"
                "print(signal.pthread_sigmask(signal.SIG_BLOCK, []))", {}),
    "fds": ("import os\nprint(sorted(os.listdir('/proc/self/fd')))", {}),
    "view": ("import os\nprint(sorted(os.listdir('/')), sorted(os.listdir('/dev')), sorted(os.listdir('/etc')), "
             "os.uname().nodename, os.access('/', os.W_OK), os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize)",
             {}),
    "seccomp": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nout = []\n"
                "for nr in (101, 165, 272, 308, 321, 425, 435):  # ptrace mount unshare setns bpf io_uring clone3\n"
                "    libc.syscall(nr, 0, 0, 0, 0, 0)\n    out.append(os.strerror(ctypes.get_errno()))\n"
                "print(out)", {}),
    "loopback only": ("import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
                      "c = socket.create_connection(s.getsockname())\nprint('loopback ok')\n"
                      "try:\n    socket.create_connection(('10.0.0.1', 80), timeout=1)\nexcept OSError as e:\n"
                      "    print(type(e).__name__)", {}),
}
