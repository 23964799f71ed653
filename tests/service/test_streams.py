"""Event and generation streams: a revoked key ends an open stream, Last-Event-ID is parsed strictly, and a
reader that hangs up stops costing steps and leaves no threads, files or busy CPU behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import (
    KEY,
    TINY_MODEL,
    TINY_TRAINING,
    Service,
    database_service,
    new_key,
    small_corpus,
    wait_for,
)


def read_sse(response: httpx.Response) -> list[tuple[str, dict]]:
    events, kind, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif line == "" and data:
            events.append((kind, json.loads("\n".join(data))))
            kind, data = None, []
    return events


def test_revoked_key_ends_open_event_stream(service):
    key, key_id = new_key(service, "carol")
    spare_key, _ = new_key(service, "carol")  # the same owner, to cancel the job afterwards
    with service.client(key=key) as carol, service.client(key=spare_key) as carol_spare:
        corpus = service.upload(carol, small_corpus(20_000), name="carol")
        job = service.create_job(carol, corpus["id"], training={"max_steps": 1_000_000, "max_seconds": 120})
        try:
            service.wait_job(carol, job["id"], statuses=("running",), timeout=60)
            received, ended_at = [], []

            def follow():
                headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
                with httpx.stream(
                    "GET", f"{service.url}/jobs/{job['id']}/events", headers=headers, timeout=60
                ) as response:
                    assert response.status_code == 200
                    for line in response.iter_lines():
                        received.append(line)
                ended_at.append(time.monotonic())

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            deadline = time.monotonic() + 30
            while not any(line.startswith("event: metrics") for line in received):
                assert time.monotonic() < deadline, f"no metrics streamed: {received[-5:]}"
                time.sleep(0.1)

            assert service.cli("keys", "revoke", key_id).returncode == 0
            revoked_at = time.monotonic()
            reader.join(timeout=15)
            assert not reader.is_alive(), "the stream kept going after its key was revoked"
            assert ended_at[0] - revoked_at < 6, f"the stream ended {ended_at[0] - revoked_at:.1f}s after revoking"
            assert any("revoked" in line for line in received[-5:]), received[-5:]
        finally:
            carol_spare.post(f"/jobs/{job['id']}/cancel")


@pytest.fixture
def local_database(tmp_path, monkeypatch):
    """This process's settings and engine pointed at a fresh SQLite file (for tests of API code in-process)."""
    from app import db as app_db
    from app import settings as app_settings
    from app.cli import upgrade_database

    def reset():
        app_settings.get_settings.cache_clear()
        app_db.get_engine.cache_clear()
        app_db.get_sessionmaker.cache_clear()

    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHARRNN_DATABASE_URL", raising=False)
    reset()
    upgrade_database()
    yield tmp_path
    app_db.get_engine().dispose()
    reset()


def test_generation_stream_ends_when_its_key_is_revoked(local_database):
    """Streamed /generate relays a worker's stream through end_when_revoked; a revoked key cuts it short."""
    from starlette.concurrency import run_in_threadpool

    from app.db import session_scope
    from app.keys.service import create_key, revoke_key
    from app.keys.streams import end_when_revoked

    with session_scope() as session:
        record, key = create_key(session, name="dave")
    closed = []

    async def endless_chunks():
        try:
            while True:
                yield {"event": "chunk", "data": "{}"}
                await asyncio.sleep(0.02)
        finally:
            closed.append(True)  # the upstream stream is closed, not left running

    def revoke():
        with session_scope() as session:
            assert revoke_key(session, key_id=record.id)

    async def follow():
        events, revoked_at = [], None
        async for event in end_when_revoked(endless_chunks(), key, every=0.2):
            events.append(event)
            if len(events) == 20:
                await run_in_threadpool(revoke)
                revoked_at = time.monotonic()
        return events, time.monotonic() - revoked_at

    events, after_revoke = asyncio.run(asyncio.wait_for(follow(), timeout=10))
    assert events[-1]["event"] == "error" and "revoked" in events[-1]["data"]
    assert after_revoke < 1.0 and closed == [True]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_last_event_id_is_parsed_strictly(tmp_path, kind):
    with database_service(tmp_path, kind) as svc, svc.client() as client:
        corpus = svc.upload(client, small_corpus(5000))
        job = client.post("/jobs", json={"corpus_id": corpus["id"], "model": TINY_MODEL, "training": TINY_TRAINING})
        job_id = job.json()["id"]
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200  # no worker: ended, so streams end
        stream = {"Accept": "text/event-stream"}
        for bad in ("²".encode("latin-1"), "²".encode(), b"1" * 20, b"-1", b"12a", b"9" * 19):
            for headers in (stream, {}):
                r = client.get(f"/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": bad})
                assert r.status_code == 400, (bad, r.text)
                assert "Last-Event-ID" in r.json()["detail"]
        # The largest accepted id resumes after everything: an empty stream that ends cleanly.
        r = client.get(f"/jobs/{job_id}/events", headers={**stream, "Last-Event-ID": "9" * 18})
        assert r.status_code == 200 and "event:" not in r.text, r.text
        r = client.get(f"/jobs/{job_id}/events", params={"after": 2**62})  # the largest `after`, on both databases
        assert r.status_code == 200 and r.json()["data"] == [], r.text
        r = client.get(f"/jobs/{job_id}/events", headers={**stream, "Last-Event-ID": "1"})
        assert r.status_code == 200 and "event: status" in r.text and "cancelled" in r.text, r.text


