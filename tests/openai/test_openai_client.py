"""The official `openai` client against a real service (API + worker): files, fine-tuning, models, completions.

One service and one tiny fine-tuned model for the whole module; the tests read from it in file order.
"""

from __future__ import annotations

import signal
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import KEY, TINY_MODEL, TINY_TRAINING, Service, small_corpus

pytestmark = pytest.mark.slow

TEXT = small_corpus()
# The tiny settings through the client: batch_size and seed as OpenAI names them, the rest as the extension.
EXTENSION = {
    "charrnn": {
        "model": {k: v for k, v in TINY_MODEL.items() if k != "cell"},
        "training": {k: v for k, v in TINY_TRAINING.items() if k not in ("batch_size", "seed")},
    }
}
STEPS, BATCH, SEQ = TINY_TRAINING["max_steps"], TINY_TRAINING["batch_size"], TINY_TRAINING["seq_len"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("openai"), max_corpus_bytes=1_000_000)
    service.start_api()
    service.start_worker()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def oai(svc):
    with OpenAI(base_url=svc.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def training_file(oai):
    return oai.files.create(file=("shakespeare.txt", TEXT.encode()), purpose="fine-tune")


def follow_events(oai, job_id: str, timeout: float = 120) -> tuple[object, list]:
    """Poll the job's events (newest first, as OpenAI lists them) until the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        job = oai.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, list(oai.fine_tuning.jobs.list_events(job_id, limit=100))
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def tuned(oai, training_file):
    job = oai.fine_tuning.jobs.create(
        model="charrnn-lstm",
        training_file=training_file.id,
        hyperparameters={"batch_size": BATCH, "n_epochs": "auto", "learning_rate_multiplier": 1},
        suffix="tiny",
        seed=TINY_TRAINING["seed"],
        extra_body=EXTENSION,
    )
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.fine_tuned_model is None
    job, events = follow_events(oai, job.id)
    assert job.status == "succeeded", (job.error, [e.message for e in events])
    return job, events


def test_files_upload_list_retrieve_content_and_delete(oai, training_file):
    assert training_file.object == "file" and training_file.id.startswith("corpus_")
    assert training_file.bytes == len(TEXT.encode()) and training_file.filename == "shakespeare.txt"
    assert training_file.purpose == "fine-tune" and training_file.status == "processed"
    assert oai.files.retrieve(training_file.id).bytes == training_file.bytes
    assert oai.files.content(training_file.id).text == TEXT

    other = oai.files.create(file=("other.txt", b"to be deleted\n"), purpose="fine-tune")
    assert [f.id for f in oai.files.list()][:2] == [other.id, training_file.id]  # newest first
    assert [f.id for f in oai.files.list(limit=1).data] == [other.id]
    assert [f.id for f in oai.files.list(limit=1)][:2] == [other.id, training_file.id]
    deleted = oai.files.delete(other.id)
    assert deleted.deleted and deleted.id == other.id
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(other.id)


def test_fine_tune_and_follow_events_until_succeeded(oai, training_file, tuned):
    job, events = tuned
    assert job.fine_tuned_model == f"ft:charrnn-lstm:bootstrap:tiny:{job.id}"
    assert job.trained_tokens == STEPS * BATCH * SEQ  # characters
    assert job.training_file == training_file.id and job.validation_file is None
    assert job.hyperparameters.batch_size == BATCH and job.hyperparameters.n_epochs == "auto"
    assert job.hyperparameters.learning_rate_multiplier == 1
    assert job.seed == TINY_TRAINING["seed"] and job.model == "charrnn-lstm" and job.organization_id == "bootstrap"
    assert job.finished_at >= job.created_at and job.error is None

    assert all(e.object == "fine_tuning.job.event" and e.id.startswith("ftevent-") for e in events)
    assert events[0].data["status"] == "succeeded" and events[-1].data["status"] == "queued"  # newest first
    assert {"message", "metrics"} <= {e.type for e in events}
    assert all(e.level == "info" for e in events)
    paged = [e.id for e in oai.fine_tuning.jobs.list_events(job.id, limit=3)]
    assert paged == [e.id for e in events]


def test_checkpoints(oai, tuned):
    job, _ = tuned
    checkpoints = list(oai.fine_tuning.jobs.checkpoints.list(job.id))
    every = TINY_TRAINING["checkpoint_every"]
    assert [c.step_number for c in checkpoints] == list(range(STEPS, 0, -every))  # newest first
    last = checkpoints[0]
    assert last.object == "fine_tuning.job.checkpoint" and last.fine_tuning_job_id == job.id
    assert last.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{STEPS}"
    assert last.metrics.train_loss is not None and last.metrics.valid_loss is not None
    one = oai.fine_tuning.jobs.checkpoints.list(job.id, limit=1)
    assert len(one.data) == 1 and one.has_more


def test_models_list_and_retrieve(oai, tuned):
    job, _ = tuned
    ids = [m.id for m in oai.models.list()]
    assert {"charrnn", "charrnn-lstm", "charrnn-gru"} <= set(ids) and job.fine_tuned_model in ids
    model = oai.models.retrieve(job.fine_tuned_model)
    assert model.id == job.fine_tuned_model and model.object == "model" and model.owned_by == "bootstrap"
    assert oai.models.retrieve("charrnn-gru").owned_by == "charrnn"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve(job.fine_tuned_model.replace("tiny", "other"))


def test_completions(oai, tuned):
    job, _ = tuned
    model = job.fine_tuned_model
    first = oai.completions.create(model=model, prompt="ROMEO:", max_tokens=40, temperature=0.8, seed=3)
    again = oai.completions.create(model=model, prompt="ROMEO:", max_tokens=40, temperature=0.8, seed=3)
    assert first.object == "text_completion" and first.model == model
    (choice,) = first.choices
    assert len(choice.text) == 40 and choice.finish_reason == "length" and choice.index == 0
    assert again.choices[0].text == choice.text  # same seed, same text
    assert first.usage.prompt_tokens == 6 and first.usage.completion_tokens == 40 and first.usage.total_tokens == 46

    # n, and a list of prompts: choices in prompt order, n each.
    many = oai.completions.create(model=model, prompt=["A", "B"], max_tokens=10, n=3, seed=1)
    assert [c.index for c in many.choices] == list(range(6)) and many.usage.completion_tokens == 60

    # stop: the text ends before it; finish_reason says so.
    text = oai.completions.create(model=model, prompt="\n", max_tokens=300, temperature=0, seed=1).choices[0].text
    stop = text[10:12]
    stopped = oai.completions.create(model=model, prompt="\n", max_tokens=300, temperature=0, stop=[stop, "zzz"])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].text == text[: text.index(stop)]

    # echo, and logprobs: greedy picks the most likely character, so each logprob is its position's top one.
    greedy = oai.completions.create(model=model, prompt="ROME", max_tokens=12, temperature=0, logprobs=3, echo=True)
    (choice,) = greedy.choices
    assert choice.text.startswith("ROME") and len(choice.text) == 16
    lp = choice.logprobs
    assert lp.tokens == list(choice.text) and lp.text_offset == list(range(16))
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for token, logprob, top in zip(lp.tokens[4:], lp.token_logprobs[4:], lp.top_logprobs[4:], strict=True):
        assert len(top) == 3 and logprob <= 0
        assert max(top, key=top.get) == token and abs(top[token] - logprob) < 1e-5

    # By job id and by checkpoint name, too.
    assert oai.completions.create(model=job.id, prompt="A", max_tokens=5).choices[0].text
    name = f"{model}:ckpt-step-{STEPS // 3}"
    assert len(oai.completions.create(model=name, prompt="A", max_tokens=5).choices[0].text) == 5


def test_streamed_completion_joins_to_the_full_text(oai, tuned):
    model = tuned[0].fine_tuned_model
    args = {"model": model, "prompt": "ROMEO:", "max_tokens": 120, "temperature": 0.9, "seed": 11, "n": 2}
    whole = oai.completions.create(**args)
    texts, finish, chunks = {0: "", 1: ""}, {}, 0
    for chunk in oai.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        chunks += 1
        if chunk.usage:
            assert chunk.usage.completion_tokens == 240
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert chunks > 3
    assert [texts[0], texts[1]] == [c.text for c in whole.choices] and finish == {0: "length", 1: "length"}

    # logprobs while streaming: each chunk's own, and together the same as without streaming.
    args = {"model": model, "prompt": "ROME", "max_tokens": 70, "temperature": 0, "logprobs": 2, "echo": True}
    whole = oai.completions.create(**args).choices[0].logprobs
    tokens, logprobs, offsets = [], [], []
    for chunk in oai.completions.create(**args, stream=True):
        for c in chunk.choices:
            if c.text:
                assert c.logprobs.tokens == list(c.text)
                tokens += c.logprobs.tokens
                logprobs += c.logprobs.token_logprobs
                offsets += c.logprobs.text_offset
    assert tokens == whole.tokens and offsets == whole.text_offset == list(range(74))
    assert logprobs[0] is None and whole.token_logprobs[0] is None
    assert all(abs(a - b) < 1e-4 for a, b in zip(logprobs[1:], whole.token_logprobs[1:], strict=True))

    echoed = "".join(c.choices[0].text for c in oai.completions.create(
        model=model, prompt="ROME", max_tokens=20, seed=2, echo=True, stream=True) if c.choices)
    assert echoed.startswith("ROME") and len(echoed) == 24


def test_cancel_a_job(oai, svc, training_file):
    job = oai.fine_tuning.jobs.create(
        model="charrnn-gru", training_file=training_file.id, seed=1,
        extra_body={"max_seconds": 600, "charrnn": {"model": {"hidden_size": 16}, "training": {"seq_len": 16}}},
    )
    with svc.client() as native:
        training = native.get(f"/jobs/{job.id}").json()["training"]
    assert training["max_seconds"] == 600 and training["seq_len"] == 16  # the time budget extension
    cancelled = oai.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    with pytest.raises(openai.ConflictError) as caught:
        oai.with_options(max_retries=2).fine_tuning.jobs.cancel(job.id)  # answered at once: no retries
    assert caught.value.response.headers["x-should-retry"] == "false" and "already finished" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.cancel("job_nope")


def test_continue_training_from_a_fine_tuned_model_with_a_validation_file(oai, svc, training_file, tuned):
    parent = tuned[0]
    validation = oai.files.create(file=("held-out.txt", TEXT[-3000:].encode()), purpose="fine-tune")
    snowman = oai.files.create(file=("snow.txt", "a snowman: ☃\n".encode()), purpose="fine-tune")
    for model, files in (
        ("charrnn", {"training_file": training_file.id, "validation_file": snowman.id}),
        (parent.fine_tuned_model, {"training_file": training_file.id, "validation_file": snowman.id}),
        (parent.fine_tuned_model, {"training_file": snowman.id}),
    ):
        with pytest.raises(openai.BadRequestError) as caught:  # refused now, rather than failing when it runs
            oai.fine_tuning.jobs.create(model=model, **files)
        assert "☃" in caught.value.message and caught.value.param == list(files)[-1]

    job = oai.fine_tuning.jobs.create(
        model=parent.fine_tuned_model,
        training_file=training_file.id,
        validation_file=validation.id,
        suffix="more",
        extra_body={"charrnn": {"training": {"max_steps": 20, "eval_every": 10, "checkpoint_every": 10,
                                             "seq_len": SEQ, "batch_size": BATCH}}},
    )
    job, _ = follow_events(oai, job.id)
    assert job.status == "succeeded", job.error
    assert job.model == parent.fine_tuned_model and job.validation_file == validation.id
    assert job.fine_tuned_model == f"ft:charrnn-lstm:bootstrap:more:{job.id}"  # keeps the ancestor's base
    with svc.client() as native:
        body = native.get(f"/jobs/{job.id}").json()
    assert body["init_from"] and body["model"]["hidden_size"] == TINY_MODEL["hidden_size"]
    assert body["progress"]["val_loss"] is not None  # scored on the validation file
    assert oai.completions.create(model=job.fine_tuned_model, prompt="A", max_tokens=5).choices[0].text

    # Deleting a fine-tuned model deletes its job (DELETE /jobs/{id}'s service): gone from /v1/models, from
    # completions and from the jobs.
    assert oai.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in [m.id for m in oai.models.list()]
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model=job.fine_tuned_model, prompt="A", max_tokens=5)
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.PermissionDeniedError):
        oai.models.delete("charrnn-lstm")


def test_list_jobs_pages_through_every_job(oai):
    everything = oai.fine_tuning.jobs.list(limit=100)
    # The tuned and the cancelled job (the continued one went with its model's delete, earlier in the module).
    assert len(everything.data) >= 2 and not everything.has_more
    first = oai.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    paged = [j.id for j in oai.fine_tuning.jobs.list(limit=1)]
    assert paged == [j.id for j in everything.data] == sorted(paged, reverse=True)  # newest first, each once


def test_errors_raise_the_clients_typed_exceptions(oai, svc, tuned):
    model = tuned[0].fine_tuned_model
    bad = OpenAI(base_url=svc.url + "/v1", api_key="crn_wrong", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.code == "invalid_api_key" and caught.value.type == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="ft:charrnn-lstm:bootstrap::job_nope", prompt="A")
    assert caught.value.param == "model" and caught.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=model, prompt="A", temperature=-1)
    assert caught.value.param == "temperature"

    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=model, prompt="Hello ☃", max_tokens=5)
    assert "☃" in caught.value.message and caught.value.param == "prompt"

    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model="charrnn-lstm", prompt="A")  # a base model has no weights

    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        oai.fine_tuning.jobs.create(model="charrnn", training_file="corpus_nope")
    assert caught.value.param == "training_file"

    # The error shape is /v1's alone: the native routes keep theirs.
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        v1 = http.get("/v1/files/corpus_nope")
        native = http.get("/corpora/corpus_nope")
        unknown = http.get("/v1/nothing-here")
    assert v1.status_code == 404 and set(v1.json()["error"]) == {"message", "type", "param", "code"}
    assert native.status_code == 404 and "detail" in native.json() and "error" not in native.json()
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"


def test_no_worker_is_a_503_with_retry_after(oai, svc, tuned):
    """Last in the module: it stops the worker."""
    for proc in svc.workers:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            oai.completions.create(model=tuned[0].fine_tuned_model, prompt="A", max_tokens=3)
        except openai.InternalServerError as exc:
            assert exc.status_code == 503 and exc.response.headers["retry-after"] == "5"
            assert exc.type == "server_error" and "no worker" in exc.message
            return
        assert time.monotonic() < deadline, "the stopped worker still answers"
        time.sleep(0.5)
