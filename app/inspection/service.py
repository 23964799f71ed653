"""POST /inspect: one call to a worker that has (or loads) the model, as /score is answered.

The worker choice, the call and the reading of its refusals are the generation service's (send,
parse); this module adds only the body and the summary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.errors import ApiError
from app.generation import service as generation
from app.generation import wire
from app.generation.upstream import UpstreamError, WorkerClient
from app.inspection.schemas import InspectRequest


@dataclass
class Relayed:
    """The answer to send: `body` yields its JSON bytes, `length` of them in all."""

    body: AsyncIterator[bytes]
    length: int | None


async def inspect(
    client: WorkerClient, target: generation.Target, affinity: generation.Affinity, body: InspectRequest
) -> Relayed:
    """The worker's answer (an `InspectResult` with its `mean_surprise_bits`: megabytes with a layer's
    activations) relayed as it arrives, with `model` and `checkpoint_id` put in front. Not parsed: parsing,
    validating and serialising it again took seconds of the API's event loop, and every request waited."""
    options = body.model_dump(exclude={"model"})
    worker_body = wire.InspectBody.model_construct(checkpoint_id=target.checkpoint_id, **options)
    response = await generation.send(client, target, affinity, wire.INSPECT, worker_body)
    chunks = response.aiter_raw()
    start = b""
    try:
        async for chunk in chunks:  # to the first two bytes: `{"`, an object with at least one field
            start += chunk
            if len(start) >= 2:
                break
    except UpstreamError:
        await response.aclose()
        raise ApiError(502, "the worker's answer was cut off; retry") from None
    if not start.startswith(b'{"'):
        await response.aclose()
        raise ApiError(502, "the worker answered something this API does not understand")
    head = json.dumps({"model": body.model, "checkpoint_id": target.checkpoint_id})[:-1].encode() + b", "
    worker_length = response.headers.get("content-length")
    length = len(head) - 1 + int(worker_length) if worker_length and worker_length.isdigit() else None

    async def relay() -> AsyncIterator[bytes]:
        try:
            yield head + start[1:]
            async for chunk in chunks:
                yield chunk
        finally:
            await response.aclose()

    return Relayed(relay(), length)
