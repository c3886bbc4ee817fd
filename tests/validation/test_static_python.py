"""Python rules: each one blocks what it should, at the right line and column (both 1-based, in characters)."""

from __future__ import annotations

import pytest
from static_helpers import Found, found, rules

from sandbox_server.validation.static import (
    DENIED_CALL,
    DENIED_IMPORT,
    DUNDER_ESCAPE,
    MAX_NESTING_DEPTH,
    OPEN_MODE,
    SYNTAX_ERROR,
    UNANALYSABLE,
)


def py(code: str, **python: object) -> Found:
    return found("python", code, rules(python=python) if python else None)


# -- syntax ----------------------------------------------------------------------------------------------------


def test_syntax_errors_carry_the_parsers_position_and_message() -> None:
    assert py("x = (\n") == [(SYNTAX_ERROR, 1, 5)]
    assert py("def f():\nreturn 1\n") == [(SYNTAX_ERROR, 2, 1)]
    assert py("print('é' 1)\n") == [(SYNTAX_ERROR, 1, 7)]
    violation = found("python", "x = = 1")[0]
    assert violation[0] == SYNTAX_ERROR
    from static_helpers import check

    assert check("python", "x = (\n")[0].message == "'(' was never closed"


# -- imports -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import ctypes\n", [(DENIED_IMPORT, 1, 8)]),
        ("import os, ctypes.util as cu\n", [(DENIED_IMPORT, 1, 12)]),  # a submodule of a denied module
        ("from ctypes import CDLL\n", [(DENIED_IMPORT, 1, 1)]),
        ("from ctypes.util import find_library\n", [(DENIED_IMPORT, 1, 1)]),
        ("import http.client\n", [(DENIED_IMPORT, 1, 8)]),
        ("import http.client.x\n", [(DENIED_IMPORT, 1, 8)]),
        ("from http import client\n", [(DENIED_IMPORT, 1, 18)]),  # http.client, reached from its parent
        ("from http import server, HTTPStatus\n", [(DENIED_IMPORT, 1, 18)]),
        ("import http\nimport http.cookies\nfrom http import HTTPStatus\n", []),  # the parent is not denied
        ("if True:\n    import socket as s\n", [(DENIED_IMPORT, 2, 12)]),
        ("def f():\n    from importlib import import_module\n", [(DENIED_IMPORT, 2, 5)]),
        ("import builtins\n", [(DENIED_IMPORT, 1, 8)]),
        ("x = 'é'; import pty\n", [(DENIED_IMPORT, 1, 17)]),  # columns count characters, not bytes
        ("from . import ctypes\nfrom .ctypes import x\nfrom .. import socket\n", []),  # relative: allowed
        ("import urllib.parse\nimport urllib.request\n", [(DENIED_IMPORT, 2, 8)]),
    ],
)
def test_denied_imports(code: str, expected: Found) -> None:
    assert py(code) == expected


def test_dynamic_imports_with_literal_names_are_checked_as_imports() -> None:
    assert py("__import__('socket')\n", denied_calls=()) == [(DENIED_IMPORT, 1, 1)]
    assert py("import importlib\nm = importlib.import_module('ctypes')\n", denied_imports=("ctypes",)) == [
        (DENIED_IMPORT, 2, 5)]
    assert py("import sys\nsys.modules['ctypes'].CDLL\n") == [(DENIED_IMPORT, 2, 1)]


def test_allowed_imports_admit_only_those_modules_and_their_submodules() -> None:
    policy = {"allowed_imports": ("json", "os.path", "collections"), "denied_imports": ()}
    code = (
        "import json\n"
        "import json.decoder\n"
        "from collections import abc\n"
        "import os.path\n"
        "from os import path\n"
        "from __future__ import annotations\n"
        "import numpy as np\n"
        "from os import system\n"
        "import jsonschema\n"
    )
    assert py(code, **policy) == [(DENIED_IMPORT, 7, 8), (DENIED_CALL, 8, 16), (DENIED_IMPORT, 8, 16),
                                  (DENIED_IMPORT, 9, 8)]


