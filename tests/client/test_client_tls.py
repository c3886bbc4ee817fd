"""TLS and mTLS from ``TLSConfig``, both clients, against real servers with certificates the test makes itself
(openssl): the CA, a client certificate, and a certificate that names the server by a DNS name only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from real_servers import make_pki

from sandbox_client import AsyncSandboxClient, SandboxClient, TLSConfig, UnavailableError
from sandbox_server.testing import RunningServer, server_in_thread


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("client-pki"))


@pytest.fixture(scope="module")
def mtls_server(pki: Path) -> Iterator[RunningServer]:
    with server_in_thread(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key",
                          tls_client_ca_file=pki / "ca.crt") as srv:
        yield srv


def test_tls_with_a_private_ca(pki: Path) -> None:
    with server_in_thread(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key") as srv:
        tls = TLSConfig.from_files(root_certificates=pki / "ca.crt")
        with SandboxClient(srv.target, tls=tls, api_key="sk-any") as sbx:
            assert sbx.execute("print('over tls')").stdout == "over tls\n"
        with SandboxClient(srv.target, retry=None, timeout=3) as plain, pytest.raises(UnavailableError):
            plain.execute("print(1)")


def test_mtls_with_a_client_certificate(pki: Path, mtls_server: RunningServer) -> None:
    tls = TLSConfig(
        root_certificates=(pki / "ca.crt").read_bytes(),
        client_certificate=(pki / "client.crt").read_bytes(),
        client_private_key=(pki / "client.key").read_bytes(),
    )
    with SandboxClient(mtls_server.target, tls=tls) as sbx:
        assert sbx.execute("print('mtls')").stdout == "mtls\n"
    no_cert = TLSConfig(root_certificates=tls.root_certificates)
    with SandboxClient(mtls_server.target, tls=no_cert, retry=None, timeout=3) as sbx, \
            pytest.raises(UnavailableError):
        sbx.execute("print(1)")


async def test_async_mtls_from_files(pki: Path, mtls_server: RunningServer) -> None:
    tls = TLSConfig.from_files(root_certificates=pki / "ca.crt", client_certificate=pki / "client.crt",
                               client_private_key=str(pki / "client.key"))
    async with AsyncSandboxClient(mtls_server.target, tls=tls) as sbx:
        assert (await sbx.execute("print('async mtls')")).stdout == "async mtls\n"
    async with AsyncSandboxClient(mtls_server.target, tls=TLSConfig(root_certificates=tls.root_certificates),
                                  retry=None, timeout=3) as sbx:
        with pytest.raises(UnavailableError):
            await sbx.execute("print(1)")


def test_server_name_checks_the_certificate_against_another_name(pki: Path) -> None:
    with server_in_thread(tls_cert_file=pki / "named.crt", tls_key_file=pki / "named.key") as srv:
        ca = (pki / "ca.crt").read_bytes()
        # The certificate names sandbox.test, not 127.0.0.1: refused, unless told which name to expect.
        with SandboxClient(srv.target, tls=TLSConfig(root_certificates=ca), retry=None, timeout=3) as sbx, \
                pytest.raises(UnavailableError):
            sbx.execute("print(1)")
        named = TLSConfig(root_certificates=ca, server_name="sandbox.test")
        with SandboxClient(srv.target, tls=named) as sbx:
            assert sbx.execute("print('by name')").stdout == "by name\n"
