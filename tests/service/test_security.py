"""Security and faults, second round (issue 13): revoked keys and open streams, the shared-file race
between owners, response hardening, a locked database, oversized vocabularies, Last-Event-ID, uploads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import TINY_MODEL, TINY_TRAINING, Service, small_corpus

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def new_key(service: Service, owner: str) -> tuple[str, str]:
    """(key, key id) for a fresh key of `owner`, made with the CLI as an operator would."""
    made = service.cli("keys", "create", owner)
    assert made.returncode == 0, made.stderr
    key_id = next(word for word in made.stderr.split() if word.startswith("key_"))
    return made.stdout.strip().splitlines()[-1], key_id


@contextlib.contextmanager
def database_service(tmp_path, kind: str, **settings):
    """An API alone (no worker) on SQLite or on a throwaway PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        if kind == "postgres":
            from tests.postgres import require_postgres, throwaway_database

            require_postgres()
            settings["database_url"] = stack.enter_context(throwaway_database())
        svc = Service(tmp_path, **settings)
        stack.callback(svc.stop)
        svc.start_api()
        yield svc


# --- 2. a revoked key's open stream ends -------------------------------------------------------------------


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


# --- 3. owner A's delete and owner B's upload of the same bytes ---------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_delete_racing_identical_upload_keeps_the_file(tmp_path, kind):
    rounds = 60
    with database_service(tmp_path, kind) as svc:
        bob_key, _ = new_key(svc, "bob")
        lost, last_b = [], None
        with svc.client() as alice, svc.client(key=bob_key) as bob:
            for i in range(rounds):
                text = small_corpus(3000) + f"\nround {i} {uuid.uuid4().hex}\n"
                a = svc.upload(alice, text, name=f"a-{i}")
                start = threading.Barrier(2)
                results = {}

                def delete_a(a_id=a["id"], start=start, results=results):
                    start.wait()
                    results["delete"] = alice.delete(f"/corpora/{a_id}").status_code

                def upload_b(text=text, start=start, results=results, name=f"b-{i}"):
                    start.wait()
                    results["upload"] = svc.upload(bob, text, name=name)

                threads = [threading.Thread(target=delete_a), threading.Thread(target=upload_b)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)
                assert results["delete"] == 204, results
                b = results["upload"]
                assert b["sha256"] == hashlib.sha256(text.encode()).hexdigest()
                if not (svc.data_dir / "corpora" / f"{b['sha256']}.txt").is_file():
                    lost.append(i)
                last_b = b
            assert not lost, f"owner B's corpus file was deleted by owner A's delete in rounds {lost} of {rounds}"
            assert not list((svc.data_dir / "corpora").glob(".deleted-*")), "a deleted file was left behind"

            # And a job on B's corpus can read it: train a few steps on it.
            svc.start_worker()
            job = svc.create_job(bob, last_b["id"], training={"max_steps": 5, "eval_every": 5, "checkpoint_every": 5})
            job = svc.wait_job(bob, job["id"], timeout=120)
            assert job["status"] == "succeeded", job


# --- 4. response hardening ---------------------------------------------------------------------------------


def test_security_headers_on_every_response(service, client, corpus):
    anonymous = [
        httpx.get(service.url + "/healthz"),
        httpx.get(service.url + "/openapi.json"),
        httpx.get(service.url + "/corpora"),  # 401
        httpx.get(service.url + "/no-such-route"),  # 404
    ]
    keyed = [
        client.get("/corpora"),
        client.get(f"/corpora/{corpus['id']}"),
        client.get("/jobs/job_nope"),  # 404
        client.post("/jobs", json={}),  # 422
    ]
    for response in anonymous + keyed:
        where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, f"{where}: {name} is {response.headers.get(name)!r}"
        assert "server" not in response.headers, f"{where}: Server: {response.headers['server']}"
    for response in keyed:
        assert response.headers.get("cache-control") == "no-store", response.request.url


def test_openapi_declares_bearer_scheme_and_worker_errors(service):
    spec = httpx.get(service.url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert spec["paths"]["/corpora"]["get"]["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/jobs/{job_id}/events"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    for path in ("/generate", "/score"):
        assert {"502", "503"} <= set(spec["paths"][path]["post"]["responses"]), path


def test_validation_error_echoes_only_a_short_prefix(client):
    huge = "x" * 10_000_000
    r = client.post("/generate", json={"model": "job_nope", "prompt": huge})
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 4000, f"the 422 is {len(r.content):,} bytes"
    assert "prompt" in r.json()["message"]
    # A huge unknown field: the whole body is the input, and it is clipped too.
    r = client.post("/jobs", json={"corpus_id": "corpus_x", "junk": huge})
    assert r.status_code == 422 and len(r.content) < 4000, len(r.content)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", '{"model": "job_nope", "temperature": NaN}'),
        ("/generate", '{"model": "job_nope", "temperature": -Infinity}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "training": {"max_seconds": Infinity}}'),
        ("/generate", '{"model": "' + "\\ud800" * 100 + '"}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "training": {"seq_len": "\\udfff"}}'),
        ("/jobs", '{"corpus_id": "\\ud800"}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "name": "\\ud800"}'),
    ],
)
def test_nan_infinity_and_lone_surrogates_are_not_500(client, path, body):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (404, 422), r.text
    r.json()  # valid JSON whatever it echoes