# -- denied calls ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("eval('1 + 1')\n", [(DENIED_CALL, 1, 1)]),
        ("x = [exec, compile]\n", [(DENIED_CALL, 1, 6), (DENIED_CALL, 1, 12)]),  # referenced, not even called
        ("breakpoint()\n", [(DENIED_CALL, 1, 1)]),
        ("import os\nos.system('id')\n", [(DENIED_CALL, 2, 1)]),
        ("import os\n\n    \nprint(1); os.popen('id')\n", [(DENIED_CALL, 4, 11)]),
        ("import os\nf = os.system\n", [(DENIED_CALL, 2, 5)]),  # attribute access without a call
        ("import os as o\no.system('id')\n", [(DENIED_CALL, 2, 1)]),
        ("import os.path as p\nimport os\nos.path.join('a')\n", []),
        ("from os import system as s\ns('id')\n", [(DENIED_CALL, 1, 16), (DENIED_CALL, 2, 1)]),
        ("from os import *\nsystem('id')\n", [(DENIED_CALL, 2, 1)]),
        ("import os\nos.execv('/bin/sh', ['sh'])\nos.execlpe('sh')\n", [(DENIED_CALL, 2, 1), (DENIED_CALL, 3, 1)]),
        ("import os\nos.spawnvp(0, 'sh', [])\nos.fork()\nos.killpg(1, 9)\n",
         [(DENIED_CALL, 2, 1), (DENIED_CALL, 3, 1), (DENIED_CALL, 4, 1)]),
        ("import os\nos.exit = 1\nos.execute = 2\n", [(DENIED_CALL, 3, 1)]),  # os.exec* is a prefix
        ("import posix\nposix.system('id')\n", [(DENIED_CALL, 2, 1)]),  # posix is os
        ("import os\no = os\np = o\np.system('id')\n", [(DENIED_CALL, 4, 1)]),  # aliases of aliases
        ("import os\nx, y = 1, os\ny.system('id')\n", [(DENIED_CALL, 3, 1)]),
        ("import os\ndef run(cmd):\n    return os.system(cmd)\n", [(DENIED_CALL, 3, 12)]),
        ("import os\ndef f():\n    global sh\n    sh = os.system\nsh('id')\n", [(DENIED_CALL, 4, 10),
                                                                            (DENIED_CALL, 5, 1)]),
        ("o = __import__('os')\no.system('id')\n", [(DENIED_CALL, 1, 5), (DENIED_CALL, 2, 1)]),
        ("import sys\nsys.modules['os'].system('id')\n", [(DENIED_CALL, 2, 1)]),
        ("import os\nvars(os)['system']('id')\n", [(DENIED_CALL, 2, 1)] * 2),  # vars(module) itself is denied
        ("import os\nos.__dict__['popen']('id')\n", [(DENIED_CALL, 2, 1)] * 2),  # ... and so is module.__dict__
        ("x = (lambda: eval)()\n", [(DENIED_CALL, 1, 14)]),
        ("eval = print\neval('fine, this is print')\n", []),  # rebound before use: no longer the builtin
        ("eval = eval\n", [(DENIED_CALL, 1, 8)]),
        ("def f(eval):\n    return eval(1)\n", []),  # a parameter shadows the builtin
        ("def f():\n    [0 for eval in range(3)]\n    return eval('1')\n", [(DENIED_CALL, 3, 12)]),
        ("import re\nre.compile('x')\nfrom re import compile\ncompile('y')\n", []),
        ("compile('1', 'f', 'eval')\nfrom re import compile\n", [(DENIED_CALL, 1, 1)]),  # used before the import
        ("model.eval()\nself.exec()\ndf.eval('a + b')\ncursor.execute('select 1')\n", []),
    ],
)
def test_denied_calls(code: str, expected: Found) -> None:
    assert py(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os\ngetattr(os, 'system')('id')\n", [(DENIED_CALL, 2, 1), (DENIED_CALL, 2, 1)]),
        ("import os\nfn = getattr(os, name)\n", [(DENIED_CALL, 2, 6)]),
        ("import os.path\nsetattr(os.path, 'sep', '/')\n", [(DENIED_CALL, 2, 1)]),
        ("import math\ndelattr(math, 'pi')\n", [(DENIED_CALL, 2, 1)]),
        ("import json as j\ng = getattr\ng(j, 'loads')\n", [(DENIED_CALL, 3, 1)]),
        ("from os import path\ngetattr(path, 'join')\n", [(DENIED_CALL, 2, 1)]),
        ("getattr(__builtins__, 'open')\n", [(DENIED_CALL, 1, 1), (DUNDER_ESCAPE, 1, 9)]),
        ("import builtins\ngetattr(builtins, 'exec')('x')\n",
         [(DENIED_IMPORT, 1, 8), (DENIED_CALL, 2, 1), (DENIED_CALL, 2, 1)]),
        ("import json\njson.__dict__\n", [(DENIED_CALL, 2, 1)]),
        ("class A:\n    x = 1\ngetattr(A(), 'x')\nsetattr(self, 'y', 2)\ngetattr(args, 'name', None)\n", []),
        ("from collections import OrderedDict\ngetattr(OrderedDict, 'fromkeys')\n", []),
    ],
)
def test_getattr_on_modules(code: str, expected: Found) -> None:
    assert py(code) == expected


