"""/docs in a browser with no way out: Swagger UI comes from this server, and "Try it out" sends the key."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.harness import KEY

pytestmark = pytest.mark.browser


def test_docs_render_offline_and_try_it_out_sends_the_bearer_key(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=service.url)
    left: list[str] = []

    def only_this_machine(route):
        # Anything for another host is what a machine without internet would never get: refuse and record it.
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_machine)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto("/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("charrnn")
        expect(page.locator("#operations-corpora-list_corpora_corpora_get")).to_be_visible()

        page.locator(".auth-wrapper button.authorize").click()
        page.locator(".auth-container input").first.fill(KEY)
        page.get_by_role("button", name="Apply credentials").click()
        page.locator(".modal-ux button.btn-done").click()

        operation = page.locator("#operations-corpora-list_corpora_corpora_get")
        operation.locator(".opblock-summary").first.click()
        operation.get_by_role("button", name="Try it out").click()
        operation.get_by_role("button", name="Execute").click()
        status = operation.locator(".live-responses-table tbody .response-col_status")
        expect(status).to_have_text("200")
        screenshot(page, "docs")
        assert left == [], f"the docs page reached outside this machine: {left}"
        assert errors == [], errors  # among them any Content-Security-Policy violation
    finally:
        context.close()
