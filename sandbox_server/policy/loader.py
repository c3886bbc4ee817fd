"""Reading and validating a policy directory. Pure apart from reading files: nothing here swaps or caches.

A policy directory holds ``*.yaml`` / ``*.yml`` files directly in it (no recursion; names starting with ``.`` are
ignored, so editors' lock files and our own temporary files never count). Each file is one ``PolicyFile``; tenant
names are unique across the directory. A problem never stops the reading: every problem found becomes one
``PolicyError`` and all of them are raised together in one ``PolicyLoadError``. A directory that is not valid
whole is rejected whole (fail closed): there is no partial policy set.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sandbox_server.policy.models import PolicyFile, TenantPolicy

__all__ = [
    "FILE_NAME_RE",
    "MAX_FILE_BYTES",
    "MAX_YAML_NODES",
    "POLICY_SUFFIXES",
    "PolicyError",
    "PolicyLoadError",
    "PolicySet",
    "build_set",
    "check_file_name",
    "list_policy_files",
    "load_directory",
    "read_directory",
    "validate_sources",
    "validate_text",
]

MAX_FILE_BYTES = 1024 * 1024
"""A policy file larger than this (in bytes, UTF-8 encoded) is an error."""

MAX_YAML_NODES = 100_000
"""Values in one parsed file, counted with aliases expanded: stops alias bombs before pydantic walks them."""

POLICY_SUFFIXES = (".yaml", ".yml")

FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,250}\.ya?ml$")
"""A file name ``apply`` accepts: a plain name (no directories, not hidden) ending in .yaml or .yml."""


@dataclass(frozen=True)
class PolicyError:
    """One problem: the file (its name inside the directory, or the directory itself for directory-wide
    problems), where in it (a dotted path like ``tenants.acme.ceilings.memory_bytes``, ``line 3, column 7`` for
    YAML syntax, or ``""`` for the whole file), and what is wrong."""

    file: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        return f"{where}: {self.message}"


class PolicyLoadError(Exception):
    """The policy directory (or a proposed change to it) is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors: tuple[PolicyError, ...] = tuple(errors)
        if not self.errors:
            raise ValueError("PolicyLoadError needs at least one error")
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} policy error(s):\n{lines}")


@dataclass(frozen=True)
class PolicySet:
    """One complete, validated policy directory; never modified, replaced whole on reload.

    ``version`` counts successful loads of one registry (1 for the first); ``sources`` maps each file name to
    the text it was loaded from; ``loaded_at`` is wall-clock time (``time.time()``).
    """

    version: int
    tenants: Mapping[str, TenantPolicy]
    sources: Mapping[str, str]
    loaded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # Read-only views over private copies: a caller's dict can neither change a set nor be changed by it.
        object.__setattr__(self, "tenants", types.MappingProxyType(dict(self.tenants)))
        object.__setattr__(self, "sources", types.MappingProxyType(dict(self.sources)))


def check_file_name(file_name: str) -> list[PolicyError]:
    """Errors for a name that is not a plain, visible ``*.yaml``/``*.yml`` file name (empty if it is)."""
    if FILE_NAME_RE.fullmatch(file_name):
        return []
    return [
        PolicyError(
            file_name,
            "",
            "a policy file name must be a plain file name (letters, digits, '_', '.', '-'; not starting with "
            "'.'; no directories) ending in .yaml or .yml",
        )
    ]


def list_policy_files(directory: Path) -> list[str]:
    """The names of the policy files directly in ``directory``, sorted: ``*.yaml`` and ``*.yml``, dot-files
    excepted (editors' lock files, temporary files). Raises OSError if the directory cannot be listed."""
    return sorted(n for n in os.listdir(directory) if n.endswith(POLICY_SUFFIXES) and not n.startswith("."))


def read_directory(directory: Path) -> tuple[dict[str, str], list[PolicyError]]:
    """The text of every policy file directly in ``directory`` (sorted by name) and the problems met reading them:
    symlinks (never followed), non-regular files, files over ``MAX_FILE_BYTES``, text that is not UTF-8, and
    OS errors. A file with a problem is left out of the texts. Never raises for a bad directory."""
    try:
        names = list_policy_files(directory)
    except OSError as exc:
        return {}, [PolicyError(str(directory), "", f"cannot read the policy directory: {exc.strerror or exc}")]
    sources: dict[str, str] = {}
    errors: list[PolicyError] = []
    for name in names:
        text, error = _read_file(directory, name)
        if error is not None:
            errors.append(PolicyError(name, "", error))
        elif text is not None:
            sources[name] = text
    return sources, errors