def test_getattr_on_modules_only_when_the_policy_says_so() -> None:
    assert py("import json\ngetattr(json, 'loads')\n", denied_calls=("eval",)) == []


def test_custom_denied_calls_with_star_imports_and_prefixes() -> None:
    policy = {"denied_calls": ("subprocess.*", "shutil.rmtree")}
    assert py("from subprocess import *\nrun(['id'])\nPopen(['id'])\n", **policy) == [
        (DENIED_CALL, 2, 1), (DENIED_CALL, 3, 1)]
    assert py("import shutil as sh\nsh.rmtree('/tmp/x')\nsh.copy('a', 'b')\n", **policy) == [(DENIED_CALL, 2, 1)]
    assert py("import subprocess\nsubprocess.run(['ls'])\n") == []  # not denied by default


# -- sandbox-escape attributes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("().__class__.__bases__[0].__subclasses__()\n", [(DUNDER_ESCAPE, 1, 14), (DUNDER_ESCAPE, 1, 27)]),
        ("def f(): pass\ng = f.__globals__\n", [(DUNDER_ESCAPE, 2, 7)]),
        ("c = (lambda: 0).__code__\n", [(DUNDER_ESCAPE, 1, 17)]),
        ("x = int.__mro__\n", [(DUNDER_ESCAPE, 1, 9)]),
        ("print(__builtins__)\n", [(DUNDER_ESCAPE, 1, 7)]),
        ("import sys\nsys._getframe().f_back.f_globals\n", [(DUNDER_ESCAPE, 2, 17), (DUNDER_ESCAPE, 2, 24)]),
        ("frame.f_builtins['eval']\n", [(DUNDER_ESCAPE, 1, 7)]),
        ("g = (x for x in []); g.gi_frame\n", [(DUNDER_ESCAPE, 1, 24)]),
        ("getattr(f, '__globals__')\n", [(DUNDER_ESCAPE, 1, 12)]),  # the string names it
        ("f.__code__ = other\n", [(DUNDER_ESCAPE, 1, 3)]),
        ("print(__name__, self.__class__.__name__, obj.__dict__, f.__doc__)\n", []),
    ],
)
def test_dunder_escapes(code: str, expected: Found) -> None:
    assert py(code) == expected


