"""The generation rules of /generate hold on /v1/completions, for real (API + worker): the per-owner limit
on generations in flight (one count for both faces) and the fallback past a job's damaged best checkpoint.
Both are applied by one service function (app.generation.service.admit) that every face calls."""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import Service, new_key, small_corpus, wait_for

pytestmark = pytest.mark.slow

LIMIT = 2
TRAINING = {"max_steps": 60, "eval_every": 20, "checkpoint_every": 20, "log_every": 10, "seed": 5}
# A stream that cannot end while its reader waits: 16 samples of 10,000 characters, each chunk of each
# with its log-probabilities (a worker call that re-reads the text before it), far more than the socket
# buffers between the worker, the API and the client hold. (Without logprobs the tiny model generates
# it all in under a second and the buffers take it whole: the stream, and its slot, would be done.)
HELD = {"prompt": "ROMEO:", "max_tokens": 10_000, "n": 16, "logprobs": 5, "stream": True}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    # A lease longer than the harness's 3 s: on a loaded machine a training heartbeat can come late, and
    # a job reaped for that is not what these tests are about.
    service = Service(tmp_path_factory.mktemp("rules"), max_concurrent_generations_per_owner=LIMIT,
                      job_lease_seconds=20)
    service.start_api()
    service.start_worker()
    yield service
    service.stop()


def trained(svc: Service, name: str) -> dict:
    with svc.client() as c:
        corpus = svc.upload(c, small_corpus(), name=name)
        job = svc.wait_job(c, svc.create_job(c, corpus["id"], training=TRAINING)["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def job(svc) -> dict:
    return trained(svc, "limits")


@contextlib.contextmanager
def v1_stream(client, model: str):
    """A /v1 completion stream that is generating (its first chunk read), held open until the block ends."""
    with client.stream("POST", "/v1/completions", json={"model": model, **HELD}) as stream:
        assert stream.status_code == 200
        # The lines' iterator stays referenced: closing it (as a dropped generator is) closes the response.
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert '"choices"' in first, first
        yield lines


def test_twelve_concurrent_v1_completions_past_the_limit_get_429s_like_generate(svc, job):
    with svc.client() as one, svc.client() as two, v1_stream(one, job["id"]), v1_stream(two, job["id"]):
        # Two in flight (the limit); ten more at once, each on its own connection.
        def complete(_):
            with svc.client() as c:
                return c.post("/v1/completions", json={"model": job["id"], "prompt": "A", "max_tokens": 5})

        with ThreadPoolExecutor(10) as pool:
            refused = list(pool.map(complete, range(10)))
        for r in refused:
            assert r.status_code == 429, r.text
            assert r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and "CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER" in error[
                "message"]
        with svc.client() as c:
            # One count for both faces: the native routes are at the limit too.
            r = c.post("/generate", json={"model": job["id"], "length": 5})
            assert r.status_code == 429 and "CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER" in r.json()["detail"]
            assert c.post("/score", json={"model": job["id"], "text": "abc"}).status_code == 429
        other_key, _ = new_key(svc, "someone-else")
        with svc.client(key=other_key) as other:  # another owner is not held to this one's count
            r = other.post("/v1/completions", json={"model": job["id"], "prompt": "A", "max_tokens": 5})
            assert r.status_code == 404, r.text
    # The streams were left mid-way: their slots free within moments, and /v1 answers again.
    with svc.client() as c:
        wait_for(
            lambda: c.post("/v1/completions", json={"model": job["id"], "prompt": "A", "max_tokens": 5}).status_code
            == 200,
            10,
            "the held streams' slots to be released",
        )
        r = c.post("/generate", json={"model": job["id"], "length": 5})
        assert r.status_code == 200, r.text


def test_a_damaged_best_checkpoint_falls_back_on_v1_as_on_generate(svc):
    job = trained(svc, "integrity")
    with svc.client() as c:
        steps = sorted(c.get(f"/jobs/{job['id']}/checkpoints").json()["data"], key=lambda k: k["step"])
        assert [k["step"] for k in steps] == [20, 40, 60], steps
        # Never generated from, so no worker has it loaded: the first load finds the damage.
        newest = svc.data_dir / "runs" / job["id"] / "checkpoints" / "step-00000060.safetensors"
        newest.write_bytes(newest.read_bytes()[:100])

        body = {"model": job["id"], "prompt": "A", "max_tokens": 20, "seed": 1}
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["system_fingerprint"] == steps[1]["id"]  # the previous good checkpoint answered
        assert len(r.json()["choices"][0]["text"]) == 20
        r = c.post("/v1/completions", json={**body, "stream": True})
        assert r.status_code == 200 and steps[1]["id"] in r.text and "data: [DONE]" in r.text, r.text
        r = c.post("/generate", json={"model": job["id"], "length": 20, "seed": 1})
        assert r.status_code == 200 and r.json()["checkpoint_id"] == steps[1]["id"], r.text

        # Named by its checkpoint id, the damaged one is the answer: 409 naming it, no fallback, no path.
        r = c.post("/v1/completions", json={**body, "model": steps[2]["id"]})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert steps[2]["id"] in error["message"] and "corrupt" in error["message"], error
        assert str(svc.root) not in error["message"] and r.headers["x-should-retry"] == "false"
        # The refusals and fallbacks left no slot behind: a full LIMIT of streams still opens.
        with svc.client() as one, svc.client() as two, v1_stream(one, job["id"]), v1_stream(two, job["id"]):
            pass


def test_a_revoked_key_ends_its_open_v1_stream_as_it_ends_a_native_one(svc, job):
    key, key_id = new_key(svc, "to-revoke")
    with svc.client(key=key) as c:
        # Its own job: models are the owner's.
        corpus = svc.upload(c, small_corpus(), name="revoked")
        own = svc.wait_job(c, svc.create_job(c, corpus["id"], training={"max_steps": 20})["id"])
        assert own["status"] == "succeeded", own
        with v1_stream(c, own["id"]) as lines:
            assert svc.cli("keys", "revoke", key_id).returncode == 0
            # The stream goes on a moment (the key is re-checked every few seconds), then ends with
            # OpenAI's error object, which the client raises.
            rest = [line for line in lines if line.startswith("data:")]
    ending = json.loads(rest[-1].removeprefix("data:"))
    assert ending["error"]["code"] == "invalid_api_key" and "revoked" in ending["error"]["message"], rest[-1]
    assert "[DONE]" not in rest[-1]
