"""POST /inspect: one call to a worker that has (or loads) the model, as /score is answered.

The worker choice, the call and the reading of its refusals are the generation service's (send,
parse); this module adds only the body and the summary."""

from __future__ import annotations

import httpx

from app.generation import service as generation
from app.generation import wire
from app.inspection.schemas import InspectRequest, InspectResult


async def inspect(
    client: httpx.AsyncClient, target: generation.Target, affinity: generation.Affinity, body: InspectRequest
) -> dict:
    options = body.model_dump(exclude={"model"})
    worker_body = wire.InspectBody.model_construct(checkpoint_id=target.checkpoint_id, **options)
    response = await generation.send(client, target, affinity, wire.INSPECT, worker_body, stream=False)
    result: InspectResult = generation.parse(InspectResult, response.content)
    surprise = [c.surprise_bits for c in result.characters]
    return {
        **result.model_dump(),
        "model": body.model,
        "checkpoint_id": target.checkpoint_id,
        "mean_surprise_bits": round(sum(surprise) / max(len(surprise), 1), 4),
    }
