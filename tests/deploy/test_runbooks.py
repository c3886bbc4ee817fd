"""docs/runbooks/ and docs/production-checklist.md: a runbook per alert and per incident rule, each alert linking
its own, each with its sections, all in the index; and every ``sandbox-admin`` or ``sandbox-server`` command in
their code blocks parses against the real command line (parsed only: nothing runs, no server is needed)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from sandbox_client.admin_cli import app as admin_app
from sandbox_server.__main__ import cli as server_cli
from sandbox_server.incidents.config import IncidentRules

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
INDEX = RUNBOOKS / "README.md"
CHECKLIST = ROOT / "docs" / "production-checklist.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

SECTIONS = ("Symptom", "Confirm", "Mitigate", "Resolve")
OPTIONAL_SECTIONS = ("Prevent",)

USAGE_ERROR = 2
"""The exit code of a command-line usage error (an unknown command or option, a bad value, a missing argument)."""
# The placeholders the documents use in commands, and a plausible value of each for parsing. An all-capitals
# argument that is not listed here fails the test: a new placeholder must be added on purpose.
PLACEHOLDERS = {
    "INCIDENT_ID": "inc_0123456789abcdef0123",
    "MITIGATION_ID": "mit_0123456789abcdef0123",
    "EXECUTION_ID": "exe-0123456789abcdef",
    "SESSION_ID": "ses_" + "a" * 32,
    "TENANT": "acme",
    "TENANT_KEY": "sbx_0123456789abcdef",
    "KEY_ID": "key_0123456789",
    "VERSION": "3",
}
# All-capitals values that are the commands' own words, passed as they are (an execution's outcome filter).
LITERALS = frozenset({"ERROR", "RUNNING", "TIMEOUT", "OK", "CANCELLED", "KILLED"})
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
_FENCE = re.compile(r"^ *```[^\n]*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)")
_HEADING = re.compile(r"^## (.+?)\s*$", re.MULTILINE)
_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
_POLICY_FILE = re.compile(r"[\w.-]+\.ya?ml")
_SHELL_OPERATORS = frozenset("();<>|&")


@dataclass(frozen=True)
class Invocation:
    where: str
    program: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.args)}"


# -- helpers ----------------------------------------------------------------------------------------------------


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def incident_rules() -> list[str]:
    return list(IncidentRules.model_fields)


def runbooks() -> list[Path]:
    return sorted(p for p in RUNBOOKS.glob("*.md") if p != INDEX)


def invocations(text: str, where: str) -> Iterator[Invocation]:
    """Every sandbox-admin or sandbox-server command in the fenced code blocks of a Markdown text: the program in
    command position (first, after a shell operator, after ``--`` or after variable assignments), with its
    arguments up to the next operator or comment."""
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            at_command = True
            i = 0
            while i < len(tokens):
                word = tokens[i]
                if set(word) <= _SHELL_OPERATORS or word == "--":
                    at_command = True
                elif at_command and _ASSIGNMENT.match(word):
                    pass
                elif at_command and word.rsplit("/", 1)[-1] in PROGRAMS:
                    end = i + 1
                    while end < len(tokens) and not set(tokens[end]) <= _SHELL_OPERATORS:
                        end += 1
                    yield Invocation(where, word.rsplit("/", 1)[-1], tuple(tokens[i + 1:end]))
                    i = end
                    continue
                else:
                    at_command = False
                i += 1


def substituted(args: Sequence[str]) -> list[str]:
    """The arguments with each placeholder (a whole argument, or an option's ``=`` value) given a value.

    Raises:
        KeyError: an all-capitals argument that is not a known placeholder.
    """
    out = []
    for arg in args:
        option, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if _PLACEHOLDER.fullmatch(value) and value not in LITERALS:
            value = PLACEHOLDERS[value]
        out.append(option + eq + value)
    return out


class _ParseOnly:
    """A program's command tree, built afresh, with every command's callback replaced by one that only records
    which command the line reached: running a line parses it completely (every option, argument and value, down
    the chain of subcommands), exactly as the program would, and does nothing else."""

    def __init__(self, app: typer.Typer) -> None:
        self.command = typer.main.get_command(app)
        self.reached: list[tuple[str, ...]] = []
        self._stub(self.command, ())

    def _stub(self, command: Any, path: tuple[str, ...]) -> None:
        def record(*args: object, **kwargs: object) -> None:
            self.reached.append(path)

        command.callback = record
        for name, sub in getattr(command, "commands", {}).items():
            self._stub(sub, (*path, name))

    def parse(self, prog_name: str, args: Sequence[str]) -> list[str]:
        self.reached.clear()
        self.command.main(args=list(args), prog_name=prog_name, standalone_mode=False)
        if not self.reached:
            raise AssertionError(f"{prog_name} {shlex.join(args)} reached no command")
        return [prog_name, *self.reached[-1]]


PROGRAMS = {"sandbox-admin": _ParseOnly(admin_app), "sandbox-server": _ParseOnly(server_cli)}


def parse(program: str, args: Sequence[str]) -> list[str]:
    """Parse a command line as the program would, and run nothing; the names of the commands it reached.

    Raises:
        Exception: the program's usage error (``exit_code`` 2) for an unknown command or option, a bad value or a
            missing argument.
    """
    return PROGRAMS[program].parse(program, args)


def usage_error(exc: BaseException) -> bool:
    return getattr(exc, "exit_code", None) == USAGE_ERROR


def documents() -> list[Path]:
    return [*runbooks(), INDEX, CHECKLIST]


# -- the runbooks exist and are linked --------------------------------------------------------------------------


def test_every_alert_links_its_runbook() -> None:
    found = alerts()
    assert len(found) >= 10
    for alert in found:
        url = alert.get("annotations", {}).get("runbook_url")
        assert url == f"docs/runbooks/{alert['alert']}.md", f"{alert['alert']}: runbook_url {url!r}"
        assert (ROOT / url).is_file(), f"{alert['alert']}: {url} does not exist"


def test_every_incident_rule_has_a_runbook() -> None:
    rules = incident_rules()
    assert {"escape_attempts", "teardown_failure", "egress_refusals"} <= set(rules)
    missing = [rule for rule in rules if not (RUNBOOKS / f"incident-{rule}.md").is_file()]
    assert not missing, f"incident rules without docs/runbooks/incident-<rule>.md: {missing}"


def test_every_runbook_serves_an_alert_or_a_rule() -> None:
    expected = {f"{a['alert']}.md" for a in alerts()} | {f"incident-{r}.md" for r in incident_rules()}
    assert {p.name for p in runbooks()} == expected


def test_every_runbook_has_the_four_sections_in_order() -> None:
    for path in runbooks():
        headings = _HEADING.findall(path.read_text())
        required = [h for h in headings if h in SECTIONS]
        assert required == list(SECTIONS), f"{path.name}: sections {headings}"
        extra = [h for h in headings if h not in SECTIONS]
        assert all(h in OPTIONAL_SECTIONS for h in extra), f"{path.name}: unexpected sections {extra}"
        assert headings[: len(SECTIONS)] == list(SECTIONS), f"{path.name}: {headings}"


def test_the_index_lists_every_runbook_and_only_existing_pages() -> None:
    linked = set(_LINK.findall(INDEX.read_text()))
    local = {link for link in linked if "/" not in link}
    assert {p.name for p in runbooks()} <= local, f"not in the index: {({p.name for p in runbooks()}) - local}"
    for link in linked:
        assert (RUNBOOKS / link).resolve().is_file(), f"README.md links {link}, which does not exist"


def test_links_between_the_documents_resolve() -> None:
    for path in documents():
        for link in _LINK.findall(path.read_text()):
            assert (path.parent / link).resolve().is_file(), f"{path.name} links {link}, which does not exist"


# -- the commands parse -----------------------------------------------------------------------------------------


def test_every_command_in_the_runbooks_and_the_checklist_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = [inv for path in documents() for inv in invocations(path.read_text(), path.name)]
    # Policy files named in commands must exist for the command line to accept them.
    monkeypatch.chdir(tmp_path)
    for inv in found:
        for arg in inv.args:
            if _POLICY_FILE.fullmatch(arg):
                (tmp_path / arg).write_text("version: 1\ntenants: {}\n")
    failures = []
    reached = set()
    for inv in found:
        try:
            reached.add(tuple(parse(inv.program, substituted(inv.args))))
        except KeyError as exc:
            failures.append(f"{inv}: unknown placeholder {exc}")
        except Exception as exc:  # the program's usage error, whatever its class
            failures.append(f"{inv}: {type(exc).__name__}: {exc}")
    assert not failures, "commands that do not parse:\n" + "\n".join(failures)
    # The scan does find the commands: the runbooks use these.
    assert {
        ("sandbox-admin", "incidents", "resolve"),
        ("sandbox-admin", "quarantine", "lift"),
        ("sandbox-admin", "executions", "kill"),
        ("sandbox-admin", "sessions", "close"),
        ("sandbox-admin", "costs", "report"),
        ("sandbox-admin", "policies", "rollback"),
    } <= reached
    assert len(found) >= 50


@pytest.mark.parametrize(
    "line",
    [
        "sandbox-admin incidents list --opne",  # a misspelled flag
        "sandbox-admin incident list",  # a misspelled group
        "sandbox-admin incidents lift INCIDENT_ID",  # a command of another group
        "sandbox-admin executions kill",  # a missing argument
        "sandbox-admin quarantine lift MITIGATION_ID MITIGATION_ID",  # one argument too many
        "sandbox-admin costs report --by week",  # not a choice
        "sandbox-admin policies show --version latest",  # not a number
        "sandbox-admin --timeout 0 incidents list",  # below the option's minimum
        "sandbox-admin incidents",  # a group without its command
        "sandbox-server serve --max-runing 8",
    ],
)
def test_a_wrong_command_fails_to_parse(line: str) -> None:
    [inv] = invocations(f"```sh\n{line}\n```\n", "test")
    with pytest.raises(Exception) as raised:  # noqa: PT011 (the program's usage error, whatever its class)
        parse(inv.program, substituted(inv.args))
    assert usage_error(raised.value), repr(raised.value)


def test_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(KeyError):
        substituted(["incidents", "show", "INCIDENT"])


def test_the_scan_finds_commands_in_code_blocks_only_and_in_command_position() -> None:
    text = "\n".join([
        "Prose: `sandbox-admin incidents list --bogus` is not scanned.",
        "```sh",
        "export SANDBOX_TARGET=127.0.0.1:50051",
        "sandbox-admin --json incidents list --open --limit 5 | jq '.[]'   # a comment",
        "kubectl -n sandbox-server get pods",
        "SANDBOX_ADMIN_KEY=x sandbox-admin costs report \\",
        "  --by day --since \"$(date -u +%Y-%m-%d)\" > today.json",
        "kubectl -n sandbox-server exec deploy/sandbox-server -c server -- sandbox-server keys create --tenant t",
        "# sandbox-admin in a comment",
        "```",
    ])
    found = [(inv.program, inv.args) for inv in invocations(text, "test")]
    assert found == [
        ("sandbox-admin", ("--json", "incidents", "list", "--open", "--limit", "5")),
        ("sandbox-admin", ("costs", "report", "--by", "day", "--since", "$(date -u +%Y-%m-%d)")),
        ("sandbox-server", ("keys", "create", "--tenant", "t")),
    ]
    assert [parse(program, list(args)) for program, args in found] == [
        ["sandbox-admin", "incidents", "list"],
        ["sandbox-admin", "costs", "report"],
        ["sandbox-server", "keys", "create"],
    ]
