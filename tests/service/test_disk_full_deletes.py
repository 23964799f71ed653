"""A full disk (issue 21 items 8 and 9): the 507 names DELETE /jobs/{id} and DELETE /checkpoints/{id}, and
both go through on the full disk, freeing the room for what comes next.

The data directory lives on its own small tmpfs, filled for real; the test needs root to mount it."""

from __future__ import annotations

import errno
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


def test_on_a_full_disk_jobs_and_checkpoints_can_be_deleted(small_disk):
    svc = Service(small_disk / "svc", disk_reserve_bytes=RESERVE_BYTES, keep_checkpoints=2)
    svc.root.mkdir()
    svc.start_api()
    reserve = svc.data_dir / ".disk-reserve"
    try:
        client = svc.client()
        wait_for(lambda: client.get("/corpora").status_code == 200 and reserve.exists(), 15, "the disk reserve")
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
        for _ in range(200):
            r = client.post("/jobs", json=body)
            if r.status_code != 201:
                break
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
    finally:
        svc.stop()
