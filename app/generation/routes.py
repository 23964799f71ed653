from __future__ import annotations

from fastapi import APIRouter

from app.deps import BearerKey, GenerationDep, SettingsDep
from app.errors import responses
from app.generation import service
from app.generation.limits import ReleasingEventSourceResponse
from app.generation.schemas import GenerateRequest, GenerateResponse, ScoreRequest, ScoreResponse
from app.keys.streams import end_when_revoked

router = APIRouter(tags=["generation"], responses=responses(400, 401, 404, 409, 410, 429, 502, 503))

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
async def generate(body: GenerateRequest, key: BearerKey, settings: SettingsDep, generation: GenerationDep):
    params = body.sampling_params()
    if not body.stream:
        done = await service.admit(
            generation, settings, key=key, model=body.model,
            work=lambda target: service.generate(
                generation.client, target, generation.affinity, model=body.model, params=params
            ),
        )
        with done.slot:
            return done.value
    opened = await service.admit(
        generation, settings, key=key, model=body.model,
        work=lambda target: service.open_stream(generation.client, target, generation.affinity, params=params),
    )
    relay = service.relay(
        opened.value, model=body.model, checkpoint_id=opened.target.checkpoint_id, prompt=body.prompt
    )
    # The slot is held until the stream ends, however it ends (the response releases it).
    return ReleasingEventSourceResponse(end_when_revoked(relay, key), slot=opened.slot)


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    summary="Mean cross-entropy of a text under the model, in nats per character",
)
async def score(body: ScoreRequest, key: BearerKey, settings: SettingsDep, generation: GenerationDep):
    done = await service.admit(
        generation, settings, key=key, model=body.model,
        work=lambda target: service.score(
            generation.client, target, generation.affinity, model=body.model, text=body.text
        ),
    )
    with done.slot:
        return done.value
