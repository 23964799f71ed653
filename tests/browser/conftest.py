"""Headless Chromium (Debian's `chromium` package) driven by Playwright, against the real service.

Playwright's own browser download is not reachable from here, so it launches the system browser. Without
/usr/bin/chromium the browser tests skip with a message, except under CI (env CI set), where they fail:
.ci/run installs the browser, so a missing one there is a broken setup, not a reason to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("CHARRNN_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run should have)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def screenshot(page, name: str) -> Path:
    """A viewport-sized PNG of what the page shows now, in docs/screenshots (kept small: no full page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
