"""API side, in-process: DELETE /jobs/{id} and DELETE /checkpoints/{id}, checkpoint bytes in
the owner's stored bytes, the retention rule (the best and the last N), and the disk-full answers naming the
deletes. A job's checkpoints are written here as the worker writes them (rows and files), since no worker runs."""

from __future__ import annotations

from sqlalchemy import select

from app.db import session_scope, utcnow
from app.ids import new_id
from app.models import Checkpoint, Job, JobEvent, JobMetric
from app.settings import get_settings
from app.storage import get_store
from tests.harness import small_corpus

TINY = {"model": {"hidden_size": 16, "num_layers": 1}, "training": {"max_steps": 5}}




def owner_of(job_id: str) -> str:
    with session_scope() as session:
        return session.get(Job, job_id).owner


def set_status(job_id: str, status: str) -> None:
    with session_scope() as session:
        session.get(Job, job_id).status = status


def write_checkpoints(api, job_id: str, steps: list[int], best: set[int] = frozenset(), size: int = 1000,
                      val_loss=None) -> dict[int, str]:
    """Checkpoint rows and files in the job's run folder, plus a metric and an event: {step: checkpoint id}."""
    owner = owner_of(job_id)
    run_dir = api.data_dir / "runs" / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    ids = {}
    with session_scope() as session:
        for step in steps:
            path = run_dir / f"step-{step}.safetensors"
            path.write_bytes(b"x" * size)
            ids[step] = new_id("ckpt")
            session.add(Checkpoint(
                id=ids[step], job_id=job_id, owner=owner, step=step, path=str(path.relative_to(api.data_dir)),
                is_best=step in best, size_bytes=size, val_loss=(val_loss or {}).get(step), created_at=utcnow(),
            ))
            session.add(JobMetric(job_id=job_id, step=step, train_loss=1.0, time=utcnow()))
            session.add(JobEvent(job_id=job_id, type="checkpoint", message=f"step {step}", data={}))
    return ids


def make_job(api, c) -> str:
    own = api.upload(c, small_corpus(), name="for-jobs")
    r = c.post("/jobs", json={"corpus_id": own["id"], **TINY})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def count(model, job_id: str) -> int:
    with session_scope() as session:
        return len(list(session.scalars(select(model).where(model.job_id == job_id))))


# --- DELETE /jobs/{id} -----------------------------------------------------------------------------------------


def test_deleting_an_ended_job_removes_its_rows_checkpoints_and_run_folder(api):
    with api.owner_client("job-deleter") as c:
        job_id = make_job(api, c)
        ids = write_checkpoints(api, job_id, [10, 20])
        r = c.delete(f"/jobs/{job_id}")
        assert r.status_code == 409, r.text
        assert "queued" in r.json()["detail"] and f"POST /jobs/{job_id}/cancel" in r.json()["detail"]
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200

        assert c.delete(f"/jobs/{job_id}").status_code == 204
        assert c.get(f"/jobs/{job_id}").status_code == 404
        assert all(c.get(f"/checkpoints/{i}").status_code == 404 for i in ids.values())
        assert (count(Checkpoint, job_id), count(JobMetric, job_id), count(JobEvent, job_id)) == (0, 0, 0)
        assert not (api.data_dir / "runs" / job_id).exists()
        assert c.delete(f"/jobs/{job_id}").status_code == 404


def test_a_job_whose_checkpoint_a_queued_job_starts_from_is_kept(api):
    with api.owner_client("job-parent") as c:
        parent = make_job(api, c)
        c.post(f"/jobs/{parent}/cancel")
        ids = write_checkpoints(api, parent, [10])
        with session_scope() as session:
            job = session.get(Job, parent)
            child = Job(id=new_id("job"), owner=job.owner, corpus_id=job.corpus_id, init_from=ids[10],
                        status="queued", model={}, training={}, progress={}, attempts=0, created_at=utcnow())
            session.add(child)
        r = c.delete(f"/jobs/{parent}")
        assert r.status_code == 409 and child.id in r.json()["detail"], r.text
        assert c.post(f"/jobs/{child.id}/cancel").status_code == 200
        assert c.delete(f"/jobs/{parent}").status_code == 204


def test_another_owner_cannot_delete_a_job(api):
    with api.owner_client("job-owner") as c, api.owner_client("job-stranger") as other:
        job_id = make_job(api, c)
        c.post(f"/jobs/{job_id}/cancel")
        assert other.delete(f"/jobs/{job_id}").status_code == 404
        assert c.get(f"/jobs/{job_id}").status_code == 200


# --- DELETE /checkpoints/{id} -----------------------------------------------------------------------------------


def test_a_running_jobs_last_checkpoint_is_kept_for_resume_older_ones_go(api):
    with api.owner_client("ckpt-running") as c:
        job_id = make_job(api, c)
        set_status(job_id, "running")
        ids = write_checkpoints(api, job_id, [10, 20, 30])
        r = c.delete(f"/checkpoints/{ids[30]}")
        assert r.status_code == 409, r.text
        assert "resumes from it" in r.json()["detail"] and f"POST /jobs/{job_id}/cancel" in r.json()["detail"]
        assert c.delete(f"/checkpoints/{ids[10]}").status_code == 204
        assert c.get(f"/checkpoints/{ids[10]}").status_code == 404
        assert not (api.data_dir / "runs" / job_id / "step-10.safetensors").exists()
        c.post(f"/jobs/{job_id}/cancel")
        assert c.delete(f"/checkpoints/{ids[30]}").status_code == 204  # ended: nothing resumes from it


