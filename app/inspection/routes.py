from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.deps import BearerKey, SettingsDep
from app.errors import responses
from app.generation import service as generation
from app.inspection import service
from app.inspection.schemas import InspectRequest, InspectResponse

router = APIRouter(tags=["generation"], responses=responses(400, 401, 404, 409, 410, 429, 502, 503))

ERRORS = {422: {"description": "a field out of range (a layer or unit this model lacks), or characters it never saw"}}


@router.post(
    "/inspect",
    response_model=InspectResponse,
    responses=ERRORS,
    summary="Each character of a text as the model saw it: probability, surprise, rank, entropy, top-k, activations",
)
async def inspect(body: InspectRequest, request: Request, key: BearerKey, settings: SettingsDep):
    state = request.app.state
    limit = settings.max_concurrent_generations_per_owner
    state.generation_slots.precheck(key, limit)  # it runs the model: it counts as a generation
    target = await run_in_threadpool(generation.target, key, settings, body.model, state.worker_affinity)
    with state.generation_slots.acquire(target.owner, limit, key):
        return await service.inspect(state.http, target, state.worker_affinity, body)
