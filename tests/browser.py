"""Headless Chromium for the browser tests: Debian's package driven by Playwright.

Never `playwright install`: it downloads a browser build, which fails on machines that
reach only package registries; the browser is /usr/bin/chromium. A missing browser fails
the test with a message (a skip would hide the gap).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch_chromium(playwright: Playwright) -> Browser:
    if not CHROMIUM.exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: apt-get install chromium")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block (for a module-scoped fixture)."""
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def checked_page(browser: Browser, width: int, height: int, timeout_ms: float | None = None,
                 javascript: bool = True) -> Iterator[Page]:
    """A page in a context of its own; an uncaught error in it fails the test.
    `javascript=False`: the page's scripts never run (Playwright's javaScriptEnabled, CDP
    Emulation.setScriptExecutionDisabled), as for a reader without them or a crawler; the
    test's own locators and evaluate() still work."""
    context = browser.new_context(viewport={"width": width, "height": height},
                                  java_script_enabled=javascript)
    page = context.new_page()
    if timeout_ms is not None:
        page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        context.close()
