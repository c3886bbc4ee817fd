"""JavaScript rules: patterns over a light tokenizer. A first filter, not a proof; the sandbox contains the rest.

The tokenizer skips comments and understands string literals (escapes decoded: ``'child\\x5fprocess'`` is
``child_process``), template literals (with ``${...}`` nesting), regex literals (told from division by the
token before them, erring towards division so that no code is hidden) and ``\\u`` escapes in identifiers.

Rules:

- ``denied_module``: ``require('x')``, ``import ... from 'x'``, ``import 'x'``, ``export ... from 'x'`` and
  ``import('x')`` where ``x`` (or ``node:x``) is in ``denied_modules`` or a subpath of one (``fs/promises`` is
  ``fs``); ``module.require``/``x.require`` count as ``require``.
- ``dynamic_require``: ``require``/``import()`` whose argument is not a single literal (``require(name)``,
  ``require('child_' + 'process')``), and ``require`` used as a value (``const r = require``); only
  ``require.main``, ``require.resolve`` and ``typeof require`` are let through.
- ``denied_call``: ``process.binding``, and ``dlopen``, ``_linkedBinding``, ``_load`` on anything, as members
  (``.x``) or computed members (``['x']``).
- ``eval`` (when ``deny_eval``): any ``eval`` identifier or member, ``Function`` (but for ``instanceof
  Function`` and ``Function.prototype``), ``.constructor(...)`` (how ``Function`` is reached without its
  name), ``setTimeout``/``setInterval``/``setImmediate`` with a string as code, and ``import('data:...')``.
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from sandbox_server.policy.models import JavaScriptRules
from sandbox_server.validation.static._base import (
    DENIED_CALL,
    DENIED_MODULE,
    DYNAMIC_REQUIRE,
    EVAL,
    CodeViolation,
    LineIndex,
    Unanalysable,
)

MAX_REGEX_LITERAL_CHARS = 65536
REGEX_SCAN_BUDGET_FACTOR = 8

_JS_NEWLINE = re.compile(r"\r\n|[\n\r\u2028\u2029]")
_IDENT_PART = r"(?:[\w$]|\\u[0-9A-Fa-f]{4}|\\u\{[0-9A-Fa-f]{1,8}\}|[^\x00-\x7f])"
_TOKEN = re.compile(
    r"(?P<ws>[\s\ufeff]+)"
    r"|(?P<comment>//[^\n\r\u2028\u2029]*|/\*[\s\S]*?(?:\*/|\Z)|<!--[^\n\r]*)"
    r"|(?P<name>(?:[A-Za-z_$]|\\u[0-9A-Fa-f]{4}|\\u\{[0-9A-Fa-f]{1,8}\}|[^\x00-\x7f])" + _IDENT_PART + "*)"
    r"|(?P<number>\.?\d[\w.]*)"
    r"""|(?P<string>'(?:[^'\\\n\r]|\\[\s\S])*'?|"(?:[^"\\\n\r]|\\[\s\S])*"?)"""
    r"|(?P<template>`)"
    r"|(?P<punct>\?\.(?!\d)|\.\.\.|=>|&&|\|\||\?\?|[{}()\[\];,.<>=!+\-*/%&|^~?:@#\\])"
)
_REGEX = re.compile(r"/(?![*/])(?:[^/\\\[\n\r]|\\[^\n\r]|\[(?:[^\]\\\n\r]|\\[^\n\r])*\])+/[A-Za-z]*")
_TEMPLATE_STOP = re.compile(r"`|\\|\$\{")
_ESCAPE = re.compile(r"\\(u\{[0-9A-Fa-f]{1,8}\}|u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|[0-7]{1,3}|\r\n|[\s\S])")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v",
                   "\n": "", "\r": "", "\r\n": "", "\u2028": "", "\u2029": ""}
# Names after which a `/` starts a regex literal rather than a division.
_REGEX_AFTER_NAMES = frozenset({"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw",
                                "case", "do", "else", "yield", "await"})
_DENIED_MEMBERS = frozenset({"dlopen", "_linkedBinding", "_load"})
_STRING_TIMERS = frozenset({"setTimeout", "setInterval", "setImmediate", "execScript"})


class _Token(NamedTuple):
    kind: str  # name | string (a literal, cooked) | template (with substitutions) | number | regex | punct
    value: str
    start: int


def check_javascript(code: str, rules: JavaScriptRules) -> list[CodeViolation]:
    """Check ``code`` against ``rules``."""
    return _Checker(code, rules).run()


