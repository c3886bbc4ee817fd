"""Loading suites: YAML or JSONL files of cases (our format or HumanEval's), validated whole on load.

Every problem found is reported at once, each with where it is (``file:line``) and which case (its id), as a
``SuiteError``; nothing is run from a suite that does not load.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from sandbox_client.evaluation.models import (
    HUMANEVAL_WALL_TIME_S,
    Case,
    CaseLimits,
    Completion,
    HumanEvalProblem,
    SuiteHeader,
    humaneval_program,
)

__all__ = [
    "HUMANEVAL_TAG",
    "SHIPPED_SUITES",
    "LoadedCase",
    "Problem",
    "Suite",
    "SuiteError",
    "describe_error",
    "load_suite",
    "resolve_suite",
    "shipped_suites",
]

SHIPPED_SUITES: Final = "suites"
"""The directory of this package holding the suites ``sandbox-admin eval NAME`` finds by name."""
HUMANEVAL_TAG: Final = "humaneval"
"""The tag every case made from a HumanEval problem carries."""
YAML_SUFFIXES: Final = frozenset({".yaml", ".yml", ".json"})
JSONL_SUFFIXES: Final = frozenset({".jsonl", ".ndjson"})
MAX_PROBLEMS: Final = 50
"""Problems reported at most, so a wholly wrong file does not flood the terminal."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a suite file: ``location`` is ``file:line`` (or just ``file``)."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class SuiteError(Exception):
    """A suite (or completions file) cannot be used: it is unreadable or does not validate."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedCase:
    """A case to run, with where it was defined."""

    case: Case
    source: str
    """``file:line`` of its definition (of the completion, for a HumanEval completion)."""
    task_id: str | None = None
    """The HumanEval task it attempts; None for a case of our own format."""


@dataclass(frozen=True)
class Suite:
    """A loaded, valid suite: at least one case, ids unique."""

    name: str
    path: str
    description: str
    cases: tuple[LoadedCase, ...]
    skipped_tasks: tuple[str, ...] = field(default=())
    """HumanEval tasks left out because the completions file has no completion for them."""

    def only_tags(self, tags: Iterable[str]) -> Suite:
        """The suite with only the cases carrying at least one of ``tags``."""
        wanted = set(tags)
        kept = tuple(c for c in self.cases if wanted & set(c.case.tags))
        return Suite(self.name, self.path, self.description, kept, self.skipped_tasks)


def shipped_suites() -> dict[str, Path]:
    """The suites shipped with this package, by name (file name without its suffix)."""
    directory = resources.files("sandbox_client.evaluation").joinpath(SHIPPED_SUITES)
    found: dict[str, Path] = {}
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        suffix = Path(entry.name).suffix
        if entry.is_file() and suffix in YAML_SUFFIXES | JSONL_SUFFIXES:
            found[Path(entry.name).stem] = Path(str(entry))
    return dict(sorted(found.items()))


def resolve_suite(spec: str) -> Path:
    """The file ``spec`` names: an existing file, else the name of a shipped suite (``basic``).

    Raises:
        SuiteError: neither.
    """
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_suites()
    if spec in shipped:
        return shipped[spec]
    known = ", ".join(shipped) or "none"
    raise SuiteError([Problem(spec, f"no such file, and not a shipped suite (shipped: {known})")])


def load_suite(path: Path, *, completions: Path | None = None) -> Suite:
    """Read and validate a suite; with ``completions``, run those completions of its HumanEval problems.

    A YAML suite is a list of cases, or a mapping with ``cases`` and optional ``name``, ``description`` and
    ``defaults``. A JSONL suite has one case per line, each either our format or a HumanEval problem (told
    apart by its ``task_id``).

    Raises:
        SuiteError: every problem found, with file and line.
    """
    text = _read(path)
    name = path.stem
    description = ""
    if path.suffix in JSONL_SUFFIXES:
        entries = list(_jsonl_entries(path, text))
    elif path.suffix in YAML_SUFFIXES:
        header, entries = _yaml_entries(path, text)
        name = header.name or name
        description = header.description
    else:
        raise SuiteError([Problem(str(path), "unknown suite format: use .yaml, .yml, .json or .jsonl")])

    problems: list[Problem] = []
    cases: list[LoadedCase] = []
    humaneval: list[tuple[HumanEvalProblem, str]] = []
    for location, raw in entries:
        if isinstance(raw, list):
            problems += raw
        elif isinstance(raw, HumanEvalProblem):
            humaneval.append((raw, location))
        else:
            cases.append(LoadedCase(raw, location))

    skipped: tuple[str, ...] = ()
    if completions is not None:
        if not humaneval:
            problems.append(Problem(str(path), "--completions needs a suite of HumanEval problems; this has none"))
        else:
            attempts, skipped, completion_problems = _join_completions(humaneval, completions)
            problems += completion_problems
            cases += attempts
    else:
        for problem, location in humaneval:
            completion = problem.completion if problem.completion is not None else problem.canonical_solution
            if completion is None:
                problems.append(Problem(location, f"task {problem.task_id!r}: no completion or canonical_solution "
                                                  "(give the completions with --completions FILE)"))
            else:
                cases.append(_humaneval_case(problem, completion, problem.task_id, location))

    problems += _duplicates(cases)
    if problems:
        raise SuiteError(_capped(sorted(problems, key=_position)))
    if not cases:
        raise SuiteError([Problem(str(path), "the suite has no cases")])
    return Suite(name=name, path=str(path), description=description, cases=tuple(cases), skipped_tasks=skipped)


# -- reading ----------------------------------------------------------------------------------------------------

Entry = tuple[str, Case | HumanEvalProblem | list[Problem]]
"""Where an entry starts, and what it is: a case, a HumanEval problem, or what is wrong with it."""


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError([Problem(str(path), f"not valid UTF-8 (at byte {exc.start})")]) from None
    except OSError as exc:
        raise SuiteError([Problem(str(path), f"cannot read: {exc.strerror or exc}")]) from None


def _jsonl_entries(path: Path, text: str) -> Iterator[Entry]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        location = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            yield location, [Problem(location, f"not JSON: {exc.msg} (column {exc.colno})")]
            continue
        if not isinstance(raw, dict):
            yield location, [Problem(location, f"a case must be a JSON object, not {_kind(raw)}")]
        elif "task_id" in raw:
            yield location, _validated(HumanEvalProblem, raw, raw.get("task_id"), "HumanEval problem", _at(location))
        else:
            yield location, _validated(Case, raw, raw.get("id"), "case", _at(location))


def _yaml_entries(path: Path, text: str) -> tuple[SuiteHeader, list[Entry]]:
    try:
        data = yaml.safe_load(text)
        # Parsed a second time as nodes, only for the line of each case.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError([Problem(where, f"not valid YAML: {problem}")]) from None

    if isinstance(data, list):
        data = {"cases": data}
    if not isinstance(data, dict):
        raise SuiteError([Problem(f"{path}:1", "a suite is a list of cases, or a mapping with 'cases'")])
    try:
        header = SuiteHeader.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(
            [Problem(f"{path}:{_line(root, err['loc'])}", describe_error(err)) for err in exc.errors()]
        ) from None

    entries: list[Entry] = []
    for index, raw in enumerate(header.cases):
        location = f"{path}:{_line(root, ('cases', index))}"
        if not isinstance(raw, dict):
            entries.append((location, [Problem(location, f"a case must be a mapping, not {_kind(raw)}")]))
            continue

        def locate(loc: tuple[int | str, ...], index: int = index) -> str:
            return f"{path}:{_line(root, ('cases', index, *loc))}"

        entries.append((location, _validated(Case, header.defaults.apply(raw), raw.get("id"), "case", locate)))
    return header, entries


def _at(location: str) -> Callable[[tuple[int | str, ...]], str]:
    """Every field of a JSONL line is on that line."""
    return lambda _loc: location


def _line(root: yaml.Node | None, path: Sequence[object]) -> int:
    """The 1-based line of the node at ``path`` (mapping keys and sequence indexes) under the root of a YAML
    document whose cases may sit at the top (a bare list) or under ``cases``; the deepest node found."""
    node = root
    if isinstance(node, yaml.SequenceNode) and path and path[0] == "cases":
        path = path[1:]
    for step in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            child = node.value[step]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1 if node is not None else 1


def _validated(
    model: type[Case] | type[HumanEvalProblem],
    raw: dict[str, Any],
    ident: object,
    what: str,
    locate: Callable[[tuple[int | str, ...]], str],
) -> Case | HumanEvalProblem | list[Problem]:
    """The validated entry, or one problem per error, each at the line ``locate`` gives for its field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        label = f"{what} {ident!r}" if isinstance(ident, str) and ident else f"{what} without an id"
        return [Problem(locate(err["loc"]), f"{label}: {describe_error(err)}") for err in exc.errors()]


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error in words: the field's dotted path, then what is wrong with it."""
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


