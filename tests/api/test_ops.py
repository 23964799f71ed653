"""Liveness, readiness, metrics and the API's documentation. Readiness with a real worker: tests/service."""

from __future__ import annotations

import os
import socket

from app.db import session_scope
from app.ids import new_id
from app.workers import repository as workers
from tests.harness import KEY


def test_health_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    metrics = client.get("/metrics").text
    assert "charrnn_jobs{" in metrics and "charrnn_http_requests_total" in metrics
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
    assert client.get("/docs").status_code == 200


def test_ready_only_with_a_live_worker(client):
    """Not ready (503) while no worker has checked in; ready once one has, and not after it stops."""
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["database"] == "ok" and r.json()["workers"] == 0
    worker_id = new_id("wrk")
    with session_scope() as session:
        workers.register(
            session, worker_id=worker_id, hostname=socket.gethostname(), pid=os.getpid(),
            url="http://127.0.0.1:9", device="cpu",
        )
    try:
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready", "database": "ok", "workers": 1}
    finally:
        with session_scope() as session:
            workers.stopped(session, worker_id=worker_id)
    assert client.get("/readyz").status_code == 503


def test_a_bug_in_a_route_answers_500_with_an_id_that_the_log_files_its_traceback_under(api, monkeypatch, caplog):
    """A ValueError from a bug is not the user's mistake: they get an error id, never its words."""
    from fastapi.testclient import TestClient

    from app.corpora import repository

    def planted(*args, **kwargs):
        raise ValueError("planted bug at /srv/secret/path")

    monkeypatch.setattr(repository, "list_page", planted)
    with TestClient(api.app, headers={"Authorization": f"Bearer {KEY}"}, raise_server_exceptions=False) as c:
        r = c.get("/corpora")
    assert r.status_code == 500, r.text
    detail = r.json()["detail"]
    assert detail.startswith("internal error err_") and "planted" not in r.text and "/srv" not in r.text, detail
    error_id = detail.split()[2].rstrip(":")
    logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert logged and logged[0].exc_info and "planted bug" in str(logged[0].exc_info[1])