# -- open modes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("open('f')\nopen('f', 'r')\nopen('f', 'wb')\nopen('f', mode='a')\nopen(file='f', mode='r+')\n", []),
        ("open('f', 'rw')\n", [(OPEN_MODE, 1, 11)]),
        ("open('f', mode='U')\n", [(OPEN_MODE, 1, 16)]),
        ("m = 'w'\nopen('f', m)\n", [(OPEN_MODE, 2, 11)]),
        ("open('f', 'r' + 'b')\n", [(OPEN_MODE, 1, 11)]),
        ("open('f', *rest)\n", [(OPEN_MODE, 1, 1)]),
        ("open('f', **kw)\n", [(OPEN_MODE, 1, 1)]),
        ("import io\nio.open('f', 'x+')\n", [(OPEN_MODE, 2, 14)]),
        ("import os\nos.fdopen(3, 'w+b')\n", [(OPEN_MODE, 2, 14)]),
        ("from io import open as o\no('f', 'ab+')\n", [(OPEN_MODE, 2, 8)]),
        ("o = open\no('f', 'rt+')\n", [(OPEN_MODE, 2, 8)]),
        ("webbrowser.open(url, 2)\nself.open('f', mode)\n", []),  # other functions named open
    ],
)
def test_open_modes(code: str, expected: Found) -> None:
    assert py(code) == expected


def test_open_modes_follow_the_policy() -> None:
    read_only = {"open_modes": ("r", "rb")}
    assert py("open('f')\nopen('f', 'rb')\nopen('f', 'w')\n", **read_only) == [(OPEN_MODE, 3, 11)]


# -- nesting depth ---------------------------------------------------------------------------------------------


def test_nesting_depth_over_the_limit_is_refused_once() -> None:
    code = "x = " + "[" * 10 + "]" * 10 + "\n"
    assert py(code, max_nesting_depth=11) == []
    assert py(code, max_nesting_depth=5) == [(MAX_NESTING_DEPTH, 1, 9)]
    # 12 nested ifs: the innermost `if` is at depth 12, its test and body at 13.
    blocks = "".join("    " * i + f"if x{i}:\n" for i in range(12)) + "    " * 12 + "pass\n"
    assert py(blocks, max_nesting_depth=13) == []
    assert py(blocks, max_nesting_depth=12) == [(MAX_NESTING_DEPTH, 13, 49)]


def test_flat_chains_do_not_count_as_nesting() -> None:
    chains = (
        "total = " + " + ".join(["1"] * 300) + "\n"
        "result = df" + ".pipe(f)" * 100 + "\n"
        "if a:\n    pass\n" + "".join(f"elif x == {i}:\n    pass\n" for i in range(200))
        + "y = " + " if c else ".join(["1"] * 150) + "\n"
    )
    assert py(chains, max_nesting_depth=8) == []


def test_deep_code_the_parser_refuses_is_unanalysable_or_a_syntax_error() -> None:
    assert py("-" * 100_000 + "1\n") == [(UNANALYSABLE, 1, 1)]
    assert py("1" + "+1" * 100_000 + "\n") == [(UNANALYSABLE, 1, 1)]
    assert py("(" * 100_000 + "\n")[0][0] == SYNTAX_ERROR
    assert py("".join(" " * i + "if x:\n" for i in range(150)))[0][0] == SYNTAX_ERROR


def test_alias_chains_that_grow_are_followed_or_refused() -> None:
    assert py("import config\ns = config.settings\ns = s.override\ns = s.base\nprint(s.value)\n") == []
    assert py("import os\nq = os\nq = q.x\nq = q.y\nq = q.z\nq.system('id')\n") == [(DENIED_CALL, 6, 1)]
    assert py("node = root\nwhile node:\n    node = node.next\n") == []
    chain = "".join(f"a{i} = a{i + 1}\n" for i in range(3000)) + "a3000 = __import__('os')\na0.system('id')\n"
    assert py(chain)[0][0] in (UNANALYSABLE, DENIED_CALL)
