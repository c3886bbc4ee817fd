"""``sandbox-admin`` against a real Admin server: in process (typer's CliRunner) and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from admin_server import BASE_FILE, BASE_TEXT, AdminServer, policy_text
from typer.testing import CliRunner, Result

from sandbox_client.admin_cli import EXIT_FAILURE, EXIT_USAGE, app

GOOD_TEXT = policy_text({"initech": {"description": "Initech", "languages": ["python"]}})
BAD_TEXT = policy_text({"initech": {"defaults": {"wall_time_ms": -5}}})
SANDBOX_ADMIN = Path(sys.executable).with_name("sandbox-admin")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    local = tmp_path / "local"
    local.mkdir()
    out = {"good": local / "initech.yaml", "bad": local / "broken.yaml", "base": local / BASE_FILE}
    out["good"].write_text(GOOD_TEXT)
    out["bad"].write_text(BAD_TEXT)
    out["base"].write_text(BASE_TEXT)
    return out


def invoke(runner: CliRunner, srv: AdminServer, *args: str, key: str | None = None, json_out: bool = True) -> Result:
    options = ["--target", srv.target, "--api-key", key or srv.admin_token, *(["--json"] if json_out else [])]
    return runner.invoke(app, [*options, *args])


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


# --- policies ----------------------------------------------------------------------------------------------


def test_policies_list(runner: CliRunner, srv: AdminServer) -> None:
    data = parsed(invoke(runner, srv, "policies", "list"))
    assert data == {
        "version": 1,
        "files": [{"name": BASE_FILE, "tenants": ["acme", "globex"], "bytes": len(BASE_TEXT.encode())}],
        "last_errors": [],
    }
    human = invoke(runner, srv, "policies", "list", json_out=False)
    assert human.exit_code == 0
    assert "Policy version 1" in human.stdout
    assert BASE_FILE in human.stdout
    assert "acme, globex" in human.stdout


def test_policies_show(runner: CliRunner, srv: AdminServer) -> None:
    data = parsed(invoke(runner, srv, "policies", "show"))
    assert data["version"] == 1
    assert data["files"] == [{"name": BASE_FILE, "text": BASE_TEXT, "tenants": ["acme", "globex"]}]
    raw = invoke(runner, srv, "policies", "show", "--file", BASE_FILE, json_out=False)
    assert raw.exit_code == 0
    assert raw.stdout == BASE_TEXT  # exactly the text: `show --file X > X` round-trips
    human = invoke(runner, srv, "policies", "show", json_out=False)
    assert "Policy version 1" in human.stdout
    assert "Acme Corp" in human.stdout
    missing = invoke(runner, srv, "policies", "show", "--version", "99", json_out=False)
    assert missing.exit_code == EXIT_FAILURE
    assert "no policy version 99" in missing.stderr
    assert "version: no policy version 99" in missing.stderr  # the field violation, too


def test_policies_diff(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    same = parsed(invoke(runner, srv, "policies", "diff", str(files["base"])))
    assert (same["changed"], same["on_server"], same["diff"]) == (False, True, "")
    files["base"].write_text(BASE_TEXT.replace("Acme Corp", "Acme Corporation"))
    changed = parsed(invoke(runner, srv, "policies", "diff", str(files["base"])))
    assert changed["changed"]
    assert any(line.startswith("-") and "Acme Corp" in line for line in changed["diff"].splitlines())
    assert any(line.startswith("+") and "Acme Corporation" in line for line in changed["diff"].splitlines())
    new = parsed(invoke(runner, srv, "policies", "diff", str(files["good"])))
    assert (new["changed"], new["on_server"]) == (True, False)
    human = invoke(runner, srv, "policies", "diff", str(files["base"]), json_out=False)
    assert human.exit_code == 0
    assert "+++ " in human.stdout
    assert "Acme Corporation" in human.stdout


def test_policies_validate_against_the_server(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    good = parsed(invoke(runner, srv, "policies", "validate", str(files["good"])))
    assert good == {"file": "initech.yaml", "valid": True, "offline": False, "errors": []}
    bad = invoke(runner, srv, "policies", "validate", str(files["bad"]))
    assert bad.exit_code == EXIT_FAILURE
    data = json.loads(bad.stdout)
    assert data["valid"] is False
    assert [(e["file"], e["location"]) for e in data["errors"]] == [
        ("broken.yaml", "tenants.initech.defaults.wall_time_ms")
    ]
    human = invoke(runner, srv, "policies", "validate", str(files["bad"]), json_out=False)
    assert human.exit_code == EXIT_FAILURE
    assert "broken.yaml: tenants.initech.defaults.wall_time_ms:" in human.stderr
    assert not (srv.policy_dir / "initech.yaml").exists()


def test_policies_validate_offline(runner: CliRunner, files: dict[str, Path]) -> None:
    # No server at all: the target is a closed port.
    offline = ["--target", "127.0.0.1:1", "--json", "policies", "validate", "--offline"]
    good = runner.invoke(app, [*offline, str(files["good"])])
    assert json.loads(good.stdout) == {"file": "initech.yaml", "valid": True, "offline": True, "errors": []}
    assert good.exit_code == 0
    bad = runner.invoke(app, [*offline, str(files["bad"])])
    assert bad.exit_code == EXIT_FAILURE
    assert [e["location"] for e in json.loads(bad.stdout)["errors"]] == ["tenants.initech.defaults.wall_time_ms"]
    files["bad"].write_text("version: 1\ntenants:\n  a: {languages: [python\n")
    syntax = runner.invoke(app, ["policies", "validate", "--offline", str(files["bad"])])
    assert syntax.exit_code == EXIT_FAILURE
    assert "line " in syntax.stderr
    assert "invalid YAML" in syntax.stderr


def test_policies_validate_offline_needs_the_server_package(
    runner: CliRunner, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sandbox_server.policy.loader", None)  # import fails, as when not installed
    result = runner.invoke(app, ["policies", "validate", "--offline", str(files["good"])])
    assert result.exit_code == EXIT_USAGE
    assert "needs the sandbox-server package" in result.stderr


def test_policies_apply(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    applied = parsed(invoke(runner, srv, "policies", "apply", str(files["good"])))
    assert applied == {"file": "initech.yaml", "version": 2, "tenants": ["initech"]}
    assert (srv.policy_dir / "initech.yaml").read_text() == GOOD_TEXT
    assert srv.registry.current().version == 2
    same = parsed(invoke(runner, srv, "policies", "diff", str(files["good"])))
    assert same["changed"] is False
    human = invoke(runner, srv, "policies", "apply", str(files["base"]), json_out=False)
    assert human.exit_code == 0  # unchanged text: the version stays
    assert "policy version 2" in human.stdout


def test_policies_apply_an_invalid_file(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    human = invoke(runner, srv, "policies", "apply", str(files["bad"]), json_out=False)
    assert human.exit_code == EXIT_FAILURE
    assert "INVALID_ARGUMENT" in human.stderr
    assert "broken.yaml:tenants.initech.defaults.wall_time_ms:" in human.stderr
    as_json = invoke(runner, srv, "policies", "apply", str(files["bad"]))
    assert as_json.exit_code == EXIT_FAILURE
    assert as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["broken.yaml:tenants.initech.defaults.wall_time_ms"]
    assert not (srv.policy_dir / "broken.yaml").exists()
    assert srv.registry.current().version == 1


def test_policies_rollback(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    # This fixture's server records applied versions only (no change hook): record the initial one as app.py does.
    srv.versions.record(1, dict(srv.registry.current().sources), "initial load")
    parsed(invoke(runner, srv, "policies", "apply", str(files["good"])))
    assert (srv.policy_dir / "initech.yaml").exists()
    rolled = parsed(invoke(runner, srv, "policies", "rollback", "--to", "1"))
    # Version 1's files, whole: the file added since is gone, and the rollback is a version of its own.
    assert rolled == {"version": 3, "rolled_back_to": 1, "tenants": ["acme", "globex"]}
    assert not (srv.policy_dir / "initech.yaml").exists()
    assert srv.registry.current().version == 3
    v3 = parsed(invoke(runner, srv, "policies", "show", "--version", "3"))
    assert v3["actor"] == f"acme/{srv.admin_key_id} (rollback to version 1)"
    assert [f["name"] for f in v3["files"]] == [BASE_FILE]
    human = invoke(runner, srv, "policies", "rollback", "--to", "9", json_out=False)
    assert human.exit_code == EXIT_FAILURE
    assert "no policy version 9" in human.stderr
    assert srv.registry.current().version == 3


def test_policies_versions_through_show(runner: CliRunner, srv: AdminServer, files: dict[str, Path]) -> None:
    parsed(invoke(runner, srv, "policies", "apply", str(files["good"])))
    v2 = parsed(invoke(runner, srv, "policies", "show", "--version", "2"))
    assert v2["actor"] == f"acme/{srv.admin_key_id}"
    assert [f["name"] for f in v2["files"]] == [BASE_FILE, "initech.yaml"]


# --- tenants and keys --------------------------------------------------------------------------------------


def test_tenants_list(runner: CliRunner, srv: AdminServer) -> None:
    data = parsed(invoke(runner, srv, "tenants", "list"))
    assert [(t["name"], t["active_keys"]) for t in data] == [("acme", 2), ("globex", 0)]
    assert data[0]["languages"] == ["python", "bash"]
    human = invoke(runner, srv, "tenants", "list", json_out=False)
    assert "Acme Corp" in human.stdout


def test_keys_create_list_revoke(runner: CliRunner, srv: AdminServer) -> None:
    created = parsed(invoke(runner, srv, "keys", "create", "--tenant", "globex", "--label", "ci"))
    key = created["key"]
    assert (key["tenant"], key["role"], key["label"], key["active"], key["revoked_at"]) == (
        "globex",
        "tenant",
        "ci",
        True,
        None,
    )
    assert created["secret"].startswith(f"sbx_{key['key_id']}_")
    assert srv.keys.verify(created["secret"]) is not None

    listed = parsed(invoke(runner, srv, "keys", "list", "--tenant", "globex"))
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert created["secret"] not in json.dumps(listed)
    assert len(parsed(invoke(runner, srv, "keys", "list"))) == 3

    revoked = parsed(invoke(runner, srv, "keys", "revoke", key["key_id"]))
    assert revoked["active"] is False
    assert revoked["revoked_at"]
    assert srv.keys.verify(created["secret"]) is None
    human = invoke(runner, srv, "keys", "list", json_out=False)
    assert key["key_id"] in human.stdout
    assert "globex" in human.stdout


def test_keys_create_human_output_shows_the_secret(runner: CliRunner, srv: AdminServer) -> None:
    result = invoke(runner, srv, "keys", "create", "--tenant", "acme", "--role", "admin", json_out=False)
    assert result.exit_code == 0
    token = next(line for line in result.stdout.splitlines() if line.startswith("sbx_"))
    record = srv.keys.verify(token)
    assert record is not None
    assert record.role == "admin"
    assert "shown once" in result.stdout


def test_keys_errors(runner: CliRunner, srv: AdminServer) -> None:
    unknown = invoke(runner, srv, "keys", "create", "--tenant", "nobody", json_out=False)
    assert unknown.exit_code == EXIT_FAILURE
    assert "tenant: no tenant 'nobody'" in unknown.stderr
    bad_role = invoke(runner, srv, "keys", "create", "--tenant", "acme", "--role", "root")
    assert bad_role.exit_code == EXIT_USAGE
    missing = invoke(runner, srv, "keys", "revoke", "0123456789abcdef")
    assert missing.exit_code == EXIT_FAILURE
    assert json.loads(missing.stderr)["error"]["field_violations"][0]["field"] == "key_id"
    assert len(srv.keys.list()) == 2


# --- global options, auth, exit codes ----------------------------------------------------------------------


def test_target_and_key_from_the_environment(runner: CliRunner, srv: AdminServer) -> None:
    env = {"SANDBOX_TARGET": srv.target, "SANDBOX_ADMIN_KEY": srv.admin_token}
    result = runner.invoke(app, ["--json", "tenants", "list"], env=env)
    assert result.exit_code == 0, result.stderr
    assert [t["name"] for t in json.loads(result.stdout)] == ["acme", "globex"]


@pytest.mark.parametrize(("key", "code"), [(None, "UNAUTHENTICATED"), ("tenant", "PERMISSION_DENIED")])
def test_auth_failures_exit_1(runner: CliRunner, srv: AdminServer, key: str | None, code: str) -> None:
    args = ["--target", srv.target, "--json", "policies", "list"]
    if key == "tenant":
        args = ["--api-key", srv.tenant_token, *args]
    result = runner.invoke(app, args, env={"SANDBOX_ADMIN_KEY": None})
    assert result.exit_code == EXIT_FAILURE
    assert json.loads(result.stderr)["error"]["code"] == code


def test_an_unreachable_server_exits_1(runner: CliRunner, files: dict[str, Path]) -> None:
    result = runner.invoke(app, ["--target", "127.0.0.1:1", "--timeout", "5", "policies", "list"])
    assert result.exit_code == EXIT_FAILURE
    assert "UNAVAILABLE" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["policies", "validate", "/nonexistent/file.yaml"],
        ["policies", "apply"],
        ["policies", "nope"],
        ["keys", "create"],
        ["--timeout", "0", "tenants", "list"],
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == EXIT_USAGE


def test_a_file_that_is_not_utf8_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\n")
    result = runner.invoke(app, ["policies", "validate", "--offline", str(path)])
    assert result.exit_code == EXIT_USAGE
    assert "not valid UTF-8" in result.stderr


# --- the installed console script, as a real subprocess ----------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(SANDBOX_ADMIN), *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


@pytest.fixture
def console_script() -> Path:
    if not SANDBOX_ADMIN.exists():
        pytest.fail(f"{SANDBOX_ADMIN} is missing: pip install -e './client[cli]'")
    return SANDBOX_ADMIN


@pytest.mark.usefixtures("console_script")
def test_subprocess_end_to_end(srv: AdminServer, files: dict[str, Path]) -> None:
    env = {"SANDBOX_TARGET": srv.target, "SANDBOX_ADMIN_KEY": srv.admin_token}
    listed = run_cli("--json", "policies", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["version"] == 1

    applied = run_cli("--json", "policies", "apply", str(files["good"]), env=env)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["version"] == 2

    refused = run_cli("policies", "apply", str(files["bad"]), env=env)
    assert refused.returncode == EXIT_FAILURE
    assert "broken.yaml:tenants.initech.defaults.wall_time_ms" in refused.stderr
    assert refused.stdout == ""

    created = run_cli("--json", "keys", "create", "--tenant", "initech", "--label", "from a subprocess", env=env)
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]
    record = srv.keys.verify(secret)
    assert record is not None
    assert record.tenant == "initech"

    as_tenant = run_cli("--json", "tenants", "list", env={**env, "SANDBOX_ADMIN_KEY": secret})
    assert as_tenant.returncode == EXIT_FAILURE
    assert json.loads(as_tenant.stderr)["error"]["code"] == "PERMISSION_DENIED"

    tenants = run_cli("tenants", "list", env=env)
    assert tenants.returncode == 0
    assert "initech" in tenants.stdout

    usage = run_cli("keys", "create", env=env)
    assert usage.returncode == EXIT_USAGE


@pytest.mark.usefixtures("console_script")
def test_subprocess_offline_validation(files: dict[str, Path]) -> None:
    good = run_cli("--json", "policies", "validate", "--offline", str(files["good"]))
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["valid"] is True
    bad = run_cli("policies", "validate", "--offline", str(files["bad"]))
    assert bad.returncode == EXIT_FAILURE
    assert "tenants.initech.defaults.wall_time_ms" in bad.stderr


def test_the_client_never_imports_the_server_package() -> None:
    code = (
        "import sys, sandbox_client.admin_cli, sandbox_client.admin\n"
        "leaked = sorted(m for m in sys.modules if m.startswith('sandbox_server'))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
