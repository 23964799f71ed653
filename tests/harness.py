"""The harness that tests and benchmarks share: the service as real processes (API, workers, `charrnn
serve`) on a temporary data directory, waiting for them, free ports, a throwaway PostgreSQL database and
dummy queued jobs. It imports no pytest, so `python benchmarks/bench_x.py` can use it too.

Tests run on a shared 2-core machine, so by default a Service pins one thread per process, 3-second
leases and tiny jobs; a benchmark passes `test_defaults=False` and every setting it measures under.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "crn_test_owner_alice_key_0123456789"

# Tiny but real: trains in a second or two on a laptop CPU.
# The first 40 KB of tinyshakespeare (public domain), shipped with the tests: a clone needs nothing beside it.
SHAKESPEARE = ROOT / "tests" / "data" / "tinyshakespeare-40k.txt"


def small_corpus(n_bytes: int = 20_000) -> str:
    return SHAKESPEARE.read_bytes()[:n_bytes].decode("utf-8", "ignore")


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
# One thread each: tests share 2 cores with other processes, and oversubscribed torch crawls.
TEST_SETTINGS = {"device": "cpu", "job_lease_seconds": 3, "train_threads": 1, "generation_threads": 1}

POSTGRES_ADMIN_DSN = os.environ.get(
    "CHARRNN_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """predicate()'s first truthy value, polled every `every` s; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def fail_on_server_error(response: httpx.Response) -> None:
    # A 500 is a bug whatever a test was checking (and a benchmark would count it as a fast answer);
    # 503 (no worker) is a legitimate answer.
    if response.status_code in (500, 502):
        response.read()
        raise AssertionError(
            f"server error {response.status_code} on {response.request.method} {response.request.url}: {response.text}"
        )


def settings_env(settings: dict) -> dict[str, str]:
    """`train_threads=1` -> {"CHARRNN_TRAIN_THREADS": "1"}."""
    return {f"CHARRNN_{k.upper()}": str(v) for k, v in settings.items()}


def client_for(url: str, key: str | None = KEY, timeout: float = 60, **kwargs) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=url, headers=headers, timeout=timeout, event_hooks={"response": [fail_on_server_error]}, **kwargs
    )


def require_postgres() -> None:
    """For tests: CI has the server, so there a missing one fails the test; elsewhere the test skips."""
    import pytest

    why_not = postgres_available()
    if why_not:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(why_not)


def postgres_available() -> str | None:
    """None if the local PostgreSQL server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN!r}: {exc}"


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server; yields its SQLAlchemy URL, drops it (and its
    connections) afterwards."""
    import psycopg

    name = f"charrnn_test_{uuid.uuid4().hex[:12]}"
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


