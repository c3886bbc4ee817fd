"""Bad requests: INVALID_ARGUMENT with a BadRequest naming each bad field, and nothing run, nothing left.

Requests go through a real server (the ``server`` fixture, once per backend): through the client where it
can express the mistake, through the raw generated stub where the client would refuse or fix it (bytes that
are not UTF-8, non-positive limits, duplicate paths). ``build_spec`` itself is fuzzed with hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from sandbox_client import InvalidRequestError, Limits, SandboxClient, Status
from sandbox_client._proto.sandbox.v1 import sandbox_pb2 as pb
from sandbox_client._proto.sandbox.v1 import sandbox_pb2_grpc
from sandbox_server.errors import InvalidRequest
from sandbox_server.execution.runtimes import RUNTIMES
from sandbox_server.execution.spec import ExecutionSpec
from sandbox_server.settings import LIMIT_FLOORS, RequestCaps, Settings
from sandbox_server.testing import RunningServer, private_settings
from sandbox_server.validation.request import RESERVED_ENV, admin_name, build_spec

pytestmark = pytest.mark.usefixtures("no_leftovers")

KIB = 1024
MIB = 1024 * KIB
LIMIT_FIELDS = ("wall_time_ms", "cpu_time_ms", "memory_bytes", "max_pids", "output_bytes", "file_size_bytes",
                "scratch_bytes")
EXECUTE = "/sandbox.v1.Sandbox/Execute"
EXECUTE_STREAM = "/sandbox.v1.Sandbox/ExecuteStream"


# ---- helpers ----------------------------------------------------------------------------------------------
@pytest.fixture
def stub(server: RunningServer) -> Iterator[sandbox_pb2_grpc.SandboxStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield sandbox_pb2_grpc.SandboxStub(channel)


@pytest.fixture
def backend_runs(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call the servicer makes into the backend during the test (the real backend still runs them)."""
    calls: list[object] = []
    backend = server.app.backend
    real_run = backend.run

    async def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else kwargs.get("spec"))
        return await real_run(*args, **kwargs)

    monkeypatch.setattr(backend, "run", spy)
    return calls


def identity(data: bytes) -> bytes:
    """Serializer for raw calls: the bytes go on the wire as they are."""
    return data


def request(**fields: Any) -> pb.ExecuteRequest:
    """A valid request with ``fields`` replaced."""
    base: dict[str, Any] = {"language": "python", "code": b"print('ran')"}
    return pb.ExecuteRequest(**{**base, **fields})


def violations_of(error: grpc.RpcError) -> dict[str, str]:
    """field -> description of an INVALID_ARGUMENT error's BadRequest (the test fails if it is anything else)."""
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == code_pb2.INVALID_ARGUMENT
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update((v.field, v.description) for v in bad.field_violations)
    assert out, "INVALID_ARGUMENT without field violations"
    return out


def rejected(stub: sandbox_pb2_grpc.SandboxStub, req: pb.ExecuteRequest) -> dict[str, str]:
    """Send ``req`` raw; it must be rejected with INVALID_ARGUMENT. Returns its field violations."""
    with pytest.raises(grpc.RpcError) as info:
        stub.Execute(req, timeout=30)
    return violations_of(info.value)


def client_rejected(sbx: SandboxClient, code: str = "print('ran')", **kwargs: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as info:
        sbx.execute(code, **kwargs)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    return {v.field: v.description for v in info.value.field_violations}


# ---- language and code ------------------------------------------------------------------------------------
def test_unknown_language(sbx: SandboxClient, backend_runs: list[object]) -> None:
    got = client_rejected(sbx, language="cobol")
    assert list(got) == ["language"]
    assert "cobol" in got["language"]
    for rt in RUNTIMES:
        assert rt.language in got["language"]  # says which languages there are
    assert backend_runs == []


def test_empty_language(sbx: SandboxClient, backend_runs: list[object]) -> None:
    got = client_rejected(sbx, language="")
    assert list(got) == ["language"]
    assert "required" in got["language"]
    assert backend_runs == []


def test_oversized_code(sbx: SandboxClient, server: RunningServer, backend_runs: list[object]) -> None:
    """Over the server's cap and the tenant's static-validation cap: the tighter one (the policy's) is named."""
    cap = server.settings.caps.code_bytes
    policies = server.app.policies
    assert policies is not None
    tenant = policies.tenant("default")
    assert tenant is not None
    policy_cap = tenant.static_validation.max_code_bytes
    got = client_rejected(sbx, code="#" * (cap + 1))
    assert list(got) == ["code"]
    assert str(min(cap, policy_cap)) in got["code"]
    assert backend_runs == []


def test_code_at_the_cap_is_accepted(sbx: SandboxClient, server: RunningServer) -> None:
    cap = server.settings.caps.code_bytes
    code = "print('ran')\n"
    result = sbx.execute(code + "#" * (cap - len(code)))
    assert (result.status, result.stdout) == (Status.OK, "ran\n")


def test_invalid_utf8_code(stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object]) -> None:
    got = rejected(stub, request(code=b"print('ran')\n# \xff\xfe"))
    assert list(got) == ["code"]
    assert "UTF-8" in got["code"]
    assert backend_runs == []


