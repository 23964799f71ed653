"""Headless Chromium (Debian's `chromium` package) driven by Playwright, against the real service.

Playwright's own browser download is not reachable from here, so it launches the system browser. Without
/usr/bin/chromium the browser tests skip with a message, except under CI (env CI set), where they fail:
.ci/run installs the browser, so a missing one there is a broken setup, not a reason to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness import ROOT, Service

CHROMIUM = Path(os.environ.get("CHARRNN_TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Each run's screenshots go to build/ (ignored by git), so a test run never leaves the checkout modified.
# The README's copies in docs/screenshots are copied from there by hand after a run of test_pictures.py (a
# real job on samples/tinyshakespeare.txt; see that file for the longer run the committed ones come from).
SCREENSHOTS = Path(os.environ.get("CHARRNN_SCREENSHOT_DIR", ROOT / "build" / "screenshots"))


@pytest.fixture(scope="package")
def service(tmp_path_factory):
    """The browser tests' own API and worker: no job left by another test waits in the queue ahead of theirs.
    Its upload limit takes samples/tinyshakespeare.txt (1.1 MB)."""
    svc = Service(tmp_path_factory.mktemp("browser-service"), max_corpus_bytes=2_000_000, job_lease_seconds=30)
    svc.start_api()
    svc.start_worker()
    yield svc
    svc.stop()


# Package scope, not session: while Playwright's sync API is open its event loop counts as running in
# this thread, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="package")
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


def screenshot(page, name: str, height: int | None = None) -> Path:
    """A PNG of the top of the page as it is now, in SCREENSHOTS: the viewport, or `height` pixels of
    the page (kept small: never the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.evaluate("() => window.scrollTo(0, 0)")
    if height is None:
        page.screenshot(path=str(path))
    else:
        width = page.viewport_size["width"]
        page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
    return path
