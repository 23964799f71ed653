"""A full disk: writes answer 507 saying what to delete, deletes still go through (the
service gives back its reserve file for them), and once space is freed everything carries on.

The data directory lives on its own small tmpfs, filled for real; the test needs root to mount it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid

import pytest

from tests.harness import Service, small_corpus, wait_for

DISK = "8m"
RESERVE_BYTES = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {DISK} tmpfs (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path, chunk: int = 64 * 1024) -> None:
    """Write to `path` until the filesystem has no room left, down to single blocks."""
    with open(path, "ab", buffering=0) as f:
        while chunk >= 512:
            try:
                f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2


def text(n_bytes: int) -> str:
    """Distinct text (no two uploads share a stored file), from the sample corpus."""
    base = small_corpus()
    return (uuid.uuid4().hex + "\n" + base * (n_bytes // len(base) + 1))[:n_bytes]


@contextlib.contextmanager
def service_on(small_disk, **settings):
    """The API with its data directory on the small disk, once it has made its reserve file: (svc, client)."""
    svc = Service(small_disk / "svc", disk_reserve_bytes=RESERVE_BYTES, **settings)
    svc.root.mkdir()
    svc.start_api()
    try:
        client = svc.client()
        reserve = svc.data_dir / ".disk-reserve"
        wait_for(lambda: client.get("/corpora").status_code == 200 and reserve.exists(), 15, "the disk reserve")
        yield svc, client
    finally:
        svc.stop()


def create_jobs_until_refused(client, body: dict):
    """POST /jobs until one is not created (a few may still fit in SQLite's write-ahead log, which reuses
    its file): that answer, and every status on the way."""
    statuses = []
    for _ in range(200):
        r = client.post("/jobs", json=body)
        statuses.append(r.status_code)
        if r.status_code != 201:
            break
    return r, statuses


def test_a_full_disk_answers_507_and_deletes_free_it(small_disk):
    with service_on(small_disk, max_active_jobs_per_owner=1000, max_corpus_bytes=4_000_000) as (svc, client):
        reserve = svc.data_dir / ".disk-reserve"
        assert reserve.stat().st_size == RESERVE_BYTES
        big = svc.upload(client, text(1_500_000), name="big")
        kept = svc.upload(client, text(20_000), name="kept")

        fill(small_disk / "filler")  # someone else's file took the rest of the disk

        # Every write answers 507 naming the full disk and what to delete.
        job_body = {"corpus_id": kept["id"], "model": {"cell": "gru", "hidden_size": 8}, "training": {"max_steps": 5}}
        r, statuses = create_jobs_until_refused(client, job_body)
        assert r.status_code == 507, (statuses, r.text)
        detail = r.json()["detail"]
        assert "disk is full" in detail and "DELETE /corpora/{id}" in detail and "checkpoints" in detail, detail
        assert r.headers["Retry-After"]
        up = client.post(
            "/corpora", params={"name": "more"}, content=text(200_000).encode(), headers={"Content-Type": "text/plain"}
        )
        assert up.status_code == 507 and "disk is full" in up.json()["detail"], up.text

        # A delete goes through: the service gives back its reserve to let it write.
        r = client.delete(f"/corpora/{big['id']}")
        assert r.status_code == 204, r.text
        assert client.get(f"/corpora/{big['id']}").status_code == 404
        assert not reserve.exists()  # given back, and not made again while space is short

        # The freed space is usable at once: an upload and a job fit again.
        svc.upload(client, text(50_000), name="after")
        assert client.post("/jobs", json=job_body).status_code == 201

        # Once there is room to spare, the reserve comes back for the next time.
        os.unlink(small_disk / "filler")
        wait_for(lambda: client.get("/healthz").status_code == 200 and reserve.exists(), 15, "the reserve to return")
        assert reserve.stat().st_size == RESERVE_BYTES


def test_a_full_database_is_told_from_a_busy_one(tmp_path):
    """SQLite's "database or disk is full", as SQLAlchemy wraps it, is a full disk; a locked database is not."""
    from sqlalchemy import text as sql
    from sqlalchemy.exc import OperationalError

    from app.db import make_engine
    from app.ops.disk import is_disk_full

    engine = make_engine(f"sqlite:///{tmp_path / 'small.db'}", busy_timeout_seconds=0.1)
    with engine.begin() as conn:
        conn.execute(sql("CREATE TABLE t (x TEXT)"))
    with pytest.raises(OperationalError) as full, engine.begin() as conn:
        conn.execute(sql("PRAGMA max_page_count = 3"))  # the database may not grow: it is as good as a full disk
        conn.execute(sql("INSERT INTO t VALUES (:x)"), [{"x": "x" * 4000} for _ in range(10)])
    assert is_disk_full(full.value), full.value

    # Another writer (make_engine begins IMMEDIATE) holds the lock past the busy timeout.
    with engine.begin(), pytest.raises(OperationalError) as busy, engine.begin() as conn:
        conn.execute(sql("INSERT INTO t VALUES ('y')"))
    assert "locked" in str(busy.value) and not is_disk_full(busy.value)
    assert is_disk_full(OSError(28, "No space left on device")) and not is_disk_full(OSError(13, "Permission denied"))


def test_on_a_full_disk_jobs_and_checkpoints_can_be_deleted(small_disk):
    with service_on(small_disk, keep_checkpoints=2) as (svc, client):
        corpus = svc.upload(client, small_corpus(), name="corpus")
        svc.start_worker()
        jobs = [svc.create_job(client, corpus["id"], name=f"tiny-{i}") for i in range(2)]
        for job in jobs:
            assert svc.wait_job(client, job["id"])["status"] == "succeeded"
        svc.stop()  # the worker's own writes (heartbeats) aside: the API alone on the full disk
        svc.workers.clear()
        svc.start_api()

        fill(small_disk / "filler")
        body = {"corpus_id": corpus["id"], "model": {"cell": "gru", "hidden_size": 8}, "training": {"max_steps": 5}}
        r, _ = create_jobs_until_refused(client, body)
        assert r.status_code == 507, r.text
        detail = r.json()["detail"]
        assert "DELETE /jobs/{id}" in detail and "DELETE /checkpoints/{id}" in detail, detail
        up = client.post("/corpora", content=(uuid.uuid4().hex + small_corpus()).encode(),
                         headers={"Content-Type": "text/plain"})
        assert up.status_code == 507 and "DELETE /jobs/{id}" in up.json()["detail"], up.text

        # Both deletes go through on the full disk.
        checkpoint = client.get(f"/jobs/{jobs[0]['id']}/checkpoints").json()["data"][0]
        r = client.delete(f"/checkpoints/{checkpoint['id']}")
        assert r.status_code == 204, r.text
        assert client.get(f"/checkpoints/{checkpoint['id']}").status_code == 404
        r = client.delete(f"/jobs/{jobs[1]['id']}")
        assert r.status_code == 204, r.text
        assert not (svc.data_dir / "runs" / jobs[1]["id"]).exists()
        assert client.get(f"/jobs/{jobs[0]['id']}").json()["status"] == "succeeded"
