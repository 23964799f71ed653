"""The HTTP contract where it needs the real thing: a live worker, a trained job, the server process's
memory, `charrnn serve`, and an app that never imports torch. Everything that needs no worker (auth,
ownership, pagination, uploads, validation, unknown ids) runs in-process in tests/api/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


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
