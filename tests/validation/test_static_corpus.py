"""Ordinary programs pass the default rules untouched, and checking stays fast.

The corpus (``corpus/<language>/``) holds realistic programs an agent writes: data wrangling with the standard
library, numpy/pandas/sklearn/torch imports (only checked, never run), algorithms, classes, generators, async
code, file reads and writes; node scripts with fs/path/readline/crypto/util; shell pipelines, functions and
here-documents. Python files carry a ``.txt`` suffix so that the project's linters leave them as they are.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from static_helpers import check

from sandbox_server.policy.models import StaticValidation
from sandbox_server.validation.static import check_code

CORPUS = Path(__file__).parent / "corpus"
PROGRAMS = sorted((d.name, f) for d in CORPUS.iterdir() if d.is_dir() for f in sorted(d.iterdir()))


def test_the_corpus_is_large_enough() -> None:
    counts = {language: sum(1 for lang, _ in PROGRAMS if lang == language)
              for language in ("python", "javascript", "bash")}
    assert counts["python"] >= 25
    assert counts["javascript"] >= 8
    assert counts["bash"] >= 8


@pytest.mark.parametrize(("language", "path"), PROGRAMS, ids=[f"{lang}/{p.name}" for lang, p in PROGRAMS])
def test_ordinary_programs_pass_the_default_rules(language: str, path: Path) -> None:
    code = path.read_text(encoding="utf-8")
    assert check(language, code) == []


@pytest.mark.parametrize(("language", "path"), PROGRAMS, ids=[f"{lang}/{p.name}" for lang, p in PROGRAMS])
def test_one_bad_line_in_an_ordinary_program_is_found(language: str, path: Path) -> None:
    bad = {
        "python": "import os; os.system('id')\n",
        "javascript": "require('child_process');\n",
        "bash": "curl https://example.org\n",
    }[language]
    code = path.read_text(encoding="utf-8")
    lines = code.splitlines(keepends=True)
    middle = len(lines) // 2
    if language == "python":  # a statement boundary at the top level, before a definition or an import
        starts = ("def ", "async def ", "class ", "@", "import ", "from ")
        middle = max(i for i, line in enumerate(lines[: middle + 1])
                     if line.startswith(starts) and not (i and lines[i - 1].startswith("@")))
    elif language == "bash":
        middle = len(lines)  # here-documents and case arms make the middle a poor place
    patched = "".join(lines[:middle]) + bad + "".join(lines[middle:])
    violations = check(language, patched)
    assert violations, path.name
    assert {v.line for v in violations} == {middle + 1}


def _corpus_program(language: str, size: int) -> str:
    """About ``size`` characters of the corpus, repeated (``from __future__`` lines dropped: they must come first)."""
    parts = [f.read_text(encoding="utf-8") for lang, f in PROGRAMS if lang == language]
    text = "\n".join(parts)
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("from __future__"))
    return (text * (size // len(text) + 1))[:size].rsplit("\n", 1)[0] + "\n"


@pytest.mark.parametrize("language", ["python", "javascript", "bash"])
def test_checking_time_grows_linearly_with_the_program(language: str) -> None:
    """A rule that backtracks or rescans (quadratic in the program) would let a large program tie up the server.
    No absolute time (a busy machine varies): ten times the program must cost well under a hundred times the
    time, measured in the same run, best of five each."""
    rules = StaticValidation()
    small, large = _corpus_program(language, 20_000), _corpus_program(language, 200_000)
    assert check_code(language, large, rules) == [] or language != "python"

    def best(code: str) -> float:
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            check_code(language, code, rules)
            timings.append(time.perf_counter() - start)
        return min(timings)

    ratio = best(large) / best(small)
    assert ratio < 30, f"{language}: 10x the program took {ratio:.1f}x the time (linear: ~10x)"
