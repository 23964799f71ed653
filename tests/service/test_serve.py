"""`charrnn serve` keeps its embedded worker alive: a worker that dies is restarted, and /readyz says so."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from tests.conftest import Serve, wait_for


def readiness(url: str) -> tuple[int, dict]:
    try:
        response = httpx.get(url + "/readyz", timeout=2)
    except httpx.TransportError:
        return 0, {}
    return response.status_code, response.json()


@pytest.mark.slow
def test_serve_restarts_a_worker_that_dies_and_readyz_says_so(tmp_path):
    serve = Serve(tmp_path / "data")
    serve.start()
    url = serve.url
    try:
        _, first = wait_for(lambda: (r := readiness(url))[0] == 200 and r, 60, "serve to be ready")
        assert first["embedded_worker"]["status"] == "running"
        assert first["embedded_worker"]["restarts"] == 0
        old_pid = first["embedded_worker"]["pid"]

        os.kill(old_pid, signal.SIGKILL)  # the OOM killer, a segfault: anything but a requested stop
        # The first restart waits 1 s: long enough to see readiness say so.
        code, body = wait_for(
            lambda: (r := readiness(url))[1].get("embedded_worker", {}).get("status") == "restarting" and r,
            30,
            "serve to notice the dead worker",
        )
        assert code == 503 and body["embedded_worker"]["last_exit"] == -signal.SIGKILL

        def ready_with_new_worker():
            code, body = readiness(url)
            worker = body.get("embedded_worker", {})
            return code == 200 and worker.get("pid") != old_pid and worker.get("status") == "running" and body

        body = wait_for(ready_with_new_worker, 60, "a restarted worker to register")
        assert body["embedded_worker"]["restarts"] == 1
        assert body["embedded_worker"]["last_exit"] == -signal.SIGKILL
        assert body["workers"] >= 1
    finally:
        code = serve.signal_group(signal.SIGINT)
    assert code in (0, -signal.SIGINT, 130)
