"""Job requests the API refuses before any worker is involved, and cancelling a job still in the queue."""

from __future__ import annotations

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
