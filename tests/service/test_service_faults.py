"""Service faults from issue 12, for real: `charrnn serve` killed whole (kill -9 to its process group),
PostgreSQL going away under three busy workers, and readers that hang up on 60 open streams."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY, Serve, Service, small_corpus, wait_for
from tests.service.test_recovery import curve, wait_event

pytestmark = pytest.mark.slow

TRAINING = {"max_steps": 600, "checkpoint_every": 100, "eval_every": 100, "log_every": 50, "seed": 11}


def kill_9(serve: Serve) -> None:
    """SIGKILL to serve's whole process group: API, worker and training child at once."""
    os.killpg(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait()

    def group_alive() -> bool:  # zombies count as gone: they hold no lease, file or port
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == serve.proc.pid and fields[0] != "Z":
                return True
        return False

    wait_for(lambda: not group_alive(), 10, "every process of serve to die")


def test_serve_killed_whole_resumes_its_job_exactly_on_restart(tmp_path):
    serve = Serve(tmp_path / "data")
    serve.start()
    try:
        client = serve.client()
        corpus = client.post(
            "/corpora", params={"name": "c"}, content=small_corpus(30_000).encode(),
            headers={"Content-Type": "text/plain"},
        ).json()
        model = {"cell": "lstm", "hidden_size": 32, "num_layers": 1, "embedding_dim": 16}
        body = {"corpus_id": corpus["id"], "model": model, "training": {**TRAINING, "seq_len": 16, "batch_size": 4}}
        job = client.post("/jobs", json={**body, "name": "interrupted"}).json()
        wait_event(client, job["id"], lambda e: e["type"] == "checkpoint" and e["data"]["step"] >= 100, timeout=90)
        kill_9(serve)  # API, worker and training child at once: a power cut, an OOM-killed cgroup

        serve.start()  # same data dir: the job's lease runs out, and the new worker takes it back
        client = serve.client()  # (a new port)
        resumed = wait_event(client, job["id"], lambda e: e["message"].startswith("resumed from step"), timeout=60)
        resumed_at = resumed["data"]["resumed_from_step"]
        assert 100 <= resumed_at < TRAINING["max_steps"], resumed
        twin = client.post("/jobs", json={**body, "name": "twin"}).json()

        def finished(job_id):
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_for(lambda: finished(job["id"]), 180, "the resumed job to finish")
        twin = wait_for(lambda: finished(twin["id"]), 180, "the twin to finish")
        assert done["status"] == twin["status"] == "succeeded", (done, twin, serve.output())
        for key in ("step", "train_loss", "val_loss", "best_val_loss"):
            assert done["progress"][key] == twin["progress"][key], (key, done["progress"], twin["progress"])
        mine, theirs = curve(client, job["id"]), curve(client, twin["id"])
        assert [r for r in mine if r[0] > resumed_at] == [r for r in theirs if r[0] > resumed_at]
        r = client.post("/generate", json={"model": job["id"], "length": 10, "seed": 1})
        assert r.status_code == 200, r.text
    finally:
        serve.stop()


# -- PostgreSQL going away -----------------------------------------------------------------------------


def database_outage(url: str, seconds: float) -> None:
    """What a PostgreSQL restart looks like to its clients, confined to this test's database: every
    connection is cut and new ones are refused for a while."""
    import psycopg

    from tests.postgres import ADMIN_DSN

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        time.sleep(seconds)
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_postgres_going_away_under_three_workers_loses_and_repeats_no_job(tmp_path, postgres_url):
    svc = Service(tmp_path, database_url=postgres_url, job_lease_seconds=10)
    svc.start_api()
    try:
        client = svc.client()
        corpus = svc.upload(client, small_corpus(30_000), name="pg")
        for _ in range(3):
            svc.start_worker()
        training = {**TRAINING, "max_steps": 400}
        jobs = [svc.create_job(client, corpus["id"], training=training, name=f"pg-{i}")["id"] for i in range(3)]
        wait_for(
            lambda: all(client.get(f"/jobs/{j}").json()["status"] == "running" for j in jobs), 60, "3 running jobs"
        )
        wait_event(client, jobs[0], lambda e: e["type"] == "metrics")

        # Probe the API throughout the outage, with a client that records 500s instead of raising.
        codes: list[int] = []
        stop = threading.Event()

        def probe():
            with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
                while not stop.is_set():
                    try:
                        codes.append(c.get(f"/jobs/{jobs[0]}").status_code)
                    except httpx.TransportError:
                        codes.append(0)
                    time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        database_outage(postgres_url, seconds=5)
        wait_for(lambda: codes and codes[-1] == 200, 30, "the API to recover by itself")
        stop.set()
        prober.join()
        still_running = [j for j in jobs if client.get(f"/jobs/{j}").json()["status"] == "running"]
        print("API answers during the outage:", {c: codes.count(c) for c in set(codes)}, "running:", still_running)
        assert still_running, "the outage hit running jobs"
        assert 503 in codes and 500 not in codes and 0 not in codes, sorted(set(codes))

        for job_id in jobs:
            job = svc.wait_job(client, job_id, timeout=180)
            assert job["status"] == "succeeded", (job, svc.log_text())
            events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
            statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
            # Never run twice at once: every "running" after the first follows a "queued" (requeued).
            for before, after in zip(statuses, statuses[1:], strict=False):
                assert not (before == "running" and after == "running"), statuses
            assert job["attempts"] == statuses.count("running"), (job, statuses)  # no clean requeues here
            assert job["progress"]["step"] == training["max_steps"]
            print(job_id, "attempts", job["attempts"], statuses)
        assert all(w.poll() is None for w in svc.workers), "every worker rode it out"
    finally:
        svc.stop()


# -- readers that go away ------------------------------------------------------------------------------


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
