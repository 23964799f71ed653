"""Generation and scoring run on a worker (the API has no torch): pick one, forward, relay.

A worker that already has the checkpoint loaded is preferred (the API remembers where it sent each
checkpoint last, in the app's Generation: app/generation/state.py); otherwise any live worker, the most
recently heard from first. `admit()` applies the rules every face's generations run under. The bodies
and stream lines are app/generation/wire.py's, shared with the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.checkpoints import repository as checkpoints
from app.db import read_session
from app.deps import owner_of_key
from app.errors import ApiError, not_found
from app.generation import wire
from app.generation.limits import Slot
from app.generation.state import Affinity, Generation
from app.generation.upstream import Upstream, UpstreamError, WorkerClient
from app.models import ACTIVE_STATUSES
from app.ops.metrics import GENERATED_CHARS, GENERATION_SECONDS
from app.settings import Settings
from app.workers import repository as workers

RETRY_AFTER = {"Retry-After": "5"}
FALLBACKS = 2  # damaged checkpoints a generation from a job id passes over before it gives up
T = TypeVar("T")


class CorruptCheckpoint(ApiError):
    """The worker found the checkpoint's file damaged (409); a job's best can fall back past it."""


class NoWorkerReached(ApiError):
    """None of the listed workers could be reached (503): the list may be older than a worker's death."""


@dataclass
class Target:
    checkpoint_id: str
    urls: list[str]  # the live workers, the one to try first first
    owner: str = ""  # whose call it is: per-owner limits count it
    from_job: bool = False  # named by a job id: a damaged best may fall back to the job's previous checkpoint


@dataclass
class Admitted(Generic[T]):
    """A call that passed the rules: the checkpoint it ran on, what it returned, and the owner's slot."""

    target: Target
    value: T
    slot: Slot


def target(
    key: str,
    settings: Settings,
    model: str,
    generation: Generation,
    native_model: Callable[[Session, str, str], str] | None = None,
) -> Target:
    """The key's owner, the model's checkpoint and the live workers, in one session (call it in a thread):
    /generate is the route whose latency matters, and each thread hop and session costs ~0.3 ms.

    `native_model(session, owner, model)`, if given, first turns another API's model name (/v1's
    `ft:...` names) into a job or checkpoint id, in the same session."""
    with read_session() as session:
        owner = owner_of_key(session, key)
        if native_model is not None:
            model = native_model(session, owner, model)
        checkpoint_id = resolve(session, owner=owner, model=model)
        urls = generation.workers.urls(lambda: workers.live_urls(session, within_seconds=settings.job_lease_seconds))
    if not urls:
        raise ApiError(
            503,
            "no worker is alive to run the model; start one with `charrnn worker` (or `charrnn serve`), then retry",
            headers=RETRY_AFTER,
        )
    return Target(
        checkpoint_id, generation.affinity.order(urls, checkpoint_id), owner, from_job=not model.startswith("ckpt_")
    )


def resolve(session: Session, *, owner: str, model: str) -> str:
    """The checkpoint id of a job id (its best checkpoint) or of a checkpoint id, if the owner's."""
    if model.startswith("ckpt_"):
        if checkpoints.path_of(session, owner=owner, checkpoint_id=model) is None:
            raise not_found("checkpoint", model)
        return model
    best = checkpoints.best_of_job(session, owner=owner, job_id=model)
    if best is None:
        raise ApiError(
            404,
            f"no job or checkpoint with id {model!r}; `model` takes a job id (job_…) or a "
            "checkpoint id (ckpt_…) of yours",
        )
    if best.checkpoint_id is None:
        if best.job_status in ACTIVE_STATUSES:
            raise ApiError(
                409,
                f"job {model} ({best.job_status}) has no checkpoint yet; wait for its first checkpoint "
                "(see GET /jobs/{id}/events) and try again",
            )
        # A finished job never writes another checkpoint: waiting would be waiting forever.
        raise ApiError(
            409,
            f"job {model} ended ({best.job_status}) without a checkpoint, so there is no model to generate "
            "from; start a new job (POST /jobs)",
        )
    return best.checkpoint_id


