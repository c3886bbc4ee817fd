"""Python rules, checked on the AST (``ast.parse``, never a regex).

Checks, each a rule name in the violations:

- ``syntax_error``: the program does not parse (the parser's own message, line and column).
- ``denied_import``: ``import``/``from ... import`` of a module in ``denied_imports`` (or a submodule of one:
  denying ``ctypes`` denies ``ctypes.util``), or outside ``allowed_imports`` when that is set. ``from http
  import client`` is checked as ``http.client``. Also literal ``__import__("x")``,
  ``importlib.import_module("x")`` and ``sys.modules["x"]``. Relative imports and ``__future__`` always pass.
- ``denied_call``: any reference (called or not: ``f = os.system`` counts) to a name matching ``denied_calls``
  (dotted, a trailing ``*`` matches a prefix), with names resolved through import aliases (``import os as o``,
  ``from os import system as s``, ``from os import *``), simple assignments (``o = os``), ``getattr(os,
  "system")`` with a literal name, ``vars(os)["system"]``, ``os.__dict__["system"]``; ``builtins.x`` is ``x``
  and ``posix``/``nt`` are ``os``. The entry ``getattr:module`` denies ``getattr``/``setattr``/``delattr``/
  ``vars`` on a module (or ``__builtins__``/``builtins``) and ``module.__dict__``/``__getattribute__``.
- ``dunder_escape``: the attributes and names of classic sandbox escapes (``ESCAPE_ATTRIBUTES``, also as a
  string literal, which is how ``getattr(f, "__globals__")`` spells them).
- ``open_mode``: ``open``/``io.open``/``os.fdopen``/``codecs.open`` whose mode is not a string literal in
  ``open_modes`` (no mode means "r": fine).
- ``max_nesting_depth``: see ``nesting depth`` below.
- ``unanalysable``: input the parser or this checker cannot take (too deep, too many nodes, alias chains
  too long); the program is refused.

Name resolution is static and conservative: a name bound in several ways has every meaning it could have.

Nesting depth: the depth of the deepest node, where the module's statements are at depth 1 and each nested
block, call argument, subscript, display (list/dict/...), operand or comprehension adds one. Chains that read
flat add nothing: ``a + b + c``, ``x.f().g()``, ``elif`` and ``a if p else b if q else c``. The walk is
iterative; the parser itself refuses what nests beyond its own limits (that is reported as ``unanalysable``).
"""

from __future__ import annotations

import ast
import gc
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from sandbox_server.policy.models import PythonRules
from sandbox_server.validation.static._base import (
    DENIED_CALL,
    DENIED_IMPORT,
    DUNDER_ESCAPE,
    MAX_NESTING_DEPTH,
    OPEN_MODE,
    SYNTAX_ERROR,
    CodeViolation,
    Unanalysable,
)

MAX_AST_NODES = 1_000_000
MAX_RESOLUTION_DEPTH = 50  # nested getattr()/subscripts followed while naming one expression
MAX_ALIAS_EVALUATIONS_PER_BINDING = 4  # worklist budget for solving aliases (a = os; b = a; ...)
MAX_CANDIDATES = 64  # things one name may stand for
MAX_NAME_SEGMENTS = 10  # longest dotted name an alias is followed to (denied names are far shorter)

ESCAPE_ATTRIBUTES = frozenset({
    "__builtins__", "__subclasses__", "__globals__", "__code__", "__mro__", "__bases__", "__base__",
    "__closure__", "f_globals", "f_builtins", "f_locals", "f_back", "gi_frame", "gi_code", "cr_frame",
    "ag_frame", "tb_frame",
})
ESCAPE_NAMES = frozenset({"__builtins__", "__loader__"})
_ESCAPE_STRINGS = ESCAPE_ATTRIBUTES | ESCAPE_NAMES
OPEN_FUNCTIONS = frozenset({"open", "io.open", "_io.open", "os.fdopen", "codecs.open"})
GETATTR_MODULE = "getattr:module"
_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "delattr", "vars"})
_MODULE_DYNAMIC_ATTRIBUTES = frozenset({"__dict__", "__getattribute__", "__getattr__"})
_BUILTINS_MODULES = frozenset({"builtins", "__builtins__"})
_OS_ALIASES = frozenset({"posix", "nt"})
# Last names of the functions the call pass looks at; any other call is skipped unless its name is an alias.
_CALL_NAMES = frozenset({"getattr", "setattr", "delattr", "vars", "open", "fdopen", "__import__",
                         "import_module"})
# Names the call checks resolve: an alias of one of them must survive _collapse.
_SPECIAL_NAMES = OPEN_FUNCTIONS | _ATTRIBUTE_FUNCTIONS | {"__import__", "importlib.__import__",
                                                         "importlib.import_module", "sys.modules"}
