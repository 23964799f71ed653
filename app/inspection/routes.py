from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.deps import BearerKey, GenerationDep, SettingsDep
from app.errors import responses
from app.generation import service as generation_service
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
async def inspect(body: InspectRequest, key: BearerKey, settings: SettingsDep, generation: GenerationDep):
    # It runs the model, so it is admitted as a generation: the per-owner limit and the fallback past a
    # damaged best checkpoint hold here as on /generate and /score.
    done = await generation_service.admit(
        generation, settings, key=key, model=body.model,
        work=lambda target: service.inspect(generation.client, target, generation.affinity, body),
    )
    with done.slot:  # the worker has answered: what is left is relaying its bytes
        # As they come (app/inspection/service.py); response_model documents them.
        headers = {"Content-Length": str(done.value.length)} if done.value.length is not None else None
        return StreamingResponse(done.value.body, media_type="application/json", headers=headers)
