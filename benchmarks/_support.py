"""What the benchmarks share: the corpus argument, a service (API + workers as real processes) on a
temporary data directory, a throwaway PostgreSQL database, and dummy queued jobs.

The benchmarks' own, so that they stand apart from tests/ (whose harness pins threads and leases for
a shared test machine); each benchmark passes every setting it measures under. Imported as a sibling
module: `python benchmarks/bench_x.py` puts benchmarks/ on the path.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# tinyshakespeare (public domain, 1.1 MB), shipped in the repository for the quickstart.
SAMPLE_CORPUS = ROOT / "samples" / "tinyshakespeare.txt"
KEY = "crn_bench_owner_0123456789abcdef"
POSTGRES_ADMIN_DSN = os.environ.get(
    "CHARRNN_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def add_corpus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        type=Path,
        default=SAMPLE_CORPUS,
        help=f"a UTF-8 text file to train on (default: {SAMPLE_CORPUS.relative_to(ROOT)})",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail_on_server_error(response: httpx.Response) -> None:
    # A 500 would be counted as a fast answer; a benchmark must stop instead.
    if response.status_code in (500, 502):
        response.read()
        raise RuntimeError(f"server error {response.status_code} on {response.request.url}: {response.text}")


class Service:
    """One data directory with an API process and any number of worker processes.

    `settings` become CHARRNN_* variables (`train_threads=1` -> CHARRNN_TRAIN_THREADS=1); anything
    not given is the service's default.
    """

    def __init__(self, root: Path, **settings):
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CHARRNN_DATA_DIR": str(self.data_dir),
            "CHARRNN_BOOTSTRAP_KEY": KEY,
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
            stdout=open(log, "ab"),  # noqa: SIM115  (the child keeps it)
            stderr=subprocess.STDOUT,
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
            if self.api_proc.poll() is not None:
                raise RuntimeError("API exited:\n" + self.log_text())
            time.sleep(0.1)
        raise RuntimeError("API did not start:\n" + self.log_text())

    def start_worker(self) -> subprocess.Popen:
        before = self.live_workers()
        proc = self._spawn(["worker"], "worker")
        self.workers.append(proc)
        deadline = time.monotonic() + 30
        while self.live_workers() <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not register:\n" + self.log_text())
            time.sleep(0.1)
        return proc

    def live_workers(self) -> int:
        return httpx.get(self.url + "/readyz", timeout=5).json().get("workers", 0)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
            event_hooks={"response": [_fail_on_server_error]},
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
        r.raise_for_status()
        return r.json()

    def create_job(self, client: httpx.Client, corpus_id: str, model: dict, training: dict) -> dict:
        r = client.post("/jobs", json={"corpus_id": corpus_id, "model": model, "training": training})
        r.raise_for_status()
        return r.json()

    def wait_job(self, client: httpx.Client, job_id: str, timeout: float, poll: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['status']} after {timeout}s\n{self.log_text()}")
            time.sleep(poll)


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server; yields its SQLAlchemy URL, drops it afterwards."""
    import psycopg

    name = f"charrnn_bench_{uuid.uuid4().hex[:12]}"
    params = dict(part.split("=", 1) for part in POSTGRES_ADMIN_DSN.split())
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        user = params.get("user", "postgres")
        yield f"postgresql+psycopg://{user}@{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def queue_dummy_jobs(n: int) -> list[str]:
    """Queue n jobs on a placeholder corpus straight into the configured database."""
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