def test_lone_surrogate_prompt_is_422(client, trained_job):
    r = client.post(
        "/generate",
        content=json.dumps({"model": trained_job["id"], "length": 5}).replace("}", ', "prompt": "ab\\ud800"}'),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "prompt" in r.json()["message"]


def test_no_server_paths_in_errors(service, client, corpus):
    job = service.create_job(client, corpus["id"], name="to-corrupt")
    job = service.wait_job(client, job["id"])
    assert job["status"] == "succeeded", job
    checkpoint = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"][0]
    for path in (service.data_dir / "runs").rglob("*.safetensors"):
        if job["id"] in str(path):
            path.write_bytes(path.read_bytes()[:100])  # every checkpoint of this job, corrupt
    r = client.post("/generate", json={"model": checkpoint["id"], "length": 5})
    assert r.status_code in (409, 410, 422), r.text
    root = str(service.data_dir.resolve())
    assert root not in r.text and "/runs/" not in r.text, r.text


# --- 9. a locked database --------------------------------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def test_locked_database_answers_503_and_health_stays_prompt(tmp_path):
    with database_service(tmp_path, "sqlite", sqlite_busy_timeout_seconds=2) as svc, svc.client() as client:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(svc.data_dir / "charrnn.db"), "6"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            result = {}

            def upload():
                result["r"] = client.post(
                    "/corpora", content=small_corpus(5000).encode(), headers={"Content-Type": "text/plain"}
                )

            uploader = threading.Thread(target=upload)
            uploader.start()
            slowest = 0.0
            while uploader.is_alive():
                t0 = time.monotonic()
                assert httpx.get(svc.url + "/healthz", timeout=10).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.1)
            uploader.join()
            assert slowest < 1.0, f"/healthz took {slowest:.1f}s while an upload waited for the lock"
            r = result["r"]
            # The lock outlasts the 2 s busy timeout: the answer is "come back", not a 500.
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] and "database" in r.json()["detail"]
            assert not list((svc.data_dir / "corpora").glob(".upload-*")), "the refused upload left its temp file"
        finally:
            holder.wait(timeout=30)
        # After the lock is gone, the same upload goes through.
        svc.upload(client, small_corpus(5000))


def test_postgres_gone_answers_503_then_recovers(tmp_path):
    from tests.postgres import ADMIN_DSN

    with database_service(tmp_path, "postgres") as svc, svc.client() as client:
        import psycopg

        name = svc.env["CHARRNN_DATABASE_URL"].rsplit("/", 1)[1]
        assert client.get("/corpora").status_code == 200
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                text_body = {"content": b"some text", "headers": {"Content-Type": "text/plain"}}
                for r in (client.get("/corpora"), client.post("/corpora", **text_body)):
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] and "database" in r.json()["detail"]
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert client.get("/corpora").status_code == 200  # and back by itself


# --- 11. a vocabulary that would not fit --------------------------------------------------------------------


def test_upload_with_too_many_distinct_characters_is_refused(client):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 20_000))  # 20,000 distinct CJK characters
    r = client.post("/corpora", content=text.encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 422, r.text
    assert "CHARRNN_MAX_VOCAB_SIZE" in r.json()["detail"] and "10,000" in r.json()["detail"]
    ok = client.post("/corpora", content=text[:5000].encode(), headers={"Content-Type": "text/plain"})
    assert ok.status_code == 201 and ok.json()["vocab_size"] == 5000


# --- 13. Last-Event-ID -------------------------------------------------------------------------------------


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


# --- 15. multipart messages --------------------------------------------------------------------------------


def multipart_in_chunks(fields: list[tuple[str, str | None, bytes]], chunk: int = 64, pause: float = 0.01):
    """A multipart body sent in small, spaced chunks, as a slow client's arrives (one chunk hides cut-off bugs)."""
    boundary = "charrnn-test-boundary"
    body = b""
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def chunks():
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]
            time.sleep(pause)

    return chunks(), headers


def test_multipart_name_too_long_says_so(client):
    for name in ("€" * 300, "€" * 201):
        chunks, headers = multipart_in_chunks([("name", None, name.encode()), ("file", "a.txt", b"hello world")])
        r = client.post("/corpora", content=chunks, headers=headers)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert ("longer than 200" in detail or "201 characters" in detail) and "UTF-8" not in detail, detail
    chunks, headers = multipart_in_chunks([("name", None, ("€" * 200).encode()), ("file", "a.txt", b"hello world")])
    r = client.post("/corpora", content=chunks, headers=headers)
    assert r.status_code == 201 and r.json()["name"] == "€" * 200


def test_multipart_with_two_files_is_refused(client):
    chunks, headers = multipart_in_chunks([("file", "a.txt", b"first file\n"), ("file", "b.txt", b"second file\n")])
    r = client.post("/corpora", content=chunks, headers=headers)
    assert r.status_code == 422, r.text
    assert "more than one `file`" in r.json()["detail"]


def test_error_handler_output_is_json_safe():
    from app.errors import _echo

    assert _echo(float("nan")) == "nan" and _echo(float("-inf")) == "-inf"
    assert _echo("\ud800") == "\\ud800"
    assert len(json.dumps(_echo({"prompt": "x" * 10_000_000}))) < 300
    assert _echo(2**80) == str(2**80)
