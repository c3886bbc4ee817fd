"""The contract every KeyStore and PolicyVersionStore implementation keeps (see conftest.py for the list)."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from store_backings import Backing

from sandbox_server.stores import KeyStore, PolicyVersionStore
from sandbox_server.stores.base import MAX_LABEL_CHARS, TOKEN_PREFIX


def _near_now(moment: datetime) -> bool:
    return moment.tzinfo is not None and abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


# --- API keys ---------------------------------------------------------------------------------------------


def test_create_returns_the_record_and_a_token_that_verifies(keys: KeyStore) -> None:
    record, token = keys.create("acme", "tenant", "ci runner")
    assert (record.tenant, record.role, record.label, record.revoked_at) == ("acme", "tenant", "ci runner", None)
    assert record.active
    assert _near_now(record.created_at)
    assert token.startswith(f"{TOKEN_PREFIX}{record.key_id}_")
    assert len(token) > len(TOKEN_PREFIX) + len(record.key_id) + 40  # 32 random bytes, urlsafe
    assert keys.verify(token) == record
    assert keys.get(record.key_id) == record


def test_the_secret_is_returned_once_and_never_again(keys: KeyStore) -> None:
    record, token = keys.create("acme", "admin", "ops")
    secret = token.split("_", 2)[2]
    for seen in (keys.get(record.key_id), *keys.list(), *keys.list("acme")):
        assert seen is not None
        assert {f.name for f in dataclasses.fields(seen)} == {
            "key_id",
            "tenant",
            "role",
            "label",
            "created_at",
            "revoked_at",
        }
        assert secret not in repr(seen)


def test_tokens_are_unique(keys: KeyStore) -> None:
    made = [keys.create("acme", "tenant", "") for _ in range(20)]
    assert len({r.key_id for r, _ in made}) == len({t for _, t in made}) == 20


def test_a_wrong_secret_with_a_right_key_id_never_verifies(keys: KeyStore) -> None:
    record, token = keys.create("acme", "tenant", "")
    _, other = keys.create("acme", "tenant", "")
    assert keys.verify(token) == record  # now possibly cached: the wrong secrets below must still fail
    prefix = f"{TOKEN_PREFIX}{record.key_id}_"
    secret = token[len(prefix) :]
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    wrong = [
        prefix + flipped,
        prefix + secret[:-1],
        prefix + secret + "x",
        prefix,
        prefix + other.split("_", 2)[2],
        prefix + secret.upper() if secret.upper() != secret else prefix + secret.lower(),
    ]
    for candidate in wrong:
        assert keys.verify(candidate) is None, candidate
    assert keys.verify(token) == record


@pytest.mark.parametrize(
    "token",
    ["", "sbx_", "sbx__", "garbage", "Bearer sbx_x_y", "sbx_0123456789abcdef", "sbx_nothex_secret", "x" * 10_000],
)
def test_malformed_tokens_never_verify(keys: KeyStore, token: str) -> None:
    keys.create("acme", "tenant", "")
    assert keys.verify(token) is None


def test_a_revoked_key_never_verifies(keys: KeyStore) -> None:
    record, token = keys.create("acme", "tenant", "")
    kept, kept_token = keys.create("acme", "tenant", "")
    assert keys.verify(token) == record  # cached now: revoking must still take effect at once
    assert keys.revoke(record.key_id) is True
    assert keys.verify(token) is None
    assert keys.verify(token) is None
    assert keys.revoke(record.key_id) is False  # already revoked
    revoked = keys.get(record.key_id)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert not revoked.active
    assert _near_now(revoked.revoked_at)
    assert keys.verify(kept_token) == kept


def test_revoking_an_unknown_key_is_false(keys: KeyStore) -> None:
    assert keys.revoke("0123456789abcdef") is False
    assert keys.get("0123456789abcdef") is None


def test_list_filters_by_tenant_oldest_first_revoked_included(keys: KeyStore) -> None:
    a1, _ = keys.create("acme", "tenant", "one")
    b1, _ = keys.create("beta", "admin", "two")
    a2, _ = keys.create("acme", "tenant", "three")
    keys.revoke(a1.key_id)
    assert [r.key_id for r in keys.list()] == [a1.key_id, b1.key_id, a2.key_id]
    acme = keys.list("acme")
    assert [r.key_id for r in acme] == [a1.key_id, a2.key_id]
    assert acme[0].revoked_at is not None
    assert acme[1].revoked_at is None
    assert keys.list("nobody") == []


@pytest.mark.parametrize(
    ("tenant", "role", "label"),
    [("", "tenant", ""), ("acme", "root", ""), ("acme", "tenant", "x" * (MAX_LABEL_CHARS + 1))],
)
def test_create_refuses_bad_input(keys: KeyStore, tenant: str, role: str, label: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message varies by field)
        keys.create(tenant, role, label)  # type: ignore[arg-type]
    assert keys.list() == []


def test_keys_survive_a_restart(backing: Backing) -> None:
    first = backing.keys()
    live, live_token = first.create("acme", "tenant", "kept")
    dead, dead_token = first.create("acme", "admin", "revoked")
    first.revoke(dead.key_id)
    before = first.list()
    first.close()

    second = backing.keys()
    assert second.list() == before
    assert second.verify(live_token) == live
    assert second.verify(dead_token) is None


def test_concurrent_creates(keys: KeyStore) -> None:
    threads, each = 8, 20
    start = threading.Barrier(threads)

    def make(n: int) -> list[tuple[str, str]]:
        start.wait()
        out = []
        for i in range(each):
            record, token = keys.create(f"t{n}", "tenant", str(i))
            out.append((record.key_id, token))
        return out

    with ThreadPoolExecutor(threads) as pool:
        made = [pair for batch in pool.map(make, range(threads)) for pair in batch]
    assert len({key_id for key_id, _ in made}) == threads * each
    assert len(keys.list()) == threads * each
    for key_id, token in made:
        found = keys.verify(token)
        assert found is not None
        assert found.key_id == key_id


def test_concurrent_verify_and_revoke(keys: KeyStore) -> None:
    made = [keys.create("acme", "tenant", "") for _ in range(40)]
    doomed = made[::2]

    def hammer(_: int) -> None:
        for record, token in made:
            keys.verify(token)
            if record in {r for r, _ in doomed}:
                keys.revoke(record.key_id)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hammer, range(4)))
    for record, token in made:
        expected = None if (record, token) in doomed else record
        assert keys.verify(token) == expected


# --- policy versions -------------------------------------------------------------------------------------


def test_record_then_get_with_texts(versions: PolicyVersionStore) -> None:
    texts = {"b.yaml": "tenants: {}\n", "a.yaml": "# ünïcode ✓\r\nversion: 1\n"}
    versions.record(1, texts, "acme/k1")
    got = versions.get(1)
    assert got is not None
    assert (got.version, got.actor, got.files) == (1, "acme/k1", ("a.yaml", "b.yaml"))
    assert dict(got.texts) == texts
    assert _near_now(got.at)
    assert versions.get(2) is None


def test_list_is_newest_first_limited_and_without_texts(versions: PolicyVersionStore) -> None:
    for v in range(1, 6):
        versions.record(v, {f"f{v}.yaml": "x", "common.yaml": str(v)}, f"actor{v}")
    listed = versions.list(3)
    assert [p.version for p in listed] == [5, 4, 3]
    assert [p.actor for p in listed] == ["actor5", "actor4", "actor3"]
    assert listed[0].files == ("common.yaml", "f5.yaml")
    assert all(not p.texts for p in listed)
    assert [p.version for p in versions.list()] == [5, 4, 3, 2, 1]
    assert [p.version for p in versions.list(1)] == [5]


def test_a_version_with_no_files(versions: PolicyVersionStore) -> None:
    versions.record(1, {}, "system")
    assert versions.list()[0].files == ()
    got = versions.get(1)
    assert got is not None
    assert got.files == ()


def test_a_version_is_recorded_once(versions: PolicyVersionStore) -> None:
    versions.record(1, {"a.yaml": "first"}, "a")
    with pytest.raises(ValueError, match="already recorded"):
        versions.record(1, {"a.yaml": "second"}, "b")
    got = versions.get(1)
    assert got is not None
    assert dict(got.texts) == {"a.yaml": "first"}
    assert got.actor == "a"


@pytest.mark.parametrize("version", [0, -1])
def test_versions_are_positive(versions: PolicyVersionStore, version: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        versions.record(version, {}, "a")


def test_list_limit_is_positive(versions: PolicyVersionStore) -> None:
    with pytest.raises(ValueError, match="positive"):
        versions.list(0)


def test_versions_survive_a_restart(backing: Backing) -> None:
    first = backing.versions()
    first.record(1, {"a.yaml": "one"}, "x")
    first.record(2, {"a.yaml": "two", "b.yaml": "bee"}, "y")
    first.close()
    second = backing.versions()
    assert [(p.version, p.actor, p.files) for p in second.list()] == [
        (2, "y", ("a.yaml", "b.yaml")),
        (1, "x", ("a.yaml",)),
    ]
    got = second.get(2)
    assert got is not None
    assert dict(got.texts) == {"a.yaml": "two", "b.yaml": "bee"}


def test_concurrent_records(versions: PolicyVersionStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda v: versions.record(v, {"p.yaml": str(v)}, "a"), range(1, 41)))
    assert [p.version for p in versions.list(100)] == list(range(40, 0, -1))
