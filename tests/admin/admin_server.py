"""A real grpc.aio server with just the Admin service, for the admin tests (fixtures in conftest.py).

It runs the real pieces: the errors and auth interceptors, the real PolicyRegistry over a temporary policy
directory, and SQLite stores in a temporary file; on its own event loop in a background thread, so the
blocking AdminClient, typer's CliRunner and a ``sandbox-admin`` subprocess can all call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_thread import grpc_server_in_thread

from sandbox_server.admin import AdminServicer, admin_handler
from sandbox_server.admin.servicer import PolicyRegistryLike
from sandbox_server.interceptors.auth import AuthInterceptor
from sandbox_server.interceptors.errors import ErrorsInterceptor
from sandbox_server.policy.loader import PolicySet
from sandbox_server.policy.registry import PolicyRegistry
from sandbox_server.stores import SqliteKeyStore, SqlitePolicyVersionStore

BASE_FILE = "base.yaml"


def policy_text(tenants: dict[str, dict[str, object]]) -> str:
    return yaml.safe_dump({"version": 1, "tenants": tenants}, sort_keys=False)


BASE_TEXT = policy_text(
    {
        "acme": {"description": "Acme Corp", "languages": ["python", "bash"]},
        "globex": {"description": "Globex", "defaults": {"wall_time_ms": 5000}},
    }
)


@dataclass
class AdminServer:
    target: str
    admin_token: str
    """An admin key of tenant acme, made directly in the store (how the first admin key is bootstrapped)."""
    tenant_token: str
    """A tenant (non-admin) key of acme."""
    admin_key_id: str
    registry: PolicyRegistry
    keys: SqliteKeyStore
    versions: SqlitePolicyVersionStore
    policy_dir: Path


@contextlib.contextmanager
def serve_admin(tmp_path: Path, *, auth: bool = True, record_on_change: bool = False) -> Iterator[AdminServer]:
    """Serve the Admin service on 127.0.0.1:<ephemeral> until the block ends.

    ``auth`` False leaves the auth interceptor out (no principal reaches the servicer). ``record_on_change``
    records every policy swap from the registry's change hook, as app.py may wire it.
    """
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / BASE_FILE).write_text(BASE_TEXT)
    keys = SqliteKeyStore(tmp_path / "state.db")
    versions = SqlitePolicyVersionStore(tmp_path / "state.db")
    registry_box: list[PolicyRegistry] = []

    def record(new: PolicySet) -> None:
        versions.record(new.version, dict(new.sources), registry_box[0].versions[-1][2])

    on_change: Callable[[PolicySet], None] | None = record if record_on_change else None
    registry = PolicyRegistry(policy_dir, on_change=on_change)
    registry_box.append(registry)
    registry.load()
    admin, admin_token = keys.create("acme", "admin", "bootstrap")
    _, tenant_token = keys.create("acme", "tenant", "agent")
    as_protocol: PolicyRegistryLike = registry  # the real registry is what the servicer expects (checked by mypy)
    servicer = AdminServicer(as_protocol, keys, versions)

    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorsInterceptor()]
    if auth:
        interceptors.append(AuthInterceptor(keys))
    try:
        with grpc_server_in_thread(lambda server: server.add_generic_rpc_handlers((admin_handler(servicer),)),
                                   interceptors=interceptors, name="admin-test-server") as target:
            yield AdminServer(
                target=target,
                admin_token=admin_token,
                tenant_token=tenant_token,
                admin_key_id=admin.key_id,
                registry=registry,
                keys=keys,
                versions=versions,
                policy_dir=policy_dir,
            )
    finally:
        keys.close()
        versions.close()
