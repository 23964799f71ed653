"""Generation and scoring run on a worker (the API has no torch): pick one, forward, relay.

A worker that already has the checkpoint loaded is preferred (the API remembers where it sent each
checkpoint last); otherwise any live worker, the most recently heard from first.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

import httpx
from sqlalchemy.orm import Session

from app.checkpoints import repository as checkpoints
from app.errors import ApiError, not_found
from app.ops.metrics import GENERATED_CHARS, GENERATION_SECONDS
from app.settings import Settings
from app.workers import repository as workers

_affinity: OrderedDict[str, str] = OrderedDict()  # checkpoint id -> worker url it was last served from


def resolve(session: Session, *, owner: str, model: str) -> tuple[str, str]:
    """(checkpoint id, its path under the data dir) for a job id (its best checkpoint) or a checkpoint id."""
    if model.startswith("ckpt_"):
        path = checkpoints.path_of(session, owner=owner, checkpoint_id=model)
        if path is None:
            raise not_found("checkpoint", model)
        return model, path
    best = checkpoints.best_of_job(session, owner=owner, job_id=model)
    if best is None:
        raise ApiError(
            404,
            f"no job or checkpoint with id {model!r}; `model` takes a job id (job_…) or a "
            "checkpoint id (ckpt_…) of yours",
        )
    if best.checkpoint_id is None:
        raise ApiError(
            409,
            f"job {model} ({best.job_status}) has no checkpoint yet; wait for its first checkpoint "
            "(see GET /jobs/{id}/events) and try again",
        )
    return best.checkpoint_id, best.checkpoint_path


def worker_urls(session: Session, *, settings: Settings, checkpoint_id: str) -> list[str]:
    urls = workers.live_urls(session, within_seconds=settings.job_lease_seconds)
    if not urls:
        raise ApiError(
            503,
            "no worker is alive to run the model; start one with `charrnn worker` (or `charrnn serve`), then retry",
            headers={"Retry-After": "5"},
        )
    preferred = _affinity.get(checkpoint_id)
    if preferred in urls:
        urls.remove(preferred)
        urls.insert(0, preferred)
    return urls


def _remember(checkpoint_id: str, url: str) -> None:
    _affinity[checkpoint_id] = url
    _affinity.move_to_end(checkpoint_id)
    while len(_affinity) > 10_000:
        _affinity.popitem(last=False)


def _raise_for_worker(response: httpx.Response, body: bytes) -> None:
    try:
        detail = json.loads(body).get("detail")
    except ValueError:
        detail = None
    if 400 <= response.status_code < 500 and detail:
        raise ApiError(response.status_code, detail)
    raise ApiError(502, f"the worker failed to run the model (HTTP {response.status_code}): {detail or 'no detail'}")


async def call(client: httpx.AsyncClient, urls: list[str], path: str, payload: dict, checkpoint_id: str) -> dict:
    last_error = None
    for url in urls:
        try:
            response = await client.post(url + path, json=payload)
        except httpx.TransportError as exc:  # that worker is gone; try the next one
            last_error = exc
            continue
        if response.status_code != 200:
            _raise_for_worker(response, response.content)
        _remember(checkpoint_id, url)
        return response.json()
    raise ApiError(
        503,
        f"no worker could be reached ({type(last_error).__name__}); retry in a few seconds",
        headers={"Retry-After": "5"},
    )


def response_body(model: str, checkpoint_id: str, prompt: str, samples: list[dict]) -> dict:
    generated = sum(len(s["text"]) for s in samples)
    GENERATED_CHARS.inc(generated)
    return {
        "model": model,
        "checkpoint_id": checkpoint_id,
        "text": samples[0]["text"] if samples else "",
        "samples": samples,
        "usage": {"prompt_chars": len(prompt), "generated_chars": generated},
    }


async def generate(
    client: httpx.AsyncClient, urls: list[str], *, model: str, checkpoint_id: str, path: str, request: dict
) -> dict:
    t0 = time.perf_counter()
    out = await call(client, urls, "/generate", {"path": path, **request}, checkpoint_id)
    GENERATION_SECONDS.observe(time.perf_counter() - t0)
    return response_body(model, checkpoint_id, request["prompt"], out["samples"])


async def open_stream(client: httpx.AsyncClient, urls: list[str], *, path: str, request: dict, checkpoint_id: str):
    """Open the worker's NDJSON stream; errors (bad prompt, no worker) surface here, before any SSE."""
    last_error = None
    for url in urls:
        try:
            req = client.build_request("POST", url + "/generate/stream", json={"path": path, **request})
            response = await client.send(req, stream=True)
        except httpx.TransportError as exc:
            last_error = exc
            continue
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            _raise_for_worker(response, body)
        _remember(checkpoint_id, url)
        return response
    raise ApiError(
        503,
        f"no worker could be reached ({type(last_error).__name__}); retry in a few seconds",
        headers={"Retry-After": "5"},
    )


async def relay(response: httpx.Response, *, model: str, checkpoint_id: str, prompt: str) -> AsyncIterator[dict]:
    try:
        async for line in response.aiter_lines():
            if not line:
                continue
            message = json.loads(line)
            if "pieces" in message:
                yield {
                    "event": "chunk",
                    "data": json.dumps({"text": message["pieces"][0], "pieces": message["pieces"]}),
                }
            elif "samples" in message:
                body = response_body(model, checkpoint_id, prompt, message["samples"])
                yield {"event": "done", "data": json.dumps(body)}
            elif "error" in message:
                yield {"event": "error", "data": json.dumps({"detail": message["error"]})}
    finally:
        await response.aclose()