def test_nul_in_code(stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object]) -> None:
    got = rejected(stub, request(code=b"print('ran')\x00"))
    assert list(got) == ["code"]
    assert backend_runs == []


def test_oversized_stdin(sbx: SandboxClient, server: RunningServer, backend_runs: list[object]) -> None:
    cap = server.settings.caps.stdin_bytes
    got = client_rejected(sbx, stdin=bytes(cap + 1))
    assert list(got) == ["stdin"]
    assert backend_runs == []


# ---- limits -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", LIMIT_FIELDS)
@pytest.mark.parametrize("value", [-1, 0, -(2**63)])
def test_non_positive_limit(
    stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object], field: str, value: int
) -> None:
    got = rejected(stub, request(limits=pb.Limits(**{field: value})))
    assert list(got) == [f"limits.{field}"]
    assert "positive" in got[f"limits.{field}"]
    assert backend_runs == []


@pytest.mark.parametrize("field", LIMIT_FIELDS)
def test_limit_above_ceiling(
    stub: sandbox_pb2_grpc.SandboxStub, server: RunningServer, backend_runs: list[object], field: str
) -> None:
    ceiling = getattr(server.settings.ceilings, field)
    got = rejected(stub, request(limits=pb.Limits(**{field: ceiling + 1})))
    assert list(got) == [f"limits.{field}"]
    assert str(ceiling) in got[f"limits.{field}"]  # says what the ceiling is
    assert backend_runs == []


def test_limit_above_ceiling_through_client(sbx: SandboxClient, server: RunningServer) -> None:
    ceiling = server.settings.ceilings.memory_bytes
    got = client_rejected(sbx, limits=Limits(memory_bytes=ceiling + 1))
    assert list(got) == ["limits.memory_bytes"]
    assert str(ceiling) in got["limits.memory_bytes"]


def test_limit_below_floor(sbx: SandboxClient) -> None:
    got = client_rejected(sbx, limits=Limits(memory_bytes=LIMIT_FLOORS.memory_bytes - 1))
    assert list(got) == ["limits.memory_bytes"]
    assert str(LIMIT_FLOORS.memory_bytes) in got["limits.memory_bytes"]


def test_limits_at_the_ceiling_are_accepted(sbx: SandboxClient, server: RunningServer) -> None:
    c = server.settings.ceilings
    result = sbx.execute("print('ran')", limits=Limits(max_pids=c.max_pids, output_bytes=c.output_bytes,
                                                       file_size_bytes=c.file_size_bytes))
    assert (result.status, result.stdout) == (Status.OK, "ran\n")
    assert result.limits.max_pids == c.max_pids


# ---- files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "../x", "a/../../x", "/etc/x", "a//b", "./a", "a/./b", "a/", "", "a\\b", "a\x01b", "a\x00b", "main.py",
        "/".join(["d"] * 9), "x" * 256,
    ],
)
def test_bad_file_path(stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object], path: str) -> None:
    got = rejected(stub, request(files=[pb.InputFile(path=path, content=b"data")]))
    assert list(got) == ["files[0].path"]
    assert backend_runs == []


@pytest.mark.parametrize(
    "path",
    [
        # under the code file: the scratch cannot hold both (INTERNAL today)
        pytest.param("main.py/x", id="under-code-file"),
        # 200 characters but 400 bytes: longer than a file name may be (INTERNAL today)
        pytest.param("é" * 200, id="name-over-255-bytes"),
        # a control character at the end ('$' matches before a final newline)
        pytest.param("x.txt\n", id="trailing-newline"),
        pytest.param("d/x.txt\n", id="nested-trailing-newline"),
    ],
)
def test_bad_file_path_found_late(
    stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object], path: str
) -> None:
    """Paths that pass the first checks but cannot or must not be created: still the user's mistake."""
    got = rejected(stub, request(files=[pb.InputFile(path=path, content=b"data")]))
    assert list(got) == ["files[0].path"]
    assert backend_runs == []


def test_bad_path_through_client(sbx: SandboxClient) -> None:
    got = client_rejected(sbx, files={"ok.txt": b"1", "../escape": b"2"})
    assert list(got) == ["files[1].path"]


def test_duplicate_file_path(stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object]) -> None:
    files = [pb.InputFile(path="a/b.txt", content=b"1"), pb.InputFile(path="a/b.txt", content=b"2")]
    got = rejected(stub, request(files=files))
    assert list(got) == ["files[1].path"]
    assert backend_runs == []


