"""The user's mistake and a bug, told apart where the worker answers: the generation server in-process, on
the package's real SQLite database, loading a checkpoint of a model really trained here.

A request the model cannot serve (an EngineError) answers 422 with the engine's words, as before; a bug
(a ValueError from a broken function included) answers 500 naming only an error id, which the worker's
log files its traceback under, and which the API relays as a 502 without the traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from app.errors import ApiError
from app.generation import service
from app.settings import Settings
from app.workers import secret
from tests.harness import TINY_MODEL, small_corpus

pytest.importorskip("torch")

SECRET = "s3cret-" * 6
ERROR_ID = re.compile(r"err_[0-9a-f]{12}")
TEXT = small_corpus(4_000)


def test_engine_errors_are_not_value_errors_and_every_user_error_is_an_engine_error():
    from worker.engine import errors

    user_errors = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)]
    assert len(user_errors) >= 9
    for cls in user_errors:
        # A ValueError from a bug (or pydantic's ValidationError, one too) must never be caught as the user's.
        assert issubclass(cls, errors.EngineError) and not issubclass(cls, ValueError), cls
    assert not issubclass(ValidationError, errors.EngineError)

    class Probe(BaseModel):
        n: int

    with pytest.raises(ValidationError) as caught:
        Probe(n="x")
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, errors.EngineError)


@pytest.fixture(scope="module")
def checkpoint(api) -> Iterator[str]:
    """A checkpoint row, of its own owner's queued job, for a model trained here for a few steps."""
    from app.checkpoints import repository as checkpoints
    from app.db import session_scope
    from worker.engine.checkpoint import RunDirectory
    from worker.engine.records import CheckpointRecord, CheckpointStats
    from worker.engine.trainer import TrainConfig, Trainer

    with api.owner_client("worker-errors") as client:
        corpus = api.upload(client, TEXT, name="worker-errors")
        r = client.post("/jobs", json={"corpus_id": corpus["id"], "model": TINY_MODEL, "training": {"max_steps": 4}})
        assert r.status_code == 201, r.text
        job = r.json()
        run_dir = api.data_dir / "runs" / job["id"]
        config = TrainConfig(seq_len=16, batch_size=4, max_steps=4, checkpoint_every=4, device="cpu")
        Trainer(TEXT, run_dir, TINY_MODEL, config).train()
        last = RunDirectory(run_dir).last_record()
        path = RunDirectory(run_dir).step_paths(last["step"])[0]
        record = CheckpointRecord.of_file(CheckpointStats(step=last["step"]), path=str(path.relative_to(api.data_dir)),
                                          size_bytes=last["size_bytes"], sha256=last["sha256"])
        with session_scope() as session:
            checkpoints.record(session, job_id=job["id"], owner="worker-errors", checkpoint=record)
        ids = [c["id"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]]
        yield ids[0]
        client.post(f"/jobs/{job['id']}/cancel")  # leave no active job behind for the package's other tests


@pytest.fixture
def worker_app(api):
    from worker.service.server import create_server_app

    return create_server_app(Settings(data_dir=api.data_dir, worker_secret=SECRET, generation_threads=1, device="cpu"))


def post(app, path: str, body: dict) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://worker") as client:
            return await client.post(path, json=body, headers={secret.HEADER: SECRET})

    return asyncio.run(go())


@pytest.mark.parametrize(("path", "body", "words", "param"), [
    ("/generate", {"prompt": "snow ☃", "length": 5}, "'☃'", "prompt"),
    ("/generate/stream", {"prompt": "snow ☃", "length": 5}, "'☃'", "prompt"),
    ("/score", {"text": "snow ☃"}, "'☃'", "text"),
    ("/logprobs", {"context": "☃", "text": "ab"}, "'☃'", "prompt"),
    ("/inspect", {"text": "the", "layer": 3}, "layer must be between 0 and 0", "layer"),
    ("/inspect", {"text": "the", "layer": 0, "units": [99]}, "units must be between 0 and 31", "units"),
])
def test_a_request_the_model_cannot_serve_answers_422_in_the_engines_words(
        worker_app, checkpoint, path, body, words, param):
    r = post(worker_app, path, {"checkpoint_id": checkpoint, **body})
    assert r.status_code == 422, r.text
    assert r.json()["param"] == param  # the field, named by the engine: the API passes it on (/v1's `param`)
    assert words in r.json()["detail"] and "internal error" not in r.text


def test_a_bug_answers_500_with_an_error_id_that_the_log_files_its_traceback_under(
        worker_app, checkpoint, monkeypatch, caplog):
    import worker.engine.scoring

    def broken(*_args):
        raise ValueError("planted: a bug's own words, with a path /srv/secret")

    monkeypatch.setattr(worker.engine.scoring, "score_text", broken)
    with caplog.at_level(logging.ERROR, logger="charrnn.worker"):
        r = post(worker_app, "/score", {"checkpoint_id": checkpoint, "text": "the"})
    assert r.status_code == 500, r.text
    error_id = r.json()["error_id"]
    assert ERROR_ID.fullmatch(error_id) and error_id in r.json()["detail"], r.text
    assert "internal error" in r.json()["detail"] and "planted" not in r.text and "/srv" not in r.text
    [logged] = [record for record in caplog.records if error_id in record.getMessage()]
    assert logged.fields["error_id"] == error_id and logged.exc_info[0] is ValueError
    assert "planted" in logged.getMessage() and "in broken" in logging.Formatter().formatException(logged.exc_info)
    # The user's mistakes still answer as theirs on the same server.
    assert post(worker_app, "/generate", {"checkpoint_id": checkpoint, "prompt": "☃"}).status_code == 422


def test_a_bug_mid_stream_ends_the_stream_with_an_error_id_only(worker_app, checkpoint, monkeypatch, caplog):
    from worker.engine.batching import BatchedSampler

    def broken(*_args, **_kwargs):
        raise ValueError("planted mid-stream")

    monkeypatch.setattr(BatchedSampler, "stream", broken)
    with caplog.at_level(logging.ERROR, logger="charrnn.worker"):
        r = post(worker_app, "/generate/stream", {"checkpoint_id": checkpoint, "length": 5})
    assert r.status_code == 200  # the status line went before the first piece
    [last] = [line for line in r.text.splitlines() if line][-1:]
    error = ERROR_ID.search(last)
    assert '"kind":"error"' in last and "internal error" in last and "planted" not in last and error, last
    assert any(error.group() in record.getMessage() and record.exc_info for record in caplog.records)


def test_the_api_relays_a_workers_bug_as_a_502_naming_the_id_without_the_traceback():
    detail = "internal error err_0123456789ab: the worker hit a bug in charrnn, not a problem with what you sent"
    body = json.dumps({"detail": detail, "error_id": "err_0123456789ab"}).encode()
    with pytest.raises(ApiError) as caught:
        service._raise_for_worker(500, {}, body)
    assert caught.value.status_code == 502 and "err_0123456789ab" in caught.value.detail
    assert "Traceback" not in caught.value.detail
