"""Per-owner limits against the real server: generations in flight past the limit answer 429 with
Retry-After, and the slots are released when the calls end."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.harness import (
    Service,
    new_key,
    small_corpus,
)
from worker.engine.sampling_params import MAX_LENGTH


def start_with_a_tiny_model(svc: Service) -> dict:
    """Start the API and a worker, and train a 20-step model to generate from: its finished job."""
    svc.start_api()
    svc.start_worker()
    with svc.client() as c:
        corpus = svc.upload(c, small_corpus())
        job = svc.wait_job(c, svc.create_job(c, corpus["id"], training={"max_steps": 20})["id"])
    assert job["status"] == "succeeded", job
    return job


def test_concurrent_generations_per_owner_answer_429_and_are_released(tmp_path):
    svc = Service(tmp_path, max_concurrent_generations_per_owner=1)
    try:
        job = start_with_a_tiny_model(svc)
        with svc.client() as c:
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


def test_clients_at_the_limit_sending_back_to_back_never_see_a_429(tmp_path):
    """A slot is free when its answer is. 32 clients at a limit of 32, each sending its next request
    as soon as it has read the last answer, for 10 s: no 429 (a quarter of them stream, whose slot must be
    free once their last event is read)."""
    clients_n, seconds = 32, 10
    svc = Service(tmp_path, max_concurrent_generations_per_owner=clients_n)
    try:
        job = start_with_a_tiny_model(svc)
        body = {"model": job["id"], "prompt": "a", "length": 1}  # short: as many requests, and releases, as can be
        codes: Counter[int] = Counter()
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def run(i: int) -> None:
            stream = i % 4 == 0
            with svc.client() as client:
                while time.monotonic() < stop_at:
                    if stream:
                        with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
                            text = "".join(r.iter_lines()) if r.status_code == 200 else r.read().decode()
                            code = r.status_code if r.status_code != 200 or "event: done" in text else -1
                    else:
                        code = client.post("/generate", json=body).status_code
                    with lock:
                        codes[code] += 1

        with ThreadPoolExecutor(clients_n) as pool:
            list(pool.map(run, range(clients_n)))
        print(f"{clients_n} clients for {seconds} s at a limit of {clients_n}: {dict(codes)}")
        assert codes[429] == 0, dict(codes)
        assert set(codes) == {200} and codes[200] >= clients_n, dict(codes)
    finally:
        svc.stop()
