"""Wires the app: routers, error handlers, request metrics and logs. No logic lives here."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from app.checkpoints.routes import router as checkpoints_router
from app.corpora.routes import router as corpora_router
from app.errors import install_error_handlers
from app.generation.routes import router as generation_router
from app.jobs.routes import router as jobs_router
from app.ops.metrics import REQUEST_SECONDS, REQUESTS
from app.ops.routes import router as ops_router
from app.settings import get_settings

log = logging.getLogger("charrnn.api")

DESCRIPTION = """Train character-level RNN/LSTM/GRU language models on your text, and generate from them.

Every route but `/healthz`, `/readyz`, `/metrics`, `/docs` and `/openapi.json` needs
`Authorization: Bearer KEY` (make one with `charrnn keys create NAME`)."""


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.generate_timeout_seconds, connect=5.0))
    yield
    await app.state.http.aclose()


def create_app() -> FastAPI:
    app = FastAPI(title="charrnn", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    for router in (ops_router, corpora_router, jobs_router, checkpoints_router, generation_router):
        app.include_router(router)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        repeated = sorted(
            {k for k, _ in request.query_params.multi_items() if len(request.query_params.getlist(k)) > 1}
        )
        if repeated:  # every parameter is single-valued; silently taking the last one hides mistakes
            response = JSONResponse(
                {"detail": f"query parameter {repeated[0]!r} is given more than once; give it once"},
                status_code=422,
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - t0
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(request.method, path).observe(seconds)
        log.info(
            "%s %s %s",
            request.method,
            request.url.path,
            response.status_code,
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.url.path,
                    "route": path,
                    "status": response.status_code,
                    "ms": round(seconds * 1000, 1),
                }
            },
        )
        return response

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            # Our 422s are FastAPI's field list, or one sentence when the check needs the database
            # (corpus too small, prompt characters unseen); `message` always reads as one line.
            error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if error:
                error["properties"]["detail"] = {
                    "anyOf": [{"type": "string"}, error["properties"]["detail"]],
                    "title": "Detail",
                }
                error["properties"]["message"] = {"type": "string", "title": "Message"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


app = create_app()