def test_a_disconnected_stream_stops_costing_steps(service, client, trained_job):
    """When the reader of a stream goes away, the API closes its stream from the
    worker, and the worker stops sampling (it counts its steps in /healthz)."""
    worker = service.worker_url()

    def health() -> dict:
        return httpx.get(worker + "/healthz", timeout=10).json()

    stops = [("ROMEO: " * 150)[:999] + chr(0x100 + i) for i in range(16)]  # slower steps: more to cancel
    body = {"model": trained_job["id"], "length": 10_000, "num_samples": 16, "stop": stops, "seed": 4, "stream": True}
    client.post("/generate", json={**body, "stream": False, "length": 1})  # the model is loaded
    before = health()["sampling_steps"]
    with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data:"))  # the first chunk came
    # Leaving the block closed the connection with the stream half read.
    deadline = time.monotonic() + 10
    while health()["generations_running"]:
        assert time.monotonic() < deadline, "the worker kept generating after the reader left"
        time.sleep(0.05)
    after = health()["sampling_steps"]
    time.sleep(0.3)
    assert health()["sampling_steps"] == after
    assert after - before < 9_999  # it stopped well before the end (10,000 characters: 9,999 steps)


def test_a_plain_call_whose_caller_hung_up_stops_costing_steps(service, client, trained_job):
    """The API gives up on a worker after its timeout and closes the connection: the worker stops the
    generation then, rather than finishing work nobody will read."""
    from app.workers.secret import HEADER

    worker = service.worker_url()
    secret = (service.data_dir / "worker-secret").read_text().strip()

    def health() -> dict:
        return httpx.get(worker + "/healthz", timeout=10).json()

    checkpoint = client.post("/generate", json={"model": trained_job["id"], "length": 1}).json()["checkpoint_id"]
    stops = [("ROMEO: " * 150)[:999] + chr(0x100 + i) for i in range(16)]
    body = {"checkpoint_id": checkpoint, "length": 10_000, "num_samples": 16, "stop": stops}
    before = health()["sampling_steps"]
    with pytest.raises(httpx.ReadTimeout):  # the caller gives up, as the API does after its timeout
        httpx.post(worker + "/generate", json=body, headers={HEADER: secret}, timeout=httpx.Timeout(0.5, connect=5))
    deadline = time.monotonic() + 10
    while health()["generations_running"]:
        assert time.monotonic() < deadline, "the worker kept generating after its caller left"
        time.sleep(0.05)
    after = health()["sampling_steps"]
    time.sleep(0.3)
    assert health()["sampling_steps"] == after
    assert after - before < 9_999  # 10,000 characters take 9,999 steps


