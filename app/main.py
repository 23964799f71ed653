"""Wires the app: routers, error handlers, request metrics and logs. No logic lives here."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from app.checkpoints.routes import router as checkpoints_router
from app.corpora import service as corpora_service
from app.corpora.routes import router as corpora_router
from app.dashboard import routes as dashboard
from app.errors import install_error_handlers
from app.generation.routes import router as generation_router
from app.generation.state import Generation
from app.generation.upstream import WorkerClient
from app.inspection.routes import router as inspection_router
from app.jobs.feeds import Feeds
from app.jobs.reaper import reap_forever
from app.jobs.routes import router as jobs_router
from app.openai.app import create_openai_app
from app.ops.disk import KeepDeletesWorking
from app.ops.middleware import ObserveRequests
from app.ops.routes import router as ops_router
from app.settings import get_settings
from app.storage import get_store
from app.storage.sweep import sweep_orphans
from app.strings import declare_nul_free_parameters, refuse_nul_in_url
from app.workers import secret

log = logging.getLogger("charrnn.api")

DESCRIPTION = """Train character-level RNN/LSTM/GRU language models on your text, and generate from them.

Every route but the dashboard (`/`), `/healthz`, `/readyz`, `/metrics`, `/docs` and `/openapi.json` needs
`Authorization: Bearer KEY` (make one with `charrnn keys create NAME`).

OpenAI-compatible routes (files, fine-tuning jobs, models, completions) are under `/v1`, documented at
`/v1/docs`: point the official client at `http://HOST:PORT/v1`."""


# Connections this API holds open to workers' generation servers, all of them kept alive.
WORKER_CONNECTIONS = 256


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    # What a crash or kill -9 left half-written in corpora/ (upload temp files, unfinished deletes).
    try:
        await asyncio.to_thread(corpora_service.sweep_leftovers, settings)
        await asyncio.to_thread(sweep_orphans, get_store(settings))
    except Exception:  # a start must not fail over leftovers (e.g. the database is not up yet): next start
        log.warning("could not sweep leftover files in corpora/; will try at the next start", exc_info=True)
    # The client for calls to workers' generation servers: each carries the deployment's worker secret.
    app.state.generation.client = WorkerClient(
        headers={secret.HEADER: secret.worker_secret(settings)},
        timeout_seconds=settings.generate_timeout_seconds,
        # Keep the connections a burst of concurrent generations opens: each request past the pool's size
        # would pay a new TCP connection to the worker.
        connections=WORKER_CONNECTIONS,
    )
    app.state.generation.slots.start()  # known to the other API processes on this database from now on
    reaper = asyncio.create_task(reap_forever(settings))
    yield
    reaper.cancel()
    await app.state.generation.client.aclose()
    try:
        await app.state.generation.slots.close()
    except Exception:  # the rows expire with their lease anyway
        log.warning("could not give back this process's generation slots", exc_info=True)


def declare_bearer_auth(schema: dict) -> None:
    """The Bearer scheme, and on each route that needs a key (those that can answer 401) the requirement.

    Auth is read by a plain dependency (app/deps.py) rather than FastAPI's HTTPBearer, whose 403 on a
    missing header would break our 401 + WWW-Authenticate contract; so the schema says it here instead.
    """
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from `charrnn keys create NAME`",
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{"bearerAuth": []}]


def create_app() -> FastAPI:
    app = FastAPI(
        title="charrnn",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by app.dashboard
        redoc_url=None,
        # Every path and query parameter reaches the database, whose text (on PostgreSQL) cannot hold NUL.
        dependencies=[Depends(refuse_nul_in_url)],
    )
    install_error_handlers(app)
    # Which worker served each checkpoint last and each owner's generations in flight: state of this app,
    # not of the module, so two apps in one process (tests) do not share it; /v1 shares it.
    app.state.generation = Generation()
    app.state.feeds = Feeds()  # the jobs this process's event streams follow, one reader each
    for router in (ops_router, corpora_router, jobs_router, checkpoints_router, generation_router, inspection_router):
        app.include_router(router)
    dashboard.install(app)
    # OpenAI-compatible, with OpenAI's error shape (app/openai); ObserveRequests below wraps it too, so /v1
    # answers carry the security headers and are counted like every other route.
    app.mount("/v1", create_openai_app(app))

    app.add_middleware(KeepDeletesWorking)  # a DELETE on a full disk gets the reserved room
    app.add_middleware(ObserveRequests)

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
            declare_bearer_auth(schema)
            declare_nul_free_parameters(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


app = create_app()
