"""What every language checker shares: the violation type, rule names, and source positions.

Positions are 1-based lines and 1-based columns counted in characters (Unicode code points), as editors and
``SyntaxError.offset`` count them.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

# Rule names, shared by every language.
MAX_CODE_BYTES = "max_code_bytes"
VALIDATOR_ERROR = "validator_error"  # the validator itself failed: the code is refused, never let through
UNANALYSABLE = "unanalysable"  # input the checker cannot analyse (too deep, too large, NUL bytes, ...)
# Python
SYNTAX_ERROR = "syntax_error"
DENIED_IMPORT = "denied_import"
DENIED_CALL = "denied_call"
DUNDER_ESCAPE = "dunder_escape"
OPEN_MODE = "open_mode"
MAX_NESTING_DEPTH = "max_nesting_depth"
# JavaScript (DENIED_CALL is shared)
DENIED_MODULE = "denied_module"
DYNAMIC_REQUIRE = "dynamic_require"
EVAL = "eval"
# Bash
DENIED_COMMAND = "denied_command"
NETWORK = "network"


@dataclass(frozen=True)
class CodeViolation:
    """One rule broken at one place: ``line`` and ``column`` are 1-based, the column in characters."""

    rule: str
    message: str
    line: int
    column: int


class Unanalysable(Exception):
    """Raised inside a checker for input it cannot analyse; becomes an ``unanalysable`` violation."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class LineIndex:
    """Maps a character offset in ``text`` to a 1-based (line, column); built once, queried by bisection."""

    def __init__(self, text: str, newline: re.Pattern[str]) -> None:
        self._starts = [0]
        self._starts.extend(m.end() for m in newline.finditer(text))

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._starts, offset) - 1
        return index + 1, offset - self._starts[index] + 1


UNIVERSAL_NEWLINE = re.compile(r"\r\n|\r|\n")
