from __future__ import annotations

import socket

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.db import read_session
from app.ops import embedded
from app.ops.metrics import REGISTRY
from app.settings import get_settings
from app.workers import repository as workers

router = APIRouter(tags=["ops"])


@router.get(
    "/healthz",
    summary="Liveness: the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz():
    # async on purpose: liveness must not wait for a thread-pool slot that database calls may all hold.
    return {"status": "ok"}


def _readiness() -> tuple[bool, dict]:
    try:
        # A read that takes no write lock: readiness must answer while a writer holds the database.
        with read_session() as session:
            session.execute(text("SELECT 1"))
            alive = workers.live(session, within_seconds=get_settings().job_lease_seconds)
    except Exception as exc:
        return False, {"database": f"unreachable: {type(exc).__name__}", "workers": 0}
    info = {"database": "ok", "workers": len(alive)}
    worker = embedded.snapshot()
    if worker is None:
        return bool(alive), info
    # Under `charrnn serve` its own worker is the only one: while it restarts, nothing can run a job,
    # even if the dead worker's last heartbeat is still within the lease.
    info["embedded_worker"] = worker
    # Ready once the running worker has registered itself: a dead worker's heartbeat may still be fresh
    # (its URL refuses), and a /generate routed there would be answered 503.
    registered = any(w.pid == worker["pid"] and w.hostname == socket.gethostname() for w in alive)
    return registered and worker["status"] == "running", info


@router.get(
    "/readyz",
    summary="Readiness: the database answers and at least one worker is alive",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready", "database": "ok", "workers": 1}}}},
        503: {"description": "not ready; the body says what is missing"},
    },
)
async def readyz():
    ok, info = await run_in_threadpool(_readiness)
    return JSONResponse({"status": "ready" if ok else "not ready", **info}, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"example": 'charrnn_jobs{status="running"} 1.0\n'}}}},
)
async def metrics():
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
