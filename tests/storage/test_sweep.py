"""Objects no row claims are swept (app/storage/sweep.py), on both backends, against a real SQLite database:
an unclaimed corpus, the run of a deleted job, and nothing that a row claims or that is still being written."""

from __future__ import annotations

import pytest

from app import db as app_db
from app import settings as app_settings
from app.storage.local import LocalStore
from app.storage.s3 import S3Store
from app.storage.sweep import sweep_orphans
from tests.harness import queue_dummy_jobs


@pytest.fixture
def database(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path / "db"))
    monkeypatch.delenv("CHARRNN_DATABASE_URL", raising=False)
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()
    from app.cli import upgrade_database

    upgrade_database()
    yield
    app_db.get_engine().dispose()
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_orphans_are_swept_and_claimed_objects_kept(database, tmp_path, backend, request):
    if backend == "s3":
        moto = request.getfixturevalue("moto_s3")
        with moto.environment():
            store = S3Store(moto.bucket())
            run_sweep(store)
    else:
        run_sweep(LocalStore(tmp_path / "data"))


def run_sweep(store) -> None:
    (job_id,) = queue_dummy_jobs(1)  # its corpus row claims corpora/x.txt
    claimed = ["corpora/x.txt", f"runs/{job_id}/last.json", f"runs/{job_id}/checkpoints/step-1.safetensors"]
    orphans = [f"corpora/{'a' * 64}.txt", "runs/job_deleted/last.json", "runs/job_deleted/best.safetensors"]
    for key in claimed + orphans:
        store.put_bytes(key, b"bytes")
    assert sweep_orphans(store) == []  # everything is young: it may be a write whose row is coming
    assert sorted(sweep_orphans(store, min_age=0)) == sorted(orphans)
    assert sorted(i.key for i in store.list("")) == sorted(claimed)