_NAMING_FUNCTIONS = frozenset({"getattr", "__import__", "import_module"})
_VARS = frozenset({"vars"})
_MODULES = frozenset({"modules"})
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")

Candidates = dict[str, bool]  # dotted name -> "may be a module"


def check_python(code: str, rules: PythonRules) -> list[CodeViolation]:
    """Check ``code`` against ``rules``; raise Unanalysable for code the parser or the walk cannot take.

    The cyclic garbage collector is paused meanwhile (and resumed if it was running): a syntax tree has no
    cycles, and collecting while one is built doubles the parse time of a large program.
    """
    with _cycle_collection_paused():
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:  # includes IndentationError and TabError
            line = exc.lineno if isinstance(exc.lineno, int) and exc.lineno > 0 else 1
            column = exc.offset if isinstance(exc.offset, int) and exc.offset > 0 else 1
            return [CodeViolation(SYNTAX_ERROR, str(exc.msg), line, column)]
        except RecursionError as exc:
            raise Unanalysable("the program nests too deeply to be analysed") from exc
        except MemoryError as exc:
            raise Unanalysable("the program nests too deeply or is too large to be analysed") from exc
        except (ValueError, UnicodeError) as exc:
            raise Unanalysable(f"the program cannot be parsed: {exc}") from exc
        return _Checker(code, rules).run(tree)


@contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _module_in(name: str, modules: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _canonical(name: str) -> str:
    """``builtins.eval`` is ``eval``; ``posix.system`` is ``os.system``."""
    head, dot, rest = name.partition(".")
    if dot and head in _BUILTINS_MODULES:
        return rest
    if head in _OS_ALIASES:
        return "os" + dot + rest
    return name


def _module_like_attribute(attr: str) -> bool:
    """Whether ``module.attr`` may itself be a module: lower-case names that are not dunders."""
    return (attr[:1].islower() or attr[:1] == "_") and not attr.startswith("__")


def _str_constant(node: ast.AST | None) -> str | None:
    if type(node) is ast.Constant and isinstance(node.value, str):
        return node.value
    return None


class _NameMatcher:
    """``denied_calls`` compiled: exact names and prefixes (``os.exec*``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        prefixes: list[str] = []
        for pattern in patterns:
            if pattern == GETATTR_MODULE:
                continue
            if pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                self.exact.add(pattern)
        self.prefixes = tuple(prefixes)
        # First components a matching name may start with, to skip most names without resolving them.
        self.roots = {p.partition(".")[0] for p in self.exact}
        self.roots.update(p.partition(".")[0] for p in self.prefixes if "." in p)
        self.root_prefixes = tuple(p for p in self.prefixes if "." not in p)
        if self.roots & {"os"}:
            self.roots.update(_OS_ALIASES)
        self.roots.update(_BUILTINS_MODULES)

    def match(self, name: str) -> str | None:
        """The pattern ``name`` (or its canonical spelling) matches, if any."""
        for candidate in {name, _canonical(name)}:
            if candidate in self.exact:
                return candidate
            for prefix in self.prefixes:
                if candidate.startswith(prefix):
                    return prefix + "*"
        return None

    def on_the_way(self, name: str) -> bool:
        """Whether ``name`` is, or leads by attributes to, a denied name or one the checks look for."""
        name = _canonical(name)
        dotted = name + "."
        if name in _SPECIAL_NAMES or any(s.startswith(dotted) for s in _SPECIAL_NAMES):
            return True
        if any(p == name or p.startswith(dotted) for p in self.exact):
            return True
        return any(name.startswith(p) or p.startswith(dotted) for p in self.prefixes)

    def interesting_root(self, name: str) -> bool:
        return name in self.roots or (bool(self.root_prefixes) and name.startswith(self.root_prefixes))


class _Binding:
    __slots__ = ("expr", "kind", "line", "module", "scope", "target")

    def __init__(self, kind: str, line: int, target: str = "", module: bool = False,
                 expr: ast.expr | None = None, scope: _Scope | None = None) -> None:
        self.kind = kind  # "import" (target, module), "alias" (expr evaluated in scope) or "other" (opaque)
        self.line = line
        self.target = target
        self.module = module
        self.expr = expr
        self.scope = scope


class _Scope:
    __slots__ = ("bindings", "declared_global", "declared_nonlocal", "first_lines", "kind", "parent", "stars")

    def __init__(self, kind: str, parent: _Scope | None) -> None:
        self.kind = kind  # "module" | "class" | "function" | "comprehension"
        self.parent = parent
        self.bindings: dict[str, list[_Binding]] = {}
        self.first_lines: dict[str, int] = {}
        self.declared_global: set[str] = set()
        self.declared_nonlocal: set[str] = set()
        self.stars: list[str] = []  # modules of `from m import *`


_Work = tuple[ast.AST, int, _Scope]
_Push = Callable[[_Work], None]
# Nodes that are part of their parent's syntax rather than a level of their own.
_TRANSPARENT = frozenset({ast.keyword, ast.arguments, ast.arg, ast.alias, ast.withitem, ast.comprehension,
                          ast.ExceptHandler, ast.match_case})
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_SPECIAL = frozenset({ast.Subscript, ast.If, ast.IfExp, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Global,
                      ast.Nonlocal, *_FUNCTIONS, *_COMPREHENSIONS})
_BINDERS = frozenset({ast.Assign, ast.AnnAssign, ast.NamedExpr, ast.ExceptHandler, ast.MatchAs, ast.MatchStar,
                      ast.MatchMapping})


def _fields(kind: type[ast.AST]) -> tuple[str, ...]:
    """The fields of ``kind`` that may hold child nodes worth visiting (contexts and operators are not)."""
    return tuple(f for f in kind._fields if f not in ("ctx", "op", "ops"))


class _Checker:
    def __init__(self, code: str, rules: PythonRules) -> None:
        self._code = code
        self._rules = rules
        self._lines: list[str] | None = None
        self._denied = _NameMatcher(rules.denied_calls)
        self._getattr_module = GETATTR_MODULE in rules.denied_calls
        self._violations: list[CodeViolation] = []
        self._module = _Scope("module", None)
        self._pending: list[tuple[_Scope, str, _Binding]] = []
        self._names: list[tuple[ast.Name, _Scope]] = []
        self._chains: list[tuple[ast.Attribute, _Scope]] = []
        self._calls: list[tuple[ast.Call, _Scope]] = []
        self._subscripts: list[tuple[ast.Subscript, _Scope]] = []
        self._inner: set[int] = set()  # ids of nodes inside an attribute chain (checked with the chain)
        self._alias_targets: set[int] = set()  # ids of Name targets bound as aliases, not as opaque values
        self._aliased: set[str] = set()  # names with an import or alias binding somewhere
        self._table: dict[tuple[int, str], Candidates] = {}
        self._homes: dict[tuple[int, str], tuple[_Scope, int]] = {}  # import/alias bindings: scope, first line
        self._reads: set[tuple[int, str]] | None = None  # table entries read while solving one alias
        self._line_columns: dict[int, list[int] | None] = {}  # per line: byte offset -> column (None: ASCII)
        self._depth_reported = False

    # -- positions and reporting ---------------------------------------------------------------------------

    def _column(self, line: int, byte_offset: int) -> int:
        """1-based character column from the parser's 0-based UTF-8 byte offset."""
        if line not in self._line_columns:
            if self._lines is None:
                self._lines = _LINE_SPLIT.split(self._code)
            text = self._lines[line - 1] if 0 < line <= len(self._lines) else ""
            columns: list[int] | None = None
            if not text.isascii():
                columns = []
                for index, char in enumerate(text):
                    columns.extend([index] * len(char.encode("utf-8", "surrogatepass")))
                columns.append(len(text))
            self._line_columns[line] = columns
        columns = self._line_columns[line]
        if columns is None:
            return byte_offset + 1
        return columns[min(byte_offset, len(columns) - 1)] + 1

    def _add(self, rule: str, message: str, line: int, byte_offset: int) -> None:
        self._violations.append(CodeViolation(rule, message, line, self._column(line, byte_offset)))

    def _add_at(self, node: ast.AST, rule: str, message: str) -> None:
        self._add(rule, message, getattr(node, "lineno", 1), getattr(node, "col_offset", 0))

    # -- the walk --------------------------------------------------------------------------------------------

    def run(self, tree: ast.Module) -> list[CodeViolation]:
        self._walk(tree)
        self._place_bindings()
        self._solve_aliases()
        for name_node, scope in self._names:
            self._check_name(name_node, scope)
        for chain, scope in self._chains:
            self._check_chain(chain, scope)
        for call, scope in self._calls:
            self._check_call(call, scope)
        for subscript, scope in self._subscripts:
            self._check_subscript(subscript, scope)
        return self._violations

    def _walk(self, tree: ast.Module) -> None:
        stack: list[_Work] = [(tree, 0, self._module)]
        pop, push = stack.pop, stack.append
        limit = self._rules.max_nesting_depth
        names, inner, load = self._names, self._inner, ast.Load
        fields_of: dict[type[ast.AST], tuple[str, ...]] = {}
        # Local names for the hot classes: a global plus an attribute lookup per node adds up.
        name_, constant_, attribute_, call_, expr_, binop_ = ast.Name, ast.Constant, ast.Attribute, ast.Call, \
            ast.Expr, ast.BinOp
        count = 0
        while stack:
            node, depth, scope = pop()
            count += 1
            if count > MAX_AST_NODES:
                raise Unanalysable(f"the program has more than {MAX_AST_NODES} syntax nodes")
            if depth > limit and not self._depth_reported:
                self._depth_reported = True
                self._add_at(node, MAX_NESTING_DEPTH, f"nesting depth is over the limit of {limit}")
            if isinstance(node, name_):
                if node.id in ESCAPE_NAMES:
                    self._add_at(node, DUNDER_ESCAPE, f"{node.id} is a sandbox-escape name")
                if type(node.ctx) is load:
                    if id(node) not in inner:
                        names.append((node, scope))
                elif id(node) not in self._alias_targets:
                    self._bind(scope, node.id, _Binding("other", node.lineno))
            elif isinstance(node, constant_):
                value = node.value
                if type(value) is str and value in _ESCAPE_STRINGS:
                    self._add_at(node, DUNDER_ESCAPE, f"the string {value!r} names a sandbox-escape attribute")
            elif isinstance(node, attribute_):
                self._attribute(node, scope)
                push((node.value, depth, scope))  # a.b.c: one level
            elif isinstance(node, call_):
                self._calls.append((node, scope))
                push((node.func, depth, scope))  # x.f().g(): one level
                for arg in node.args:
                    push((arg, depth + 1, scope))
                for keyword in node.keywords:
                    push((keyword.value, depth + 1, scope))
            elif isinstance(node, expr_):
                push((node.value, depth, scope))
            elif isinstance(node, binop_):
                push((node.left, depth, scope))  # a + b + c: one level
                push((node.right, depth + 1, scope))
            elif type(node) in _SPECIAL:
                self._special(node, depth, scope, push)
            else:
                kind = type(node)
                if kind in _BINDERS:
                    self._record_bindings(node, scope)
                fields = fields_of.get(kind)
                if fields is None:
                    fields = fields_of[kind] = _fields(kind)
                for field in fields:
                    value = getattr(node, field)
                    if type(value) is list:
                        for child in value:
                            if isinstance(child, ast.AST):
                                push((child, depth if type(child) in _TRANSPARENT else depth + 1, scope))
                    elif isinstance(value, ast.AST):
                        push((value, depth if type(value) in _TRANSPARENT else depth + 1, scope))

    def _special(self, node: ast.AST, depth: int, scope: _Scope, push: _Push) -> None:
        """Nodes with a walk of their own: scopes, imports, chains that nest without adding a level."""
        if isinstance(node, ast.Subscript):
            if _str_constant(node.slice) is not None:
                self._subscripts.append((node, scope))
            push((node.value, depth, scope))
            push((node.slice, depth + 1, scope))
        elif isinstance(node, ast.If):
            push((node.test, depth + 1, scope))
            for child in node.body:
                push((child, depth + 1, scope))
            if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
                push((node.orelse[0], depth, scope))  # elif: one level
            else:
                for child in node.orelse:
                    push((child, depth + 1, scope))
        elif isinstance(node, ast.IfExp):
            push((node.test, depth + 1, scope))
            push((node.body, depth + 1, scope))
            push((node.orelse, depth, scope))  # a if p else b if q else c: one level
        elif isinstance(node, _FUNCTIONS):
            self._function(node, depth, scope, push)
        elif isinstance(node, ast.ClassDef):
            self._class(node, depth, scope, push)
        elif isinstance(node, _COMPREHENSIONS):
            self._comprehension(node, depth, scope, push)
        elif isinstance(node, ast.Import):
            self._import(node, scope)
        elif isinstance(node, ast.ImportFrom):
            self._import_from(node, scope)
        elif isinstance(node, ast.Global):
            scope.declared_global.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            scope.declared_nonlocal.update(node.names)

    def _record_bindings(self, node: ast.AST, scope: _Scope) -> None:
        """Bindings made by nodes whose children the generic walk visits (assignments, handlers, patterns)."""
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._alias(target, node.value, scope)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._alias(node.target, node.value, scope)
        elif isinstance(node, ast.NamedExpr):
            home = scope  # := in a comprehension binds in the enclosing function
            while home.kind == "comprehension" and home.parent is not None:
                home = home.parent
            self._alias(node.target, node.value, home)
            if id(node.target) not in self._alias_targets:
                self._bind(home, node.target.id, _Binding("other", node.lineno))
                self._alias_targets.add(id(node.target))
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
            if node.name:
                self._bind(scope, node.name, _Binding("other", getattr(node, "lineno", 1)))
        elif isinstance(node, ast.MatchMapping) and node.rest:
            self._bind(scope, node.rest, _Binding("other", node.lineno))

    # -- what the walk records -------------------------------------------------------------------------------

    def _bind(self, scope: _Scope, name: str, binding: _Binding) -> None:
        self._pending.append((scope, name, binding))

    def _attribute(self, node: ast.Attribute, scope: _Scope) -> None:
        if node.attr in ESCAPE_ATTRIBUTES:
            line = node.end_lineno or node.lineno
            offset = (node.end_col_offset or 0) - len(node.attr.encode("utf-8"))
            self._add(DUNDER_ESCAPE, f".{node.attr} is a sandbox-escape attribute", line, max(offset, 0))
        if id(node) not in self._inner:
            self._chains.append((node, scope))
        self._inner.add(id(node.value))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda, depth: int, scope: _Scope,
                  push: _Push) -> None:
        inner = _Scope("function", scope)
        if not isinstance(node, ast.Lambda):
            self._bind(scope, node.name, _Binding("other", node.lineno))
            for decorator in node.decorator_list:
                push((decorator, depth + 1, scope))
            if node.returns is not None:
                push((node.returns, depth + 1, scope))
        arguments = node.args
        for default in arguments.defaults:
            push((default, depth + 1, scope))
        for kw_default in arguments.kw_defaults:
            if kw_default is not None:
                push((kw_default, depth + 1, scope))
        params = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        params.extend(a for a in (arguments.vararg, arguments.kwarg) if a is not None)
        for param in params:
            self._bind(inner, param.arg, _Binding("other", param.lineno))
            if param.annotation is not None:
                push((param.annotation, depth + 1, scope))
        if isinstance(node, ast.Lambda):
            push((node.body, depth + 1, inner))
        else:
            for statement in node.body:
                push((statement, depth + 1, inner))

    def _class(self, node: ast.ClassDef, depth: int, scope: _Scope, push: _Push) -> None:
        self._bind(scope, node.name, _Binding("other", node.lineno))
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            push((expr, depth + 1, scope))
        inner = _Scope("class", scope)
        for statement in node.body:
            push((statement, depth + 1, inner))

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp, depth: int,
                       scope: _Scope, push: _Push) -> None:
        inner = _Scope("comprehension", scope)
        for index, generator in enumerate(node.generators):
            push((generator.iter, depth + 1, scope if index == 0 else inner))  # the first runs outside
            push((generator.target, depth + 1, inner))
            for condition in generator.ifs:
                push((condition, depth + 1, inner))
        if isinstance(node, ast.DictComp):
            push((node.key, depth + 1, inner))
            push((node.value, depth + 1, inner))
        else:
            push((node.elt, depth + 1, inner))

    def _alias(self, target: ast.expr, value: ast.expr, scope: _Scope) -> None:
        """Record ``target = value`` as an alias when ``value`` may name something (``o = os``)."""
        pairs = [(target, value)]
        while pairs:
            left, right = pairs.pop()
            if type(left) is ast.Name and _nameable(right):
                self._bind(scope, left.id, _Binding("alias", left.lineno, expr=right, scope=scope))
                self._alias_targets.add(id(left))
            elif (isinstance(left, ast.Tuple | ast.List) and isinstance(right, ast.Tuple | ast.List)
                  and len(left.elts) == len(right.elts)
                  and not any(type(e) is ast.Starred for e in [*left.elts, *right.elts])):
                pairs.extend(zip(left.elts, right.elts, strict=True))

    def _import(self, node: ast.Import, scope: _Scope) -> None:
        for alias in node.names:
            self._check_import(alias.name, alias)
            if alias.asname:
                self._bind(scope, alias.asname, _Binding("import", node.lineno, alias.name, True))
            else:
                top = alias.name.partition(".")[0]
                self._bind(scope, top, _Binding("import", node.lineno, top, True))

    def _import_from(self, node: ast.ImportFrom, scope: _Scope) -> None:
        if node.level:  # relative: the program's own package, not a library
            for alias in node.names:
                if alias.name != "*":
                    self._bind(scope, alias.asname or alias.name, _Binding("other", node.lineno))
            return
        module = node.module or ""
        rules = self._rules
        if module == "__future__":
            return
        module_denied = _module_in(module, rules.denied_imports)
        if module_denied:
            self._add_at(node, DENIED_IMPORT, f"import of {module!r} is denied")
        for alias in node.names:
            if alias.name == "*":
                scope.stars.append(module)
                if not module_denied:
                    self._check_import(module, node)
                continue
            full = f"{module}.{alias.name}"
            if not module_denied:
                if _module_in(full, rules.denied_imports):
                    self._add_at(alias, DENIED_IMPORT, f"import of {full!r} is denied")
                elif rules.allowed_imports is not None and not (
                    _module_in(module, rules.allowed_imports) or _module_in(full, rules.allowed_imports)
                ):
                    self._add_at(alias, DENIED_IMPORT, f"{full!r} is not in allowed_imports")
            pattern = self._denied.match(full)
            if pattern is not None:
                self._add_at(alias, DENIED_CALL, f"{_canonical(full)!r} is denied (denied_calls: {pattern!r})")
            module_like = _module_like_attribute(alias.name)
            self._bind(scope, alias.asname or alias.name, _Binding("import", node.lineno, full, module_like))

    def _check_import(self, name: str, node: ast.AST) -> None:
        rules = self._rules
        if name == "__future__":
            return
        if _module_in(name, rules.denied_imports):
            self._add_at(node, DENIED_IMPORT, f"import of {name!r} is denied")
        elif rules.allowed_imports is not None and not _module_in(name, rules.allowed_imports):
            self._add_at(node, DENIED_IMPORT, f"{name!r} is not in allowed_imports")

    # -- after the walk: scopes, aliases, resolution ------------------------------------------------------

    def _place_bindings(self) -> None:
        """Put each binding in the scope it belongs to (``global``/``nonlocal`` move it out)."""
        for scope, name, binding in self._pending:
            home = scope
            if name in scope.declared_global:
                home = self._module
            elif name in scope.declared_nonlocal:
                parent = scope.parent
                while parent is not None and parent.kind not in ("function", "module"):
                    parent = parent.parent
                home = parent or self._module
            bindings = home.bindings.get(name)
            if bindings is None:
                home.bindings[name] = [binding]
                home.first_lines[name] = binding.line
            else:
                bindings.append(binding)
                home.first_lines[name] = min(home.first_lines[name], binding.line)
            if binding.kind != "other":
                self._aliased.add(name)
                self._homes[(id(home), name)] = (home, binding.line)

    def _solve_aliases(self) -> None:
        """Candidates of every import/alias binding, grown to a fixpoint (``a = os; b = a``).

        A worklist in source order: an entry is evaluated again only when an entry it read has grown.
        """
        keys = sorted(self._homes, key=lambda k: self._homes[k][1])
        for key in keys:
            self._table[key] = {}
        dependents: dict[tuple[int, str], set[tuple[int, str]]] = {}
        work, queued = deque(keys), set(keys)
        widened: set[tuple[int, str]] = set()
        budget = MAX_ALIAS_EVALUATIONS_PER_BINDING * len(keys) + 1000
        while work:
            key = work.popleft()
            queued.discard(key)
            budget -= 1
            if budget < 0:
                raise Unanalysable("alias assignments too intricate to be followed")
            home, _ = self._homes[key]
            reads: set[tuple[int, str]] = set()
            self._reads = reads
            found: Candidates = {}
            try:
                for binding in home.bindings[key[1]]:
                    if binding.kind == "import":
                        _merge(found, {binding.target: binding.module})
                    elif binding.kind == "alias" and binding.expr is not None and binding.scope is not None:
                        _merge(found, self._resolve(binding.expr, binding.scope, 0) or {})
            finally:
                self._reads = None
            if key in widened or len(found) > MAX_CANDIDATES:
                # Widen (`s = s.a; s = s.b` would grow forever): from now on this entry keeps only what a check
                # can use, merged with what it had, so that it still only grows and the worklist ends.
                widened.add(key)
                _merge(found, self._table[key])
                found = self._collapse(found)
            if len(found) > MAX_CANDIDATES:
                raise Unanalysable(f"{key[1]!r} may stand for too many things to be followed", home.first_lines[key[1]])
            for read in reads:
                dependents.setdefault(read, set()).add(key)
            if found != self._table[key]:
                self._table[key] = found
                for dependent in dependents.get(key, ()):
                    if dependent not in queued:
                        queued.add(dependent)
                        work.append(dependent)

    def _collapse(self, found: Candidates) -> Candidates:
        """Keep what a check can use: names on the way to a denied or special name, and one module."""
        kept = {n: m for n, m in found.items() if self._denied.on_the_way(n)}
        modules = sorted((n for n, m in found.items() if m and n not in kept), key=lambda n: (len(n), n))
        if modules:
            kept[modules[0]] = True
        return kept

    def _resolve(self, expr: ast.AST, scope: _Scope, depth: int) -> Candidates | None:
        """The dotted names ``expr`` may stand for (each with "may be a module"), or None if it names nothing."""
        if depth > MAX_RESOLUTION_DEPTH:
            raise Unanalysable("expression nests too deeply to be resolved", getattr(expr, "lineno", 1))
        attrs: list[str] = []
        while isinstance(expr, ast.Attribute):
            attrs.append(expr.attr)
            expr = expr.value
        base: Candidates | None
        if isinstance(expr, ast.Name):
            base = self._resolve_name(expr.id, scope, expr.lineno)
        elif isinstance(expr, ast.Call):
            base = self._resolve_call(expr, scope, depth)
        elif isinstance(expr, ast.Subscript):
            base = self._resolve_subscript(expr, scope, depth)
        else:
            return None
        if not base or not attrs:
            return base
        result: Candidates = {}
        for name, module in base.items():
            if name.count(".") + len(attrs) >= MAX_NAME_SEGMENTS:
                continue  # `node = node.next` would otherwise grow without end
            for attr in reversed(attrs):
                name, module = f"{name}.{attr}", module and _module_like_attribute(attr)
            result[name] = module
        return result

    def _resolve_name(self, name: str, scope: _Scope, line: int) -> Candidates:
        result: Candidates = {}
        current: _Scope | None = scope
        direct = True  # the use runs in `current` itself, not in a function nested in it
        while current is not None:
            if current.kind == "class" and not direct:
                current = current.parent
                continue
            if name in current.declared_global and current is not self._module:
                current, direct = self._module, False
                continue
            if name in current.declared_nonlocal:
                current, direct = current.parent, False
                continue
            if name in current.bindings:
                key = (id(current), name)
                if self._reads is not None:
                    self._reads.add(key)
                _merge(result, self._table.get(key, {}))
                if current.kind in ("function", "comprehension"):
                    return result
                # Module and class bodies run in order: a use before the first binding sees what is outside.
                if not (direct and line <= current.first_lines[name]):
                    return result
            if current is self._module:
                for star in current.stars:
                    _merge(result, {f"{star}.{name}": _module_like_attribute(name)})
            if current.kind == "function":
                direct = False
            current = current.parent
        _merge(result, {name: name in _BUILTINS_MODULES})  # a builtin, or a global bound nowhere visible
        return result

    def _resolve_call(self, call: ast.Call, scope: _Scope, depth: int) -> Candidates | None:
        """``getattr(m, "x")`` is ``m.x``; ``__import__("x")`` and ``importlib.import_module("x")`` are ``x``."""
        if not self._may_name(call.func, _NAMING_FUNCTIONS):
            return None  # most calls: skipped without resolving (x.f().g() chains would nest deeply)
        functions = {_canonical(f) for f in (self._resolve(call.func, scope, depth + 1) or {})}
        args = call.args
        if "getattr" in functions and len(args) >= 2:
            attr = _str_constant(args[1])
            if attr is not None:
                base = self._resolve(args[0], scope, depth + 1)
                if base:
                    return {f"{n}.{attr}": m and _module_like_attribute(attr) for n, m in base.items()}
        name = _str_constant(args[0]) if args else None
        if name is not None:
            if "__import__" in functions or "importlib.__import__" in functions:
                return {name.partition(".")[0]: True}
            if "importlib.import_module" in functions:
                return {name: True}
        return None

    def _resolve_subscript(self, node: ast.Subscript, scope: _Scope, depth: int) -> Candidates | None:
        """``sys.modules["x"]`` is ``x``; ``vars(m)["x"]`` and ``m.__dict__["x"]`` are ``m.x``."""
        key = _str_constant(node.slice)
        value = node.value
        if key is None or type(value) not in (ast.Name, ast.Attribute, ast.Call):
            return None
        owner: ast.expr | None = None
        if isinstance(value, ast.Attribute) and value.attr == "__dict__":
            owner = value.value
        elif isinstance(value, ast.Call):
            if len(value.args) != 1 or not self._may_name(value.func, _VARS):
                return None
            functions = self._resolve(value.func, scope, depth + 1) or {}
            if "vars" in {_canonical(f) for f in functions}:
                owner = value.args[0]
        if owner is not None:
            base = self._resolve(owner, scope, depth + 1)
            return {f"{n}.{key}": m and _module_like_attribute(key) for n, m in (base or {}).items()} or None
        if not self._may_name(value, _MODULES):
            return None
        container = self._resolve(value, scope, depth + 1) or {}
        if "sys.modules" in {_canonical(n) for n in container}:
            return {key: True}
        return None

    def _may_name(self, expr: ast.expr, names: frozenset[str]) -> bool:
        """Whether ``expr`` may stand for one of ``names`` (by its last name, or through an alias)."""
        if isinstance(expr, ast.Name):
            return expr.id in names or expr.id in self._aliased
        return isinstance(expr, ast.Attribute) and expr.attr in names

    # -- the checks that need resolution -----------------------------------------------------------------

    def _is_interesting(self, name: str) -> bool:
        return name in self._aliased or self._denied.interesting_root(name) or bool(self._module.stars)

    def _report_denied(self, node: ast.AST, candidates: Iterable[str]) -> bool:
        for name in candidates:
            pattern = self._denied.match(name)
            if pattern is not None:
                self._add_at(node, DENIED_CALL, f"{_canonical(name)!r} is denied (denied_calls: {pattern!r})")
                return True
        return False

    def _check_name(self, node: ast.Name, scope: _Scope) -> None:
        if self._is_interesting(node.id):
            self._report_denied(node, self._resolve_name(node.id, scope, node.lineno))

    def _check_chain(self, node: ast.Attribute, scope: _Scope) -> None:
        attrs: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            attrs.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and not self._is_interesting(base.id):
            return
        if type(base) not in (ast.Name, ast.Call, ast.Subscript):
            return
        candidates = self._resolve(base, scope, 0)
        if not candidates:
            return
        attrs.reverse()
        for name, module in candidates.items():
            if self._report_denied(node, [name]):
                return
            for attr in attrs:
                if module and attr in _MODULE_DYNAMIC_ATTRIBUTES and self._getattr_module:
                    self._add_at(node, DENIED_CALL,
                                 f"{attr} on module {_canonical(name)!r} is denied (denied_calls: 'getattr:module')")
                    return
                name, module = f"{name}.{attr}", module and _module_like_attribute(attr)
                if self._report_denied(node, [name]):
                    return

    def _check_call(self, call: ast.Call, scope: _Scope) -> None:
        func = call.func
        if isinstance(func, ast.Name):
            if func.id not in _CALL_NAMES and func.id not in self._aliased:
                return
        elif not isinstance(func, ast.Attribute) or func.attr not in _CALL_NAMES:
            return
        functions = {_canonical(f) for f in (self._resolve(func, scope, 0) or {})}
        if not functions:
            return
        if functions & _ATTRIBUTE_FUNCTIONS:
            self._check_attribute_call(call, scope, functions)
        if functions & OPEN_FUNCTIONS:
            self._check_open(call)
        target = _str_constant(call.args[0]) if call.args else None
        if target is not None and functions & {"__import__", "importlib.__import__", "importlib.import_module"}:
            self._check_import(target, call)

    def _check_attribute_call(self, call: ast.Call, scope: _Scope, functions: set[str]) -> None:
        if not call.args:
            return
        owner = self._resolve(call.args[0], scope, 0) or {}
        if self._getattr_module and any(owner.values()):
            which = sorted(functions & _ATTRIBUTE_FUNCTIONS)[0]
            module = next(_canonical(n) for n, m in owner.items() if m)
            self._add_at(call, DENIED_CALL,
                         f"{which}() on module {module!r} is denied (denied_calls: 'getattr:module')")
        attr = _str_constant(call.args[1]) if len(call.args) >= 2 else None
        if attr is not None and owner:
            self._report_denied(call, [f"{n}.{attr}" for n in owner])

    def _check_open(self, call: ast.Call) -> None:
        allowed = self._rules.open_modes
        if any(type(a) is ast.Starred for a in call.args) or any(k.arg is None for k in call.keywords):
            self._add_at(call, OPEN_MODE, "open() with *args or **kwargs: its mode cannot be checked")
            return
        mode: ast.expr | None = call.args[1] if len(call.args) >= 2 else None
        for keyword in call.keywords:
            if keyword.arg == "mode":
                mode = keyword.value
        if mode is None:
            return
        value = _str_constant(mode)
        if value is None:
            self._add_at(mode, OPEN_MODE, "open() mode is not a string literal")
        elif value not in allowed:
            self._add_at(mode, OPEN_MODE, f"open() mode {value!r} is not allowed (open_modes)")

    def _check_subscript(self, node: ast.Subscript, scope: _Scope) -> None:
        candidates = self._resolve_subscript(node, scope, 0)
        if not candidates:
            return
        value = node.value
        if not isinstance(value, ast.Call) and not (isinstance(value, ast.Attribute) and value.attr == "__dict__"):
            for name in candidates:  # sys.modules["x"]: as good as importing x
                self._check_import(name, node)
        if id(node) not in self._inner:  # inside an attribute chain, the chain reports the name
            self._report_denied(node, candidates)


def _merge(into: Candidates, more: Candidates) -> None:
    for name, module in more.items():
        into[name] = into.get(name, False) or module


def _nameable(expr: ast.expr) -> bool:
    """Whether ``expr`` may name a module or function (so an assignment of it is an alias)."""
    if isinstance(expr, ast.Name | ast.Attribute):
        return True
    if isinstance(expr, ast.Subscript):
        return _str_constant(expr.slice) is not None
    if isinstance(expr, ast.Call):
        func = expr.func
        last = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return last in ("getattr", "__import__", "import_module")
    return False