# -- HumanEval ----------------------------------------------------------------------------------------------------


def _humaneval_case(problem: HumanEvalProblem, completion: str, case_id: str, location: str) -> LoadedCase:
    case = Case(
        id=case_id,
        language="python",
        code=humaneval_program(problem, completion),
        limits=CaseLimits(wall_time_s=HUMANEVAL_WALL_TIME_S),
        tags=(HUMANEVAL_TAG,),
    )
    return LoadedCase(case, location, task_id=problem.task_id)


def _join_completions(
    humaneval: Sequence[tuple[HumanEvalProblem, str]], path: Path
) -> tuple[list[LoadedCase], tuple[str, ...], list[Problem]]:
    """One case per completion (ids ``task#1``, ``task#2``, ... when a task has several samples), the tasks
    without any completion, and the problems of the completions file."""
    by_task: dict[str, HumanEvalProblem] = {}
    problems: list[Problem] = []
    for problem, location in humaneval:
        if by_task.setdefault(problem.task_id, problem) is not problem:
            problems.append(Problem(location, f"HumanEval problem {problem.task_id!r}: duplicate task_id"))
    samples: dict[str, list[tuple[Completion, str]]] = {}
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        location = f"{path}:{number}"
        try:
            raw = json.loads(line)
            completion = Completion.model_validate(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(location, f"not JSON: {exc.msg} (column {exc.colno})"))
            continue
        except ValidationError as exc:
            problems += [Problem(location, describe_error(e)) for e in exc.errors()]
            continue
        if completion.task_id not in by_task:
            problems.append(Problem(location, f"task {completion.task_id!r} is not a problem of the suite"))
            continue
        samples.setdefault(completion.task_id, []).append((completion, location))

    cases: list[LoadedCase] = []
    for task_id, attempts in samples.items():
        for index, (completion, location) in enumerate(attempts, start=1):
            case_id = task_id if len(attempts) == 1 else f"{task_id}#{index}"
            cases.append(_humaneval_case(by_task[task_id], completion.completion, case_id, location))
    skipped = tuple(task for task in by_task if task not in samples)
    return cases, skipped, problems


def _duplicates(cases: Sequence[LoadedCase]) -> list[Problem]:
    first: dict[str, str] = {}
    problems: list[Problem] = []
    for loaded in cases:
        seen = first.setdefault(loaded.case.id, loaded.source)
        if seen != loaded.source:
            problems.append(Problem(loaded.source, f"case {loaded.case.id!r}: duplicate id (first at {seen})"))
    return problems


def _position(problem: Problem) -> tuple[str, int]:
    """``file:line`` as a sort key, lines in numeric order."""
    file, _, line = problem.location.rpartition(":")
    return (file, int(line)) if file and line.isdigit() else (problem.location, 0)


def _capped(problems: Sequence[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return list(problems)
    rest = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], Problem(problems[MAX_PROBLEMS].location, f"... and {rest} more problems")]
