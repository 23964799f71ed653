from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.db import read_session
from app.deps import BearerKey, SettingsDep, owner_of_key
from app.errors import responses
from app.generation import service
from app.generation.schemas import GenerateRequest, GenerateResponse, ScoreRequest, ScoreResponse
from app.keys.streams import end_when_revoked

router = APIRouter(tags=["generation"], responses=responses(400, 401, 404, 409, 410, 502, 503))

ERRORS = {422: {"description": "a field out of range, or prompt characters the model never saw"}}


def _target(key: str, settings, model: str):
    # The key's owner and the model's checkpoint in one session and one thread hop: /generate is the
    # route whose latency matters, and each hop and session costs about 0.3 ms on a small machine.
    with read_session() as session:
        owner = owner_of_key(session, key)
        checkpoint_id, path = service.resolve(session, owner=owner, model=model)
        urls = service.worker_urls(session, settings=settings, checkpoint_id=checkpoint_id)
    return checkpoint_id, str((settings.data_dir / path).resolve()), urls


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
    checkpoint_id, path, urls = await run_in_threadpool(_target, key, settings, body.model)
    client = request.app.state.http
    params = body.model_dump(exclude={"model", "stream"})
    if not body.stream:
        return await service.generate(
            client, urls, model=body.model, checkpoint_id=checkpoint_id, path=path, request=params
        )
    upstream = await service.open_stream(client, urls, path=path, request=params, checkpoint_id=checkpoint_id)
    relay = service.relay(upstream, model=body.model, checkpoint_id=checkpoint_id, prompt=body.prompt)
    return EventSourceResponse(end_when_revoked(relay, key))


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    summary="Mean cross-entropy of a text under the model, in nats per character",
)
async def score(body: ScoreRequest, request: Request, key: BearerKey, settings: SettingsDep):
    checkpoint_id, path, urls = await run_in_threadpool(_target, key, settings, body.model)
    out = await service.call(request.app.state.http, urls, "/score", {"path": path, "text": body.text}, checkpoint_id)
    return {"loss": out["loss"], "chars": out["chars"], "model": body.model, "checkpoint_id": checkpoint_id}