def process_usage(pid: int) -> dict:
    """Threads, open file descriptors and CPU seconds (user + system) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "cpu": (int(fields[11]) + int(fields[12])) / ticks,
    }


IDLE_THREAD_SECONDS = 11  # anyio's WorkerThread.MAX_IDLE_TIME (10 s), and a second


def fd_kinds(pid: int) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":" in target else Path(target).suffix or target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def settled(pids: dict[str, int], baseline: dict[str, dict], margin: int = 4, timeout: float = 30) -> dict:
    """Wait until every process is back within `margin` threads and fds of its baseline, and idle
    (under 0.1 CPU-seconds in a 2-second window); return the last measurements."""
    deadline = time.monotonic() + timeout
    while True:
        first = {name: process_usage(pid) for name, pid in pids.items()}
        time.sleep(2)
        now = {name: process_usage(pid) for name, pid in pids.items()}
        ok = all(
            now[n]["threads"] <= baseline[n]["threads"] + margin
            and now[n]["fds"] <= baseline[n]["fds"] + margin
            and now[n]["cpu"] - first[n]["cpu"] < 0.1
            for n in pids
        )
        if ok or time.monotonic() > deadline:
            return {n: {**now[n], "cpu_per_2s": round(now[n]["cpu"] - first[n]["cpu"], 3)} for n in pids}


async def hang_up_early(url: str, requests: list[dict], until: str) -> int:
    """Open every stream at once, read until `until` shows up in each, then drop them all."""

    async def one(client: httpx.AsyncClient, request: dict) -> bool:
        async with client.stream(**request) as response:
            assert response.status_code == 200, await response.aread()
            async for text in response.aiter_text():
                if until in text:
                    return True
        return False

    limits = httpx.Limits(max_connections=len(requests) + 5)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        return sum(await asyncio.gather(*(one(client, r) for r in requests)))


def test_sixty_readers_that_hang_up_leave_no_threads_files_or_busy_cpu(svc_with_job):
    svc, trained = svc_with_job
    client = svc.client()
    worker_proc = svc.workers[-1]
    pids = {"api": svc.api_proc.pid, "worker": worker_proc.pid}
    generate = {
        "method": "POST",
        "url": "/generate",
        "json": {"model": trained["id"], "length": 10_000, "stream": True},
    }

    def followers(n: int) -> int:
        """n readers follow a job that stays queued (its worker is paused) and hang up after one event."""
        worker_proc.send_signal(signal.SIGSTOP)
        try:
            queued = svc.create_job(client, trained["corpus_id"], name="followed")
            events = f"/jobs/{queued['id']}/events"
            follow = {"method": "GET", "url": events, "headers": {"Accept": "text/event-stream"}}
            followed = asyncio.run(hang_up_early(svc.url, [follow] * n, until="queued"))
            client.post(f"/jobs/{queued['id']}/cancel").raise_for_status()
        finally:
            worker_proc.send_signal(signal.SIGCONT)
        wait_for(lambda: svc.live_workers() >= 1, 30, "the worker to be live again")
        return followed

    def round_of_readers() -> None:
        assert followers(30) == 30
        assert asyncio.run(hang_up_early(svc.url, [generate] * 30, until="event: chunk")) == 30

    def reap_idle_threads() -> None:
        """anyio ends a pool thread idle for over 10 s only when the pool is next used: wait, then use it."""
        time.sleep(IDLE_THREAD_SECONDS)
        client.get(f"/jobs/{trained['id']}").raise_for_status()  # a sync route: runs in the API's pool
        httpx.get(svc.worker_url() + "/healthz", timeout=5).raise_for_status()  # and in the worker's

    # A first round grows the bounded pools to their working size (SQLite connections, each a few fds)
    # and loads the model; a leak grows with every round.
    round_of_readers()
    reap_idle_threads()
    baseline = settled(pids, {n: process_usage(p) for n, p in pids.items()}, margin=1000)
    print("after a first round", baseline, {n: fd_kinds(p) for n, p in pids.items()})
    round_of_readers()
    hung_up = time.monotonic()
    idle = settled(pids, baseline, margin=1000, timeout=4)  # CPU first: within seconds of the hang-ups
    print(f"idle {time.monotonic() - hung_up:.1f}s after the readers left:", idle)
    for name in pids:
        assert idle[name]["cpu_per_2s"] < 0.1, (name, idle)
    reap_idle_threads()
    after = settled(pids, baseline)
    print("after a second round", after, {n: fd_kinds(p) for n, p in pids.items()})
    for name in pids:
        assert after[name]["threads"] <= baseline[name]["threads"] + 4, (name, baseline, after)
        assert after[name]["fds"] <= baseline[name]["fds"] + 4, (name, baseline, after)
        assert after[name]["cpu_per_2s"] < 0.1, (name, after)  # idle: no sampling or polling left running
    health = httpx.get(svc.worker_url() + "/healthz", timeout=5).json()
    assert health["generations_running"] == 0, health


@pytest.fixture
def svc_with_job(tmp_path):
    # 30 streamed generations at once from one owner: above the default per-owner limit (8) on purpose.
    svc = Service(tmp_path, max_concurrent_generations_per_owner=64)
    svc.start_api()
    svc.start_worker()
    client = svc.client()
    corpus = svc.upload(client, small_corpus(), name="readers")
    job = svc.wait_job(client, svc.create_job(client, corpus["id"])["id"])
    assert job["status"] == "succeeded"
    yield svc, job
    svc.stop()
