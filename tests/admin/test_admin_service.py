"""The Admin service through a real server (real registry, SQLite stores, errors and auth interceptors)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from admin_server import BASE_FILE, BASE_TEXT, AdminServer, policy_text, serve_admin

from sandbox_client import AuthenticationError, InvalidRequestError, PermissionDeniedError
from sandbox_client.admin import AdminClient

EXTRA_TEXT = policy_text({"initech": {"description": "Initech", "languages": ["python"]}})
BAD_TEXT = policy_text({"initech": {"defaults": {"wall_time_ms": -5}, "colour": "red"}})


def _recent(moment: datetime | None) -> bool:
    return moment is not None and abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


# --- policies ----------------------------------------------------------------------------------------------


def test_list_policies(admin: AdminClient) -> None:
    listing = admin.list_policies()
    assert listing.version == 1
    assert [(f.name, f.text, f.tenants) for f in listing.files] == [(BASE_FILE, BASE_TEXT, ("acme", "globex"))]
    assert listing.last_errors == ()


def test_list_policies_reports_the_last_refused_reload(admin: AdminClient, srv: AdminServer) -> None:
    (srv.policy_dir / "broken.yaml").write_text("version: 1\ntenants: [oops\n")
    with pytest.raises(Exception, match="policy error"):
        srv.registry.reload()
    listing = admin.list_policies()
    assert listing.version == 1  # the last good version stays in force
    assert [f.name for f in listing.files] == [BASE_FILE]
    assert [e.file for e in listing.last_errors] == ["broken.yaml"]
    assert listing.last_errors[0].location.startswith("line ")


def test_get_current_policy(admin: AdminClient) -> None:
    snapshot = admin.get_policy()
    assert snapshot.version == 1
    assert [(f.name, f.text, f.tenants) for f in snapshot.files] == [(BASE_FILE, BASE_TEXT, ("acme", "globex"))]
    assert snapshot.actor == ""  # the initial load is not in this server's history
    assert _recent(snapshot.at)


def test_validate_a_good_file(admin: AdminClient, srv: AdminServer) -> None:
    assert admin.validate_policy("extra.yaml", EXTRA_TEXT) == ()
    assert not (srv.policy_dir / "extra.yaml").exists()
    assert admin.list_policies().version == 1


def test_validate_a_bad_file_changes_nothing(admin: AdminClient, srv: AdminServer) -> None:
    problems = admin.validate_policy("extra.yaml", BAD_TEXT)
    assert {(p.file, p.location) for p in problems} == {
        ("extra.yaml", "tenants.initech.defaults.wall_time_ms"),
        ("extra.yaml", "tenants.initech.colour"),
    }
    assert all(p.message for p in problems)
    assert not (srv.policy_dir / "extra.yaml").exists()
    assert admin.list_policies().version == 1
    assert admin.list_policy_versions() == ()


def test_validate_checks_against_the_other_files(admin: AdminClient) -> None:
    problems = admin.validate_policy("dup.yaml", policy_text({"acme": {}}))
    assert [(p.file, p.location) for p in problems] == [("dup.yaml", "tenants.acme")]
    assert "base.yaml" in problems[0].message


def test_apply_makes_a_new_version_and_records_it(admin: AdminClient, srv: AdminServer) -> None:
    applied = admin.apply_policy("extra.yaml", EXTRA_TEXT)
    assert (applied.version, applied.tenants) == (2, ("initech",))
    assert (srv.policy_dir / "extra.yaml").read_text() == EXTRA_TEXT
    assert srv.registry.current().version == 2
    listing = admin.list_policies()
    assert listing.version == 2
    assert [(f.name, f.tenants) for f in listing.files] == [
        (BASE_FILE, ("acme", "globex")),
        ("extra.yaml", ("initech",)),
    ]
    assert [t.name for t in admin.list_tenants()] == ["acme", "globex", "initech"]

    history = admin.list_policy_versions()
    assert [(v.version, v.actor, v.files) for v in history] == [
        (2, f"acme/{srv.admin_key_id}", (BASE_FILE, "extra.yaml"))
    ]
    assert _recent(history[0].at)
    snapshot = admin.get_policy(2)
    assert (snapshot.version, snapshot.actor) == (2, f"acme/{srv.admin_key_id}")
    assert {f.name: f.text for f in snapshot.files} == {BASE_FILE: BASE_TEXT, "extra.yaml": EXTRA_TEXT}
    current = admin.get_policy(0)
    assert (current.version, current.actor, current.at) == (2, snapshot.actor, snapshot.at)


def test_apply_replaces_a_file(admin: AdminClient) -> None:
    changed = BASE_TEXT.replace("Acme Corp", "Acme Corporation")
    assert admin.apply_policy(BASE_FILE, changed).version == 2
    assert admin.apply_policy(BASE_FILE, BASE_TEXT).version == 3
    assert [v.version for v in admin.list_policy_versions()] == [3, 2]
    assert admin.get_policy(2).file(BASE_FILE).text == changed  # type: ignore[union-attr]
    assert admin.get_policy(3).file(BASE_FILE).text == BASE_TEXT  # type: ignore[union-attr]
    assert next(t for t in admin.list_tenants() if t.name == "acme").description == "Acme Corp"


def test_rollback_makes_an_old_version_the_policy_as_a_new_version(admin: AdminClient, srv: AdminServer) -> None:
    changed = BASE_TEXT.replace("Acme Corp", "Acme Corporation")
    assert admin.apply_policy(BASE_FILE, changed).version == 2
    assert admin.apply_policy("extra.yaml", EXTRA_TEXT).version == 3
    rolled = admin.rollback_policy(2)
    assert (rolled.version, rolled.rolled_back_to, rolled.tenants) == (4, 2, ("acme", "globex"))
    assert srv.registry.current().version == 4
    assert dict(srv.registry.current().sources) == {BASE_FILE: changed}
    assert not (srv.policy_dir / "extra.yaml").exists()
    recorded = admin.get_policy(4)
    assert recorded.actor == f"acme/{srv.admin_key_id} (rollback to version 2)"
    assert {f.name: f.text for f in recorded.files} == {BASE_FILE: changed}
    # Rolling back to what is in force already changes nothing.
    assert admin.rollback_policy(2).version == 4
    for bad in (0, -1, 99):
        with pytest.raises(InvalidRequestError) as caught:
            admin.rollback_policy(bad)
        assert [v.field for v in caught.value.field_violations] == ["to_version"]
    assert srv.registry.current().version == 4


def test_apply_an_invalid_file_is_refused_and_changes_nothing(admin: AdminClient, srv: AdminServer) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        admin.apply_policy("extra.yaml", BAD_TEXT)
    assert {v.field for v in caught.value.field_violations} == {
        "extra.yaml:tenants.initech.defaults.wall_time_ms",
        "extra.yaml:tenants.initech.colour",
    }
    assert caught.value.reason == "INVALID_REQUEST"
    assert not (srv.policy_dir / "extra.yaml").exists()
    assert srv.registry.current().version == 1
    assert admin.list_policy_versions() == ()


def test_apply_yaml_syntax_errors_carry_line_and_column(admin: AdminClient) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        admin.apply_policy("extra.yaml", "version: 1\ntenants: {a: [\n")
    [violation] = caught.value.field_violations
    assert violation.field.startswith("extra.yaml:line ")
    assert "invalid YAML" in violation.description


@pytest.mark.parametrize("name", ["../evil.yaml", "sub/dir.yaml", ".hidden.yaml", "notyaml.txt", ""])
def test_apply_refuses_bad_file_names(admin: AdminClient, srv: AdminServer, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        admin.apply_policy(name, EXTRA_TEXT)
    assert [v.field for v in caught.value.field_violations] == [name]
    assert sorted(p.name for p in srv.policy_dir.iterdir()) == [BASE_FILE]
    assert not (tmp_path / "evil.yaml").exists()


def test_get_unknown_versions(admin: AdminClient) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        admin.get_policy(99)
    assert [v.field for v in caught.value.field_violations] == ["version"]
    with pytest.raises(InvalidRequestError):
        admin.get_policy(-1)


def test_list_policy_versions_limits(admin: AdminClient) -> None:
    for i in range(3):
        admin.apply_policy("extra.yaml", EXTRA_TEXT.replace("Initech", f"Initech {i}"))
    assert [v.version for v in admin.list_policy_versions()] == [4, 3, 2]
    assert [v.version for v in admin.list_policy_versions(2)] == [4, 3]
    for bad in (-1, 1001):
        with pytest.raises(InvalidRequestError) as caught:
            admin.list_policy_versions(bad)
        assert [v.field for v in caught.value.field_violations] == ["limit"]


def test_a_change_hook_that_records_versions_and_apply_do_not_collide(tmp_path: Path) -> None:
    with serve_admin(tmp_path, record_on_change=True) as srv, AdminClient(srv.target, api_key=srv.admin_token) as admin:
        assert admin.get_policy(0).actor == "initial load"
        assert admin.apply_policy("extra.yaml", EXTRA_TEXT).version == 2
        assert [(v.version, v.actor) for v in admin.list_policy_versions()] == [
            (2, f"acme/{srv.admin_key_id}"),
            (1, "initial load"),
        ]


# --- tenants and keys --------------------------------------------------------------------------------------


def test_list_tenants_counts_active_keys(admin: AdminClient, srv: AdminServer) -> None:
    tenants = {t.name: t for t in admin.list_tenants()}
    assert list(tenants) == ["acme", "globex"]
    assert tenants["acme"].description == "Acme Corp"
    assert tenants["acme"].languages == ("python", "bash")
    assert tenants["globex"].languages == ("python", "javascript", "bash")
    assert (tenants["acme"].active_keys, tenants["globex"].active_keys) == (2, 0)
    created = admin.create_api_key("globex")
    admin.create_api_key("globex")
    admin.revoke_api_key(created.key.key_id)
    assert {t.name: t.active_keys for t in admin.list_tenants()} == {"acme": 2, "globex": 1}


def test_create_key_returns_the_secret_once(admin: AdminClient, srv: AdminServer) -> None:
    created = admin.create_api_key("globex", label="ci runner")
    key = created.key
    assert (key.tenant, key.role, key.label, key.revoked_at) == ("globex", "tenant", "ci runner", None)
    assert key.active
    assert _recent(key.created_at)
    assert created.secret.startswith(f"sbx_{key.key_id}_")
    assert created.secret not in repr(created)
    assert srv.keys.verify(created.secret) is not None
    listed = admin.list_api_keys("globex")
    assert listed == (key,)
    assert created.secret.split("_", 2)[2] not in repr(listed)


def test_an_admin_key_made_through_the_api_works(admin: AdminClient, srv: AdminServer) -> None:
    created = admin.create_api_key("globex", role="admin", label="ops")
    assert created.key.role == "admin"
    with AdminClient(srv.target, api_key=created.secret) as other:
        assert other.list_policies().version == 1


def test_a_tenant_key_cannot_use_the_admin_api(admin: AdminClient, srv: AdminServer) -> None:
    created = admin.create_api_key("globex")
    for token in (created.secret, srv.tenant_token):
        with AdminClient(srv.target, api_key=token) as tenant, pytest.raises(PermissionDeniedError):
            tenant.list_policies()


def test_a_revoked_key_is_refused_at_once(admin: AdminClient, srv: AdminServer) -> None:
    created = admin.create_api_key("acme", role="admin")
    with AdminClient(srv.target, api_key=created.secret) as other:
        assert other.list_tenants()  # verified (and cached) once
        revoked = admin.revoke_api_key(created.key.key_id)
        assert revoked.key_id == created.key.key_id
        assert _recent(revoked.revoked_at)
        with pytest.raises(AuthenticationError):
            other.list_tenants()
    again = admin.revoke_api_key(created.key.key_id)  # idempotent
    assert again.revoked_at == revoked.revoked_at
    assert srv.keys.verify(created.secret) is None


def test_revoke_unknown_or_empty_key_ids(admin: AdminClient) -> None:
    for key_id in ("0123456789abcdef", ""):
        with pytest.raises(InvalidRequestError) as caught:
            admin.revoke_api_key(key_id)
        assert [v.field for v in caught.value.field_violations] == ["key_id"]


def test_list_keys_filters_by_tenant(admin: AdminClient, srv: AdminServer) -> None:
    made = admin.create_api_key("globex")
    everything = admin.list_api_keys()
    assert [k.tenant for k in everything] == ["acme", "acme", "globex"]
    assert everything[0].key_id == srv.admin_key_id
    assert admin.list_api_keys("globex") == (made.key,)
    assert admin.list_api_keys("nobody") == ()


@pytest.mark.parametrize(
    ("tenant", "label", "field"),
    [("nobody", "", "tenant"), ("", "", "tenant"), ("acme", "x" * 201, "label"), ("acme", "line\nbreak", "label")],
)
def test_create_key_refuses_bad_input(
    admin: AdminClient, srv: AdminServer, tenant: str, label: str, field: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        admin.create_api_key(tenant, label=label)
    assert [v.field for v in caught.value.field_violations] == [field]
    assert len(srv.keys.list()) == 2


def test_create_key_refuses_an_unknown_role_number(srv: AdminServer) -> None:
    from sandbox_client._proto.sandbox.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(srv.target) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(tenant="acme", role=7),  # type: ignore[arg-type]
                metadata=(("authorization", f"Bearer {srv.admin_token}"),),
                timeout=10,
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# --- authentication and malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "sbx_0123456789abcdef_wrong", "not-a-key"])
def test_calls_need_a_valid_key(srv: AdminServer, token: str | None) -> None:
    with AdminClient(srv.target, api_key=token) as anonymous, pytest.raises(AuthenticationError):
        anonymous.list_policies()


def test_without_the_auth_interceptor_nothing_is_answered(tmp_path: Path) -> None:
    """Fail closed: the servicer itself refuses a call that reached it with no principal."""
    with serve_admin(tmp_path, auth=False) as srv, AdminClient(srv.target, api_key=srv.admin_token) as admin:
        with pytest.raises(AuthenticationError, match="auth interceptor"):
            admin.list_policies()
        with pytest.raises(AuthenticationError):
            admin.create_api_key("acme")
        assert len(srv.keys.list()) == 2


def test_an_undecodable_request_is_invalid_argument(srv: AdminServer) -> None:
    with grpc.insecure_channel(srv.target) as channel:
        call = channel.unary_unary(
            "/sandbox.v1.Admin/ApplyPolicy",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as caught:
            # field 1 (file_name), a string that is not UTF-8
            call(b"\x0a\x02\xff\xfe", metadata=(("authorization", f"Bearer {srv.admin_token}"),), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(p.name for p in srv.policy_dir.iterdir()) == [BASE_FILE]


def test_applying_an_identical_file_keeps_the_version_and_records_nothing(admin: AdminClient) -> None:
    assert admin.apply_policy(BASE_FILE, BASE_TEXT).version == 1
    assert admin.list_policy_versions() == ()
    assert admin.get_policy(0).actor == ""


def test_the_client_module_api_is_pinned() -> None:
    import sandbox_client.admin

    assert sorted(sandbox_client.admin.__all__) == sorted(
        [
            "DEFAULT_ADMIN_TIMEOUT",
            "RUNNING",
            "AdminClient",
            "AdminSession",
            "ApiKey",
            "AppliedPolicy",
            "CostGroupBy",
            "CostReport",
            "CostRow",
            "CreatedApiKey",
            "Execution",
            "Incident",
            "Mitigation",
            "NotFoundError",
            "PolicyFile",
            "PolicyListing",
            "PolicyProblem",
            "PolicySnapshot",
            "PolicyVersion",
            "Role",
            "RolledBackPolicy",
            "SessionEvent",
            "SessionInfo",
            "Severity",
            "Tenant",
        ]
    )
