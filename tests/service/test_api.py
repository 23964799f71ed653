"""The HTTP contract without training: auth, ownership, pagination, and every kind of bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, small_corpus


def test_app_never_imports_torch():
    code = "import sys, app.main, app.cli; assert 'torch' not in sys.modules, 'app imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_health_ready_metrics_docs(service):
    assert httpx.get(service.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1
    metrics = httpx.get(service.url + "/metrics").text
    assert "charrnn_jobs{" in metrics and "charrnn_http_requests_total" in metrics
    spec = httpx.get(service.url + "/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
    assert httpx.get(service.url + "/docs").status_code == 200


def test_auth_required_and_isolation(service):
    with service.client(key=None) as anon:
        r = anon.get("/corpora")
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    with service.client(key="crn_wrong") as wrong:
        assert wrong.get("/corpora").status_code == 401

    made = service.cli("keys", "create", "bob")
    bob_key, bob_key_id = (
        made.stdout.strip().splitlines()[-1],
        re.search(r"key_[0-9a-f]+", made.stderr).group(),
    )
    with service.client() as alice, service.client(key=bob_key) as bob:
        mine = service.upload(alice, small_corpus(5000), name="alice-only")
        assert bob.get(f"/corpora/{mine['id']}").status_code == 404
        assert bob.delete(f"/corpora/{mine['id']}").status_code == 404
        assert all(c["id"] != mine["id"] for c in bob.get("/corpora").json()["data"])
        r = bob.post("/jobs", json={"corpus_id": mine["id"]})
        assert r.status_code == 404
        theirs = service.upload(bob, small_corpus(5000), name="bob-only")
        assert alice.get(f"/corpora/{theirs['id']}").status_code == 404

        # A second key with the same name is the same owner; revoking one key leaves the other working.
        bob2_key = service.cli("keys", "create", "bob").stdout.strip().splitlines()[-1]
        with service.client(key=bob2_key) as bob2:
            assert bob2.get(f"/corpora/{theirs['id']}").status_code == 200
        listing = service.cli("keys", "list").stdout
        assert bob_key_id in listing and bob_key not in listing  # keys are never shown again
        assert service.cli("keys", "revoke", bob_key_id).returncode == 0
        assert bob.get("/corpora").status_code == 401
        with service.client(key=bob2_key) as bob2:
            assert bob2.get(f"/corpora/{theirs['id']}").status_code == 200
        assert service.cli("keys", "revoke", bob_key_id).returncode == 1  # already revoked


def test_pagination(service, client):
    ids = [service.upload(client, small_corpus(3000 + i), name=f"page-{i}")["id"] for i in range(5)]
    first = client.get("/corpora", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["has_more"]
    assert [c["id"] for c in first["data"]] == ids[::-1][:2]  # newest first
    second = client.get("/corpora", params={"limit": 2, "after": first["data"][-1]["id"]}).json()
    assert [c["id"] for c in second["data"]] == ids[::-1][2:4]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        r = client.get("/corpora", params=bad)
        assert r.status_code == 422 and "limit" in r.json()["message"]


def test_upload_variants_and_errors(service, client):
    raw = client.post(
        "/corpora",
        params={"name": "raw"},
        content="héllo wörld\n".encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert raw.status_code == 201
    assert raw.json()["num_chars"] == 12 and raw.json()["size_bytes"] == 14 and raw.json()["vocab_size"] == 10

    form = client.post("/corpora", files={"file": ("my file.txt", b"abc abc\n", "text/plain")})
    assert form.status_code == 201 and form.json()["name"] == "my file.txt"
    # Stored by content hash, never under the name the client sent.
    stored = list((service.data_dir / "corpora").glob("*.txt"))
    assert all(p.stem in {raw.json()["sha256"], form.json()["sha256"]} or len(p.stem) == 64 for p in stored)

    empty = client.post("/corpora", content=b"", headers={"Content-Type": "text/plain"})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]

    bad = b"good text " * 10 + b"\xff\xfe rest"
    r = client.post("/corpora", content=bad, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "offset 100" in r.json()["detail"] and "0xff" in r.json()["detail"]
    # The bad byte split across chunks and inside a multipart form: the offset is still exact.
    split = "é".encode() * 5000 + b"\xc3(" + b"x" * 10
    r = client.post("/corpora", files={"file": ("x.txt", split, "text/plain")})
    assert r.status_code == 422 and "offset 10000" in r.json()["detail"]
    truncated = "abc€".encode()[:-1]
    r = client.post("/corpora", content=truncated, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "offset 3" in r.json()["detail"]

    r = client.post("/corpora", json={"text": "hello"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]
    r = client.post("/corpora", files={"other": ("x.txt", b"abc", "text/plain")})
    assert r.status_code == 422 and "`file`" in r.json()["detail"]
    r = client.post("/corpora", params={"name": "n" * 201}, content=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422

    too_big = client.post("/corpora", content=b"a" * 1_100_000, headers={"Content-Type": "text/plain"})
    assert too_big.status_code == 413 and "CHARRNN_MAX_CORPUS_BYTES" in too_big.json()["detail"]
    assert not list((service.data_dir / "corpora").glob(".upload-*"))  # no temp files left behind


def rss_kb(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_big_streamed_upload_is_refused_with_flat_memory(service, client):
    """40 MB against a 1 MB limit, chunked (no Content-Length): refused with 413, and the server's
    peak memory barely moves (the body is never held in memory)."""
    pid = service.api_proc.pid
    client.get("/corpora")  # warm up the code path first
    before = rss_kb(pid)
    chunk = b"All the world's a stage.\n" * 4000  # 100 kB

    def body():
        for _ in range(400):
            yield chunk

    r = client.post("/corpora", content=body(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    r = client.post("/corpora", files={"file": ("big.txt", b"".join([chunk] * 30), "text/plain")})
    assert r.status_code == 413
    grown_mb = (rss_kb(pid) - before) / 1024
    print(f"API peak RSS growth over a 40 MB streamed upload: {grown_mb:.1f} MB")
    assert grown_mb < 15, f"peak RSS grew by {grown_mb:.1f} MB"
    assert client.get("/healthz").status_code == 200


def test_job_validation(service, client, corpus):
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
    tiny = service.upload(client, small_corpus(2000), name="tiny")
    r = client.post("/jobs", json={"corpus_id": tiny["id"], "training": {"batch_size": 64, "seq_len": 64}})
    assert r.status_code == 422 and "batch_size" in r.json()["detail"] and "needs at least" in r.json()["detail"]


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


def test_cancel_queued_and_finished(service, client, corpus, trained_job):
    r = client.post(f"/jobs/{trained_job['id']}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]
    listing = client.get("/jobs", params={"status": "succeeded"}).json()["data"]
    assert any(j["id"] == trained_job["id"] for j in listing)
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_delete_corpus(service, client):
    c = service.upload(client, "a unique text to delete\n" * 10, name="to-delete")
    path = service.data_dir / "corpora" / f"{c['sha256']}.txt"
    assert path.is_file()
    assert client.delete(f"/corpora/{c['id']}").status_code == 204
    assert client.get(f"/corpora/{c['id']}").status_code == 404
    assert not path.exists()
    assert client.delete(f"/corpora/{c['id']}").status_code == 404


@pytest.mark.slow
def test_serve_makes_one_key_and_stops_cleanly_on_ctrl_c(tmp_path):
    """`charrnn serve` with no key at all prints a new one once; Ctrl-C stops the API and its worker."""
    import os
    import signal
    import time

    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(CHARRNN_DATA_DIR=str(tmp_path), CHARRNN_TRAIN_THREADS="1", CHARRNN_GENERATION_THREADS="1")

    def serve() -> tuple[subprocess.Popen, str]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )  # its own process group, as a terminal gives it
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)

    def ctrl_c(proc: subprocess.Popen) -> str:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGINT, 130), proc.returncode
        time.sleep(0.5)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return out
        raise AssertionError("something of serve's process group is still running")

    proc, url = serve()
    first = ctrl_c(proc)
    key = first.strip().splitlines()[-1]
    assert key.startswith("crn_")

    proc, url = serve()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(url + "/corpora", headers=headers).status_code == 200
    finally:
        second = ctrl_c(proc)
    assert second.strip() == "", "the key is printed only the first time"
