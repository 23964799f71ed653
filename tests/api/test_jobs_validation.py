"""Job requests the API refuses before any worker is involved, and cancelling a job still in the queue."""

from __future__ import annotations

import hashlib
import json
import struct

from app.db import session_scope, utcnow
from app.ids import new_id
from app.models import Checkpoint, Job
from tests.harness import TINY_MODEL, TINY_TRAINING, small_corpus


def test_job_validation(api, client, corpus):
    cid = corpus["id"]
    cases = [
        ({"corpus_id": cid, "model": {"hidden_size": 0}}, "model.hidden_size"),
        ({"corpus_id": cid, "model": {"hidden_size": "big"}}, "model.hidden_size"),
        ({"corpus_id": cid, "model": {"cell": "transformer"}}, "model.cell"),
        ({"corpus_id": cid, "model": {"dropout": 2}}, "model.dropout"),
        ({"corpus_id": cid, "training": {"learning_rate": -1}}, "training.learning_rate"),
        ({"corpus_id": cid, "training": {"seq_len": 100000}}, "training.seq_len"),
        ({"corpus_id": cid, "training": {"val_fraction": 0.9}}, "training.val_fraction"),
        ({"corpus_id": cid, "training": {"max_stepz": 5}}, "training.max_stepz"),
        ({"corpus_id": cid, "extra": 1}, "extra"),
        ({}, "corpus_id"),
    ]
    for body, field in cases:
        r = client.post("/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.json()["message"], (field, r.json())

    r = client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/jobs", json={"corpus_id": "corpus_nope"})
    assert r.status_code == 404 and "corpus_nope" in r.json()["detail"]
    r = client.post("/jobs", json={"corpus_id": cid, "init_from": "ckpt_nope"})
    assert r.status_code == 404

    # Too small a corpus for the batch: the message says what to lower.
    tiny = api.upload(client, small_corpus(2000), name="tiny")
    r = client.post("/jobs", json={"corpus_id": tiny["id"], "training": {"batch_size": 64, "seq_len": 64}})
    assert r.status_code == 422 and "batch_size" in r.json()["detail"] and "needs at least" in r.json()["detail"]


def test_cancel_queued(client, corpus):
    """With no worker a job stays queued; cancelling it ends it, once. (A finished job: tests/service.)"""
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "model": TINY_MODEL, "training": TINY_TRAINING})
    assert r.status_code == 201 and r.json()["status"] == "queued", r.text
    job_id = r.json()["id"]
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    assert any(j["id"] == job_id for j in client.get("/jobs", params={"status": "cancelled"}).json()["data"])
    assert all(j["id"] != job_id for j in client.get("/jobs", params={"status": "queued"}).json()["data"])
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def write_checkpoint(api, job_id: str, vocab: list[str]) -> str:
    """A checkpoint row and its file as the worker writes them: a safetensors header whose metadata holds the
    model's config and vocabulary (the API reads no tensor of it)."""
    header = json.dumps({"__metadata__": {"config": json.dumps({**TINY_MODEL, "vocab_size": len(vocab)}),
                                          "vocab": json.dumps(vocab)}}).encode()
    data = struct.pack("<Q", len(header)) + header
    path = api.data_dir / "runs" / job_id / "step-1.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    checkpoint_id = new_id("ckpt")
    with session_scope() as session:
        owner = session.get(Job, job_id).owner
        session.add(Checkpoint(id=checkpoint_id, job_id=job_id, owner=owner, step=1, is_best=True,
                               path=str(path.relative_to(api.data_dir)), size_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), created_at=utcnow()))
    return checkpoint_id


def test_continuing_a_checkpoint_on_text_it_cannot_read_is_refused_when_the_job_is_created(api, client, corpus):
    """The rule /v1 had alone: a model continued on a corpus with characters outside its vocabulary would
    fail when the job ran; POST /jobs refuses it at once, naming the characters and the checkpoint."""
    parent = client.post("/jobs", json={"corpus_id": corpus["id"], "model": TINY_MODEL, "training": TINY_TRAINING})
    assert parent.status_code == 201, parent.text
    checkpoint_id = write_checkpoint(api, parent.json()["id"], sorted(set(small_corpus())))
    snowman = api.upload(client, small_corpus() + "a snowman: \u2603\n", name="snowman")

    r = client.post("/jobs", json={"corpus_id": snowman["id"], "init_from": checkpoint_id, "training": TINY_TRAINING})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "\u2603" in detail and checkpoint_id in detail and "1 character" in detail

    # Text within the checkpoint's vocabulary queues as before.
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "init_from": checkpoint_id, "training": TINY_TRAINING})
    assert r.status_code == 201, r.text
    for job_id in (parent.json()["id"], r.json()["id"]):
        client.post(f"/jobs/{job_id}/cancel")