def test_a_checkpoint_a_queued_job_starts_from_cannot_be_deleted(api):
    with api.owner_client("ckpt-init-from") as c:
        parent = make_job(api, c)
        c.post(f"/jobs/{parent}/cancel")
        ids = write_checkpoints(api, parent, [10])
        with session_scope() as session:  # a job queued to continue from it (the file is a stand-in: not read)
            child = session.get(Job, parent)
            session.add(Job(id=new_id("job"), owner=child.owner, corpus_id=child.corpus_id, init_from=ids[10],
                            status="queued", model={}, training={}, progress={}, attempts=0, created_at=utcnow()))
        r = c.delete(f"/checkpoints/{ids[10]}")
        assert r.status_code == 409 and "start from" in r.json()["detail"], r.text


def test_deleting_an_ended_jobs_best_makes_generation_use_the_best_remaining(api):
    from app.checkpoints import repository

    with api.owner_client("ckpt-best") as c:
        job_id = make_job(api, c)
        c.post(f"/jobs/{job_id}/cancel")
        owner = owner_of(job_id)
        ids = write_checkpoints(api, job_id, [10, 20, 30, 40], best={10, 20},
                                val_loss={10: 2.0, 20: 1.5, 30: 1.7, 40: 1.9})

        def best() -> str:
            with session_scope() as session:
                return repository.best_of_job(session, owner=owner, job_id=job_id).checkpoint_id

        assert best() == ids[20]
        assert c.delete(f"/checkpoints/{ids[20]}").status_code == 204
        assert best() == ids[10]  # the previous best
        assert c.delete(f"/checkpoints/{ids[10]}").status_code == 204
        assert best() == ids[30]  # no best left: the lowest validation loss remaining


# --- retention ---------------------------------------------------------------------------------------------------


def test_retention_keeps_the_best_and_the_last_n_and_removes_the_rest(api):
    from app.checkpoints import service

    assert get_settings().keep_checkpoints == 3  # CHARRNN_KEEP_CHECKPOINTS' default
    with api.owner_client("retention") as c:
        job_id = make_job(api, c)
        steps = [10, 20, 30, 40, 50, 60, 70]
        ids = write_checkpoints(api, job_id, steps, best={10, 30})
        with session_scope() as session:
            doomed = service.prune(session, job_id=job_id, keep=3)
        service.remove_files(get_store(get_settings()), doomed)
        rows = c.get(f"/jobs/{job_id}/checkpoints").json()["data"]
        assert sorted(r["step"] for r in rows) == [30, 50, 60, 70]  # the best (30) and the last 3
        for step in (10, 20, 40):
            assert not (api.data_dir / "runs" / job_id / f"step-{step}.safetensors").exists()
            assert c.get(f"/checkpoints/{ids[step]}").status_code == 404
        assert (api.data_dir / "runs" / job_id / "step-30.safetensors").exists()
        with session_scope() as session:  # applied again, nothing more goes
            assert service.prune(session, job_id=job_id, keep=3) == []
        c.post(f"/jobs/{job_id}/cancel")


# --- checkpoint bytes in the owner's stored bytes -----------------------------------------------------------------


def test_checkpoint_bytes_count_in_the_stored_bytes_quota(api, limited):
    limited(max_corpus_bytes_per_owner=60_000)
    with api.owner_client("ckpt-quota") as c:
        job_id = make_job(api, c)  # a 20,000-byte corpus
        c.post(f"/jobs/{job_id}/cancel")
        ids = write_checkpoints(api, job_id, [10, 20], size=20_000)  # 40,000 bytes of checkpoints: at the limit

        r = c.post("/corpora", content=small_corpus(5_000).encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 429, r.text
        detail = r.json()["detail"]
        assert "40,000 in checkpoints" in detail and "CHARRNN_MAX_CORPUS_BYTES_PER_OWNER" in detail
        assert "DELETE /jobs/{id}" in detail and "DELETE /checkpoints/{id}" in detail

        corpus_id = c.get("/corpora").json()["data"][0]["id"]
        r = c.post("/jobs", json={"corpus_id": corpus_id, **TINY})  # at the limit: no room for its checkpoints
        assert r.status_code == 429 and "in checkpoints" in r.json()["detail"], r.text
        assert r.headers["retry-after"].isdigit()

        assert c.delete(f"/checkpoints/{ids[10]}").status_code == 204  # deleting frees the quota
        api.upload(c, small_corpus(5_000), name="after-delete")
        r = c.post("/jobs", json={"corpus_id": corpus_id, **TINY})
        assert r.status_code == 201, r.text
        c.post(f"/jobs/{r.json()['id']}/cancel")


# --- a full disk says what to delete ------------------------------------------------------------------------------


def test_the_disk_full_answers_name_the_job_and_checkpoint_deletes():
    from app.corpora.upload import disk_full
    from app.ops.disk import FULL_DETAIL

    for detail in (FULL_DETAIL, disk_full().detail):
        assert "DELETE /corpora/{id}" in detail and "DELETE /jobs/{id}" in detail, detail
        assert "DELETE /checkpoints/{id}" in detail, detail