@pytest.mark.parametrize(("first", "second"), [("a", "a/b"), ("a/b", "a")])
def test_file_and_directory_clash(
    stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object], first: str, second: str
) -> None:
    files = [pb.InputFile(path=first, content=b"1"), pb.InputFile(path=second, content=b"2")]
    got = rejected(stub, request(files=files))
    assert list(got) == ["files[1].path"]
    assert backend_runs == []


def test_too_many_files(stub: sandbox_pb2_grpc.SandboxStub, server: RunningServer) -> None:
    cap = server.settings.caps.input_files
    files = [pb.InputFile(path=f"f{i}", content=b"") for i in range(cap + 1)]
    assert list(rejected(stub, request(files=files))) == ["files"]


def test_input_files_larger_than_scratch(sbx: SandboxClient, backend_runs: list[object]) -> None:
    """The request chose a scratch too small for its own files: INVALID_ARGUMENT, not INTERNAL."""
    got = client_rejected(sbx, files={"big.bin": bytes(256 * KIB)}, limits=Limits(scratch_bytes=64 * KIB))
    assert set(got) & {"files", "limits.scratch_bytes"}, got


# ---- env, ids ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RESERVED_ENV))
def test_reserved_env_name(sbx: SandboxClient, backend_runs: list[object], name: str) -> None:
    got = client_rejected(sbx, env={name: "/evil"})
    assert list(got) == [f"env[{name!r}]"]
    assert backend_runs == []


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A=B", "", "É", "X" * 129, "PATH\n", "FOO\n"])
def test_bad_env_name(sbx: SandboxClient, backend_runs: list[object], name: str) -> None:
    got = client_rejected(sbx, env={name: "v"})
    assert len(got) == 1
    [field] = got
    assert field.startswith("env[")
    assert backend_runs == []


def test_env_value_with_nul(sbx: SandboxClient) -> None:
    assert list(client_rejected(sbx, env={"OK_NAME": "a\x00b"})) == ["env['OK_NAME']"]


def test_too_many_env_vars(sbx: SandboxClient, server: RunningServer) -> None:
    cap = server.settings.caps.env_vars
    assert list(client_rejected(sbx, env={f"V{i}": "x" for i in range(cap + 1)})) == ["env"]


@pytest.mark.parametrize("field", ["session_id", "idempotency_key"])
@pytest.mark.parametrize("value", ["s" * 129, "has space", "tab\there", "é", "trailing-newline\n"])
def test_bad_ids(sbx: SandboxClient, backend_runs: list[object], field: str, value: str) -> None:
    got = client_rejected(sbx, **{field: value})
    assert list(got) == [field]
    assert backend_runs == []


def test_id_at_the_cap_is_accepted(sbx: SandboxClient) -> None:
    result = sbx.execute("print('ran')", session_id="s" * 128, idempotency_key="k" * 128)
    assert result.status is Status.OK


def test_every_violation_is_reported_at_once(
    stub: sandbox_pb2_grpc.SandboxStub, backend_runs: list[object]
) -> None:
    req = request(
        language="cobol",
        code=b"\xff",
        files=[pb.InputFile(path="../x", content=b"")],
        env={"PATH": "/x", "9": "y"},
        limits=pb.Limits(wall_time_ms=0, memory_bytes=-5),
        session_id="a b",
    )
    got = rejected(stub, req)
    assert set(got) == {
        "language", "code", "files[0].path", "env['PATH']", "env['9']", "limits.wall_time_ms",
        "limits.memory_bytes", "session_id",
    }
    assert backend_runs == []


# ---- malformed messages -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [EXECUTE, EXECUTE_STREAM])
@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x02\xff\xfe",  # field 1 (language, a string) holding bytes that are not UTF-8
        b"\x0a\x05ab",        # a length that runs past the end
        b"\xff\xff\xff",      # not a message at all
    ],
)
def test_bytes_that_are_not_a_request(
    server: RunningServer, backend_runs: list[object], method: str, payload: bytes
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        if method == EXECUTE:
            call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
            with pytest.raises(grpc.RpcError) as info:
                call(payload, timeout=30)
        else:
            stream = channel.unary_stream(method, request_serializer=identity, response_deserializer=identity)
            with pytest.raises(grpc.RpcError) as info:
                list(stream(payload, timeout=30))
    got = violations_of(info.value)
    assert list(got) == ["request"]
    assert backend_runs == []


def test_rejected_request_leaves_nothing_and_runs_nothing(
    stub: sandbox_pb2_grpc.SandboxStub,
    server: RunningServer,
    backend_runs: list[object],
    assert_no_leftovers: Callable[..., None],
) -> None:
    # A clean start: an earlier test's sandbox may still be finishing a teardown that runs after its reply
    # (Docker removes a stopped container in the background), which is none of the rejected requests' doing.
    assert_no_leftovers(server)
    for req in [
        request(language="cobol"),
        request(limits=pb.Limits(memory_bytes=-1)),
        request(files=[pb.InputFile(path="/etc/passwd", content=b"x")]),
    ]:
        rejected(stub, req)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ExecuteStream(req, timeout=30))
        violations_of(info.value)
    assert backend_runs == []
    assert server.app.admission.running == 0
    assert server.app.admission.queued == 0
    assert_no_leftovers(server, wait_s=0.0)
    # and the same server still runs a good request
    ok = stub.Execute(request(), timeout=30)
    assert (ok.status, ok.stdout) == (pb.STATUS_OK, b"ran\n")
    assert len(backend_runs) == 1