def _cook(raw: str) -> str:
    """The value of a string literal's body (escapes decoded)."""
    if "\\" not in raw:
        return raw

    def replace(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape[0] == "u" and len(escape) > 1:
            point = int(escape[2:-1] if escape[1] == "{" else escape[1:], 16)
            return chr(point) if point <= 0x10FFFF else ""
        if escape[0] == "x" and len(escape) == 3:
            return chr(int(escape[1:], 16))
        if escape[0] in "01234567":
            return chr(int(escape, 8))
        return _SIMPLE_ESCAPES.get(escape, escape)

    return _ESCAPE.sub(replace, raw)


def tokenize(code: str) -> list[_Token]:
    """Significant tokens of ``code`` (comments and whitespace dropped).

    Raises Unanalysable when telling regex literals from divisions would cost more than a few passes over the
    code (many `/` on long lines that start no regex: built to make the tokenizer quadratic).
    """
    tokens: list[_Token] = []
    braces: list[bool] = []  # True: the `}` closing this brace resumes a template literal
    pos, end = 0, len(code)
    line_ends: list[int] | None = None
    budget = REGEX_SCAN_BUDGET_FACTOR * end + 100_000  # characters scanned by regex attempts that failed
    if code.startswith("#!"):
        newline = _JS_NEWLINE.search(code)
        pos = newline.start() if newline else end
    while pos < end:
        match = _TOKEN.match(code, pos)
        if match is None:  # a character no rule knows: step over it
            pos += 1
            continue
        kind = match.lastgroup or "punct"
        text = match.group()
        if kind in ("ws", "comment"):
            pos = match.end()
            continue
        if kind == "template":
            pos = _template(code, pos + 1, pos, tokens, braces, first=True)
            continue
        if kind == "punct" and text == "/" and _regex_allowed(tokens):
            if line_ends is None:
                line_ends = [m.start() for m in _JS_NEWLINE.finditer(code)]
            at = bisect.bisect_left(line_ends, pos)
            stop = min(line_ends[at] if at < len(line_ends) else end, pos + MAX_REGEX_LITERAL_CHARS)
            regex = _REGEX.match(code, pos, stop)
            if regex is not None:
                tokens.append(_Token("regex", regex.group(), pos))
                pos = regex.end()
                continue
            budget -= stop - pos
            if budget < 0:
                raise Unanalysable("too many '/' that may start a regex literal to analyse")
        if kind == "punct" and text == "{":
            braces.append(False)
        elif kind == "punct" and text == "}" and braces and braces.pop():
            pos = _template(code, pos + 1, pos, tokens, braces, first=False)
            continue
        if kind == "string":
            body = text[1:-1] if len(text) >= 2 and text[-1] == text[0] else text[1:]
            text = _cook(body)
        elif kind == "name" and "\\" in text:
            text = _cook(text)
        tokens.append(_Token(kind, text, pos))
        pos = match.end()
    return tokens


def _template(code: str, pos: int, start: int, tokens: list[_Token], braces: list[bool], *, first: bool) -> int:
    """Scan template text from ``pos`` to its closing backtick or next ``${``; return where code resumes."""
    parts: list[str] = []
    while True:
        stop = _TEMPLATE_STOP.search(code, pos)
        if stop is None:  # unterminated: the rest is template text
            parts.append(code[pos:])
            if first:
                tokens.append(_Token("string", _cook("".join(parts)), start))
            return len(code)
        parts.append(code[pos:stop.start()])
        if stop.group() == "\\":
            parts.append(code[stop.start():stop.start() + 2])
            pos = stop.start() + 2
            continue
        if stop.group() == "`":
            if first:
                tokens.append(_Token("string", _cook("".join(parts)), start))
            return stop.end()
        if first:  # `${`: the literal has substitutions, so it is not a constant
            tokens.append(_Token("template", "", start))
        braces.append(True)
        return stop.end()


def _regex_allowed(tokens: list[_Token]) -> bool:
    if not tokens:
        return True
    last = tokens[-1]
    if last.kind == "punct":
        return last.value not in (")", "]", "}")
    if last.kind == "name":
        return last.value in _REGEX_AFTER_NAMES
    return False


def _module_denied(specifier: str, denied: tuple[str, ...]) -> bool:
    name = specifier.removeprefix("node:")
    return any(name == d or name.startswith(d + "/") for d in denied)


class _Checker:
    def __init__(self, code: str, rules: JavaScriptRules) -> None:
        self._code = code
        self._rules = rules
        self._tokens = tokenize(code)
        self._index: LineIndex | None = None
        self._violations: list[CodeViolation] = []

    def _add(self, token: _Token, rule: str, message: str) -> None:
        if self._index is None:
            self._index = LineIndex(self._code, _JS_NEWLINE)
        line, column = self._index.position(token.start)
        self._violations.append(CodeViolation(rule, message, line, column))

    def _at(self, index: int) -> _Token:
        if 0 <= index < len(self._tokens):
            return self._tokens[index]
        return _Token("eof", "", len(self._code))

    def _is(self, index: int, kind: str, *values: str) -> bool:
        token = self._at(index)
        return token.kind == kind and (not values or token.value in values)

    def run(self) -> list[CodeViolation]:
        for index, token in enumerate(self._tokens):
            if token.kind == "name":
                self._name(index, token)
            if self._member(index) is not None:
                self._check_member(index, token)
        return self._violations

    def _member(self, index: int) -> str | None:
        """The member name if the token at ``index`` is one: ``.x``/``?.x`` or ``['x']``."""
        token = self._at(index)
        if token.kind == "name" and self._is(index - 1, "punct", ".", "?."):
            return token.value
        if token.kind == "string" and self._is(index - 1, "punct", "[") and self._is(index + 1, "punct", "]"):
            return token.value
        return None

    def _check_member(self, index: int, token: _Token) -> None:
        member = token.value
        owner = self._at(index - 2)
        after = index + (2 if token.kind == "string" else 1)  # the token after `.x` or after `['x']`
        if member in _DENIED_MEMBERS or (member == "binding" and owner.kind == "name" and owner.value == "process"):
            self._add(token, DENIED_CALL, f"{member} is denied (native bindings and module loading)")
        if not self._rules.deny_eval:
            return
        if member == "eval" and token.kind == "string":
            self._add(token, EVAL, "eval is denied")
        elif member == "constructor" and self._is(after, "punct", "("):
            self._add(token, EVAL, ".constructor(...) reaches the Function constructor: denied")

    def _name(self, index: int, token: _Token) -> None:
        name = token.value
        after_dot = self._is(index - 1, "punct", ".", "?.")
        if name == "require":
            self._require(index, token)
        elif name == "import" and not after_dot:
            self._import(index, token)
        elif name == "from" and not after_dot and self._is(index + 1, "string"):
            self._module(self._at(index + 1))
        elif self._rules.deny_eval:
            self._eval(index, token)

    def _module(self, token: _Token) -> None:
        if _module_denied(token.value, self._rules.denied_modules):
            self._add(token, DENIED_MODULE, f"module {token.value!r} is denied")

    def _require(self, index: int, token: _Token) -> None:
        if self._is(index - 1, "name", "typeof"):
            return
        if self._is(index + 1, "punct", "("):
            if self._is(index + 2, "string") and self._is(index + 3, "punct", ")"):
                self._module(self._at(index + 2))
            else:
                self._add(token, DYNAMIC_REQUIRE, "require() with an argument that is not a string literal")
        elif self._is(index + 1, "punct", ".") and self._is(index + 2, "name", "main", "resolve"):
            return
        else:
            self._add(token, DYNAMIC_REQUIRE, "require used other than as require('literal')")

    def _import(self, index: int, token: _Token) -> None:
        if self._is(index + 1, "string"):
            self._module(self._at(index + 1))  # import 'x'
        elif self._is(index + 1, "punct", "("):
            specifier = self._at(index + 2)
            if specifier.kind == "string" and self._is(index + 3, "punct", ")", ","):
                self._module(specifier)
                if self._rules.deny_eval and specifier.value.lstrip().lower().startswith("data:"):
                    self._add(specifier, EVAL, "import() of a data: URL evaluates a string as code")
            else:
                self._add(token, DYNAMIC_REQUIRE, "import() with a specifier that is not a string literal")

    def _eval(self, index: int, token: _Token) -> None:
        name = token.value
        if name == "eval":
            self._add(token, EVAL, "eval is denied")
        elif name == "Function":
            # Any use but `x instanceof Function` and `Function.prototype`: `(Function)('...')`, `F = Function`
            # and `Reflect.construct(Function, [...])` all reach the constructor.
            benign = self._is(index - 1, "name", "instanceof") or (
                self._is(index + 1, "punct", ".") and self._is(index + 2, "name", "prototype"))
            if not benign:
                self._add(token, EVAL, "the Function constructor is denied")
        elif (name in _STRING_TIMERS and self._is(index + 1, "punct", "(")
              and self._at(index + 2).kind in ("string", "template")):
            self._add(token, EVAL, f"{name} with a string evaluates it as code")
