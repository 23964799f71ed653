"""The /v1 sub-application, mounted on the main app: its own routes, docs (/v1/docs) and error shape."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse

from app.dashboard.routes import DOCS_HEADERS, STATIC
from app.errors import install_error_handlers
from app.openai import errors
from app.openai.routes import router

DESCRIPTION = """OpenAI-compatible routes: `OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY)`.

Files are text corpora, fine-tuning jobs are training jobs, characters are tokens. Errors answer
`{"error": {"message", "type", "param", "code"}}`."""


def create_openai_app(parent: FastAPI) -> FastAPI:
    sub = FastAPI(
        title="charrnn: OpenAI-compatible API",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; /v1/docs is the offline one /docs is
        redoc_url=None,
    )
    # One set of generation state with the native routes: the same worker affinity, the same per-owner
    # count of generations in flight, the same client (made in the main app's lifespan).
    sub.state.generation = parent.state.generation
    # One set of dependency overrides too (the same dict): what replaces a dependency, e.g. the settings
    # in a test, replaces it on both faces.
    sub.dependency_overrides = parent.dependency_overrides
    install_error_handlers(sub, errors.render)  # app/errors.py's, in OpenAI's shape
    sub.include_router(router)

    @sub.get("/docs", include_in_schema=False)
    async def swagger_ui() -> FileResponse:
        # The main /docs page (app/dashboard): its script reads the openapi.json beside the page, here /v1's.
        return FileResponse(STATIC / "docs.html", media_type="text/html", headers=DOCS_HEADERS)

    return sub
