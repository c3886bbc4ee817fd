"""The console over plain HTTP (httpx): development mode, TLS, a revoked key, host names, sessions' expiry, the
settings and the banner. The browser's view is test_console.py."""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from console_helpers import CONSOLE_POLICY, ConsoleServer, console_server
from pki import make_pki
from typer.testing import CliRunner

from sandbox_client import PermissionDeniedError
from sandbox_client.admin import AdminClient
from sandbox_server.__main__ import _banner, cli
from sandbox_server.console.admin_calls import AdminCalls, Operator
from sandbox_server.console.auth import SessionStore
from sandbox_server.console.charts import bar_chart, day_chart
from sandbox_server.settings import load_settings
from sandbox_server.testing import private_settings, server_in_thread


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    page = client.get("/signin")
    match = re.search(r'name="signin_token" value="([^"]+)"', page.text)
    assert match is not None, page.text
    return client.post("/signin", data={"signin_token": match.group(1), "api_key": key})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    with console_server(tmp_path_factory.mktemp("console-http")) as server:
        yield server


def test_the_console_is_off_unless_a_port_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().console_port is None
    assert load_settings().console_host == "127.0.0.1"
    monkeypatch.setenv("SANDBOX_CONSOLE_PORT", "8443")
    assert load_settings().console_port == 8443
    assert "--console-port" in CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output


def test_a_revoked_key_ends_the_console_session(console: ConsoleServer) -> None:
    assert console.srv.app.stores is not None
    record, key = console.srv.app.stores.keys.create("acme", "admin", "short-lived")
    with httpx.Client(base_url=console.origin) as browser:
        assert sign_in(browser, key).headers["location"] == "/live"
        assert browser.get("/live").status_code == 200
        with console.admin() as admin:
            admin.revoke_api_key(record.key_id)
        gone = browser.get("/keys")
        assert (gone.status_code, gone.headers["location"]) == (303, "/signin?why=key")
        assert browser.get("/live").headers["location"] == "/signin"  # the session is over, not just this page


def test_the_live_stream_pushes_tables_as_events(console: ConsoleServer) -> None:
    with httpx.Client(base_url=console.origin) as browser:
        sign_in(browser, console.keys["admin"])
        with browser.stream("GET", "/live/stream") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            assert events.headers["cache-control"] == "no-store"
            names: set[str] = set()
            for line in events.iter_lines():
                if line.startswith("event: "):
                    names.add(line.removeprefix("event: "))
                if {"executions", "sessions"} <= names:
                    break
    assert {"executions", "sessions"} <= names


def test_only_loopback_host_names_are_answered(console: ConsoleServer) -> None:
    with httpx.Client(base_url=console.origin) as browser:
        assert browser.get("/signin", headers={"host": "attacker.invalid"}).status_code == 421
        assert browser.get("/signin", headers={"host": f"localhost:{console.srv.app.console_port}"}).status_code == 200
        asset = browser.get("/static/htmx.min.js")
        assert asset.status_code == 200
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert "server" not in asset.headers


def test_the_banner_names_the_console(console: ConsoleServer, capsys: pytest.CaptureFixture[str]) -> None:
    _banner(console.srv.app)
    out = capsys.readouterr().out
    assert f"console: {console.origin}/ (sign in with an admin API key)" in out


def test_in_development_mode_nobody_can_sign_in(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "console.yaml").write_text(CONSOLE_POLICY)
    with server_in_thread(private_settings(console_port=0, policies_dir=policies)) as srv:
        assert srv.settings.dev_mode
        assert srv.app.console is not None
        assert "DEVELOPMENT MODE" in srv.app.console.describe()
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.app.console_port}") as browser:
            page = browser.get("/signin")
            assert "development mode" in page.text
            assert 'name="api_key"' not in page.text
            token = browser.cookies["sandbox-console-signin"]  # a form from an older page, say: still refused
            refused = browser.post("/signin", data={"signin_token": token, "api_key": "sbx_anything_at_all"})
            assert refused.status_code == 403
            assert "sandbox-console=" not in refused.headers.get("set-cookie", "")
            assert browser.get("/live").headers["location"] == "/signin"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost: the server's chain is its own root."""
    directory = tmp_path_factory.mktemp("console-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                    "-out", "server.crt", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   cwd=directory, check=True, capture_output=True)
    return directory


def test_with_tls_the_console_speaks_https_and_its_cookie_is_secure(tmp_path: Path, certificate: Path) -> None:
    tls: dict[str, Any] = {"tls_cert_file": certificate / "server.crt", "tls_key_file": certificate / "server.key"}
    with console_server(tmp_path, **tls) as console:
        port = console.srv.app.console_port
        assert console.srv.app.console is not None
        assert console.srv.app.console.url == f"https://127.0.0.1:{port}/"
        trust = ssl.create_default_context(cafile=str(certificate / "server.crt"))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust) as browser:
            signed_in = sign_in(browser, console.keys["admin"])  # its Admin API calls go over the server's TLS
            assert signed_in.headers["location"] == "/live"
            cookie = next(v for k, v in signed_in.headers.multi_items()
                          if k == "set-cookie" and v.startswith("__Host-sandbox-console="))
            assert "Secure" in cookie
            assert "HttpOnly" in cookie
            assert "SameSite=strict" in cookie
            assert browser.get("/keys").status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as plain, pytest.raises(httpx.HTTPError):
            plain.get("/signin")


