"""Bash rules: command words and network redirections, found by a small lexer. A first filter, not a proof.

The lexer follows bash's quoting: comments, single and double quotes, ``$'...'`` (escapes decoded), backslash
escapes and line continuations, ``$(...)``, backticks, ``<(...)``, ``${...}``, ``$((...))``, array literals and
here-documents. A word's value is what bash would see after quote removal, so ``c"ur"l``, ``\\curl`` and
``$'\\x63url'`` are all ``curl``.

Rules:

- ``denied_command``: a command word in ``denied_commands``, by name or by path (``/usr/bin/curl``). Command
  words are the first word of each simple command (after ``;``, ``&``, ``|``, ``&&``, ``||``, newlines,
  ``(``, ``{``, ``then``/``do``/..., inside ``$(...)``, backticks and ``<(...)``), after assignments and
  redirections, and the command run by a wrapper: ``exec``, ``xargs``, ``env``, ``sudo``, ``command``,
  ``builtin``, ``nohup``, ``nice``, ``time``, ``timeout``, ``find -exec`` and similar (``WRAPPERS``). Also:
  a glob command word that may expand to a denied name (``/usr/bin/cur?``); a command word that is a
  variable (``$c``) any literal assignment of which names a denied command (``c=curl``); and the scripts given to
  ``bash -c``/``sh -c``, ``eval``, ``trap``, ``alias``, ``env -S``, ``watch``, here-strings and here-documents
  fed to a shell, which are checked as scripts themselves (positions: those of the string that holds them).
- ``network``: ``/dev/tcp/`` or ``/dev/udp/`` anywhere outside a comment (bash's built-in sockets).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple

from sandbox_server.policy.models import BashRules
from sandbox_server.validation.static._base import (
    DENIED_COMMAND,
    NETWORK,
    CodeViolation,
    LineIndex,
    Unanalysable,
)

MAX_JOBS = 10_000  # nested scripts (bash -c, eval, here-documents) analysed for one program
MAX_GLOB_COMMANDS = 1000  # command words with glob characters (each matched against every denied name)
MAX_GLOB_CHARS = 256  # a longer glob command word is refused rather than matched
MAX_NESTING = 1000  # quotes and substitutions inside each other ($( "${ `...` }" ))
_NEWLINE = re.compile(r"\n")
_NETWORK = re.compile(r"/dev/(?:tcp|udp)/")
_BLANKS = re.compile(r"[ \t]+")
_WORD_RUN = re.compile(r"[^ \t\n;&|<>()'\"\\$`]+")
_DQ_RUN = re.compile(r"[^\"\\$`]+")
_HEREDOC_RUN = re.compile(r"[^\\$`]+")
_PARAM_RUN = re.compile(r"[^{}'\"\\$`]+")
_ARITH_RUN = re.compile(r"[^()$`]+")
_OPERATOR = re.compile(r"&>>|&>|<<<|<<-|<<|>>|<>|>\||>&|<&|&&|\|\||\|&|;;&|;;|;&|[;&|<>]")
_SIMPLE_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|([0-9@*#?$!-]))")
_ANSI_C = re.compile(r"\$'((?:[^'\\]|\\[\s\S])*)'?")
_ANSI_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|[\s\S])")
_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f",
                "v": "\v"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_REDIRECTIONS = frozenset({"<", ">", ">>", "<>", ">|", ">&", "<&", "&>", "&>>", "<<", "<<-", "<<<"})
_GLOB_CHARS = frozenset("*?[")
_STARS = re.compile(r"\*+")
# Reserved words after which the next word is still a command word.
_KEEP_COMMAND_POSITION = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!", "{", "coproc"})
_END_WORDS = frozenset({"}", "fi", "done", "esac"})
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "yash"})
_DECLARATIONS = frozenset({"export", "declare", "local", "readonly", "typeset"})


@dataclass(frozen=True)
class Wrapper:
    """A command that runs another: its options that take an argument, and positionals before the command."""

    options_with_argument: frozenset[str] = frozenset()
    positionals: int = 0


WRAPPERS: dict[str, Wrapper] = {
    "exec": Wrapper(frozenset({"-a"})),
    "xargs": Wrapper(frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter",
                                "--eof", "--max-lines", "--max-args", "--max-procs", "--max-chars", "--replace",
                                "--process-slot-var"})),
    "env": Wrapper(frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"})),
    "sudo": Wrapper(frozenset({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group",
                               "--host", "--prompt", "--chdir"})),
    "doas": Wrapper(frozenset({"-u", "-C"})),
    "command": Wrapper(),
    "builtin": Wrapper(),
    "nohup": Wrapper(),
    "nice": Wrapper(frozenset({"-n", "--adjustment"})),
    "time": Wrapper(frozenset({"-f", "-o", "--format", "--output"})),
    "timeout": Wrapper(frozenset({"-s", "-k", "--signal", "--kill-after"}), positionals=1),
    "stdbuf": Wrapper(frozenset({"-i", "-o", "-e", "--input", "--output", "--error"})),
    "setsid": Wrapper(),
    "ionice": Wrapper(frozenset({"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"})),
    "chrt": Wrapper(positionals=1),
    "taskset": Wrapper(positionals=1),
    "strace": Wrapper(frozenset({"-e", "-o", "-p", "-s", "-u", "-E", "-a", "-b", "-I", "-O", "-P", "-S", "-X"})),
    "ltrace": Wrapper(frozenset({"-e", "-o", "-p", "-s", "-u", "-a", "-n"})),
    "watch": Wrapper(frozenset({"-n", "--interval", "-q", "--equexit"})),
    "flock": Wrapper(frozenset({"-w", "-E", "--timeout", "--conflict-exit-code"}), positionals=1),
    "unbuffer": Wrapper(),
    "fakeroot": Wrapper(),
    "busybox": Wrapper(),
    "chroot": Wrapper(frozenset({"--userspec", "--groups"}), positionals=1),
    "parallel": Wrapper(frozenset({"-j", "-S", "--jobs", "--sshlogin", "-a", "--arg-file", "--delay"})),
}
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


class _Token(NamedTuple):
    kind: str  # word | op | sub_start (value "sub" or "data") | sub_end | heredoc
    value: str  # a word's value after quote removal (expansions dropped); an operator; a here-doc body
    start: int
    end: int = 0
    quoted: bool = False  # some part was quoted or escaped (or, for a here-doc, the delimiter was)
    dynamic: bool = False  # some part is an expansion ($x, $(...), ...)
    glob: bool = False  # has unquoted * ? [
    variables: tuple[str, ...] = ()


# -- the lexer ------------------------------------------------------------------------------------------------


class _TooDeep(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _Frame:
    __slots__ = ("chars", "closer", "depth", "dynamic", "glob", "in_word", "kind", "other_dynamic", "owner",
                 "quoted", "start", "variables")

    def __init__(self, kind: str, closer: str = "", owner: _Frame | None = None) -> None:
        self.kind = kind  # cmd | dq | heredoc | param | arith
        self.closer = closer  # for cmd frames: ")" or "`" ("" at the top)
        self.depth = 0
        self.owner: _Frame = owner if owner is not None else self  # the cmd frame whose word we are in
        self.in_word = False
        self.start = 0
        self.chars: list[str] = []
        self.quoted = self.dynamic = self.glob = self.other_dynamic = False
        self.variables: list[str] = []


class _Lexer:
    def __init__(self, text: str, heredoc_mode: bool) -> None:
        self.text = text
        self.tokens: list[_Token] = []
        self.comments: list[tuple[int, int]] = []
        top = _Frame("cmd")
        self.frames = [top]
        if heredoc_mode:
            self.frames.append(_Frame("heredoc", owner=top))
        self._expect_delimiter: bool | None = None  # strip tabs? once `<<`/`<<-` is seen
        self._heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, quoted, strip tabs)

    def run(self) -> list[_Token]:
        n = len(self.text)
        i = 0
        frames = self.frames
        while i < n:
            if len(frames) > MAX_NESTING:
                raise _TooDeep(i)
            kind = frames[-1].kind
            if kind == "cmd":
                i = self._cmd(i)
            elif kind in ("dq", "heredoc"):
                i = self._dq(i)
            elif kind == "param":
                i = self._param(i)
            else:
                i = self._arith(i)
        while len(self.frames) > 1:  # unterminated quotes and substitutions end with the text
            frame = self.frames.pop()
            if frame.kind == "cmd":
                self._finish(frame, n)
                self.tokens.append(_Token("sub_end", "", n))
        self._finish(self.frames[0], n)
        return self.tokens

    # words

    def _begin(self, frame: _Frame, i: int) -> None:
        if not frame.in_word:
            frame.in_word = True
            frame.start = i
            frame.chars = []
            frame.variables = []
            frame.quoted = frame.dynamic = frame.glob = frame.other_dynamic = False

    def _finish(self, frame: _Frame, end: int) -> None:
        if not frame.in_word:
            return
        frame.in_word = False
        value = "".join(frame.chars)
        self.tokens.append(_Token("word", value, frame.start, end, frame.quoted, frame.dynamic, frame.glob,
                                  tuple(frame.variables)))
        if self._expect_delimiter is not None:
            self._heredocs.append((value, frame.quoted, self._expect_delimiter))
            self._expect_delimiter = None

    def _push_command(self, i: int, closer: str, kind: str = "sub") -> None:
        self.frames.append(_Frame("cmd", closer))
        self.tokens.append(_Token("sub_start", kind, i))

    def _close_command(self, i: int) -> None:
        self._finish(self.frames[-1], i)
        self.frames.pop()
        self.tokens.append(_Token("sub_end", "", i))

    # states

    def _cmd(self, i: int) -> int:
        text = self.text
        frame = self.frames[-1]
        c = text[i]
        if c == " " or c == "\t":
            self._finish(frame, i)
            match = _BLANKS.match(text, i)
            return match.end() if match else i + 1
        if c == "\n":
            self._finish(frame, i)
            self.tokens.append(_Token("op", "\n", i, i + 1))
            return self._read_heredocs(i + 1) if self._heredocs else i + 1
        if c == "#" and not frame.in_word:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            self.comments.append((i, end))
            return end
        if c == "\\":
            if text.startswith("\n", i + 1):
                return i + 2  # line continuation
            self._begin(frame, i)
            frame.chars.append(text[i + 1:i + 2])
            frame.quoted = True
            return i + 2
        if c == "'":
            self._begin(frame, i)
            end = text.find("'", i + 1)
            end = len(text) if end < 0 else end
            frame.chars.append(text[i + 1:end])
            frame.quoted = True
            return end + 1
        if c == '"':
            self._begin(frame, i)
            frame.quoted = True
            self.frames.append(_Frame("dq", owner=frame))
            return i + 1
        if c == "$":
            self._begin(frame, i)
            return self._dollar(i, frame, in_quotes=False)
        if c == "`":
            if frame.closer == "`":
                self._close_command(i)
                return i + 1
            self._begin(frame, i)
            frame.dynamic = frame.other_dynamic = True
            self._push_command(i, "`")
            return i + 1
        if c == "(":
            if frame.in_word and _ASSIGNMENT.fullmatch(text, frame.start, i):
                self._push_command(i, ")", "data")  # name=(array elements): words, not commands
                return i + 1
            self._finish(frame, i)
            frame.depth += 1
            self.tokens.append(_Token("op", "(", i, i + 1))
            return i + 1
        if c == ")":
            if frame.closer == ")" and frame.depth == 0:
                self._close_command(i)
                return i + 1
            self._finish(frame, i)
            frame.depth = max(frame.depth - 1, 0)
            self.tokens.append(_Token("op", ")", i, i + 1))
            return i + 1
        if c in ";&|<>":
            if c in "<>" and text.startswith("(", i + 1):  # process substitution
                self._begin(frame, i)
                frame.dynamic = frame.other_dynamic = True
                self._push_command(i, ")")
                return i + 2
            if (c in "<>" and frame.in_word and not frame.quoted and not frame.dynamic
                    and "".join(frame.chars).isdigit()):
                frame.in_word = False  # `2>`: a file descriptor, not a word
            self._finish(frame, i)
            match = _OPERATOR.match(text, i)
            op = match.group() if match else c
            self.tokens.append(_Token("op", op, i, i + len(op)))
            if op in ("<<", "<<-"):
                self._expect_delimiter = op == "<<-"
            return i + len(op)
        self._begin(frame, i)
        match = _WORD_RUN.match(text, i)
        chunk = match.group() if match else c
        frame.chars.append(chunk)
        if not frame.glob and not _GLOB_CHARS.isdisjoint(chunk):
            frame.glob = True
        return i + len(chunk)

    def _dollar(self, i: int, word: _Frame, *, in_quotes: bool) -> int:
        text = self.text
        following = text[i + 1:i + 2]
        if text.startswith("((", i + 1):
            word.dynamic = word.other_dynamic = True
            self.frames.append(_Frame("arith", owner=word))
            return i + 3
        if following == "(":
            word.dynamic = word.other_dynamic = True
            self._push_command(i, ")")
            return i + 2
        simple = _SIMPLE_VAR.match(text, i)
        if simple is not None:
            word.dynamic = True
            word.variables.append(simple.group(1) or simple.group(2) or simple.group(3))
            return simple.end()
        if following == "{":
            word.dynamic = word.other_dynamic = True
            self.frames.append(_Frame("param", owner=word))
            return i + 2
        if following == "'" and not in_quotes:
            ansi = _ANSI_C.match(text, i)
            if ansi is not None:
                word.chars.append(_ansi_c(ansi.group(1)))
                word.quoted = True
                return ansi.end()
        if following == '"' and not in_quotes:
            word.quoted = True
            self.frames.append(_Frame("dq", owner=word))
            return i + 2
        word.chars.append("$")
        return i + 1

    def _dq(self, i: int) -> int:
        text = self.text
        frame = self.frames[-1]
        word = frame.owner
        match = (_DQ_RUN if frame.kind == "dq" else _HEREDOC_RUN).match(text, i)
        if match is not None:
            word.chars.append(match.group())
            return match.end()
        c = text[i]
        if c == '"':
            self.frames.pop()
            return i + 1
        if c == "\\":
            following = text[i + 1:i + 2]
            if following == "\n":
                return i + 2
            word.chars.append(following if following in '$`"\\' else text[i:i + 2])
            return i + 2
        if c == "$":
            return self._dollar(i, word, in_quotes=True)
        word.dynamic = word.other_dynamic = True  # a backtick
        self._push_command(i, "`")
        return i + 1

    def _param(self, i: int) -> int:
        text = self.text
        frame = self.frames[-1]
        match = _PARAM_RUN.match(text, i)
        if match is not None:
            return match.end()
        c = text[i]
        if c == "}":
            if frame.depth == 0:
                self.frames.pop()
            else:
                frame.depth -= 1
            return i + 1
        if c == "{":
            frame.depth += 1
            return i + 1
        if c == "'":
            end = text.find("'", i + 1)
            return len(text) if end < 0 else end + 1
        if c == '"':
            self.frames.append(_Frame("dq", owner=_Frame("cmd")))  # quoted text in ${...}: not part of the word
            return i + 1
        if c == "\\":
            return i + 2
        if c == "$":
            return self._dollar(i, _Frame("cmd"), in_quotes=True)
        self._push_command(i, "`")
        return i + 1

    def _arith(self, i: int) -> int:
        text = self.text
        frame = self.frames[-1]
        match = _ARITH_RUN.match(text, i)
        if match is not None:
            return match.end()
        c = text[i]
        if c == "(":
            frame.depth += 1
            return i + 1
        if c == ")":
            if frame.depth == 0:
                self.frames.pop()
                return i + 2 if text.startswith(")", i + 1) else i + 1
            frame.depth -= 1
            return i + 1
        if c == "$":
            return self._dollar(i, _Frame("cmd"), in_quotes=True)
        self._push_command(i, "`")
        return i + 1

    def _read_heredocs(self, i: int) -> int:
        """Here-document bodies start on the line after their `<<`; emit each, return where code resumes."""
        text, n = self.text, len(self.text)
        for delimiter, quoted, strip in self._heredocs:
            start = i
            while True:
                if i >= n:
                    body = text[start:]
                    break
                end = text.find("\n", i)
                end = n if end < 0 else end
                line = text[i:end]
                if (line.lstrip("\t") if strip else line) == delimiter:
                    body = text[start:i]
                    i = min(end + 1, n)
                    break
                i = end + 1
            self.tokens.append(_Token("heredoc", body, start, start + len(body), quoted))
        self._heredocs.clear()
        return i


def _ansi_c(body: str) -> str:
    """The value of ``$'...'`` (bash's ANSI-C quoting)."""
    if "\\" not in body:
        return body

    def replace(match: re.Match[str]) -> str:
        escape = match.group(1)
        head = escape[0]
        if head in "xuU" and len(escape) > 1:
            point = int(escape[1:], 16)
            return chr(point) if point <= 0x10FFFF else ""
        if head in "01234567":
            return chr(int(escape, 8) & 0xFF)
        if head == "c" and len(escape) == 2:
            return chr(ord(escape[1]) & 0x1F)
        return _ANSI_SIMPLE.get(escape, escape)

    return _ANSI_ESCAPE.sub(replace, body)


# -- the parser: which words are commands -----------------------------------------------------------------


@dataclass
class _Job:
    """One script to analyse: the program, or a script found inside it (bash -c '...', a here-document)."""

    text: str
    line: int  # where the text starts in the program
    column: int
    heredoc_mode: bool = False  # only the expansions of an unquoted here-document run


@dataclass
class _WrapperState:
    name: str
    wrapper: Wrapper
    positionals: int
    expect_argument: str = ""  # the option whose argument comes next
    options_done: bool = False


@dataclass
class _Context:
    """Parser state for one command list (the program, or the inside of $(...))."""

    data: bool = False  # array elements or here-document text: no commands here
    command_position: bool = True
    command: str | None = None  # the current simple command's name
    wrapper: _WrapperState | None = None
    redirect: str | None = None
    shell_c: bool = False
    find_exec: bool = False
    skip_name: bool = False
    trap_done: bool = False
    body_may_open: bool = False  # after `name()` or `function name`: a `{` opens the body
    double_bracket: bool = False
    cases: list[str] = field(default_factory=list)  # subject | in | patterns | body
    script_words: list[_Token] = field(default_factory=list)  # eval's arguments


class _Checker:
    def __init__(self, code: str, rules: BashRules) -> None:
        self._rules = rules
        self._denied = frozenset(rules.denied_commands)
        self._violations: list[CodeViolation] = []
        self._jobs = [_Job(code, 1, 1)]
        self._budget = 2 * len(code) + 65536  # characters analysed over all jobs
        self._assignments: dict[str, list[str]] = {}
        self._variable_commands: list[tuple[str, int, int]] = []  # (variable, line, column)
        self._pending_heredocs: list[str | None] = []
        self._globs = 0
        self._job = self._jobs[0]
        self._index = LineIndex("", _NEWLINE)

    def run(self) -> list[CodeViolation]:
        done = 0
        while self._jobs:
            job = self._jobs.pop()
            done += 1
            self._budget -= len(job.text)
            if done > MAX_JOBS or self._budget < 0:
                raise Unanalysable("too many nested scripts (bash -c, eval, here-documents) to analyse")
            self._run_job(job)
        denied_values: dict[str, str | None] = {}
        for variable, line, column in self._variable_commands:
            if variable not in denied_values:
                denied_values[variable] = next(
                    (name for name in (_first_command(v) for v in self._assignments.get(variable, ()))
                     if name in self._denied), None)
            name = denied_values[variable]
            if name is not None:
                self._violations.append(
                    CodeViolation(DENIED_COMMAND, f"${variable} may run {name!r}, which is denied", line, column))
        return self._violations

    def _run_job(self, job: _Job) -> None:
        self._job = job
        self._index = LineIndex(job.text, _NEWLINE)
        lexer = _Lexer(job.text, job.heredoc_mode)
        try:
            tokens = lexer.run()
        except _TooDeep as exc:
            message = f"quotes and substitutions nest more than {MAX_NESTING} deep"
            raise Unanalysable(message, *self._position(exc.offset)) from None
        starts = [s for s, _ in lexer.comments]
        for match in _NETWORK.finditer(job.text):
            spot = bisect.bisect_right(starts, match.start()) - 1
            if spot >= 0 and match.start() < lexer.comments[spot][1]:
                continue
            self._add(NETWORK, "bash network redirection (/dev/tcp, /dev/udp) is denied", match.start())
        self._pending_heredocs = []
        contexts = [_Context(data=job.heredoc_mode)]
        for token in tokens:
            context = contexts[-1]
            kind = token.kind
            if kind == "word":
                self._word(context, token)
            elif kind == "op":
                self._op(context, token)
            elif kind == "sub_start":
                contexts.append(_Context(data=token.value == "data"))
            elif kind == "sub_end":
                if len(contexts) > 1:
                    self._end_command(contexts.pop())
            else:
                self._heredoc(token)
        for context in contexts:
            self._end_command(context)

    def _position(self, offset: int) -> tuple[int, int]:
        """The position in the program of ``offset`` in the current job's text."""
        line, column = self._index.position(offset)
        job = self._job
        return (job.line, job.column + column - 1) if line == 1 else (job.line + line - 1, column)

    def _add(self, rule: str, message: str, offset: int) -> None:
        line, column = self._position(offset)
        self._violations.append(CodeViolation(rule, message, line, column))

    def _raw(self, token: _Token) -> str:
        return self._job.text[token.start:token.end]

    def _script(self, token: _Token, text: str, skip: int = 0) -> None:
        """Queue ``text`` (the value of ``token`` after ``skip`` raw characters) to be checked as a script.

        Positions inside it are exact for plain and single-quoted words, close for the rest (escapes).
        """
        if not text.strip():
            return
        raw = self._raw(token)[skip:]
        skip += 2 if raw.startswith("$'") else 1 if raw[:1] in ("'", '"') else 0
        line, column = self._position(token.start + skip)
        self._jobs.append(_Job(text, line, column))

    # operators and words

    def _end_command(self, context: _Context) -> None:
        if context.script_words:
            first = context.script_words[0]
            self._script(first, " ".join(t.value for t in context.script_words))
        context.script_words = []
        context.command = None
        context.wrapper = None
        context.shell_c = context.find_exec = context.skip_name = context.trap_done = False
        context.redirect = None

    def _op(self, context: _Context, token: _Token) -> None:
        op = token.value
        context.body_may_open = op == ")"
        if context.data:
            return
        if op in _REDIRECTIONS:
            context.redirect = op
            return
        if context.double_bracket and op in ("&&", "||", "(", ")"):
            return
        if context.cases and context.cases[-1] in ("subject", "in", "patterns"):
            if op == ")" and context.cases[-1] == "patterns":
                context.cases[-1] = "body"
                self._end_command(context)
                context.command_position = True
            return
        if op in (";;", ";&", ";;&"):
            self._end_command(context)
            if context.cases:
                context.cases[-1] = "patterns"
            return
        if op == "(":
            return  # a subshell (still a command position) or `name()` of a function definition
        self._end_command(context)
        context.command_position = op != ")"

    def _word(self, context: _Context, token: _Token) -> None:
        value = token.value
        if ("/dev/tcp/" in value or "/dev/udp/" in value) and not _NETWORK.search(self._raw(token)):
            # Spelled with quotes or escapes: the scan of the raw text did not see it.
            self._add(NETWORK, "bash network redirection (/dev/tcp, /dev/udp) is denied", token.start)
        body_may_open, context.body_may_open = context.body_may_open, False
        if context.data:
            return
        if context.redirect is not None:
            op, context.redirect = context.redirect, None
            if op in ("<<", "<<-"):
                self._pending_heredocs.append(context.command)
            elif op == "<<<" and context.command in SHELLS:
                self._script(token, value)
            return
        plain = not token.quoted and not token.dynamic
        if context.double_bracket:
            if plain and value == "]]":
                context.double_bracket = False
            return
        if context.cases:
            state = context.cases[-1]
            if state == "subject":
                context.cases[-1] = "in"
                return
            if state == "in":
                context.cases[-1] = "patterns"
                return
            if state == "patterns":
                if plain and value == "esac":
                    context.cases.pop()
                    context.command_position = False
                return
            if context.command_position and plain and value == "esac":
                context.cases.pop()
                context.command_position = False
                return
        if context.skip_name:
            context.skip_name = False
            context.body_may_open = True
            return
        if plain and value == "{" and (context.command_position or body_may_open):
            context.command_position = True
            return
        if context.command_position:
            self._command_position_word(context, token, plain)
            return
        self._argument(context, token)

    def _command_position_word(self, context: _Context, token: _Token, plain: bool) -> None:
        value = token.value
        if self._assignment(token):
            return
        if plain:
            if value in _KEEP_COMMAND_POSITION:
                return
            if value in _END_WORDS:
                context.command_position = False
                return
            if value == "case":
                context.cases.append("subject")
                context.command_position = False
                return
            if value == "function":
                context.skip_name = True
                context.command_position = False
                return
            if value == "[[":
                context.double_bracket = True
                context.command_position = False
                return
            if value in ("for", "select"):
                context.command_position = False
                context.command = value
                return
        self._command(context, token)

    def _argument(self, context: _Context, token: _Token) -> None:
        value = token.value
        if context.wrapper is not None:
            self._wrapper_word(context, context.wrapper, token)
            return
        if context.find_exec:
            context.find_exec = False
            self._command(context, token)
            return
        command = context.command
        if command is None:
            return
        if command == "find" and value in _FIND_EXEC:
            context.find_exec = True
        elif command in SHELLS:
            if context.shell_c:
                context.shell_c = False
                self._script(token, value)
            elif value.startswith("-") and not value.startswith("--") and "c" in value[1:]:
                context.shell_c = True
        elif command == "eval":
            context.script_words.append(token)
        elif command == "trap":
            if not context.trap_done and not value.startswith("-"):
                context.trap_done = True
                self._script(token, value)  # trap 'commands' SIGNAL
        elif command == "alias":
            name, equals, script = value.partition("=")
            if equals:
                self._script(token, script, skip=len(name) + 1)
        elif command in _DECLARATIONS:
            self._assignment(token)

    def _wrapper_word(self, context: _Context, state: _WrapperState, token: _Token) -> None:
        value = token.value
        if state.expect_argument:
            option, state.expect_argument = state.expect_argument, ""
            if state.name == "env" and option in ("-S", "--split-string"):
                self._script(token, value)
            return
        if not state.options_done and value.startswith("-") and len(value) > 1:
            if value == "--":
                state.options_done = True
            elif state.name == "command" and value in ("-v", "-V"):
                context.wrapper = None  # a lookup, not a run
            elif value in state.wrapper.options_with_argument:
                state.expect_argument = value
            elif state.name == "env" and value.startswith("-S") and len(value) > 2:
                self._script(token, value[2:], skip=2)
            return
        if state.name == "env" and self._assignment(token):
            return
        if state.positionals > 0:
            state.positionals -= 1
            return
        context.wrapper = None
        if any(c in value for c in " \t\n;|&"):
            self._script(token, value)  # watch 'curl x', sudo "sh -c ...": run through a shell
        else:
            self._command(context, token)

    def _assignment(self, token: _Token) -> bool:
        """Record ``name=value`` (as written: ``"a=b"`` is not an assignment); False if it is not one."""
        if _ASSIGNMENT.match(self._job.text, token.start, token.end) is None:
            return False
        name, _, value = token.value.partition("=")
        self._assignments.setdefault(name.partition("[")[0].rstrip("+"), []).append(value)
        return True

    def _command(self, context: _Context, token: _Token) -> None:
        """``token`` is a command word: check it, and note what it means for the words after it."""
        context.command_position = False
        value = token.value
        name = _basename(value)
        context.command = None if token.dynamic and not name else name
        if token.variables and not value:
            line, column = self._position(token.start)
            self._variable_commands.extend((v, line, column) for v in token.variables)
        if not name:
            return
        if name in self._denied:
            self._add(DENIED_COMMAND, f"command {name!r} is denied", token.start)
        elif token.glob:
            self._globs += 1
            pattern = _STARS.sub("*", name)
            if self._globs > MAX_GLOB_COMMANDS or len(pattern) > MAX_GLOB_CHARS:
                raise Unanalysable("too many or too long glob command words to analyse", *self._position(token.start))
            for denied in sorted(self._denied):
                if fnmatchcase(denied, pattern):
                    self._add(DENIED_COMMAND, f"{value!r} may run {denied!r}, which is denied", token.start)
                    break
        if name in WRAPPERS and not token.dynamic:
            wrapper = WRAPPERS[name]
            context.wrapper = _WrapperState(name, wrapper, wrapper.positionals)

    def _heredoc(self, token: _Token) -> None:
        command = self._pending_heredocs.pop(0) if self._pending_heredocs else None
        line, column = self._position(token.start)
        if command in SHELLS:
            self._jobs.append(_Job(token.value, line, column))
        elif not token.quoted:
            self._jobs.append(_Job(token.value, line, column, heredoc_mode=True))


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _first_command(value: str) -> str:
    words = value.split()
    return _basename(words[0]) if words else ""


def check_bash(code: str, rules: BashRules) -> list[CodeViolation]:
    """Check ``code`` against ``rules``; raise Unanalysable when nested scripts exceed the analysis budget."""
    return _Checker(code, rules).run()
