"""POST /v1/completions on the native generation service: the one module that calls app.generation.

Everything /v1 asks of generation goes through here (resolve a checkpoint, pick workers, generate,
stream, per-character log-probabilities), so a change to the generation contract is rewired in one place.

- Same sampler, batching and contract as POST /generate: the request becomes the native sampling
  parameters (SamplingParams: max_tokens -> length, n -> num_samples, top_p 0 -> greedy), one worker call
  per prompt; the model name resolves, with the key's owner and the live workers, in one `target()` lookup,
  and the worker gets the checkpoint id (wire.py's bodies; it finds the file itself).
- The rules are /generate's, applied by the same function (app.generation.service.admit): the per-owner
  limit on generations in flight (one slot per request: a request's prompts and logprobs calls run under
  it, as a /generate's samples do) and the fallback past a job's damaged best checkpoint.
- `logprobs`: the exact log-probability of each character under the model (temperature 1), from the
  worker's /logprobs (teacher-forced, like /score, over the text the sampler returned). The first
  character of an echoed prompt has none, as with OpenAI.
- `stream`: OpenAI's chunks (`data: {...}`) then `data: [DONE]`; the chunks of a choice join to its text.
  With `logprobs`, each chunk carries its own characters' (one worker call per chunk, re-reading the text
  before it: exact, but it slows a long stream). A stream ends, with an error, when its key is revoked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.generation import service as generation
from app.generation.limits import Slot
from app.generation.state import Generation
from app.generation.upstream import Upstream, WorkerClient
from app.openai import catalog
from app.openai.errors import OpenAIError, error_body
from app.openai.schemas import CompletionRequest, openai_param
from app.settings import Settings
from worker.engine.sampling_params import MAX_PROMPT_CHARS, MAX_STOPS, SamplingParams


@dataclass
class Streams:
    """The native streams of one streamed request, one per prompt, opened and not yet read."""

    prompts: list[str]
    upstreams: list[Upstream]
    target: generation.Target
    client: WorkerClient  # for the logprobs of each chunk
    affinity: generation.Affinity
    slot: Slot  # the owner's generation slot, held until the stream ends (ReleasingEventSourceResponse)


def _refuse_unsupported(body: CompletionRequest) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise OpenAIError(400, f"{name} is not supported (the sampler has no penalties); leave it out or 0", name)
    if body.logit_bias:
        raise OpenAIError(400, "logit_bias is not supported; leave it out", "logit_bias")
    if body.suffix:
        raise OpenAIError(400, "suffix (insertion) is not supported: the models only continue text", "suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise OpenAIError(400, "best_of is not supported (other than equal to n); leave it out", "best_of")


def native_params(body: CompletionRequest, prompt: str) -> dict:
    """The native sampling parameters (SamplingParams, bounds checked) for one prompt."""
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOPS:
        raise OpenAIError(400, f"stop takes up to {MAX_STOPS} strings; got {len(stops)}", "stop")
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = body.top_p
    if top_p == 0:  # OpenAI's "only the most likely": greedy
        temperature, top_p = 0.0, None
    try:
        params = SamplingParams(
            prompt=prompt,
            length=16 if body.max_tokens is None else body.max_tokens,
            temperature=temperature,
            top_k=body.top_k,
            top_p=None if top_p is None or top_p >= 1 else top_p,
            seed=body.seed,
            num_samples=body.n or 1,
            stop=[s for s in stops if s],
        )
    except ValidationError as exc:  # the one contract's bounds (a stop string too long, ...)
        first = exc.errors()[0]
        param = openai_param(str(first["loc"][0]) if first.get("loc") else None)
        raise OpenAIError(400, f"{param or 'the request'}: {first['msg']}", param) from None
    return params.model_dump()


def _prompts(body: CompletionRequest) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise OpenAIError(400, "prompt is an empty list; give a string or a list of strings", "prompt")
    if len(prompts) * (body.n or 1) > 64:
        raise OpenAIError(400, "at most 64 completions per request (prompts x n)", "n")
    for p in prompts:
        if len(p) > MAX_PROMPT_CHARS:
            raise OpenAIError(
                400, f"a prompt is {len(p):,} characters long; the limit is {MAX_PROMPT_CHARS:,}", "prompt"
            )
    return prompts


def native_model(session: Session, owner: str, name: str) -> str:
    """The native model (a job id or checkpoint id) of a /v1 model name; run inside generation.target()."""
    resolved = catalog.resolve(session, owner=owner, name=name)
    if resolved is None:
        raise OpenAIError(
            400,
            f"{name!r} is a base model with no weights: fine-tune it first (POST /v1/fine_tuning/jobs), then "
            "complete with the fine-tuned model's name",
            "model",
            "model_not_trained",
        )
    return resolved.native


async def _all(calls: list[Awaitable]) -> list:
    """Every call's result; on the first failure the others are cancelled, so no worker call outlives the
    request's slot, and that failure is raised as it is (a damaged checkpoint falls back: admit())."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _logprobs(client: WorkerClient, target: generation.Target, affinity: generation.Affinity,
                    prompt: str, text: str, echo: bool, top: int) -> dict:
    context, scored, lead = prompt, text, []
    if echo and prompt:  # the prompt's own characters too; its first has nothing before it
        context, scored = prompt[0], prompt[1:] + text
        lead = [None]
    out = await generation.logprobs(client, target, affinity, context=context, text=scored, top=top)
    shown = (prompt if echo else "") + text
    start = 0 if echo else len(prompt)
    return {
        "tokens": list(shown),
        "token_logprobs": lead + out.token_logprobs,
        "top_logprobs": ([None] if lead else []) + (out.top_logprobs or [{} for _ in scored]),
        "text_offset": [start + i for i in range(len(shown))],
    }