class Service:
    """One data directory with an API process and any number of worker processes.

    `settings` become CHARRNN_* variables (`train_threads=1` -> CHARRNN_TRAIN_THREADS=1), over
    TEST_SETTINGS unless `test_defaults` is False; anything not given is the service's default.
    """

    def __init__(self, root: Path, *, test_defaults: bool = True, **settings):
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.training_defaults = TINY_TRAINING if test_defaults else {}
        self.env = {
            **os.environ,
            "CHARRNN_DATA_DIR": str(self.data_dir),
            "CHARRNN_BOOTSTRAP_KEY": KEY,
            "PYTHONUNBUFFERED": "1",
            **settings_env({**(TEST_SETTINGS if test_defaults else {}), **settings}),
        }
        self.api_proc: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.root / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=open(log, "ab"),  # noqa: SIM115  (the child keeps it)
            stderr=subprocess.STDOUT,
        )

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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.api_proc.poll() is not None:
                raise AssertionError("API exited:\n" + self.log_text())
            time.sleep(0.1)
        raise AssertionError("API did not start:\n" + self.log_text())

    def start_worker(self, wait: bool = True, data_dir: Path | None = None) -> subprocess.Popen:
        """A worker; `data_dir`: its own, sharing nothing on disk with the API (a store and PostgreSQL)."""
        before = self.live_workers() if wait else 0
        proc = self._spawn(["worker"], "worker", {"CHARRNN_DATA_DIR": str(data_dir)} if data_dir else None)
        self.workers.append(proc)
        if wait:
            self._wait_registered([proc], before, seconds=60)  # importing torch takes long on a busy machine
        return proc

    def start_workers(self, n: int) -> list[subprocess.Popen]:
        """n workers started together, returned once all of them are registered: their imports (torch)
        overlap instead of running one after another."""
        before = self.live_workers()
        procs = [self.start_worker(wait=False) for _ in range(n)]
        self._wait_registered(procs, before, seconds=60 + 10 * n)  # n imports of torch share the cores
        return procs

    def _wait_registered(self, procs: list[subprocess.Popen], before: int, *, seconds: float) -> None:
        """Until `procs` have joined the `before` live workers; fails if one exits or time runs out."""
        deadline = time.monotonic() + seconds
        while self.live_workers() < before + len(procs):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise AssertionError(f"{len(procs)} worker(s) did not register:\n" + self.log_text())
            time.sleep(0.1)

    def worker_url(self) -> str:
        """The generation server of the most recently heard-from live worker (from the SQLite database)."""
        with sqlite3.connect(self.data_dir / "charrnn.db") as db:
            query = "SELECT url FROM workers WHERE stopped_at IS NULL ORDER BY heartbeat_at DESC"
            return db.execute(query).fetchone()[0]

    def live_workers(self) -> int:
        return httpx.get(self.url + "/readyz", timeout=5).json().get("workers", 0)

    def client(self, key: str | None = KEY) -> httpx.Client:
        return client_for(self.url, key)

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
        """A job of `model` (the tiny one if not given) whose training settings are `training` over the
        service's training defaults (the tiny run's, unless the service was made without test defaults)."""
        body = {
            "corpus_id": corpus_id,
            "model": model or TINY_MODEL,
            "training": {**self.training_defaults, **(training or {})},
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


@contextlib.contextmanager
def database_service(root: Path, kind: str, **settings) -> Iterator[Service]:
    """An API alone (no worker) on SQLite or on a throwaway PostgreSQL database (`kind`)."""
    with contextlib.ExitStack() as stack:
        if kind == "postgres":
            require_postgres()
            settings["database_url"] = stack.enter_context(throwaway_database())
        svc = Service(root, **settings)
        stack.callback(svc.stop)
        svc.start_api()
        yield svc


def new_key(service: Service, owner: str) -> tuple[str, str]:
    """(key, key id) for a fresh key of `owner`, made with the CLI as an operator would."""
    made = service.cli("keys", "create", owner)
    assert made.returncode == 0, made.stderr
    key_id = next(word for word in made.stderr.split() if word.startswith("key_"))
    return made.stdout.strip().splitlines()[-1], key_id


def read_sse(response: httpx.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a Server-Sent Events response, read to its end."""
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


def wait_event(client: httpx.Client, job_id: str, predicate, timeout: float = 60) -> dict:
    """The job's first event for which predicate(event) is true, polled every 50 ms."""
    deadline, after = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        for event in client.get(f"/jobs/{job_id}/events", params={"after": after, "limit": 1000}).json()["data"]:
            after = event["id"]
            if predicate(event):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no such event for {job_id} within {timeout}s")


def curve(client: httpx.Client, job_id: str) -> list[tuple]:
    """The job's loss curve: (step, train_loss, val_loss) per metric point."""
    return [(m["step"], m["train_loss"], m["val_loss"]) for m in client.get(f"/jobs/{job_id}/metrics").json()]


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def training_children(worker_pid: int) -> list[int]:
    """A worker's training children: the processes its process server (multiprocessing's forkserver, a
    child of the worker) forked."""
    servers = [p for p in children_of(worker_pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return [child for server in servers for child in children_of(server)]


class Serve:
    """`charrnn serve` (API and embedded worker) in its own process group, as a terminal or an init system
    runs it. Each start listens on a new port; stdout (where a new key is printed) and stderr go to files."""

    def __init__(self, data_dir: Path, bootstrap_key: str | None = KEY, **settings):
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
        self.env.update(
            CHARRNN_DATA_DIR=str(data_dir),
            **({"CHARRNN_BOOTSTRAP_KEY": bootstrap_key} if bootstrap_key else {}),
            **settings_env({**TEST_SETTINGS, **settings}),
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
        return client_for(self.url, key)

    def signal_group(self, sig: int, timeout: float = 60) -> int:
        """Send `sig` to the whole process group; wait until every process of it is gone. The exit code."""
        os.killpg(self.proc.pid, sig)
        code = self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + 30  # a busy machine delays the last exits
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


class MotoS3:
    """A real S3 server for the tests: moto's ThreadedMotoServer (real HTTP, real request signing) on a
    free port of 127.0.0.1, shared by a whole test session. Each `bucket()` is a fresh one, so tests share
    the server but never each other's objects."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.buckets = 0

    @contextmanager
    def environment(self) -> Iterator[None]:
        """This process's AWS_* variables pointed at the server, for boto3 clients made in the test itself."""
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def bucket(self, prefix: str = "charrnn") -> str:
        """A new, empty bucket; returns its storage URL (`s3://bucket/prefix`)."""
        import boto3

        self.buckets += 1
        name = f"test-{self.buckets}-{uuid.uuid4().hex[:8]}"
        with self.environment():
            boto3.client("s3").create_bucket(Bucket=name)
        return f"s3://{name}/{prefix}"

    def objects(self, url: str) -> list[str]:
        """Every key in the URL's bucket (under its prefix too, and beside it)."""
        import boto3

        bucket = url.removeprefix("s3://").split("/", 1)[0]
        with self.environment():
            pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.server.stop()
