"""The HTTP contract where it needs the real thing: a live worker, a trained job, the server process's
memory, `charrnn serve`, and an app that never imports torch. Everything that needs no worker (auth,
ownership, pagination, uploads, validation, unknown ids) runs in-process in tests/api/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Serve


def test_app_never_imports_torch():
    code = "import sys, app.main, app.cli; assert 'torch' not in sys.modules, 'app imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_ready_with_a_live_worker(service):
    """A real worker checks in and the API reports ready. The rest of /healthz, /metrics and the docs,
    and readiness without a worker, are checked in-process: tests/api/test_ops.py."""
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1


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


def test_cancel_finished(client, trained_job):
    """Cancelling a queued job and the status filter's validation: tests/api/test_jobs_validation.py."""
    r = client.post(f"/jobs/{trained_job['id']}/cancel")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]
    listing = client.get("/jobs", params={"status": "succeeded"}).json()["data"]
    assert any(j["id"] == trained_job["id"] for j in listing)


@pytest.mark.slow
def test_serve_makes_one_key_and_stops_cleanly_on_ctrl_c(tmp_path):
    """`charrnn serve` with no key at all prints a new one once; Ctrl-C stops the API and its worker."""
    import signal

    serve = Serve(tmp_path / "data", bootstrap_key=None)
    serve.start()
    # Ctrl-C reaches the whole process group, as a terminal sends it; nothing of it may be left running.
    assert serve.signal_group(signal.SIGINT) in (0, -signal.SIGINT, 130)
    key = serve.stdout().strip().splitlines()[-1]
    assert key.startswith("crn_")

    serve.start()
    try:
        with serve.client(key) as client:
            assert client.get("/corpora").status_code == 200
    finally:
        assert serve.signal_group(signal.SIGINT) in (0, -signal.SIGINT, 130)
    assert serve.stdout().strip() == "", "the key is printed only the first time"
