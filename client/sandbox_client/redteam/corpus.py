"""Loading a corpus: the shipped one (package data under ``corpus/``) or a directory of custom YAML files."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml
from pydantic import ValidationError

from sandbox_client.redteam.schema import Case, Category, CorpusFile

__all__ = ["Corpus", "CorpusError", "load_corpus", "shipped_corpus"]

CORPUS_PACKAGE_DIR = "corpus"
MAX_FILE_BYTES = 4 * 1024 * 1024


class CorpusError(Exception):
    """A corpus file that cannot be read or does not validate, or a selection naming nothing known."""


@dataclass(frozen=True)
class Corpus:
    """Validated cases, in file order (files sorted by name); ids are unique across the corpus."""

    cases: tuple[Case, ...]

    def case(self, case_id: str) -> Case | None:
        for case in self.cases:
            if case.id == case_id:
                return case
        return None

    def select(self, categories: Iterable[Category] = (), case_ids: Iterable[str] = ()) -> tuple[Case, ...]:
        """The cases in any of ``categories`` or named in ``case_ids``; everything when both are empty.

        Raises:
            CorpusError: a case id that is not in the corpus.
        """
        wanted_categories, wanted_ids = set(categories), list(dict.fromkeys(case_ids))
        unknown = [i for i in wanted_ids if self.case(i) is None]
        if unknown:
            raise CorpusError(f"no such case: {', '.join(unknown)}")
        if not wanted_categories and not wanted_ids:
            return self.cases
        return tuple(c for c in self.cases if c.category in wanted_categories or c.id in wanted_ids)


def load_corpus(directory: Path | Traversable) -> Corpus:
    """Every ``*.yaml``/``*.yml`` file of ``directory`` (not recursive), validated whole.

    Raises:
        CorpusError: an unreadable or invalid file (named, with the failing location), duplicate case ids,
            or a directory without any case.
    """
    if not directory.is_dir():
        raise CorpusError(f"{directory} is not a directory")
    files = sorted((f for f in directory.iterdir() if f.name.endswith((".yaml", ".yml")) and f.is_file()),
                   key=lambda f: f.name)
    cases: list[Case] = []
    for f in files:
        cases.extend(_load_file(f))
    if not cases:
        raise CorpusError(f"{directory} holds no corpus file (*.yaml)")
    _check_unique(cases)
    return Corpus(tuple(cases))


def shipped_corpus() -> Corpus:
    """The corpus shipped with this package (``sandbox_client/redteam/corpus``)."""
    return load_corpus(resources.files("sandbox_client.redteam") / CORPUS_PACKAGE_DIR)


def _load_file(f: Path | Traversable) -> tuple[Case, ...]:
    try:
        raw = f.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{f.name}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise CorpusError(f"{f.name}: {len(raw)} bytes is over the {MAX_FILE_BYTES}-byte cap")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorpusError(f"{f.name}: not valid YAML: {exc}") from exc
    try:
        return CorpusFile.model_validate(data).to_cases()
    except ValidationError as exc:
        problems = "; ".join(f"{_location(e['loc'], data)}: {e['msg']}" for e in exc.errors())
        raise CorpusError(f"{f.name}: {problems}") from exc


def _location(loc: Sequence[int | str], data: object) -> str:
    """A validation error's location, with the case's id instead of its index when there is one."""
    parts: list[str] = []
    node = data
    for key in loc:
        label = str(key)
        if isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                label = f"{key} ({node['id']})"
        elif isinstance(node, dict):
            node = node.get(key)
        parts.append(label)
    return ".".join(parts) or "(file)"


def _check_unique(cases: Sequence[Case]) -> None:
    counts = Counter(c.id for c in cases)
    duplicates = sorted(case_id for case_id, n in counts.items() if n > 1)
    if duplicates:
        raise CorpusError(f"duplicate case ids: {', '.join(duplicates)}")
