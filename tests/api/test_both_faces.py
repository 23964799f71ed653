"""Every rule the native routes enforce holds on /v1 too, in-process (no worker needed for these): each
rule lives in one service function both faces call, and each error is read once (app.errors.classify)
and only shaped differently: `{"detail": ...}` natively, `{"error": {...}}` under /v1.

The rules that need a worker to answer (generations in flight past the limit with real streams, the
fallback past a damaged checkpoint) are tested against a real service in tests/openai/test_generation_rules.py.
"""

from __future__ import annotations

import json

import pytest

from app.db import read_session
from app.deps import current_settings
from app.keys.service import owner_for_key
from tests.api.test_limits import HUGE, HUGE_TRAINING
from tests.harness import KEY, small_corpus

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what `curl -d` sends


def message(response) -> str:
    """The one line a person reads, in either face's shape."""
    body = response.json()
    if "error" in body:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["message"]
    return body.get("message") or body["detail"]


def v1_upload(client, content: bytes, content_type: str = "text/plain"):
    return client.post("/v1/files", files={"file": ("t.txt", content, content_type)}, data={"purpose": "fine-tune"})


# -- a body that is not JSON, a misspelt field ----------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/jobs", {"corpus_id": "corpus_x", "training": {"max_seconds": 5}}),
        ("/generate", {"model": "job_x", "length": 5}),
        ("/score", {"model": "job_x", "text": "abc"}),
        ("/v1/completions", {"model": "job_x", "prompt": "a"}),
        ("/v1/fine_tuning/jobs", {"model": "charrnn-lstm", "training_file": "corpus_x"}),
    ],
)
def test_a_json_body_without_the_json_content_type_says_what_to_send(client, path, body):
    r = client.post(path, content=json.dumps(body), headers=FORM)
    v1 = path.startswith("/v1")
    assert r.status_code == (400 if v1 else 415), r.text
    text = message(r)
    assert "Content-Type: application/json" in text and "application/x-www-form-urlencoded" in text, text
    assert "valid dictionary" not in text
    if v1:
        assert r.json()["error"]["type"] == "invalid_request_error"
    # The same body with the header is read (whatever it then answers, it is not about the Content-Type).
    assert "Content-Type" not in message(client.post(path, json=body))


def test_a_misspelt_field_is_named_with_the_closest_known_one_on_both_faces(client, corpus):
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "training": {"max_second": 120}})
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "training.max_second: unknown field `max_second`; did you mean `max_seconds`?"
    # The 422's extras stay: the structured list (its input echoed short) beside the one-line message.
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "training", "max_second"] and error["input"] == 120
    assert "did you mean `max_seconds`" in error["msg"]

    r = client.post("/generate", json={"model": "job_x", "lenght": 5})
    assert r.status_code == 422 and "did you mean `length`?" in r.json()["message"], r.text
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "zzz": 1})
    assert r.status_code == 422 and "`zzz`" in r.json()["message"] and "`training`" in r.json()["message"], r.text

    r = client.post("/v1/completions", json={"model": "job_x", "prompt": "a", "max_token": 5})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_token" and "did you mean `max_tokens`?" in message(r)

    # /v1's extension carries the native job settings: the same help there.
    file_id = v1_upload(client, small_corpus().encode()).json()["id"]
    body = {"model": "charrnn-lstm", "training_file": file_id, "charrnn": {"training": {"max_second": 120}}}
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "charrnn.training.max_second"
    assert "did you mean `max_seconds`?" in message(r)
    client.delete(f"/v1/files/{file_id}")


def test_unknown_urls_and_methods_say_where_to_look_on_both_faces(client):
    assert "see /docs" in message(client.get("/nowhere"))
    assert "see /v1/docs" in message(client.get("/v1/nowhere"))
    for path, allowed in (("/corpora/corpus_x", "DELETE, GET"), ("/v1/files/corpus_x", "DELETE, GET")):
        r = client.put(path)
        assert r.status_code == 405 and r.headers["allow"] == allowed and allowed in message(r), r.text


# -- generations in flight: one count per owner, whichever face asks ---------------------------------------