def _raise_for_worker(status: int, headers: Mapping[str, str], body: bytes) -> None:
    try:
        answer = json.loads(body)
        detail, param = answer.get("detail"), answer.get("param")
    except (ValueError, AttributeError):
        detail = param = None
    if status == 401:
        # Not the caller's key: this deployment's API and worker disagree on their shared secret.
        raise ApiError(
            502,
            "the worker refused this API's worker secret; give the API and every worker the same "
            "CHARRNN_WORKER_SECRET (or the same data dir, where it is generated)",
        )
    if status == 409 and headers.get(wire.CORRUPT_HEADER) and isinstance(detail, str):
        raise CorruptCheckpoint(409, detail)
    if 400 <= status < 500 and isinstance(detail, str):
        raise ApiError(status, detail, param=param if isinstance(param, str) else None)
    raise ApiError(502, f"the worker failed to run the model (HTTP {status}): {detail or 'no detail'}")


async def send(
    client: WorkerClient, target: Target, affinity: Affinity, endpoint: str, body: BaseModel
) -> Upstream:
    """POST `body` to the first worker that can be reached; a worker's refusal is the answer (it would be
    every worker's). The answer is returned unread (its errors surface here, before any of it is relayed):
    read it whole (`answer`) or relay it."""
    content = body.model_dump_json()
    last_error = None
    for url in target.urls:
        try:
            response = await client.post(url + endpoint, content)
        except UpstreamError as exc:  # that worker is gone; try the next one
            last_error = exc
            continue
        if response.status_code != 200:
            try:
                error_body = await response.aread()
            except UpstreamError:
                error_body = b""
            finally:
                await response.aclose()
            _raise_for_worker(response.status_code, response.headers, error_body)
        affinity.remember(target.checkpoint_id, url)
        return response
    raise NoWorkerReached(
        503, f"no worker could be reached ({last_error}); retry in a few seconds", headers=RETRY_AFTER
    )


async def answer(client: WorkerClient, target: Target, affinity: Affinity, endpoint: str, body: BaseModel) -> bytes:
    """`send`, and the worker's whole answer; a worker that goes away before its end is a 503 to retry."""
    response = await send(client, target, affinity, endpoint, body)
    try:
        return await response.aread()
    except UpstreamError as exc:
        raise ApiError(
            503, f"the worker went away before its answer was complete ({exc}); retry in a few seconds",
            headers=RETRY_AFTER,
        ) from None
    finally:
        await response.aclose()


def generate_body(target: Target, params: dict) -> wire.GenerateBody:
    # Built unvalidated: `params` are a validated GenerateRequest's, and the worker validates them again.
    return wire.GenerateBody.model_construct(checkpoint_id=target.checkpoint_id, **params)


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


def parse(model: type[BaseModel], content: bytes | str):
    try:
        return model.model_validate_json(content)
    except ValidationError:
        raise ApiError(502, "the worker answered something this API does not understand") from None


# Answers larger than this are parsed on a thread: validating megabytes (a /v1 completion's logprobs of
# 16 x 10,000 characters) held the event loop, and every other request, for as long. A smaller one is
# parsed in place: the trip to the thread pool costs more than the parse.
PARSE_ON_A_THREAD_BYTES = 256 * 1024


async def parse_answer(model: type[BaseModel], content: bytes):
    if len(content) > PARSE_ON_A_THREAD_BYTES:
        return await run_in_threadpool(parse, model, content)
    return parse(model, content)


async def generate(client: WorkerClient, target: Target, affinity: Affinity, *, model: str, params: dict) -> dict:
    t0 = time.perf_counter()
    content = await answer(client, target, affinity, wire.GENERATE, generate_body(target, params))
    result = await parse_answer(wire.GenerateResult, content)
    GENERATION_SECONDS.observe(time.perf_counter() - t0)
    samples = [s.model_dump() for s in result.samples]
    return response_body(model, target.checkpoint_id, params["prompt"], samples)


async def open_stream(client: WorkerClient, target: Target, affinity: Affinity, *, params: dict) -> Upstream:
    """Open the worker's NDJSON stream; errors (bad prompt, no worker) surface here, before any SSE."""
    return await send(client, target, affinity, wire.GENERATE_STREAM, generate_body(target, params))


