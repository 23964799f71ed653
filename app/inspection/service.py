"""POST /inspect: one call to a worker that has (or loads) the model, as /score is answered.

The worker choice, the call and the reading of its refusals are the generation service's (send,
parse); this module adds only the body and the summary."""

from __future__ import annotations

import json

import httpx

from app.errors import ApiError
from app.generation import service as generation
from app.generation import wire
from app.inspection.schemas import InspectRequest


async def inspect(
    client: httpx.AsyncClient, target: generation.Target, affinity: generation.Affinity, body: InspectRequest
) -> bytes:
    """The answer's JSON bytes: the worker's (an `InspectResult` with its `mean_surprise_bits`, megabytes
    with a layer's activations) with `model` and `checkpoint_id` put in front. Relayed, not parsed: parsing,
    validating and serialising it again took seconds of the API's event loop, and every request waited."""
    options = body.model_dump(exclude={"model"})
    worker_body = wire.InspectBody.model_construct(checkpoint_id=target.checkpoint_id, **options)
    response = await generation.send(client, target, affinity, wire.INSPECT, worker_body, stream=False)
    answer = response.content
    if not (answer.startswith(b'{"') and answer.rstrip().endswith(b"}")):
        raise ApiError(502, "the worker answered something this API does not understand")
    head = json.dumps({"model": body.model, "checkpoint_id": target.checkpoint_id})
    return head[:-1].encode() + b", " + answer[1:]
