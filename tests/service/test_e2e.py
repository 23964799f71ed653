"""Upload, train a tiny model through a real worker, follow it live, then generate and score."""

from __future__ import annotations

import time

import pytest

from tests.harness import TINY_TRAINING, read_sse, small_corpus

pytestmark = pytest.mark.slow


def test_train_follow_generate_score(service, client):
    corpus = client.post(
        "/corpora",
        files={"file": ("shakes.txt", small_corpus().encode(), "text/plain")},
        data={"name": "e2e"},
    )
    assert corpus.status_code == 201, corpus.text
    corpus = corpus.json()
    assert corpus["name"] == "e2e" and corpus["num_chars"] > 19_000 and corpus["vocab_size"] > 30
    job = service.create_job(client, corpus["id"], name="e2e")
    assert job["status"] == "queued" and job["training"]["max_steps"] == TINY_TRAINING["max_steps"]
    assert job["training"]["learning_rate"] > 0  # defaults filled in from the engine

    # Follow live until the job ends: the stream closes by itself.
    with client.stream("GET", f"/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    types = [e["type"] for _, e in events]
    assert {"status", "metrics", "sample", "checkpoint", "log"} <= set(types)
    assert events[-1][1]["data"]["status"] == "succeeded"

    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["device"] == "cpu"
    p = job["progress"]
    assert p["step"] == TINY_TRAINING["max_steps"] and p["val_loss"] is not None and p["best_val_loss"] <= p["val_loss"]
    assert job["started_at"] and job["finished_at"]

    # JSON events, paginated.
    page = client.get(f"/jobs/{job['id']}/events", params={"limit": 3}).json()
    assert len(page["data"]) == 3 and page["has_more"]
    rest = client.get(f"/jobs/{job['id']}/events", params={"after": page["data"][-1]["id"], "limit": 1000}).json()
    assert len(page["data"]) + len(rest["data"]) == len(events) and not rest["has_more"]

    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    steps = [m["step"] for m in metrics]
    assert steps == sorted(steps) and steps[-1] == TINY_TRAINING["max_steps"]
    assert metrics[0]["train_loss"] > metrics[-1]["train_loss"]  # it learned something

    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints and any(c["is_best"] for c in checkpoints)
    one = client.get(f"/checkpoints/{checkpoints[0]['id']}").json()
    assert one == checkpoints[0]
    download = client.get(f"/checkpoints/{one['id']}/download")
    assert download.status_code == 200 and len(download.content) == one["size_bytes"]
    assert download.content[8:9] == b"{"  # safetensors: 8-byte header length, then JSON

    # Generate from the job (its best checkpoint), deterministic with a seed.
    body = {"model": job["id"], "prompt": "ROMEO:", "length": 60, "seed": 3, "temperature": 0.8}
    t0 = time.perf_counter()
    g1 = client.post("/generate", json=body)
    latency = time.perf_counter() - t0
    assert g1.status_code == 200, g1.text
    g1 = g1.json()
    assert len(g1["text"]) == 60 and g1["samples"][0]["finish_reason"] == "length"
    assert g1["usage"] == {"prompt_chars": 6, "generated_chars": 60}
    assert g1["checkpoint_id"].startswith("ckpt_")
    assert client.post("/generate", json=body).json()["text"] == g1["text"]
    print(f"/generate latency (60 chars, warm): {latency * 1000:.0f} ms")

    # Several samples, a stop string, greedy decoding.
    many = client.post("/generate", json={**body, "num_samples": 3, "stop": ["\n"], "temperature": 0}).json()
    assert len(many["samples"]) == 3 and all("\n" not in s["text"] for s in many["samples"])

    # Streaming: chunks, then a final event with the whole answer, equal to the non-streamed one.
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        sse = read_sse(r)
    chunks = [d["text"] for k, d in sse if k == "chunk"]
    assert sse[-1][0] == "done" and sse[-1][1]["text"] == g1["text"] == "".join(chunks)

    # Streaming with a stop string: the final event says which samples stopped, like the plain call.
    stop_body = {**body, "num_samples": 3, "stop": ["\n"], "temperature": 0, "stream": True}
    with client.stream("POST", "/generate", json=stop_body) as r:
        final = read_sse(r)[-1][1]
    assert final["samples"] == many["samples"]

    # By checkpoint id too.
    by_ckpt = client.post("/generate", json={**body, "model": g1["checkpoint_id"]}).json()
    assert by_ckpt["text"] == g1["text"]

    score = client.post("/score", json={"model": job["id"], "text": small_corpus()[:2000]})
    assert score.status_code == 200, score.text
    score = score.json()
    assert score["chars"] == 1999 and 0 < score["loss"] < 5

    # init_from: continue training from a checkpoint; the architecture comes from it.
    more = service.create_job(client, corpus["id"], init_from=g1["checkpoint_id"], model={}, training={"max_steps": 20})
    assert more["model"]["hidden_size"] == 32
    done = service.wait_job(client, more["id"])
    assert done["status"] == "succeeded", done


def test_unseen_prompt_characters_are_named(client, trained_job):
    r = client.post("/generate", json={"model": trained_job["id"], "prompt": "hi ☃ {", "length": 5})
    assert r.status_code == 422
    assert "☃" in r.json()["detail"] and "{" in r.json()["detail"]
    r = client.post("/generate", json={"model": trained_job["id"], "prompt": "☃", "stream": True})
    assert r.status_code == 422 and "☃" in r.json()["detail"]
    r = client.post("/score", json={"model": trained_job["id"], "text": "ab☃"})
    assert r.status_code == 422 and "☃" in r.json()["detail"]


def test_cancel_running_job_and_corpus_in_use(service, client, corpus):
    job = service.create_job(client, corpus["id"], training={"max_steps": 100_000, "checkpoint_every": 1000})
    r = client.delete(f"/corpora/{corpus['id']}")
    assert r.status_code == 409 and job["id"] in r.json()["detail"]
    service.wait_job(client, job["id"], statuses=("running",))
    t0 = time.monotonic()
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]
    # The worker notices within a second, kills the training process, and is free for the next job.
    quick = service.create_job(client, corpus["id"], training={"max_steps": 10})
    assert service.wait_job(client, quick["id"], timeout=60)["status"] == "succeeded"
    print(f"cancel -> next job done: {time.monotonic() - t0:.1f}s")
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_job_that_leaves_the_size_out_gets_one_chosen_for_its_budget(service, client, corpus):
    job = service.create_job(client, corpus["id"], model={"num_layers": 1, "embedding_dim": 8},
                             training={"max_steps": 5})
    assert job["model"]["hidden_size"] is None and job["model"]["dropout"] is None  # chosen when it starts
    job = service.wait_job(client, job["id"])
    # Five steps of 4 x 16 characters feed no model bigger than the smallest size, and read the corpus
    # less than once: no dropout.
    assert job["status"] == "succeeded" and job["model"]["hidden_size"] == 128 and job["model"]["dropout"] == 0
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    started = [e for e in events if "chose hidden_size 128" in e["message"]]
    assert started and started[0]["data"]["chosen"][0].startswith("hidden_size 128")


