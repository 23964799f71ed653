"""The HTTP contract where it needs the real thing: a live worker, a trained job, the server process's
memory, `charrnn serve`, and an app that never imports torch. Everything that needs no worker (auth,
ownership, pagination, uploads, validation, unknown ids) runs in-process in tests/api/."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.harness import ROOT, Serve


def test_app_never_imports_torch():
    code = "import sys, app.main, app.cli; assert 'torch' not in sys.modules, 'app imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_ready_with_a_live_worker(service):
    """A real worker checks in and the API reports ready. The rest of /healthz, /metrics and the docs,
    and readiness without a worker, are checked in-process: tests/api/test_ops.py."""
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1


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