def _envelope(body: CompletionRequest, completion_id: str, created: int, checkpoint_id: str) -> dict:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": checkpoint_id,  # which checkpoint answered
    }


async def complete(gen: Generation, settings: Settings, *, key: str, body: CompletionRequest) -> dict:
    _refuse_unsupported(body)
    prompts = _prompts(body)
    params = [native_params(body, p) for p in prompts]

    async def work(target: generation.Target) -> dict:
        outs = await _all([
            generation.generate(gen.client, target, gen.affinity, model=body.model, params=p) for p in params
        ])
        return await _completion(gen, target, body, prompts, outs)

    done = await generation.admit(gen, settings, key=key, model=body.model, work=work, native_model=native_model)
    with done.slot:
        return done.value


async def _completion(gen: Generation, target: generation.Target, body: CompletionRequest, prompts: list[str],
                      outs: list[dict]) -> dict:
    choices, to_score = [], []
    for p_index, (prompt, out) in enumerate(zip(prompts, outs, strict=True)):
        for s_index, sample in enumerate(out["samples"]):
            choice = {
                "text": (prompt if body.echo else "") + sample["text"],
                "index": p_index * (body.n or 1) + s_index,
                "finish_reason": sample["finish_reason"],
                "logprobs": None,
            }
            choices.append(choice)
            if body.logprobs is not None:
                to_score.append((choice, prompt, sample["text"]))
    if to_score:
        found = await _all([
            _logprobs(gen.client, target, gen.affinity, prompt, text, bool(body.echo), body.logprobs)
            for _, prompt, text in to_score
        ])
        for (choice, _, _), logprobs in zip(to_score, found, strict=True):
            choice["logprobs"] = logprobs
    prompt_chars = sum(len(p) for p in prompts)
    completion_chars = sum(o["usage"]["generated_chars"] for o in outs)
    return {
        **_envelope(body, "cmpl-" + secrets.token_hex(12), int(time.time()), target.checkpoint_id),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_chars,
            "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars,
        },
    }


async def open_streams(gen: Generation, settings: Settings, *, key: str, body: CompletionRequest) -> Streams:
    """Open one native stream per prompt before answering, so a bad prompt or model is a plain error.
    The owner's slot stays held in the Streams until the response that streams them releases it."""
    _refuse_unsupported(body)
    prompts = _prompts(body)
    params = [native_params(body, p) for p in prompts]

    async def work(target: generation.Target) -> list[Upstream]:
        opened: list[Upstream] = []
        try:
            for p in params:
                opened.append(await generation.open_stream(gen.client, target, gen.affinity, params=p))
        except BaseException:
            for upstream in opened:
                await upstream.aclose()
            raise
        return opened

    held = await generation.admit(gen, settings, key=key, model=body.model, work=work, native_model=native_model)
    return Streams(prompts, held.value, held.target, gen.client, gen.affinity, held.slot)


async def stream_chunks(body: CompletionRequest, streams: Streams) -> AsyncIterator[dict]:
    """SSE messages (for EventSourceResponse): OpenAI's completion chunks, then `[DONE]`."""
    checkpoint_id = streams.target.checkpoint_id
    envelope = _envelope(body, "cmpl-" + secrets.token_hex(12), int(time.time()), checkpoint_id)
    prompts = streams.prompts
    n = body.n or 1
    generated = 0

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
        choice = {"text": text, "index": index, "finish_reason": finish_reason, "logprobs": logprobs}
        return {"data": json.dumps({**envelope, "choices": [choice]})}

    async def logprobs(context: str, piece: str, echo: bool) -> dict | None:
        """A chunk's own logprobs: its characters after the prompt and what came before it (re-read each time)."""
        if body.logprobs is None:
            return None
        return await _logprobs(streams.client, streams.target, streams.affinity, context, piece, echo, body.logprobs)

    try:
        for p_index, (prompt, upstream) in enumerate(zip(prompts, streams.upstreams, strict=True)):
            relay = generation.relay(upstream, model=body.model, checkpoint_id=checkpoint_id, prompt=prompt)
            if body.echo and prompt:
                echoed = await logprobs(prompt, "", True)
                for s in range(n):
                    yield chunk(p_index * n + s, prompt, logprobs=echoed)
            so_far = [""] * n
            async for message in relay:
                data = json.loads(message["data"])
                if message["event"] == "chunk":
                    for s, piece in enumerate(data["pieces"]):
                        if piece:
                            scored = await logprobs(prompt + so_far[s], piece, False)
                            yield chunk(p_index * n + s, piece, logprobs=scored)
                            so_far[s] += piece
                elif message["event"] == "done":
                    generated += data["usage"]["generated_chars"]
                    for s, sample in enumerate(data["samples"]):
                        yield chunk(p_index * n + s, "", sample["finish_reason"])
                else:  # the worker failed mid-stream: OpenAI's error object, which the client raises
                    yield {"data": json.dumps(error_body(str(data.get("detail")), "server_error"))}
                    return
        if body.stream_options and body.stream_options.include_usage:
            prompt_chars = sum(len(p) for p in prompts)
            usage = {"prompt_tokens": prompt_chars, "completion_tokens": generated,
                     "total_tokens": prompt_chars + generated}
            yield {"data": json.dumps({**envelope, "choices": [], "usage": usage})}
        yield {"data": "[DONE]"}
    except ApiError as exc:  # a logprobs call failed mid-stream
        yield {"data": json.dumps(error_body(exc.detail, "server_error"))}
    finally:
        for upstream in streams.upstreams:
            await upstream.aclose()