def test_a_model_that_lacks_characters_of_the_corpus_is_refused_at_creation(service, client, trained_job):
    # The model could never read them: refused when the job is asked for, not failed later by the trainer.
    c = service.upload(client, small_corpus() + "☃ snow ☃", name="with-snowmen")
    ckpt = client.get(f"/jobs/{trained_job['id']}/checkpoints").json()["data"][0]["id"]
    r = client.post("/jobs", json={"corpus_id": c["id"], "init_from": ckpt, "model": {}})
    assert r.status_code == 422 and "will not know" in r.text and "☃" in r.text, r.text
    assert not [j for j in client.get("/jobs").json()["data"] if j["corpus_id"] == c["id"]]


def test_generate_needs_a_checkpoint_and_a_worker(service, client, corpus):
    job = service.create_job(client, corpus["id"], training={"max_steps": 5})
    client.post(f"/jobs/{job['id']}/cancel")
    r = client.post("/generate", json={"model": job["id"]})
    assert r.status_code in (409, 200)  # 200 only if it checkpointed before the cancel landed
    if r.status_code == 409:
        assert "ended (cancelled) without a checkpoint" in r.json()["detail"]


def test_stop_lists_over_the_bounds_are_refused_naming_the_field(client, trained_job):
    for stop in (["x"] * 17, ["x" * 1_001], ["x" * 300_000]):
        r = client.post("/generate", json={"model": trained_job["id"], "stop": stop})
        assert r.status_code == 422 and "stop" in r.json()["message"], r.text[:500]


def test_the_longest_allowed_stops_complete(client, trained_job):
    stops = [("ROMEO: " * 150)[:999] + chr(0x100 + i) for i in range(16)]
    body = {"model": trained_job["id"], "length": 2_000, "num_samples": 4, "stop": stops, "seed": 2}
    r = client.post("/generate", json=body, timeout=60)
    assert r.status_code == 200 and [len(s["text"]) for s in r.json()["samples"]] == [2_000] * 4


def test_tiny_temperature_and_top_p_are_greedy_not_a_server_error(client, trained_job):
    body = {"model": trained_job["id"], "prompt": "ROMEO:", "length": 30}
    greedy = client.post("/generate", json={**body, "temperature": 0}).json()["text"]
    for extra in ({"temperature": 1e-40}, {"temperature": 5e-324}, {"top_p": 1e-300}, {"top_p": 5e-324, "seed": 1}):
        r = client.post("/generate", json={**body, **extra})
        assert r.status_code == 200 and r.json()["text"] == greedy, (extra, r.text)