def test_with_mtls_the_console_asks_browsers_for_a_certificate_from_the_client_ca(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls: dict[str, Any] = {"tls_cert_file": pki / "server.crt", "tls_key_file": pki / "server.key",
                           "tls_client_ca_file": pki / "ca.crt"}
    with console_server(tmp_path, **tls) as console:
        base = f"https://127.0.0.1:{console.srv.app.console_port}"

        def browser_with(name: str | None) -> httpx.Client:
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            if name is not None:
                context.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
            return httpx.Client(base_url=base, verify=context)

        with browser_with("client") as browser:
            # Its own Admin API calls go to the server's mTLS port, presenting the server's certificate.
            assert sign_in(browser, console.keys["admin"]).headers["location"] == "/live"
            assert browser.get("/keys").status_code == 200
        for refused in (None, "stranger"):  # no certificate, or one the client CA did not sign
            with browser_with(refused) as browser, pytest.raises(httpx.HTTPError):
                browser.get("/signin")


class _Calls:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_sessions_expire_and_are_bounded() -> None:
    now = [100.0]
    store = SessionStore(lifetime_s=60, max_sessions=2, clock=lambda: now[0])
    operator = Operator("k", "acme", "")
    calls = [_Calls() for _ in range(3)]
    tokens = [store.create(cast(AdminCalls, c), operator)[0] for c in calls]
    assert len(store) == 2
    assert calls[0].closed  # the oldest made room
    assert store.get(tokens[0]) is None
    session = store.get(tokens[2])
    assert session is not None
    assert store.get(tokens[2][:-1] + "x") is None
    now[0] += 59.9
    assert store.get(tokens[2]) is session
    now[0] += 0.1
    assert store.get(tokens[2]) is None
    assert calls[2].closed


def test_charts_escape_their_labels() -> None:
    chart = str(bar_chart([("<script>alert(1)</script>", 2.0), ("b", 1.0)], "t & t"))
    assert "<script>" not in chart
    assert "&lt;script&gt;" in chart
    assert "t &amp; t" in chart
    assert str(bar_chart([], "empty")) == ""
    days = str(day_chart([("2026-01-02", 1.0), ("2026-01-01", 3.0)], "days"))
    assert days.index("01-01") < days.index("01-02")  # oldest on the left


def test_the_audit_page_filters_through_the_admin_api(console: ConsoleServer) -> None:
    """Status and time go to ListExecutions: a failure behind newer successes is found with "At most" 1."""
    with console.sandbox("acme") as acme:
        failed = acme.execute("raise SystemExit(4)", session_id="audit-http")
        middle = datetime.now(UTC).replace(tzinfo=None)  # the form's times are UTC without a zone
        newer = [acme.execute("print(1)", session_id="audit-http") for _ in range(2)]

    def shown(**query: str) -> list[str]:
        page = browser.get("/audit", params={"session": "audit-http", **query})
        assert page.status_code == 200, page.text
        return re.findall(r'data-execution="([^"]+)"', page.text)

    with httpx.Client(base_url=console.origin) as browser:
        sign_in(browser, console.keys["admin"])
        assert shown(status="NONZERO_EXIT", limit="1") == [failed.execution_id]
        assert shown(status="OK") == [newer[1].execution_id, newer[0].execution_id]
        assert shown(status="ERROR") == []
        assert shown(since=middle.isoformat(timespec="microseconds")) == [e.execution_id for e in reversed(newer)]
        assert shown(until=middle.isoformat(timespec="microseconds"), status="NONZERO_EXIT") == [failed.execution_id]
        assert shown(since="2999-01-01T00:00") == []
        assert shown(status="NO_SUCH_STATUS", limit="1") == [newer[1].execution_id]  # an unknown one is dropped
        backwards = browser.get("/audit", params={"since": "2024-02-01T00:00", "until": "2024-01-01T00:00"})
        assert backwards.status_code == 400
        assert "must be before until" in backwards.text


def test_admin_client_is_what_the_console_calls(console: ConsoleServer) -> None:
    """The console's actions are the Admin API's: what it made shows in the Admin API with the operator's key id."""
    with httpx.Client(base_url=console.origin) as browser:
        sign_in(browser, console.keys["admin"])
        page = browser.get("/keys")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        made = browser.post("/keys", data={"csrf_token": token.group(1), "tenant": "globex", "role": "tenant",
                                           "label": "over http"})
        assert made.headers["location"] == "/keys"
        shown = browser.get("/keys").text
        secret = re.search(r'id="new-secret">(sbx_[^<]+)<', shown)
        assert secret is not None
        assert "new-secret" not in browser.get("/keys").text  # once
    with AdminClient(console.srv.target, api_key=secret.group(1).strip(), timeout=10) as as_tenant, \
            console.admin() as admin:
        assert any(k.label == "over http" and k.tenant == "globex" for k in admin.list_api_keys())
        with pytest.raises(PermissionDeniedError):
            as_tenant.list_tenants()  # a tenant key: the Admin API refuses it
