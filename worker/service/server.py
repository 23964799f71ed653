"""The worker's generation server: the API forwards /generate, /score and /logprobs here.

It runs inside the worker process (uvicorn in a thread), so generation shares the machine and its
accelerator with training. Loaded models are kept in a small LRU cache keyed by checkpoint id; a
job's newer best checkpoint is a different checkpoint, so it is picked up by the next request that names it.

Only the API may call it: every route but /healthz needs the deployment's worker secret, and a request
names a checkpoint by id, which the server resolves under its own data dir, never by a path. What it
receives and sends is app/generation/wire.py's, the same definitions the API uses. Work whose caller
hung up is cancelled: a stream when its reader goes, a plain call when the API's connection closes or
its timeout passes.

A request the model cannot serve as asked (an EngineError: a prompt with characters it never saw, a
layer it lacks) answers 422 with the engine's message. Anything else is a bug: logged with its
traceback under an error id, and answered 500 naming only that id (worker/service/bugs.py), which the
API relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from app.checkpoints import integrity
from app.checkpoints import repository as checkpoints
from app.db import read_session, session_scope
from app.generation import wire
from app.generation.schemas import SampleOut
from app.settings import Settings
from app.storage import CorruptObject, ObjectMissing, StoreError, local_file
from app.workers import secret
from worker.engine.errors import EngineError
from worker.engine.sampler import Cancellation
from worker.service.bugs import internal_error_message, log_bug

log = logging.getLogger("charrnn.worker")

OPEN_PATHS = frozenset({"/healthz"})  # what a health check may call without the secret: counts only


class RequireSecret:
    """ASGI middleware: every call but OPEN_PATHS must carry the deployment's worker secret, checked
    before the body is read, so an unauthenticated caller learns nothing, not even what is valid."""

    def __init__(self, app, secret_value: str):
        self.app, self.secret = app, secret_value
        self.header = secret.HEADER.lower().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == self.header), None)
            if not secret.is_valid(given.decode("latin-1") if given is not None else None, self.secret):
                detail = f"missing or wrong {secret.HEADER}: only the charrnn API may call a worker"
                await JSONResponse({"detail": detail}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AnswerBugs:
    """ASGI middleware: an exception no handler answered is a bug. It is logged with its traceback under
    a new error id, and answered 500 with that id and nothing of the exception (no path, no message that
    would read as the caller's mistake)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            error_id = log_bug(log, exc, f"{scope['method']} {scope['path']}")
            if started:  # too late for a status: the connection is cut, as with any failed response
                raise
            detail = internal_error_message(error_id, "the worker")
            await JSONResponse({"detail": detail, "error_id": error_id}, status_code=500)(scope, receive, send)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class ServedModel:
    """A loaded checkpoint with its samplers: unseeded requests batched together, seeded ones in a batch
    of their own that gives each the text it gets alone (worker/engine/batching.py)."""

    def __init__(self, loaded):
        from worker.engine.batching import BatchedSampler
        from worker.engine.sampler import Sampler

        self.loaded = loaded
        self.sampler = Sampler(loaded.model, loaded.vocab)
        self.batched = BatchedSampler(self.sampler)
        self.seeded = BatchedSampler(self.sampler, seeded=True)

    def runner_for(self, request):
        return self.seeded if request.seed is not None else self.batched

    @property
    def steps(self) -> int:
        return self.batched.steps + self.seeded.steps

    def close(self) -> None:
        """Its batches' threads end once their running requests finish."""
        self.batched.close()
        self.seeded.close()


class ModelCache:
    """Loaded models by checkpoint id. A checkpoint's file never changes, so a cached model needs no
    database lookup; a miss looks the file up once, under this worker's own data dir."""

    def __init__(self, size: int, device: str, data_dir: Path, settings: Settings | None = None):
        self.size, self.device, self.data_dir = size, device, data_dir.resolve()
        self.settings = settings  # with a remote store (CHARRNN_STORAGE_URL), files come through its cache
        self.models: OrderedDict[str, ServedModel] = OrderedDict()
        self.lock = threading.Lock()

    def loaded(self, checkpoint_id: str) -> ServedModel | None:
        """The model if it is loaded (no waiting: callable on the event loop), else None."""
        with self.lock:
            served = self.models.get(checkpoint_id)
            if served is not None:
                self.models.move_to_end(checkpoint_id)
            return served

    def get(self, checkpoint_id: str) -> ServedModel:
        from worker.engine.checkpoint import CheckpointError, CorruptCheckpointError, load_model
        from worker.engine.device import resolve_device

        if (served := self.loaded(checkpoint_id)) is not None:
            return served
        path, sha256 = self.path_of(checkpoint_id)
        try:
            # The file is checked against the sha256 recorded when it was written before it is parsed.
            served = ServedModel(load_model(path, device=resolve_device(self.device), expected_sha256=sha256))
        except CorruptCheckpointError:
            self.mark_corrupt(checkpoint_id)
            problem = "the file's sha256 differs from the one recorded when it was written"
            message = integrity.corrupt_message(checkpoint_id, problem)
            raise HTTPException(409, message, headers={wire.CORRUPT_HEADER: checkpoint_id}) from None
        except CheckpointError as exc:
            raise HTTPException(410, str(exc)) from None
        with self.lock:
            self.models[checkpoint_id] = served
            while len(self.models) > self.size:
                self.models.popitem(last=False)[1].close()
        return served

    def path_of(self, checkpoint_id: str) -> tuple[Path, str | None]:
        """The file under this worker's data dir, and the sha256 it must have (None: an older checkpoint)."""
        with read_session() as session:
            record = checkpoints.file_record(session, checkpoint_id=checkpoint_id)
        if record is not None and self.settings is not None and self.settings.storage_url:
            return self.fetched(checkpoint_id, record), record.sha256
        resolved = (self.data_dir / record.path).resolve() if record is not None else None
        if resolved is None or not resolved.is_relative_to(self.data_dir):
            raise HTTPException(404, f"no checkpoint with id {checkpoint_id!r}")
        return resolved, record.sha256

    def fetched(self, checkpoint_id: str, record) -> Path:
        """The checkpoint's local copy from the store's cache (its sha256 checked as it streamed in)."""
        try:
            return local_file(self.settings, record.path, sha256=record.sha256, size=record.size_bytes)
        except ObjectMissing:
            raise HTTPException(410, f"the file of checkpoint {checkpoint_id} is gone from the store") from None
        except CorruptObject:
            self.mark_corrupt(checkpoint_id)
            message = integrity.corrupt_message(checkpoint_id, "the stored object's sha256 differs from its record")
            raise HTTPException(409, message, headers={wire.CORRUPT_HEADER: checkpoint_id}) from None
        except StoreError as exc:
            raise HTTPException(503, exc.message, headers={"Retry-After": "30"}) from None

    @staticmethod
    def mark_corrupt(checkpoint_id: str) -> None:
        """Best effort: if the database is away, the next load finds the damage again."""
        try:
            with session_scope() as session:
                checkpoints.mark_corrupt(session, checkpoint_id=checkpoint_id)
        except Exception:  # noqa: BLE001 - a 409 is still the answer; never crash the server over this
            pass


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
    """The server's routes. It changes nothing about the process: configure_generation_process, called
    where the worker process starts, sets the interpreter and torch up for it."""
    app = FastAPI(title="charrnn worker", openapi_url=None)
    app.add_middleware(AnswerBugs)
    app.add_middleware(RequireSecret, secret_value=secret.worker_secret(settings))

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, exc: EngineError) -> JSONResponse:
        # The request's problem, by name: a prompt with characters the model never saw, a layer it lacks;
        # `param` is the request field it is about, for the API's answer (/v1 shows it).
        return JSONResponse({"detail": str(exc), "param": exc.param}, status_code=422)

    cache = ModelCache(settings.model_cache_size, settings.device, settings.data_dir, settings)
    counts = {"running": 0}  # generations in progress (changed on the event loop only)

    def runner_for(body: wire.GenerateBody):
        served = cache.get(body.checkpoint_id)
        served.sampler.validate(body)  # the prompt's characters; the fields were checked by GenerateBody
        return served.runner_for(body)

    async def until_disconnected(request: Request, work: Awaitable, cancel: Cancellation):
        """Await `work`, cancelling it if the caller hangs up first (the API gave up or went away)."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        watcher = asyncio.ensure_future(watch())
        counts["running"] += 1
        try:
            return await work
        finally:
            counts["running"] -= 1
            watcher.cancel()

    @app.get("/healthz")
    def healthz():
        steps = sum(m.steps for m in list(cache.models.values()))
        return {
            "status": "ok",
            "models_loaded": len(cache.models),
            "generations_running": counts["running"],
            "sampling_steps": steps,
        }

    @app.post(wire.GENERATE)
    async def generate(body: wire.GenerateBody, request: Request):
        # Past the API's own timeout nobody waits for the answer: stop then at the latest.
        cancel = Cancellation(timeout_s=settings.generate_timeout_seconds)
        # A loaded model's request goes to its batch from the event loop, which awaits its end: no thread
        # of the pool sits waiting on it (one thread hop less per call). Loading a model reads a file: that
        # is done on a thread.
        served = cache.loaded(body.checkpoint_id) or await run_in_threadpool(cache.get, body.checkpoint_id)
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def on_end() -> None:  # on the batch's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, ended)

        # submit() checks the prompt's characters (an EngineError: 422); the fields were checked by GenerateBody.
        pending = served.runner_for(body).submit(body, cancel, on_end)
        await until_disconnected(request, ended, cancel)
        out = [SampleOut(text=s.text, finish_reason=s.finish_reason) for s in pending.result()]
        return Response(wire.GenerateResult(samples=out).model_dump_json(), media_type="application/json")

    @app.post(wire.GENERATE_STREAM)
    async def generate_stream(body: wire.GenerateBody):
        runner = await run_in_threadpool(runner_for, body)  # a bad prompt is a 422 before the stream starts
        cancel = Cancellation()  # no deadline: a stream lasts as long as its reader reads

        async def body_lines() -> AsyncIterator[str]:
            counts["running"] += 1
            try:
                async for line in iterate_in_threadpool(lines(runner, body, cancel)):
                    yield line
            finally:
                # Also when the reader hung up (Starlette cancels this generator): stop sampling.
                cancel.cancel()
                counts["running"] -= 1

        return StreamingResponse(body_lines(), media_type="application/x-ndjson")

    @app.post(wire.SCORE)
    def score(body: wire.ScoreBody):
        from worker.engine.scoring import score_text

        loaded = cache.get(body.checkpoint_id).loaded
        loss, chars = score_text(loaded.model, loaded.vocab, body.text)
        return Response(wire.ScoreResult(loss=loss, chars=chars).model_dump_json(), media_type="application/json")

    @app.post(wire.LOGPROBS)
    def logprobs(body: wire.LogprobsBody):  # the /v1/completions `logprobs` (app/openai/completions.py)
        from worker.engine.scoring import character_logprobs

        loaded = cache.get(body.checkpoint_id).loaded
        chosen, top = character_logprobs(loaded.model, loaded.vocab, body.context, body.text, body.top)
        result = wire.LogprobsResult(token_logprobs=chosen, top_logprobs=top)
        return Response(result.model_dump_json(), media_type="application/json")

    @app.post(wire.INSPECT)
    def inspect(body: wire.InspectBody):  # POST /inspect (app/inspection/)
        from worker.engine.inspection import find_units, inspect_text

        loaded = cache.get(body.checkpoint_id).loaded
        result = inspect_text(loaded.model, loaded.vocab, body.text, body.top_k, body.layer, body.units)
        if body.find_units:
            result["found_units"] = find_units(loaded.model, loaded.vocab, body.text)
        surprise = [c["surprise_bits"] for c in result["characters"]]
        result["mean_surprise_bits"] = round(sum(surprise) / max(len(surprise), 1), 4)
        # Plain json, relayed by the API as it is (app/inspection/service.py): a 10,000-character answer
        # with a layer's activations is megabytes.
        return Response(json.dumps(result), media_type="application/json")

    return app


def lines(runner, request: wire.GenerateBody, cancel: Cancellation) -> Iterator[str]:
    """The stream's NDJSON lines: chunks of new text, then the whole answer (or the error)."""
    texts = [""] * request.num_samples
    pending = [""] * request.num_samples
    last = time.monotonic()
    try:
        stream = runner.stream(request, cancel)
        for pieces in stream:
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
            pending = [t + p for t, p in zip(pending, pieces, strict=True)]
            # A chunk every ~20 ms or 32 characters: live enough, without an event per character.
            if any(pending) and (time.monotonic() - last > 0.02 or max(map(len, pending)) >= 32):
                yield wire.to_line(wire.Chunk(pieces=pending))
                pending, last = [""] * request.num_samples, time.monotonic()
        if any(pending):
            yield wire.to_line(wire.Chunk(pieces=pending))
        samples = [SampleOut(text=t, finish_reason=r) for t, r in zip(texts, stream.finish_reasons, strict=True)]
        yield wire.to_line(wire.Done(samples=samples))
    # Mid-stream the status line is gone: say it in the stream.
    except EngineError as exc:
        yield wire.to_line(wire.Failed(error=f"generation failed: {exc}"))
    except Exception as exc:  # a bug: logged under an id, which is all the reader is told
        error_id = log_bug(log, exc, "a generation stream")
        yield wire.to_line(wire.Failed(error=internal_error_message(error_id, "the worker")))


class GenerationServer:
    """uvicorn on a socket bound up front, so port 0 gives a known free port before the server starts."""

    def __init__(self, settings: Settings):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.worker_host, settings.worker_port))
        # Listening now, not when uvicorn's thread gets to it: the worker registers its url right after
        # this, and a request sent in between would be refused (ConnectError: a 503 "no worker could be
        # reached") instead of waiting in the backlog until the server accepts it.
        self.sock.listen(2048)
        port = self.sock.getsockname()[1]
        host = settings.worker_host if settings.worker_host not in ("0.0.0.0", "") else socket.gethostname()
        self.url = settings.worker_url or f"http://{host}:{port}"
        # No proxy headers: only the API calls a worker, directly, so X-Forwarded-* would mean nothing
        # here, and uvicorn's middleware for them runs on every request.
        config = uvicorn.Config(
            create_server_app(settings), log_config=None, access_log=False, timeout_graceful_shutdown=5,
            proxy_headers=False,
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
