"""The loader: every problem in a directory becomes a PolicyError with file and location; nothing loads partly."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import POLICIES, dump, tenant_file

from sandbox_server.policy.loader import (
    MAX_FILE_BYTES,
    PolicyError,
    PolicyLoadError,
    PolicySet,
    load_directory,
    validate_text,
)
from sandbox_server.policy.models import SecretAction, StaticValidation

SHIPPED_DIRS = [POLICIES, POLICIES / "examples" / "multi-tenant"]
SHIPPED_FILES = sorted(p for d in SHIPPED_DIRS for p in d.glob("*.yaml"))


def load_errors(directory: Path) -> tuple[PolicyError, ...]:
    with pytest.raises(PolicyLoadError) as info:
        load_directory(directory)
    return info.value.errors


def nested(path: str, leaf: Any) -> dict[str, Any]:
    """{"a": {"b": leaf}} for "a.b"."""
    out: Any = leaf
    for part in reversed(path.split(".")):
        out = {part: out}
    return out  # type: ignore[no-any-return]


# -- the shipped files ------------------------------------------------------------------------------------------


def test_every_shipped_file_is_found() -> None:
    assert {p.name for p in SHIPPED_FILES} == {"default.yaml", "acme.yaml", "research.yaml"}


@pytest.mark.parametrize("directory", SHIPPED_DIRS, ids=lambda d: d.name)
def test_shipped_directories_load(directory: Path) -> None:
    policies = load_directory(directory)
    assert policies.tenants
    assert set(policies.sources) == {p.name for p in directory.glob("*.yaml")}


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_shipped_files_point_editors_at_the_schema(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    assert (path.parent / first.removeprefix(prefix)).resolve() == POLICIES / "schema.json"


def test_default_policy() -> None:
    default = load_directory(POLICIES).tenants["default"]
    assert set(default.languages) == {"python", "javascript", "bash"}
    assert default.static_validation == StaticValidation()  # on, with the model's rules
    assert default.guardrails.output_secrets is SecretAction.REDACT
    assert default.network.mode == "none"


def test_multi_tenant_example() -> None:
    tenants = load_directory(POLICIES / "examples" / "multi-tenant").tenants
    acme, research = tenants["acme"], tenants["research"]
    assert acme.languages == ("python",)
    assert acme.guardrails.output_secrets is SecretAction.BLOCK
    assert acme.guardrails.blocked_patterns
    assert research.ceilings.memory_bytes is not None
    assert acme.ceilings.memory_bytes is not None
    assert research.ceilings.memory_bytes > acme.ceilings.memory_bytes
    assert "EXPERIMENT_*" in research.allowed_env


# -- a valid directory ------------------------------------------------------------------------------------------


def test_loads_every_yaml_and_yml_file_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(tenant_file("alpha"))
    (tmp_path / "b.yml").write_text(tenant_file("beta", "gamma"))
    (tmp_path / "README.md").write_text("not a policy")
    (tmp_path / ".a.yaml.swp").write_text("{{{")
    (tmp_path / ".hidden.yaml").write_text("{{{")  # dot-files (editors, our own temp files) are ignored
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text(tenant_file("delta"))  # not recursive
    policies = load_directory(tmp_path, version=7)
    assert policies.version == 7
    assert list(policies.tenants) == ["alpha", "beta", "gamma"]
    assert list(policies.sources) == ["a.yaml", "b.yml"]
    assert policies.sources["a.yaml"] == (tmp_path / "a.yaml").read_text()


def test_a_policy_set_is_read_only() -> None:
    source = {"a.yaml": "x"}
    policies = PolicySet(version=1, tenants={}, sources=source)
    source["b.yaml"] = "y"  # the caller's dict is copied
    assert isinstance(policies.tenants, types.MappingProxyType)
    assert isinstance(policies.sources, types.MappingProxyType)
    assert dict(policies.sources) == {"a.yaml": "x"}
    with pytest.raises(TypeError):
        policies.sources["c.yaml"] = "z"  # type: ignore[index]
    with pytest.raises(AttributeError):
        policies.version = 2  # type: ignore[misc]


# -- schema errors, with their location -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "extra",
        "tenants.acme.extra",
        "tenants.acme.defaults.bogus",
        "tenants.acme.ceilings.memory_bytez",
        "tenants.acme.static_validation.extra",
        "tenants.acme.static_validation.python.denied_importz",
        "tenants.acme.static_validation.javascript.x",
        "tenants.acme.static_validation.bash.x",
        "tenants.acme.guardrails.x",
        "tenants.acme.rate.x",
        "tenants.acme.budget.x",
    ],
)
def test_unknown_keys_are_rejected_at_any_depth(tmp_path: Path, path: str) -> None:
    data = {"version": 1, "tenants": {"acme": {}}} | nested(path, 1)
    if path.startswith("tenants."):
        data = {"version": 1, **nested(path, 1)}
    (tmp_path / "p.yaml").write_text(dump(data))
    assert load_errors(tmp_path) == (PolicyError("p.yaml", path, "Extra inputs are not permitted"),)


@pytest.mark.parametrize("field", ["blocked_patterns", "denied_file_names"])
def test_a_bad_regex_fails_the_load(tmp_path: Path, field: str) -> None:
    (tmp_path / "p.yaml").write_text(dump({"tenants": {"acme": {"guardrails": {field: ["ok", "(unclosed"]}}}}))
    [error] = load_errors(tmp_path)
    assert (error.file, error.location) == ("p.yaml", f"tenants.acme.guardrails.{field}.1")
    assert "invalid regular expression '(unclosed'" in error.message


def test_defaults_above_ceilings(tmp_path: Path) -> None:
    tenant = {"defaults": {"memory_bytes": 2048}, "ceilings": {"memory_bytes": 1024}}
    (tmp_path / "p.yaml").write_text(dump({"tenants": {"acme": tenant}}))
    [error] = load_errors(tmp_path)
    assert (error.file, error.location) == ("p.yaml", "tenants.acme")
    assert "defaults.memory_bytes (2048) is above ceilings.memory_bytes (1024)" in error.message


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("version: 2\ntenants: {}\n", "version"),
        ("tenants:\n  Acme: {}\n", "tenants.Acme.[key]"),
        ("tenants:\n  acme: {languages: [cobol]}\n", "tenants.acme.languages.0"),
        ("tenants:\n  acme: {network: host}\n", "tenants.acme.network"),
        ("tenants:\n  acme: {ceilings: {max_pids: 0}}\n", "tenants.acme.ceilings.max_pids"),
        ("tenants:\n  acme: {allowed_env: ['A-B']}\n", "tenants.acme.allowed_env.0"),
        ("tenants:\n  acme: {guardrails: {output_secrets: maybe}}\n", "tenants.acme.guardrails.output_secrets"),
        ("tenants: []\n", "tenants"),
        ("version: 1\n", "tenants"),
    ],
)
def test_schema_violations_name_their_location(tmp_path: Path, text: str, location: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    assert [(e.file, e.location) for e in load_errors(tmp_path)] == [("p.yaml", location)]


# -- YAML and file problems -------------------------------------------------------------------------------------


def test_yaml_syntax_errors_carry_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\ntenants:\n  acme: {description: [unclosed}\n")
    [error] = load_errors(tmp_path)
    assert error.file == "p.yaml"
    assert error.location.startswith("line 3, column ")
    assert error.message.startswith("invalid YAML")


def test_a_key_given_twice_in_one_mapping_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("tenants:\n  acme: {}\n  acme: {languages: [bash]}\n")
    [error] = load_errors(tmp_path)
    assert (error.file, error.location) == ("p.yaml", "line 3, column 3")
    assert "duplicate key 'acme' (first at line 2)" in error.message


def test_merge_keys_still_work(tmp_path: Path) -> None:
    text = "tenants:\n  a: &base {description: shared, languages: [python]}\n  b: {<<: *base, description: own}\n"
    (tmp_path / "p.yaml").write_text(text)
    tenants = load_directory(tmp_path).tenants
    assert (tenants["b"].description, tenants["b"].languages) == ("own", ("python",))


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 8)]
    (tmp_path / "p.yaml").write_text("\n".join(lines) + "\ntenants: {}\n")
    [error] = load_errors(tmp_path)
    assert "aliases expanded" in error.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "expected a mapping at the top level, not list"),
        ("tenants: 2001-13-01\n", "invalid YAML: month must be in 1..12"),
        ("tenants: " + "[" * 3000 + "]" * 3000 + "\n", "invalid YAML: nested too deeply"),
    ],
)
def test_whole_file_problems(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    [error] = load_errors(tmp_path)
    assert (error.file, error.location) == ("p.yaml", "")
    assert error.message.startswith(message)


def test_a_file_over_one_mib_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text(tenant_file("alpha") + "#" * MAX_FILE_BYTES)
    assert load_errors(tmp_path) == (PolicyError("big.yaml", "", f"larger than {MAX_FILE_BYTES} bytes"),)


def test_a_file_of_exactly_one_mib_loads(tmp_path: Path) -> None:
    text = tenant_file("alpha")
    (tmp_path / "p.yaml").write_text(text + "#" * (MAX_FILE_BYTES - len(text)))
    assert list(load_directory(tmp_path).tenants) == ["alpha"]


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_bytes(b"tenants:\n  acme: {description: caf\xe9}\n")
    assert load_errors(tmp_path) == (PolicyError("p.yaml", "", "not valid UTF-8 (at byte offset 34)"),)


def test_a_symlinked_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "b.yaml").write_text(tenant_file("beta"))
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text(tenant_file("alpha"))
    (d / "b.yaml").symlink_to(real / "b.yaml")  # valid content: refused anyway, never followed
    [error] = load_errors(d)
    assert (error.file, error.location) == ("b.yaml", "")
    assert "symbolic links are not followed" in error.message


def test_a_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(tenant_file("alpha"))
    (tmp_path / "b.yaml").symlink_to(tmp_path / "nowhere.yaml")
    assert [e.file for e in load_errors(tmp_path)] == ["b.yaml"]


def test_a_fifo_or_directory_named_yaml_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(tenant_file("alpha"))
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "dir.yaml").mkdir()
    errors = load_errors(tmp_path)
    assert [(e.file, e.message) for e in errors] == [
        ("dir.yaml", "not a regular file"),
        ("fifo.yaml", "not a regular file"),
    ]


# -- the directory as a whole -----------------------------------------------------------------------------------


def test_a_tenant_in_two_files_is_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(tenant_file("alpha", "shared"))
    (tmp_path / "b.yaml").write_text(tenant_file("beta", "shared"))
    assert load_errors(tmp_path) == (
        PolicyError("b.yaml", "tenants.shared", "tenant 'shared' is already defined in a.yaml"),
    )


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    assert load_errors(tmp_path) == (PolicyError(str(tmp_path), "", "no policy files (*.yaml, *.yml)"),)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    [error] = load_errors(tmp_path / "missing")
    assert error.file == str(tmp_path / "missing")
    assert "cannot read the policy directory" in error.message


def test_zero_tenants_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\ntenants: {}\n")
    assert load_errors(tmp_path) == (PolicyError(str(tmp_path), "", "the policy files define no tenants"),)


def test_every_error_of_every_file_is_collected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(dump({"tenants": {"alpha": {"bogus": 1, "ceilings": {"max_pids": -1}}}}))
    (tmp_path / "b.yaml").write_text("tenants: [\n")
    (tmp_path / "c.yaml").write_bytes(b"\xff")
    (tmp_path / "d.yaml").write_text(tenant_file("delta"))
    errors = load_errors(tmp_path)
    assert sorted((e.file, e.location) for e in errors) == [
        ("a.yaml", "tenants.alpha.bogus"),
        ("a.yaml", "tenants.alpha.ceilings.max_pids"),
        ("b.yaml", "line 2, column 1"),
        ("c.yaml", ""),
    ]
    assert "4 policy error(s)" in str(PolicyLoadError(errors))


# -- validate_text ----------------------------------------------------------------------------------------------


def test_validate_text_checks_against_the_other_files() -> None:
    others = {"a.yaml": tenant_file("alpha"), "b.yaml": tenant_file("beta")}
    assert validate_text("c.yaml", tenant_file("gamma"), others) == []
    assert validate_text("c.yaml", tenant_file("beta"), others) == [
        PolicyError("c.yaml", "tenants.beta", "tenant 'beta' is already defined in b.yaml")
    ]
    # The file's own old text is replaced, not compared against.
    assert validate_text("b.yaml", tenant_file("beta", description="new"), others) == []


def test_validate_text_reports_every_problem() -> None:
    errors = validate_text("c.yaml", "tenants: {gamma: {bogus: 1}}\n", {"a.yaml": "tenants: ["})
    assert sorted((e.file, e.location) for e in errors) == [
        ("a.yaml", "line 1, column 11"),
        ("c.yaml", "tenants.gamma.bogus"),
    ]


@pytest.mark.parametrize("name", ["../x.yaml", "a/b.yaml", ".hidden.yaml", "x.txt", "x.yaml.bak", "", ".yaml"])
def test_validate_text_refuses_names_that_are_not_plain_yaml_files(name: str) -> None:
    [error] = validate_text(name, tenant_file("alpha"), {})
    assert error.file == name
    assert "plain file name" in error.message


def test_validate_text_refuses_oversized_and_unencodable_text() -> None:
    assert validate_text("a.yaml", "#" * (MAX_FILE_BYTES + 1), {})[0].message == f"larger than {MAX_FILE_BYTES} bytes"
    assert validate_text("a.yaml", "tenants: {a: {description: \ud800}}", {})[0].message.startswith(
        "not valid UTF-8"
    )
