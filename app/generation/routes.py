from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.deps import BearerKey, SettingsDep
from app.errors import responses
from app.generation import service
from app.generation.limits import ReleasingEventSourceResponse
from app.generation.schemas import GenerateRequest, GenerateResponse, ScoreRequest, ScoreResponse
from app.keys.streams import end_when_revoked

router = APIRouter(tags=["generation"], responses=responses(400, 401, 404, 409, 410, 429, 502, 503))

FALLBACKS = 2  # damaged checkpoints a generation from a job id passes over before it gives up
ERRORS = {422: {"description": "a field out of range, or prompt characters the model never saw"}}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Generate text from a job's best checkpoint or from a checkpoint",
    responses={
        **ERRORS,
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'event: chunk\ndata: {"text": "Th", "pieces": ["Th"]}\n\nevent: done\ndata: {...}\n\n'
                }
            }
        },
    },
)
async def generate(body: GenerateRequest, request: Request, key: BearerKey, settings: SettingsDep):
    state = request.app.state
    limit = settings.max_concurrent_generations_per_owner
    state.generation_slots.precheck(key, limit)  # a flood past the limit costs no database lookup
    params = body.sampling_params()
    target = await run_in_threadpool(service.target, key, settings, body.model, state.worker_affinity)
    slot = state.generation_slots.acquire(target.owner, limit, key)
    try:
        for attempt in range(FALLBACKS + 1):
            try:
                if not body.stream:
                    return await service.generate(
                        state.http, target, state.worker_affinity, model=body.model, params=params
                    )
                upstream = await service.open_stream(state.http, target, state.worker_affinity, params=params)
                break
            except service.CorruptCheckpoint:
                # A job's best whose file is damaged: the worker has marked it, so resolving the job again
                # gives its previous good checkpoint. A checkpoint id asked for by name has no fallback.
                if body.model.startswith("ckpt_") or attempt == FALLBACKS:
                    raise
            target = await run_in_threadpool(service.target, key, settings, body.model, state.worker_affinity)
        relay = service.relay(upstream, model=body.model, checkpoint_id=target.checkpoint_id, prompt=body.prompt)
        # From here the slot is held until the stream ends, however it ends (the response releases it).
        return ReleasingEventSourceResponse(end_when_revoked(relay, key), slot=slot)
    finally:
        if not body.stream:
            slot.release()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    summary="Mean cross-entropy of a text under the model, in nats per character",
)
async def score(body: ScoreRequest, request: Request, key: BearerKey, settings: SettingsDep):
    state = request.app.state
    limit = settings.max_concurrent_generations_per_owner
    state.generation_slots.precheck(key, limit)
    target = await run_in_threadpool(service.target, key, settings, body.model, state.worker_affinity)
    with state.generation_slots.acquire(target.owner, limit, key):
        return await service.score(state.http, target, state.worker_affinity, model=body.model, text=body.text)
