"""Per-owner limits against the real server: generations in flight past the limit answer 429 with
Retry-After, and the slots are released when the calls end."""

from __future__ import annotations

import time

from tests.harness import (
    Service,
    new_key,
    small_corpus,
)
from worker.engine.sampling_params import MAX_LENGTH


def test_concurrent_generations_per_owner_answer_429_and_are_released(tmp_path):
    svc = Service(tmp_path, max_concurrent_generations_per_owner=1)
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            corpus = svc.upload(c, small_corpus())
            job = svc.wait_job(c, svc.create_job(c, corpus["id"], training={"max_steps": 20})["id"])
            assert job["status"] == "succeeded", job
            stops = [("ROMEO: " * 150)[:999] + chr(0x100 + i) for i in range(16)]  # slow steps: seconds of stream
            body = {"model": job["id"], "length": MAX_LENGTH, "num_samples": 16, "stop": stops, "stream": True}
            other_key, _ = new_key(svc, "someone-else")
            for _ in range(2):  # twice: the first stream's slot really was released
                with c.stream("POST", "/generate", json=body) as stream:
                    assert stream.status_code == 200
                    lines = stream.iter_lines()
                    first = next(line for line in lines if line.startswith("data:"))  # generating now
                    assert "text" in first, first
                    r = c.post("/generate", json={"model": job["id"], "length": 5})
                    assert r.status_code == 429, r.text
                    assert r.headers["retry-after"] == "1"
                    assert "CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER" in r.json()["detail"]
                    assert c.post("/score", json={"model": job["id"], "text": "abc"}).status_code == 429
                    with svc.client(key=other_key) as other:  # another owner is not held to this one's count
                        assert other.post("/generate", json={"model": "job_nope"}).status_code == 404
                # The client left mid-stream: its slot frees within moments.
                deadline = time.monotonic() + 10
                while (r := c.post("/generate", json={"model": job["id"], "length": 5})).status_code == 429:
                    assert time.monotonic() < deadline, "the stream's slot was never released"
                    time.sleep(0.1)
                assert r.status_code == 200, r.text
            assert c.post("/score", json={"model": job["id"], "text": "abc"}).status_code == 200
    finally:
        svc.stop()
