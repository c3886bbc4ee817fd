"""The operators' console in a real browser (Debian's Chromium, headless, through Playwright) against a real server
whose Admin API it calls with the signed-in operator's key.

Waits are Playwright's auto-waiting ``expect`` (a timeout, never a sleep); what the server does in the
background (an incident opening) is polled with a deadline. A screenshot of each page goes to
$SANDBOX_TEST_ARTIFACTS (default tests/console/artifacts/); with SANDBOX_UPDATE_CONSOLE_SCREENSHOT=1 the live
page's is also written to docs/images/console.png, the README's picture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import ConsoleServer, artifacts_dir, in_background, run_code, wait_for
from playwright.sync_api import BrowserContext, Page, expect

from sandbox_client import (
    AuthenticationError,
    InvalidRequestError,
    Limits,
    SandboxClient,
    SessionNotFoundError,
    Status,
)
from sandbox_client.admin import Incident

SLEEP = "import time\ntime.sleep(60)\n"


@pytest.fixture(autouse=True)
def close_pages(operator: BrowserContext) -> Iterator[None]:
    """Each test's pages closed after it: a live page holds a connection (its event stream), and a browser opens
    at most six to one host over HTTP/1.1."""
    yield
    for page in operator.pages:
        page.close()


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


def open_page(context: BrowserContext, console: ConsoleServer, path: str) -> Page:
    page = context.new_page()
    page.goto(console.origin + path)
    return page


def live_page(context: BrowserContext, console: ConsoleServer) -> Page:
    page = open_page(context, console, "/live")
    expect(page.locator("#live-status")).to_have_text("live")  # the event stream is connected
    return page


def test_a_tenant_key_or_an_unknown_key_cannot_sign_in(fresh: BrowserContext, console: ConsoleServer) -> None:
    page = open_page(fresh, console, "/live")
    expect(page).to_have_url(console.origin + "/signin")
    page.fill("#api_key", console.keys["acme"])
    page.click("button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("not an admin key")
    shoot(page, "signin-refused")
    page.fill("#api_key", console.keys["acme"][:-4] + "AAAA")
    page.click("button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("unknown key")
    assert not [c for c in fresh.cookies() if c["name"] == "sandbox-console"]
    page.goto(console.origin + "/keys")
    expect(page).to_have_url(console.origin + "/signin")


def test_the_session_cookie_holds_a_token_not_the_key(operator: BrowserContext, console: ConsoleServer) -> None:
    [cookie] = [c for c in operator.cookies() if c["name"] == "sandbox-console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["value"] not in console.keys["admin"]
    assert console.keys["admin"] not in cookie["value"]


def test_an_execution_appears_live_and_then_ends(operator: BrowserContext, console: ConsoleServer) -> None:
    page = live_page(operator, console)
    code = "import time\ntime.sleep(1.5)\nprint('done')\n"
    with in_background(run_code(console, code, session_id="watched")) as result:
        running = page.locator("#running-executions tr", has_text="watched")
        expect(running).to_have_count(1)
        execution_id = running.get_attribute("data-execution")
        expect(running).to_have_count(0)
        finished = result()
    assert finished.status is Status.OK
    assert finished.execution_id == execution_id
    ended = page.locator(f'#ended-executions tr[data-execution="{execution_id}"]')
    expect(ended.locator(".outcome")).to_have_text("OK")
    shoot(page, "live-ended")


def test_kill_a_running_execution_from_the_page(operator: BrowserContext, console: ConsoleServer) -> None:
    page = live_page(operator, console)
    with in_background(run_code(console, SLEEP, session_id="doomed", limits=Limits(wall_time_s=60))) as result:
        row = page.locator("#running-executions tr", has_text="doomed")
        expect(row).to_have_count(1)
        shoot(page, "live-running")
        execution_id = row.get_attribute("data-execution")
        row.get_by_role("button", name="Kill").click()
        killed = result()
    assert killed.status is Status.KILLED
    assert killed.execution_id == execution_id
    expect(page.locator("#flash")).to_contain_text(f"Execution {execution_id} killed")
    expect(page.locator(f'#ended-executions tr[data-execution="{execution_id}"] .outcome')).to_have_text("KILLED")

    detail = open_page(operator, console, f"/executions/{execution_id}")
    expect(detail.locator("#outcome")).to_have_text("KILLED")
    expect(detail.locator("#trace-id")).to_have_text(killed.trace_id)
    shoot(detail, "execution")


def test_kill_calls_in_a_session_and_alone_then_close_the_session(
        operator: BrowserContext, console: ConsoleServer, docs_image: Path) -> None:
    """The picture of a busy server (the README's, with SANDBOX_UPDATE_CONSOLE_SCREENSHOT=1), two kills from the
    page, and the session closed from it."""
    with console.sandbox() as acme, acme.session() as session:
        page = live_page(operator, console)
        quick = acme.execute("print('quick')", session_id="nightly-report")
        expect(page.locator(f'#ended-executions tr[data-execution="{quick.execution_id}"] .outcome')).to_have_text("OK")
        with in_background(lambda: session.run(SLEEP)) as in_session, \
                in_background(run_code(console, SLEEP, "globex", session_id="batch-7",
                                       limits=Limits(wall_time_s=60))) as one_shot:
            rows = page.locator("#running-executions tr[data-execution]")
            expect(rows).to_have_count(2)
            expect(page.locator(f'#live-sessions tr[data-session="{session.id}"] td:nth-child(3)')).to_have_text("BUSY")
            shoot(page, "live")
            if os.environ.get("SANDBOX_UPDATE_CONSOLE_SCREENSHOT") == "1":
                page.screenshot(path=str(docs_image), clip={"x": 0, "y": 0, "width": 1360, "height": 600})
            for label in (session.id, "batch-7"):
                page.locator("#running-executions tr", has_text=label).get_by_role("button", name="Kill").click()
                expect(page.locator("#running-executions tr", has_text=label)).to_have_count(0)
            assert in_session().status is Status.KILLED
            assert one_shot().status is Status.KILLED
        assert session.run("1 + 1").value == "2"  # a killed call leaves its session alive

        row = page.locator(f'#live-sessions tr[data-session="{session.id}"]')
        row.get_by_role("button", name="Close").click()
        expect(page.locator("#flash")).to_contain_text(f"Session {session.id} closed")
        expect(row).to_have_count(0)
        with pytest.raises(SessionNotFoundError):
            session.run("1 + 1")


def test_the_audit_trail_filters_by_status_and_tenant(operator: BrowserContext, console: ConsoleServer) -> None:
    with console.sandbox("globex") as globex:
        spent = globex.execute("print('globex')", session_id="audited")
    page = open_page(operator, console, "/audit")
    page.select_option("select[name=tenant]", "globex")
    page.click("form.filters button[type=submit]")
    rows = page.locator("#audit tbody tr")
    expect(rows.first).to_have_attribute("data-execution", spent.execution_id)
    for tenant in rows.locator("td:nth-child(3)").all_inner_texts():
        assert tenant == "globex"
    page.select_option("select[name=status]", "NONZERO_EXIT")
    page.click("form.filters button[type=submit]")
    expect(rows).to_have_text(["No execution matches."])  # globex's one ran fine
    page.goto(console.origin + "/audit?status=OK")
    expect(rows.first.locator(".outcome")).to_have_text("OK")
    assert set(rows.locator(".outcome").all_inner_texts()) == {"OK"}
    page.goto(console.origin + "/audit?since=2999-01-01T00:00")
    expect(rows).to_have_text(["No execution matches."])
    page.goto(console.origin + "/audit")
    shoot(page, "audit")


def test_costs_by_tenant_session_and_day_with_charts(operator: BrowserContext, console: ConsoleServer) -> None:
    with console.sandbox("acme") as acme, console.sandbox("globex") as globex:
        acme.execute("print(1)", session_id="billed")
        globex.execute("print(2)", session_id="billed")
    page = open_page(operator, console, "/costs")
    for group in ("tenant", "session", "day"):
        expect(page.locator(f"#costs-{group} svg.chart")).to_have_count(1)
    expect(page.locator("#costs-tenant svg.chart rect.bar")).to_have_count(2)  # acme and globex
    expect(page.locator("#costs-session")).to_contain_text("globex/billed")
    assert float(page.locator("#cost-total").inner_text()) > 0
    shoot(page, "costs")


def test_lift_a_quarantine_and_resolve_its_incident(operator: BrowserContext, console: ConsoleServer) -> None:
    with console.sandbox("mallory") as sbx:
        for _ in range(3):  # escape-like code, refused: the escape_attempts rule quarantines the tenant
            with pytest.raises(InvalidRequestError):
                sbx.execute("import ctypes\n", session_id="probe")
    with console.admin() as admin:
        def opened() -> Incident | None:
            return next((i for i in admin.list_incidents(open_only=True)
                         if i.rule == "escape_attempts" and i.subject == "mallory"), None)

        incident = wait_for("the escape_attempts incident", opened)
        [quarantine] = incident.mitigations

        page = open_page(operator, console, "/incidents")
        shoot(page, "incidents")
        page.locator(f'#quarantines tr[data-mitigation="{quarantine.id}"]').get_by_role("button", name="Lift").click()
        expect(page.locator("#flash")).to_contain_text(f"Mitigation {quarantine.id} lifted")
        assert admin.list_quarantines() == ()
        with console.sandbox("mallory") as sbx:
            assert sbx.execute("print('free')").stdout == "free\n"

        row = page.locator(f'#incidents tr[data-incident="{incident.id}"]')
        row.locator("input[name=note]").fill("looked into it")
        row.get_by_role("button", name="Resolve").click()
        expect(page.locator("#flash")).to_contain_text(f"Incident {incident.id} resolved")
        resolved = admin.get_incident(incident.id)
    assert resolved.open is False
    assert resolved.resolved_by == f"acme/{console.admin_key_id}"  # the operator's own key did it
    assert resolved.details["resolve_note"] == "looked into it"


def test_policies_diff_validate_and_roll_back(operator: BrowserContext, console: ConsoleServer) -> None:
    registry = console.srv.app.policies
    assert registry is not None
    before = registry.current().version
    with console.admin() as admin:
        applied = admin.apply_policy("initech.yaml", "version: 1\ntenants:\n  initech:\n    languages: [python]\n")
    assert "initech" in registry.current().tenants

    page = open_page(operator, console, f"/policies/diff?from={before}&to={applied.version}")
    expect(page.locator("section.diff .add", has_text="initech:")).to_have_count(1)
    shoot(page, "policy-diff")

    page.goto(console.origin + "/policies")
    expect(page.locator("#policy-version")).to_have_text(f"version {applied.version}")
    page.fill("input[name=file_name]", "broken.yaml")
    page.fill("textarea[name=text]", "version: 1\ntenants:\n  broken:\n    defaults: {wall_time_ms: -5}\n")
    page.get_by_role("button", name="Validate").click()
    expect(page.locator("#validation")).to_contain_text("Not valid")
    expect(page.locator("#validation")).to_contain_text("wall_time_ms")
    assert "broken" not in registry.current().tenants  # validating changes nothing

    page.locator(f'#versions tr[data-version="{before}"]').get_by_role("button", name=f"Roll back to {before}").click()
    expect(page.locator("#flash")).to_contain_text(f"Rolled back to version {before}")
    current = registry.current()
    assert current.version > applied.version
    assert "initech" not in current.tenants
    expect(page.locator("#policy-version")).to_have_text(f"version {current.version}")
    shoot(page, "policies")


def test_create_a_key_then_revoke_it(operator: BrowserContext, console: ConsoleServer) -> None:
    page = open_page(operator, console, "/keys")
    page.select_option("select[name=tenant]", "globex")
    page.fill("input[name=label]", "made in the console")
    page.get_by_role("button", name="Make the key").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("sbx_")
    key_id = secret.removeprefix("sbx_").split("_", 1)[0]
    with SandboxClient(console.srv.target, api_key=secret, timeout=30, retry=None) as made:
        assert made.execute("print('with the new key')").stdout == "with the new key\n"
    shoot(page, "keys-created")
    page.reload()
    expect(page.locator("#new-secret")).to_have_count(0)  # shown once

    page.locator(f'#keys tr[data-key="{key_id}"]').get_by_role("button", name="Revoke").click()
    expect(page.locator("#flash")).to_contain_text(f"Key {key_id} revoked")
    assert console.srv.app.stores is not None
    record = console.srv.app.stores.keys.get(key_id)
    assert record is not None
    assert record.revoked_at is not None
    with SandboxClient(console.srv.target, api_key=secret, timeout=30, retry=None) as made, \
            pytest.raises(AuthenticationError):
        made.execute("print(1)")
    shoot(page, "keys")


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
        operator: BrowserContext, console: ConsoleServer) -> None:
    page = open_page(operator, console, "/keys")
    target = console.origin + f"/keys/{console.admin_key_id}/revoke"
    refused = page.request.post(target, form={"label": "x"}, max_redirects=0)
    assert refused.status == 403
    assert "CSRF" in refused.text()
    token = page.locator("input[name=csrf_token]").first.input_value()
    wrong = page.request.post(target, form={"csrf_token": token[::-1]}, max_redirects=0)
    assert wrong.status == 403
    foreign = page.request.post(target, form={"csrf_token": token}, max_redirects=0,
                                headers={"origin": "http://attacker.invalid"})
    assert foreign.status == 403
    assert console.srv.app.stores is not None
    record = console.srv.app.stores.keys.get(console.admin_key_id)
    assert record is not None
    assert record.revoked_at is None  # nothing was revoked


def test_pages_carry_a_strict_content_security_policy(operator: BrowserContext, console: ConsoleServer) -> None:
    page = operator.new_page()
    response = page.goto(console.origin + "/live")
    assert response is not None
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


def test_nothing_loads_from_outside_the_server(operator: BrowserContext, console: ConsoleServer,
                                               requested: list[str]) -> None:
    """Every request of this module's browser went to the console, and no page broke its own CSP (a refused
    inline style or script would be logged as an error)."""
    page = operator.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    for path in ("/live", "/audit", "/costs", "/incidents", "/policies", "/keys", "/static/console.css"):
        page.goto(console.origin + path)
        page.wait_for_load_state("load")
    expect(page.locator("body")).to_be_visible()
    assert requested
    outside = [url for url in requested if not url.startswith(console.origin + "/")]
    assert outside == []
    assert errors == []


def test_sign_out_ends_the_session(fresh: BrowserContext, console: ConsoleServer) -> None:
    page = open_page(fresh, console, "/signin")
    page.fill("#api_key", console.keys["admin"])
    page.click("button[type=submit]")
    expect(page).to_have_url(console.origin + "/live")
    [cookie] = [c for c in fresh.cookies() if c["name"] == "sandbox-console"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(console.origin + "/signin?why=out")
    expect(page.locator(".flash-ok")).to_have_text("Signed out.")
    # The old token again: the server has forgotten it.
    fresh.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": console.origin}])
    page.goto(console.origin + "/live")
    expect(page).to_have_url(console.origin + "/signin")