async def score(client: WorkerClient, target: Target, affinity: Affinity, *, model: str, text: str) -> dict:
    body = wire.ScoreBody.model_construct(checkpoint_id=target.checkpoint_id, text=text)
    result = parse(wire.ScoreResult, await answer(client, target, affinity, wire.SCORE, body))
    return {"loss": result.loss, "chars": result.chars, "model": model, "checkpoint_id": target.checkpoint_id}


async def logprobs(
    client: WorkerClient, target: Target, affinity: Affinity, *, context: str, text: str, top: int
) -> wire.LogprobsResult:
    """Each character's log-probability in `text` after `context`, and the `top` likeliest at each position."""
    try:
        body = wire.LogprobsBody(checkpoint_id=target.checkpoint_id, context=context, text=text, top=top)
    except ValidationError as exc:
        raise ApiError(422, f"logprobs: {exc.errors()[0]['msg']}") from None
    return await parse_answer(wire.LogprobsResult, await answer(client, target, affinity, wire.LOGPROBS, body))


async def relay(response: Upstream, *, model: str, checkpoint_id: str, prompt: str) -> AsyncIterator[dict]:
    """The worker's stream lines as SSE events. Closing the upstream response when the client goes away
    (this generator is closed) is what tells the worker to stop generating."""
    try:
        async for line in response.aiter_lines():
            if not line:
                continue
            message = wire.from_line(line)
            if isinstance(message, wire.Chunk):
                yield {
                    "event": "chunk",
                    "data": json.dumps({"text": message.pieces[0], "pieces": message.pieces}),
                }
            elif isinstance(message, wire.Done):
                samples = [s.model_dump() for s in message.samples]
                yield {"event": "done", "data": json.dumps(response_body(model, checkpoint_id, prompt, samples))}
            else:
                yield {"event": "error", "data": json.dumps({"detail": message.error})}
    except UpstreamError as exc:
        detail = f"the worker went away mid-stream ({exc}); ask again"
        yield {"event": "error", "data": json.dumps({"detail": detail})}
    finally:
        await response.aclose()


# -- the rules every face runs a generation under -----------------------------------------------------


async def admit(
    generation: Generation,
    settings: Settings,
    *,
    key: str,
    model: str,
    work: Callable[[Target], Awaitable[T]],
    native_model: Callable[[Session, str, str], str] | None = None,
) -> Admitted[T]:
    """Run `work(target)` under the rules that hold for /generate, /score and /v1/completions alike:

    - the owner's generations in flight are limited (CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER), across
      every API process on the database: one slot per request, however many worker calls it makes
      (prompts, logprobs); a 429 past the limit;
    - a job's best checkpoint whose file the worker finds damaged falls back to the job's previous good
      checkpoint (the worker has marked it, so resolving the job again gives the next), up to FALLBACKS
      times; a checkpoint named by its id has no fallback: its 409 is the answer;
    - when no worker of the (briefly kept) list answers, the list is read again and the call made once more.

    The returned slot is held: release it when the answer is complete (`with admitted.slot:`), or hand it
    to the response that streams (ReleasingEventSourceResponse). On an error it is released here."""
    limit = settings.max_concurrent_generations_per_owner
    generation.slots.precheck(key, limit)  # a flood past the limit costs no database lookup

    async def resolve_target() -> Target:
        return await run_in_threadpool(target, key, settings, model, generation, native_model)

    found = await resolve_target()
    slot = await generation.slots.take(found.owner, limit, settings.generation_slot_lease_seconds, key)
    try:
        fallbacks, relisted = 0, False
        while True:
            try:
                return Admitted(found, await work(found), slot)
            except CorruptCheckpoint:
                if not found.from_job or fallbacks == FALLBACKS:
                    raise
                fallbacks += 1
            except NoWorkerReached:
                if relisted:
                    raise
                generation.workers.forget()  # once more with the workers alive now
                relisted = True
            found = await resolve_target()
    except BaseException:
        slot.release()
        raise
