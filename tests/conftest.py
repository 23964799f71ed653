"""Shared fixtures. Service tests run the real thing: a SQLite file in a temp dir, the API under
uvicorn on a free port, and real worker processes training tiny models."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The first 40 KB of tinyshakespeare (public domain), shipped with the tests: a clone needs nothing beside it.
SHAKESPEARE = ROOT / "tests" / "data" / "tinyshakespeare-40k.txt"

KEY = "crn_test_owner_alice_key_0123456789"

# Tiny but real: trains in a second or two on a laptop CPU.
TINY_MODEL = {"cell": "lstm", "hidden_size": 32, "num_layers": 1, "embedding_dim": 16}
TINY_TRAINING = {
    "seq_len": 16,
    "batch_size": 4,
    "max_steps": 60,
    "eval_every": 20,
    "checkpoint_every": 20,
    "log_every": 10,
    "sample_length": 40,
    "seed": 7,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    """predicate()'s first truthy value, polled every 0.2 s; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def small_corpus(n_bytes: int = 20_000) -> str:
    return SHAKESPEARE.read_bytes()[:n_bytes].decode("utf-8", "ignore")


def _fail_on_server_error(response: httpx.Response) -> None:
    # A 500 is a bug whatever the test was checking; 503 (no worker) is a legitimate answer.
    if response.status_code == 500 or response.status_code == 502:
        response.read()
        raise AssertionError(
            f"server error {response.status_code} on {response.request.method} {response.request.url}: {response.text}"
        )


def queue_dummy_jobs(n: int) -> list[str]:
    """Queue n jobs on a placeholder corpus straight into the configured database (for queue tests)."""
    from app.db import session_scope, utcnow
    from app.ids import new_id
    from app.models import Corpus, Job

    with session_scope() as session:
        corpus = Corpus(
            id=new_id("corpus"),
            owner="o",
            name="c",
            sha256="0" * 64,
            size_bytes=1,
            num_chars=1,
            vocab_size=1,
            path="corpora/x.txt",
        )
        session.add(corpus)
        ids = [new_id("job") for _ in range(n)]
        for job_id in ids:
            session.add(
                Job(
                    id=job_id,
                    owner="o",
                    corpus_id=corpus.id,
                    status="queued",
                    model={},
                    training={},
                    progress={},
                    attempts=0,
                    created_at=utcnow(),
                )
            )
    return ids


