"""TLS and mTLS on the server port, with certificates the test makes itself (openssl)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from pki import make_pki
from redis_server import Redis

from sandbox_client import SandboxClient, UnavailableError
from sandbox_server.testing import server_in_thread


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_server(pki: Path) -> None:
    with server_in_thread(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key") as srv:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        with SandboxClient(srv.target, credentials=creds) as sbx:
            assert sbx.execute("print('over tls')").stdout == "over tls\n"
        with SandboxClient(srv.target, timeout=3) as plain, pytest.raises(UnavailableError):
            plain.execute("print(1)")


def test_mtls_requires_a_client_certificate(pki: Path) -> None:
    with server_in_thread(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
                          tls_client_ca_file=pki / "ca.crt") as srv:
        ca = (pki / "ca.crt").read_bytes()
        with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(),
                                                 (pki / "client.crt").read_bytes())
        with SandboxClient(srv.target, credentials=with_cert) as sbx:
            assert sbx.execute("print('mtls')").stdout == "mtls\n"
        without = grpc.ssl_channel_credentials(ca)
        with SandboxClient(srv.target, credentials=without, timeout=3) as sbx, pytest.raises(UnavailableError):
            sbx.execute("print(1)")


def test_a_session_call_is_forwarded_between_replicas_over_mtls(pki: Path, redis_server: Redis) -> None:
    """Replicas serving mTLS call each other with their own certificate when they forward a session's call."""
    redis_server.flush()
    tls: dict[str, Any] = {"tls_cert_file": pki / "server.crt", "tls_key_file": pki / "server.key",
                           "tls_client_ca_file": pki / "ca.crt", "redis_url": redis_server.url}
    ca = (pki / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes())
    with server_in_thread(**tls) as holder, server_in_thread(**tls) as other, \
            SandboxClient(holder.target, credentials=creds) as first, \
            SandboxClient(other.target, credentials=creds) as second:
        session = first.session()
        session.run("x = 41")
        assert second.execute("x + 1", session_id=session.id).value == "42"
        assert other.app.sessions is not None
        assert other.app.sessions.count == 0  # it ran on its holder
