"""Unknown ids are 404s on every route, and bad generation requests are refused before any worker is asked."""

from __future__ import annotations


def test_unknown_ids_and_bad_generation_requests(client, corpus):
    assert client.get("/jobs/job_nope").status_code == 404
    assert client.post("/jobs/job_nope/cancel").status_code == 404
    assert client.get("/jobs/job_nope/events").status_code == 404
    assert client.get("/jobs/job_nope/metrics").status_code == 404
    assert client.get("/jobs/job_nope/checkpoints").status_code == 404
    assert client.get("/checkpoints/ckpt_nope").status_code == 404
    assert client.get("/checkpoints/ckpt_nope/download").status_code == 404
    assert client.get("/corpora/corpus_nope").status_code == 404
    assert client.post("/generate", json={"model": "job_nope"}).status_code == 404
    assert client.post("/score", json={"model": "ckpt_nope", "text": "abc"}).status_code == 404
    for body, field in [
        ({"model": "x", "length": 10_001}, "length"),
        ({"model": "x", "num_samples": 17}, "num_samples"),
        ({"model": "x", "temperature": -1}, "temperature"),
        ({"model": "x", "top_p": 0}, "top_p"),
        ({"model": "x", "top_k": 0}, "top_k"),
        ({"model": "x", "length": "long"}, "length"),
        ({"length": 5}, "model"),
    ]:
        r = client.post("/generate", json=body)
        assert r.status_code == 422 and field in r.json()["message"], (body, r.text)
    assert client.post("/score", json={"model": "x", "text": "a"}).status_code == 422