class Service:
    """One data directory with an API process and any number of worker processes."""

    def __init__(self, root: Path, **settings):
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CHARRNN_DATA_DIR": str(self.data_dir),
            "CHARRNN_BOOTSTRAP_KEY": KEY,
            "CHARRNN_DEVICE": "cpu",
            "CHARRNN_JOB_LEASE_SECONDS": "3",
            # One thread each: tests share 2 cores with other processes, and oversubscribed torch crawls.
            "CHARRNN_TRAIN_THREADS": "1",
            "CHARRNN_GENERATION_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **{f"CHARRNN_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.api_proc: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.root / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )  # noqa: SIM115

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_api(self) -> None:
        self.api_proc = self._spawn(["api", "--port", str(self.port)], "api")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.api_proc.poll() is None, self.log_text()
            time.sleep(0.1)
        raise AssertionError("API did not start:\n" + self.log_text())

    def start_worker(self, wait: bool = True) -> subprocess.Popen:
        before = self.live_workers() if wait else 0
        proc = self._spawn(["worker"], "worker")
        self.workers.append(proc)
        if wait:
            deadline = time.monotonic() + 30
            while self.live_workers() <= before:
                assert proc.poll() is None, self.log_text()
                assert time.monotonic() < deadline, "worker did not register:\n" + self.log_text()
                time.sleep(0.1)
        return proc

    def worker_url(self) -> str:
        """The generation server of the most recently heard-from live worker (from the SQLite database)."""
        import sqlite3

        with sqlite3.connect(self.data_dir / "charrnn.db") as db:
            query = "SELECT url FROM workers WHERE stopped_at IS NULL ORDER BY heartbeat_at DESC"
            return db.execute(query).fetchone()[0]

    def live_workers(self) -> int:
        return httpx.get(self.url + "/readyz", timeout=5).json().get("workers", 0)

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(
            base_url=self.url, headers=headers, timeout=60, event_hooks={"response": [_fail_on_server_error]}
        )

    def log_text(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for proc in [*self.workers, self.api_proc]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.api_proc]:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def upload(self, client: httpx.Client, text: str, name: str = "corpus") -> dict:
        r = client.post(
            "/corpora", params={"name": name}, content=text.encode(), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 201, r.text
        return r.json()

    def create_job(self, client: httpx.Client, corpus_id: str, model=None, training=None, **extra) -> dict:
        body = {
            "corpus_id": corpus_id,
            "model": model or TINY_MODEL,
            "training": {**TINY_TRAINING, **(training or {})},
            **extra,
        }
        r = client.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def wait_job(
        self,
        client: httpx.Client,
        job_id: str,
        statuses=("succeeded", "failed", "cancelled"),
        timeout: float = 90,
        poll: float = 0.2,
    ) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s\n{self.log_text()}")
            time.sleep(poll)


class Serve:
    """`charrnn serve` (API and embedded worker) in its own process group, as a terminal or an init system
    runs it. Each start listens on a new port; stdout (where a new key is printed) and stderr go to files."""

    def __init__(self, data_dir: Path, bootstrap_key: str | None = KEY, **settings):
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
        self.env.update(
            CHARRNN_DATA_DIR=str(data_dir),
            CHARRNN_DEVICE="cpu",
            CHARRNN_TRAIN_THREADS="1",
            CHARRNN_GENERATION_THREADS="1",
            CHARRNN_JOB_LEASE_SECONDS="3",
            **({"CHARRNN_BOOTSTRAP_KEY": bootstrap_key} if bootstrap_key else {}),
            **{f"CHARRNN_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.url = ""

    def _files(self) -> tuple[Path, Path]:
        return (self.data_dir.parent / f"serve-{self.starts}.out", self.data_dir.parent / f"serve-{self.starts}.err")

    def start(self, ready: bool = True) -> None:
        """Start it; with `ready`, wait until /readyz says 200 (a worker is registered)."""
        self.starts += 1
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        out, err = self._files()
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
                cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while ready:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "serve exited:\n" + self.output()
            assert time.monotonic() < deadline, "serve did not become ready:\n" + self.output()
            time.sleep(0.2)

    def stdout(self) -> str:
        """What this start printed on stdout (a new API key, and nothing else)."""
        return self._files()[0].read_text()

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in self._files() if path.exists())

    def client(self, key: str = KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
            event_hooks={"response": [_fail_on_server_error]},
        )

    def signal_group(self, sig: int, timeout: float = 60) -> int:
        """Send `sig` to the whole process group; wait until every process of it is gone. The exit code."""
        os.killpg(self.proc.pid, sig)
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 10
        while True:  # nothing of the group is left behind, the worker and its training child included
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return code
            assert time.monotonic() < deadline, "something of serve's process group is still running"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal_group(signal.SIGTERM)
            except (AssertionError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def postgres_url():
    """A throwaway database on the local PostgreSQL server, dropped after the test."""
    from tests.postgres import require_postgres, throwaway_database

    require_postgres()
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The shared service: an API and one worker, a 1 MB upload limit."""
    svc = Service(tmp_path_factory.mktemp("service"), max_corpus_bytes=1_000_000)
    svc.start_api()
    svc.start_worker()
    yield svc
    svc.stop()


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c


@pytest.fixture(scope="session")
def corpus(service):
    with service.client() as c:
        return service.upload(c, small_corpus(), name="shakespeare-20k")


@pytest.fixture(scope="session")
def trained_job(service, corpus):
    """One finished tiny job, shared by the tests that only read from it."""
    with service.client() as c:
        job = service.create_job(c, corpus["id"], name="shared-tiny")
        job = service.wait_job(c, job["id"])
    assert job["status"] == "succeeded", job
    return job
