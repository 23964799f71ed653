"""The worker's generation server: the API forwards /generate and /score here.

It runs inside the worker process (uvicorn in a thread), so generation shares the machine and its
accelerator with training. Loaded models are kept in a small LRU cache keyed by checkpoint file; a
job's newer best checkpoint is a different file, so it is picked up by the next request that names it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from app.settings import Settings


class GenerateBody(BaseModel):
    path: str
    prompt: str = ""
    length: int = Field(200, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = Field(1, ge=1)
    stop: list[str] = Field(default_factory=list)


class ScoreBody(BaseModel):
    path: str
    text: str


class LogprobsBody(BaseModel):  # the /v1/completions `logprobs` (app/openai/completions.py)
    path: str
    context: str = ""
    text: str
    top: int = Field(0, ge=0, le=20)


class ServedModel:
    """A loaded checkpoint with its two samplers: seeded requests alone, the rest batched together."""

    def __init__(self, loaded):
        from worker.engine.batching import BatchedSampler
        from worker.engine.sampler import Sampler

        self.loaded = loaded
        self.sampler = Sampler(loaded.model, loaded.vocab)
        self.batched = BatchedSampler(self.sampler)

    def runner_for(self, request):
        return self.sampler if request.seed is not None else self.batched


class ModelCache:
    def __init__(self, size: int, device: str, data_dir: Path):
        self.size, self.device, self.data_dir = size, device, data_dir.resolve()
        self.models: OrderedDict[str, ServedModel] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str) -> ServedModel:
        from worker.engine.checkpoint import CheckpointError, load_model
        from worker.engine.device import resolve_device

        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.data_dir):
            raise HTTPException(400, "checkpoint path outside the data directory")
        key = str(resolved)
        with self.lock:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
        try:
            served = ServedModel(load_model(resolved, device=resolve_device(self.device)))
        except CheckpointError as exc:
            raise HTTPException(410, str(exc)) from None
        with self.lock:
            self.models[key] = served
            while len(self.models) > self.size:
                self.models.popitem(last=False)[1].batched.close()  # its running requests still finish
        return served


# Sampling is bound by Python dispatch, so concurrent requests take turns holding the GIL. With the
# default 5 ms switch interval the event loop waits up to 5 ms each time it needs the GIL to read a
# request or write a response; 0.5 ms makes it wait less, and costs the samplers almost nothing.
GENERATION_SWITCH_INTERVAL_S = 0.0005


def configure_generation_process(settings: Settings) -> None:
    """Interpreter and torch settings for a process that serves generation (also the benchmark's baseline)."""
    import torch

    # Generation steps are small and latency-bound; more threads only fight training for cores.
    torch.set_num_threads(settings.generation_thread_count)
    sys.setswitchinterval(GENERATION_SWITCH_INTERVAL_S)


def create_server_app(settings: Settings) -> FastAPI:
    configure_generation_process(settings)
    app = FastAPI(title="charrnn worker")
    cache = ModelCache(settings.model_cache_size, settings.device, settings.data_dir)
    def sampler_and_request(body: GenerateBody):
        from worker.engine.sampler import SampleRequest

        served = cache.get(body.path)
        request = SampleRequest(**body.model_dump(exclude={"path"}))  # the same fields, bar the path
        sampler = served.runner_for(request)
        try:
            served.sampler.validate(request)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return sampler, request

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "models_loaded": len(cache.models)}

    @app.post("/generate")
    def generate(body: GenerateBody):
        sampler, request = sampler_and_request(body)
        samples = sampler.generate(request)
        return {"samples": [{"text": s.text, "finish_reason": s.finish_reason} for s in samples]}

    @app.post("/generate/stream")
    def generate_stream(body: GenerateBody):
        sampler, request = sampler_and_request(body)

        def lines():
            texts = [""] * request.num_samples
            pending = [""] * request.num_samples
            last = time.monotonic()
            try:
                stream = sampler.stream(request)
                for pieces in stream:
                    texts = [t + p for t, p in zip(texts, pieces, strict=True)]
                    pending = [t + p for t, p in zip(pending, pieces, strict=True)]
                    # A chunk every ~20 ms or 32 characters: live enough, without an event per character.
                    if any(pending) and (time.monotonic() - last > 0.02 or max(map(len, pending)) >= 32):
                        yield json.dumps({"pieces": pending}) + "\n"
                        pending, last = [""] * request.num_samples, time.monotonic()
                if any(pending):
                    yield json.dumps({"pieces": pending}) + "\n"
                samples = [
                    {"text": t, "finish_reason": r} for t, r in zip(texts, stream.finish_reasons, strict=True)
                ]
                yield json.dumps({"samples": samples}) + "\n"
            except Exception as exc:  # mid-stream: the status line is gone, say it in the stream
                yield json.dumps({"error": f"generation failed: {exc}"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/score")
    def score(body: ScoreBody):
        from worker.engine.scoring import score_text

        loaded = cache.get(body.path).loaded
        try:
            loss, chars = score_text(loaded.model, loaded.vocab, body.text)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"loss": loss, "chars": chars}

    @app.post("/logprobs")
    def logprobs(body: LogprobsBody):
        from worker.engine.scoring import character_logprobs

        loaded = cache.get(body.path).loaded
        try:
            chosen, top = character_logprobs(loaded.model, loaded.vocab, body.context, body.text, body.top)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"token_logprobs": chosen, "top_logprobs": top}

    return app


class GenerationServer:
    """uvicorn on a socket bound up front, so port 0 gives a known free port before the server starts."""

    def __init__(self, settings: Settings):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.worker_host, settings.worker_port))
        port = self.sock.getsockname()[1]
        host = settings.worker_host if settings.worker_host not in ("0.0.0.0", "") else socket.gethostname()
        self.url = settings.worker_url or f"http://{host}:{port}"
        config = uvicorn.Config(
            create_server_app(settings), log_config=None, access_log=False, timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="generation-server"
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