# ---- build_spec, fuzzed -------------------------------------------------------------------------------------
@cache
def fuzz_settings() -> Settings:
    """Small caps, so that random requests cross them often."""
    caps = RequestCaps(code_bytes=64, stdin_bytes=32, input_files=4, input_file_bytes=64, env_vars=4,
                       env_bytes=96)
    return private_settings(caps=caps)


_path_part = st.one_of(
    st.sampled_from(["a", "b.txt", "..", ".", "", "main.py", "é", "x\n", "c\\d", "  ", "\x00"]),
    st.text(max_size=8),
)
_paths = st.one_of(st.text(max_size=30), st.lists(_path_part, min_size=1, max_size=10).map("/".join))
_limit = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-3, 10**10))
_env_name = st.one_of(st.sampled_from(["PATH", "HOME", "FOO", "_x", "1X", "A-B", "a" * 130]), st.text(max_size=12))


@st.composite
def execute_requests(draw: st.DrawFn) -> pb.ExecuteRequest:
    limits = {f: v for f in LIMIT_FIELDS if (v := draw(_limit)) is not None}
    return pb.ExecuteRequest(
        language=draw(st.one_of(st.sampled_from(["python", " PY ", "js", "bash", "sh", "", "cobol"]),
                                st.text(max_size=12))),
        code=draw(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode))),
        stdin=draw(st.binary(max_size=40)),
        files=[pb.InputFile(path=p, content=c)
               for p, c in draw(st.lists(st.tuples(_paths, st.binary(max_size=30)), max_size=6))],
        env=draw(st.dictionaries(_env_name, st.text(max_size=30), max_size=6)),
        limits=pb.Limits(**limits) if draw(st.booleans()) else None,
        session_id=draw(st.text(max_size=140)),
        idempotency_key=draw(st.one_of(st.just(""), st.text(max_size=140))),
    )


def _spec_or_error(req: pb.ExecuteRequest, settings: Settings) -> ExecutionSpec | InvalidRequest:
    """build_spec's answer; any exception but InvalidRequest propagates and fails the test."""
    try:
        return build_spec(req, settings, "fuzz-id")
    except InvalidRequest as exc:
        return exc


@hsettings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(req=execute_requests())
def test_build_spec_returns_a_spec_or_raises_invalid_request(req: pb.ExecuteRequest) -> None:
    settings = fuzz_settings()
    spec = _spec_or_error(req, settings)
    if isinstance(spec, InvalidRequest):
        assert spec.violations
        assert all(v.field and v.description for v in spec.violations)
        return
    assert isinstance(spec, ExecutionSpec)
    assert spec.execution_id == "fuzz-id"
    assert spec.code == req.code
    assert len(spec.code) <= settings.caps.code_bytes
    spec.code.decode("utf-8")
    for f in LIMIT_FIELDS:
        value = getattr(spec.limits, f)
        assert getattr(LIMIT_FLOORS, f) <= value <= getattr(settings.ceilings, f)
        if req.limits.HasField(f):
            assert value == getattr(req.limits, f)
        else:
            assert value == getattr(settings.defaults, f)
    for name, _ in spec.env:
        assert name not in RESERVED_ENV
    for file in spec.files:
        assert not file.path.startswith("/")
        assert ".." not in file.path.split("/")


@pytest.mark.parametrize("value", ["acme", "team one", "k_9f2c", "é" * 128])
def test_an_admin_name_may_be_any_printable_text_up_to_the_id_bound(value: str) -> None:
    assert admin_name("tenant", value) == []


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "tab\there", "\x7f", "x" * 129])
def test_an_admin_name_with_a_control_character_or_too_long_is_refused_naming_its_field(value: str) -> None:
    (violation,) = admin_name("session_id", value)
    assert violation.field == "session_id"
    assert "printable" in violation.description


def test_an_empty_admin_name_is_no_filter_unless_it_is_required() -> None:
    assert admin_name("tenant", "") == []
    (violation,) = admin_name("key_id", "", required=True)
    assert violation.field == "key_id"
    assert violation.description == "is required"