def _read_file(directory: Path, name: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not). Opened without following a link and checked on the open descriptor,
    so a file swapped for a link or a FIFO between listing and reading is refused too."""
    path = directory / name
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return None, "symbolic links are not followed in a policy directory; copy the file in instead"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file"
            data = _read_at_most(fd, MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None, None  # removed since the listing: simply not part of this snapshot
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link after the lstat
            return None, "symbolic links are not followed in a policy directory; copy the file in instead"
        return None, f"cannot read: {exc.strerror or exc}"
    if len(data) > MAX_FILE_BYTES:
        return None, f"larger than {MAX_FILE_BYTES} bytes"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (at byte offset {exc.start})"


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML would silently keep the last one, so a
    tenant defined twice in a file would quietly lose its first definition). Merge keys (``<<``) still work."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: the base constructor reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_location(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}"
    return ""


def _too_many_nodes(value: object, budget: int) -> bool:
    """Whether ``value`` has more than ``budget`` values, aliases counted each time they are used (and a cycle
    as infinitely many): the walk stops as soon as the budget is spent."""
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False


def _parse(file_name: str, text: str) -> tuple[PolicyFile | None, list[PolicyError]]:
    """One file's text as a PolicyFile, or the errors. Never raises: anything the YAML library or the models
    throw becomes an error (fail closed)."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return None, [PolicyError(file_name, "", f"not valid UTF-8 (at character {exc.start})")]
    if size > MAX_FILE_BYTES:
        return None, [PolicyError(file_name, "", f"larger than {MAX_FILE_BYTES} bytes")]
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except yaml.reader.ReaderError as exc:
        return None, [
            PolicyError(
                file_name,
                f"character {exc.position + 1}",
                f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}",
            )
        ]
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [PolicyError(file_name, _yaml_location(exc), f"invalid YAML: {problem}")]
    except RecursionError:
        return None, [PolicyError(file_name, "", "invalid YAML: nested too deeply")]
    except Exception as exc:  # e.g. ValueError for a timestamp like 2001-13-01
        return None, [PolicyError(file_name, "", f"invalid YAML: {exc}")]
    if data is None:
        return None, [PolicyError(file_name, "", "the file is empty; expected a mapping with 'version' and 'tenants'")]
    if not isinstance(data, dict):
        return None, [PolicyError(file_name, "", f"expected a mapping at the top level, not {type(data).__name__}")]
    if _too_many_nodes(data, MAX_YAML_NODES):
        return None, [PolicyError(file_name, "", f"more than {MAX_YAML_NODES} values (aliases expanded)")]
    try:
        return PolicyFile.model_validate(data), []
    except ValidationError as exc:
        return None, [
            PolicyError(file_name, ".".join(str(part) for part in err["loc"]), err["msg"])
            for err in exc.errors(include_url=False)
        ]
    except RecursionError:
        return None, [PolicyError(file_name, "", "nested too deeply")]


def validate_sources(
    sources: Mapping[str, str], *, directory: str
) -> tuple[dict[str, TenantPolicy], list[PolicyError]]:
    """Validate a whole directory's texts (file name -> text) together: each file, then tenant names across
    files (the first file in sorted order keeps a name; the error names both files), then that at least one
    tenant exists (``directory`` is the ``file`` of an error about the directory as a whole). Returns the
    tenants (meaningful only if there are no errors) and every error."""
    errors: list[PolicyError] = []
    tenants: dict[str, TenantPolicy] = {}
    owner: dict[str, str] = {}
    if not sources:
        return {}, [PolicyError(directory, "", "no policy files (*.yaml, *.yml)")]
    for name in sorted(sources):
        parsed, file_errors = _parse(name, sources[name])
        errors += file_errors
        if parsed is None:
            continue
        for tenant, policy in parsed.tenants.items():
            if tenant in owner:
                errors.append(
                    PolicyError(name, f"tenants.{tenant}", f"tenant {tenant!r} is already defined in {owner[tenant]}")
                )
            else:
                owner[tenant] = name
                tenants[tenant] = policy
    if not errors and not tenants:
        errors.append(PolicyError(directory, "", "the policy files define no tenants"))
    return tenants, errors


def validate_text(file_name: str, text: str, others: Mapping[str, str]) -> list[PolicyError]:
    """Every error the directory would have if ``file_name`` held ``text`` and the other files held ``others``
    (file name -> text; an entry for ``file_name`` itself is replaced). Touches no disk."""
    errors = check_file_name(file_name)
    sources = {name: body for name, body in others.items() if name != file_name}
    sources[file_name] = text
    return errors + validate_sources(sources, directory=file_name)[1]


def load_directory(path: Path, *, version: int = 1) -> PolicySet:
    """Read and validate every policy file in ``path``.

    Raises ``PolicyLoadError`` with every problem found: unreadable, oversized, non-UTF-8 or symlinked files,
    YAML syntax (with line and column), schema violations (with their dotted location), a tenant defined in
    two files, an empty directory or no tenants at all.
    """
    sources, errors = read_directory(path)
    return build_set(sources, errors, directory=str(path), version=version)


def build_set(
    sources: Mapping[str, str], read_errors: Sequence[PolicyError], *, directory: str, version: int
) -> PolicySet:
    """A PolicySet from texts already read (with the errors met reading them); raises ``PolicyLoadError``."""
    if read_errors and not sources:
        raise PolicyLoadError(read_errors)
    tenants, errors = validate_sources(sources, directory=directory)
    if read_errors or errors:
        raise PolicyLoadError([*read_errors, *errors])
    return PolicySet(version=version, tenants=tenants, sources=sources)