def test_v1_completions_count_in_the_same_per_owner_slots_as_generate(api, client):
    """The owner at the limit (2 generations in flight, held here as a running /generate holds them):
    /v1/completions is refused like /generate and /score, before any lookup or worker call."""
    generation = api.app.state.generation
    with read_session() as session:
        owner = owner_for_key(session, key=KEY)
    limit = 2
    held = [generation.slots.acquire(owner, limit, KEY) for _ in range(limit)]
    try:
        from app.settings import get_settings

        settings = get_settings().model_copy(update={"max_concurrent_generations_per_owner": limit})
        api.app.dependency_overrides[current_settings] = lambda: settings
        for path, body in (
            ("/generate", {"model": "job_x", "length": 5}),
            ("/score", {"model": "job_x", "text": "abc"}),
            ("/v1/completions", {"model": "job_x", "prompt": "a", "max_tokens": 5}),
            ("/v1/completions", {"model": "job_x", "prompt": "a", "max_tokens": 5, "stream": True}),
        ):
            r = client.post(path, json=body)
            assert r.status_code == 429, (path, r.text)
            assert r.headers["retry-after"] == "1"
            assert "CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER = 2" in message(r)
            if path.startswith("/v1"):
                assert r.json()["error"]["type"] == "rate_limit_error"
        assert generation.slots.in_flight(owner) == limit  # a refusal takes no slot
        held.pop().release()
        # One slot free: the request is admitted (and then answers what the missing job calls for).
        r = client.post("/v1/completions", json={"model": "job_x", "prompt": "a", "max_tokens": 5})
        assert r.status_code == 404, r.text
        assert generation.slots.in_flight(owner) == limit - 1  # released on the way out, error or not
    finally:
        api.app.dependency_overrides.clear()
        for slot in held:
            slot.release()


# -- uploads: one upload service, the same refusals -------------------------------------------------------


def test_upload_refusals_are_the_same_on_both_faces(api, client):
    cases = [
        # (native request kwargs, /v1 file content and type, status, words in the message)
        ({"json": {"text": "hello"}}, None, 415, "multipart"),
        ({"content": b"", "headers": {"Content-Type": "text/plain"}}, b"", 422, "empty"),
        ({"content": b"good text \xff rest", "headers": {"Content-Type": "text/plain"}}, b"good text \xff rest",
         422, "offset 10"),
        ({"content": b"a" * 1_100_000, "headers": {"Content-Type": "text/plain"}}, b"a" * 1_100_000, 413,
         "CHARRNN_MAX_CORPUS_BYTES"),
    ]
    for native_kwargs, v1_content, status, words in cases:
        native = client.post("/corpora", **native_kwargs)
        assert native.status_code == status and words in message(native), native.text
        v1 = v1_upload(client, v1_content) if v1_content is not None else client.post("/v1/files", json={"a": 1})
        assert v1.status_code == (400 if status in (415, 422) else status), v1.text
        assert words in message(v1), v1.text
    assert not list((api.data_dir / "corpora").glob(".upload-*"))  # nothing left behind by either face


def test_the_stored_bytes_quota_holds_on_v1_files(api, limited):  # noqa: F811
    limited(max_corpus_bytes_per_owner=25_000)
    with api.owner_client("v1-storer") as c:
        first = v1_upload(c, small_corpus(15_000).encode())
        assert first.status_code == 200, first.text
        r = v1_upload(c, small_corpus(12_000).encode())
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"].isdigit() and "CHARRNN_MAX_CORPUS_BYTES_PER_OWNER" in message(r)
        assert r.json()["error"]["type"] == "rate_limit_error"
        native = c.post("/corpora", content=small_corpus(12_000).encode(), headers={"Content-Type": "text/plain"})
        assert native.status_code == 429  # one quota: the /v1 file counts natively too
        assert c.delete(f"/v1/files/{first.json()['id']}").status_code == 200
        assert v1_upload(c, small_corpus(12_000).encode()).status_code == 200


# -- jobs: one job service, the same limits ---------------------------------------------------------------


def test_the_active_jobs_limit_holds_on_v1_fine_tuning(api, limited):  # noqa: F811
    limited(max_active_jobs_per_owner=1)
    with api.owner_client("v1-busy") as c:
        file_id = v1_upload(c, small_corpus().encode()).json()["id"]
        native = c.post("/jobs", json={"corpus_id": file_id, "model": {"hidden_size": 16, "num_layers": 1}})
        assert native.status_code == 201, native.text
        r = c.post("/v1/fine_tuning/jobs", json={"model": "charrnn-lstm", "training_file": file_id})
        assert r.status_code == 429, r.text
        assert "CHARRNN_MAX_ACTIVE_JOBS_PER_OWNER" in message(r) and r.headers["retry-after"].isdigit()
        assert c.post(f"/jobs/{native.json()['id']}/cancel").status_code == 200
        r = c.post("/v1/fine_tuning/jobs", json={"model": "charrnn-lstm", "training_file": file_id})
        assert r.status_code == 200, r.text
        c.post(f"/v1/fine_tuning/jobs/{r.json()['id']}/cancel")


def test_the_memory_estimate_holds_on_v1_fine_tuning(client, corpus):
    extension = {"model": {k: v for k, v in HUGE.items() if k != "cell"}, "training": HUGE_TRAINING}
    body = {"model": "charrnn-lstm", "training_file": corpus["id"], "charrnn": extension}
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 400, r.text
    assert "CHARRNN_WORKER_MEMORY_BYTES" in message(r) and "lower batch_size or seq_len" in message(r)
