"""JavaScript rules: modules, dynamic require, native bindings and eval, with comments and strings understood."""

from __future__ import annotations

import pytest
from static_helpers import Found, check, found, rules

from sandbox_server.validation.static import DENIED_CALL, DENIED_MODULE, DYNAMIC_REQUIRE, EVAL


def js(code: str, **javascript: object) -> Found:
    return found("javascript", code, rules(javascript=javascript) if javascript else None)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("const cp = require('child_process');\n", [(DENIED_MODULE, 1, 20)]),
        ('const net = require("net");\n', [(DENIED_MODULE, 1, 21)]),
        ("const h = require(`http`);\n", [(DENIED_MODULE, 1, 19)]),
        ("const x = require('node:dgram');\n", [(DENIED_MODULE, 1, 19)]),
        ("const d = require('dns/promises');\n", [(DENIED_MODULE, 1, 19)]),  # a subpath of a denied module
        ("require('child\\x5fprocess');\n", [(DENIED_MODULE, 1, 9)]),  # escapes are decoded
        ("require('\\u0076m');\n", [(DENIED_MODULE, 1, 9)]),
        ("import net from 'net';\n", [(DENIED_MODULE, 1, 17)]),
        ("import { Worker } from\n  'node:worker_threads';\n", [(DENIED_MODULE, 2, 3)]),
        ("import 'inspector';\n", [(DENIED_MODULE, 1, 8)]),
        ("export * from 'tls';\nexport { request } from \"https\";\n", [(DENIED_MODULE, 1, 15),
                                                                        (DENIED_MODULE, 2, 25)]),
        ("const v8 = await import('v8');\n", [(DENIED_MODULE, 1, 25)]),
        ("module.require('cluster');\n", [(DENIED_MODULE, 1, 16)]),
        ("process.mainModule.require('http2');\n", [(DENIED_MODULE, 1, 28)]),
        ("const a = require('fs'), b = require('path'), c = require('httpx'), d = require('http-proxy');\n", []),
    ],
)
def test_denied_modules(code: str, expected: Found) -> None:
    assert js(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("const name = 'child_process';\nrequire(name);\n", [(DYNAMIC_REQUIRE, 2, 1)]),
        ("require('child_' + 'process');\n", [(DYNAMIC_REQUIRE, 1, 1)]),
        ("require(`child_${'process'}`);\n", [(DYNAMIC_REQUIRE, 1, 1)]),
        ("const r = require;\nr('net');\n", [(DYNAMIC_REQUIRE, 1, 11)]),
        ("[require][0]('net');\n", [(DYNAMIC_REQUIRE, 1, 2)]),
        ("require.call(null, 'net');\n", [(DYNAMIC_REQUIRE, 1, 1)]),
        ("const m = await import(spec);\n", [(DYNAMIC_REQUIRE, 1, 17)]),
        ("if (require.main === module) main();\nrequire.resolve('fs');\nif (typeof require === 'function') {}\n",
         []),
    ],
)
def test_dynamic_require(code: str, expected: Found) -> None:
    assert js(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("process.binding('spawn_wrap');\n", [(DENIED_CALL, 1, 9)]),
        ("process['binding']('fs');\n", [(DENIED_CALL, 1, 9)]),
        ("process.dlopen(module, '/tmp/x.node');\n", [(DENIED_CALL, 1, 9)]),
        ("process?._linkedBinding('x');\n", [(DENIED_CALL, 1, 10)]),
        ("module.constructor._load('child_process');\n", [(DENIED_CALL, 1, 20)]),
        ("keyboard.binding = 'vim';\n", []),  # only process.binding
    ],
)
def test_native_bindings(code: str, expected: Found) -> None:
    assert js(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("eval('1 + 1');\n", [(EVAL, 1, 1)]),
        ("const e = eval;\ne('x');\n", [(EVAL, 1, 11)]),
        ("globalThis.eval('x');\nwindow['eval']('y');\n", [(EVAL, 1, 12), (EVAL, 2, 8)]),
        ("\\u0065val('x');\n", [(EVAL, 1, 1)]),
        ("new Function('return this')();\n", [(EVAL, 1, 5)]),
        ("Function('a', 'return a')(1);\n", [(EVAL, 1, 1)]),
        ("Function.apply(null, ['x']);\n", [(EVAL, 1, 1)]),
        ("const F = Function;\n(Function)('x');\nReflect.construct(Function, ['y']);\n",
         [(EVAL, 1, 11), (EVAL, 2, 2), (EVAL, 3, 19)]),
        ("(() => {}).constructor('return process')();\n", [(EVAL, 1, 12)]),
        ("x['constructor']['constructor']('code')();\n", [(EVAL, 1, 18)]),
        ("setTimeout('doSomething()', 10);\nsetInterval(`tick()`, 5);\n", [(EVAL, 1, 1), (EVAL, 2, 1)]),
        ("import('data:text/javascript,console.log(1)');\n", [(EVAL, 1, 8)]),
        ("setTimeout(() => done(), 10);\nclass A { constructor() { super(); } }\nFunction.prototype.call;\n"
         "if (f instanceof Function) f();\n", []),
    ],
)
def test_eval(code: str, expected: Found) -> None:
    assert js(code) == expected


def test_eval_allowed_when_the_policy_allows_it() -> None:
    assert js("eval('1');\nnew Function('x');\n", deny_eval=False) == []


def test_custom_denied_modules() -> None:
    assert js("require('fs');\nrequire('fs/promises');\nimport os from 'os';\n", denied_modules=("fs",)) == [
        (DENIED_MODULE, 1, 9), (DENIED_MODULE, 2, 9)]


@pytest.mark.parametrize(
    "code",
    [
        "// require('child_process')\n",
        "/* eval('x');\n   require('net') */\n",
        "const s = 'require(\"net\") and eval(x)';\n",
        'const s = "process.binding(1)";\n',
        "const t = `eval('x') new Function()`;\n",
        "const re = /require\\('net'\\)|eval\\(/g;\n",
        "const half = total / 2; const q = (a / b) / c;\n",
        "#!/usr/bin/env node\nconsole.log('hi');\n",
        "const nested = `a ${`b ${'c'}`} d`;\nconst obj = { fn() { return `${1 + 1}`; } };\n",
    ],
)
def test_comments_strings_templates_and_regexes_are_not_code(code: str) -> None:
    assert js(code) == []


def test_code_inside_template_substitutions_is_checked() -> None:
    assert js("const t = `x ${require('net')} ${`y ${eval('1')}`}`;\n") == [(DENIED_MODULE, 1, 24), (EVAL, 1, 39)]


def test_messages_name_the_module() -> None:
    assert check("javascript", "require('child_process')")[0].message == "module 'child_process' is denied"
