"""Fixtures for the console tests: one real server with its console per module, and Debian's Chromium driven by
Playwright (headless, the system's browser: no browser is downloaded)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import ConsoleServer, console_server
from playwright.sync_api import Browser, BrowserContext, Playwright, ViewportSize, sync_playwright

CHROMIUM = "chromium"  # Debian's package (scripts/setup.sh)
VIEWPORT: ViewportSize = {"width": 1360, "height": 860}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    with console_server(tmp_path_factory.mktemp("console")) as server:
        yield server


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = shutil.which(CHROMIUM)
    if executable is None:
        pytest.fail("no chromium on PATH: scripts/setup.sh installs Debian's package")
    launched = playwright.chromium.launch(executable_path=executable, headless=True)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def requested() -> list[str]:
    """Every URL the module's browser contexts requested."""
    return []


def new_context(browser: Browser, requested: list[str]) -> BrowserContext:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(10_000)
    context.on("request", lambda request: requested.append(request.url))
    return context


@pytest.fixture
def fresh(browser: Browser, requested: list[str]) -> Iterator[BrowserContext]:
    """A context of its own (no cookies), for a test that signs in or out itself."""
    context = new_context(browser, requested)
    yield context
    context.close()


@pytest.fixture(scope="module")
def operator(browser: Browser, requested: list[str], console: ConsoleServer) -> Iterator[BrowserContext]:
    """A context signed in with the admin key, shared by the module's tests."""
    context = new_context(browser, requested)
    page = context.new_page()
    page.goto(console.origin + "/signin")
    page.fill("#api_key", console.keys["admin"])
    page.click("button[type=submit]")
    page.wait_for_url(console.origin + "/live")
    page.close()
    yield context
    context.close()


@pytest.fixture(scope="module")
def docs_image() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "images" / "console.png"
