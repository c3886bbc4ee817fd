"""The committed stubs must be exactly what grpcio-tools generates from proto/ now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "client" / "sandbox_client" / "_proto"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert written, "the generator wrote nothing"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(COMMITTED): p.read_bytes()
        for p in COMMITTED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "stub files differ: run scripts/gen_proto.py"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs drifted from proto/: {stale}; run scripts/gen_proto.py"


def test_every_service_is_served() -> None:
    from sandbox_client._proto.sandbox.v1 import sandbox_pb2
    from sandbox_server.server import SERVICE_NAME

    methods = {m.name for m in sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"].methods}
    assert SERVICE_NAME == "sandbox.v1.Sandbox"
    assert methods == {"Execute", "ExecuteStream", "ListRuntimes", "RecordUsage", "CreateSession", "GetSession",
                       "ListSessions", "CloseSession", "UploadFile", "DownloadFile", "ListFiles", "DeleteFile",
                       "SnapshotSession", "ListSnapshots", "DeleteSnapshot"}
    from sandbox_client._proto.sandbox.v1 import admin_pb2

    admin = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods}
    assert admin == {"ListPolicies", "GetPolicy", "ValidatePolicy", "ApplyPolicy", "RollbackPolicy",
                     "ListPolicyVersions", "ListTenants", "CreateApiKey", "RevokeApiKey", "ListApiKeys",
                     "ListIncidents", "GetIncident",
                     "ResolveIncident", "CostReport", "ListExecutions", "GetExecution", "KillExecution",
                     "ListQuarantines", "LiftQuarantine", "ListSessions", "GetSession", "CloseSession"}
