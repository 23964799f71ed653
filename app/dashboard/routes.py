"""Serves the dashboard (`/` and `/static/dashboard/...`) and the API docs without any CDN.

The dashboard is static files in this package: index.html, style.css and native ES modules (app.js, which
imports js/...): no build step, no inline script, so the page carries a strict Content-Security-Policy. The
page itself needs no key; every call it makes to the API sends `Authorization: Bearer KEY` from sessionStorage.

/docs (static/docs.html + docs.js, no inline script) and /redoc (FastAPI's page) use the Swagger UI and ReDoc
files that the `fastapi-offline` wheel ships: FastAPI's defaults load them from a CDN, which leaves a blank
page offline.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
DOCS_STATIC = Path(fastapi_offline.__file__).parent / "static"

# The dashboard's own responses (the page, its script and styles, and the /docs page with its starter).
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with each release: revalidate rather than serve a stale app.js.
    "Cache-Control": "no-cache",
}
# Swagger UI styles some elements inline and draws its icons from data: URLs; it runs no inline script.
DOCS_HEADERS = {
    **DASHBOARD_HEADERS,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
}


class _StaticWithHeaders(StaticFiles):
    def __init__(self, *, directory: Path, headers: dict[str, str]):
        super().__init__(directory=directory)
        self.extra_headers = headers

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.extra_headers)
        # A browser runs a module script only with a JavaScript type; the guess from the system's mime.types
        # can be missing or different (text/plain, application/x-javascript), so it is not left to it.
        if path.endswith(".js") and response.status_code == 200:
            response.headers["Content-Type"] = "text/javascript; charset=utf-8"
        return response


def install(app: FastAPI) -> None:
    """Call with an app made with `docs_url=None, redoc_url=None`."""
    app.mount("/static/dashboard", _StaticWithHeaders(directory=STATIC, headers=DASHBOARD_HEADERS), name="dashboard")
    app.mount("/static/docs", StaticFiles(directory=DOCS_STATIC), name="docs-static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=DASHBOARD_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html", headers=DOCS_HEADERS)

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}/static/docs/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/docs/favicon.png",
            with_google_fonts=False,
        )
