"""The records between processes (worker/engine/records.py): each survives its serialisation, and each
arrives intact through the real path, trainer -> training child -> queue -> supervisor -> database."""

from __future__ import annotations

import pickle

import pytest
import torch
from sqlalchemy import select, update

from app import db as app_db
from app import settings as app_settings
from tests.harness import TINY_MODEL, TINY_TRAINING, queue_dummy_jobs, small_corpus
from worker.engine.checkpoint import TrainingState
from worker.engine.records import (
    CheckpointRecord,
    CheckpointStats,
    Diagnosis,
    JobSpec,
    RunResult,
    RunStarted,
    Snapshot,
)
from worker.service.reports import (
    CheckpointSaved,
    Diagnosed,
    Evaluated,
    Failed,
    FailureKind,
    Finished,
    Metrics,
    Started,
)

STARTED = RunStarted(num_parameters=10, vocab_size=3, device="cpu", precision="fp32", train_chars=90, val_chars=10,
                     batches_per_epoch=4, resumed_from_step=None, model={"cell": "gru"}, chosen=["hidden_size 32"],
                     chosen_training={"max_epochs": 2.0})
SNAPSHOT = Snapshot(step=5, max_steps=10, epoch=0, train_loss=1.5, val_loss=None, best_val_loss=None,
                    learning_rate=1e-3, chars_per_second=100.0, elapsed_seconds=0.5, eta_seconds=0.5)
CHECKPOINT = CheckpointRecord(step=5, path="/runs/j/step.safetensors", size_bytes=12, sha256="ab" * 32,
                              train_loss=1.5, val_loss=1.7, is_best=True)
RESULT = RunResult(steps=10, epoch=1, train_loss=1.2, val_loss=1.3, best_val_loss=1.3, chars_per_second=99.0,
                   seconds=1.0, checkpoint="/runs/j/best.safetensors", last_checkpoint="/runs/j/c",
                   num_parameters=10, stopped_by="max_steps", device="cpu", precision="fp32")
SPEC = JobSpec(corpus_path="/c.txt", run_dir="/runs/j", model={"cell": "lstm"}, training={"gpus": 2},
               init_from="/w.safetensors", init_from_sha256="cd" * 32, threads=2, memory_limit=10**9,
               reference_losses={"unigram": 3.3, "bigram": 2.5, "val_fraction": 0.1})
DIAGNOSIS = Diagnosis(kind="healthy", message="healthy: ...", step=10)


@pytest.mark.parametrize("record", [STARTED, SNAPSHOT, CHECKPOINT, RESULT, SPEC, DIAGNOSIS],
                         ids=lambda r: type(r).__name__)
def test_each_record_round_trips_through_json(record):
    assert type(record).model_validate_json(record.model_dump_json()) == record


@pytest.mark.parametrize("report", [Started(STARTED), Metrics(SNAPSHOT), Evaluated(SNAPSHOT, "sample"),
                                    CheckpointSaved(CHECKPOINT), Diagnosed(DIAGNOSIS), Finished(RESULT),
                                    Failed(FailureKind.USER, "no"),
                                    Failed(FailureKind.INTERNAL, "internal error err_1", "err_1", "Traceback ...")],
                         ids=lambda r: type(r).__name__)
def test_each_report_round_trips_through_the_queues_pickling(report):
    assert pickle.loads(pickle.dumps(report)) == report


def test_a_checkpoints_stats_round_trip_through_its_file_metadata():
    metadata = CHECKPOINT.file_metadata()
    assert all(isinstance(v, str) for v in metadata.values())  # safetensors metadata holds strings only
    stats = CheckpointStats.from_file_metadata(metadata)
    assert CheckpointRecord.of_file(stats, path=CHECKPOINT.path, size_bytes=12, sha256="ab" * 32) == CHECKPOINT
    with pytest.raises(ValueError, match="no checkpoint record"):
        CheckpointStats.from_file_metadata({"format": "charrnn/1"})


def test_records_refuse_what_they_do_not_hold():
    with pytest.raises(ValueError, match=r"text_path\n  Extra inputs are not permitted"):
        JobSpec(corpus_path="/c.txt", run_dir="/r", text_path="/c.txt")  # the one name for the corpus
    with pytest.raises(ValueError):
        Snapshot(step="five")


def test_the_training_state_round_trips_through_its_file(tmp_path):
    state = TrainingState(corpus_sha256="ef" * 32, step=7, epoch=1, batch_index=2, elapsed=1.5, train_seconds=1.0,
                          best_val_loss=2.0, last_val_loss=2.1, train_loss=1.9, hidden=[torch.randn(1, 4, 8)],
                          optimizer={"state": {}, "param_groups": []}, torch_rng=torch.get_rng_state())
    state.save(tmp_path / "s.state.pt")
    loaded = TrainingState.load(tmp_path / "s.state.pt")
    assert torch.equal(loaded.hidden[0], state.hidden[0]) and torch.equal(loaded.torch_rng, state.torch_rng)
    assert (loaded.step, loaded.batch_index, loaded.best_val_loss, loaded.optimizer) == (7, 2, 2.0, state.optimizer)


# -- through the real child and supervisor --------------------------------------------------------------


@pytest.fixture
def database(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHARRNN_DATABASE_URL", raising=False)
    # One training thread, as the harness's services have (TEST_SETTINGS): the default, every core, makes
    # torch's threads spin-wait for each other beside the other test processes on a shared machine.
    monkeypatch.setenv("CHARRNN_TRAIN_THREADS", "1")
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()
    from app.cli import upgrade_database

    upgrade_database()
    yield tmp_path
    app_db.get_engine().dispose()
    for cached in (app_settings.get_settings, app_db.get_engine, app_db.get_sessionmaker):
        cached.cache_clear()


def test_every_record_arrives_intact_through_the_child_and_the_supervisor(database):
    from app.db import session_scope
    from app.jobs import lifecycle
    from app.models import Checkpoint, Job, JobEvent
    from app.settings import get_settings
    from worker.engine.header import read_metadata
    from worker.service.runner import Worker
    from worker.service.supervisor import JobRun

    (database / "corpora").mkdir()
    (database / "corpora" / "x.txt").write_text(small_corpus(20_000))  # queue_dummy_jobs' corpus path
    (job_id,) = queue_dummy_jobs(1)
    training = {**TINY_TRAINING, "max_steps": 40, "device": "cpu"}
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(model=TINY_MODEL, training=training))
        job = lifecycle.claim(s, worker_id="wrk_records", lease_seconds=60)
        s.expunge(job)
    settings = get_settings()
    spec = Worker(settings).spec_for(job)
    assert isinstance(spec, JobSpec) and JobSpec.model_validate_json(spec.model_dump_json()) == spec

    class Recorded(JobRun):
        """The real supervisor, keeping each report it relays."""

        seen: list = []

        def relay(self, session, report):
            self.seen.append(report)
            super().relay(session, report)

    run = Recorded(job, spec, settings=settings, worker_id="wrk_records", stopping=lambda: False,
                   keep_alive=lambda: None)
    run.supervise()

    assert isinstance(run.outcome, Finished), run.outcome
    result = run.outcome.result
    assert isinstance(result, RunResult) and result.steps == 40
    (started,) = [r.info for r in run.seen if isinstance(r, Started)]
    snapshots = [r.snapshot for r in run.seen if isinstance(r, Metrics | Evaluated)]
    saved = [r.checkpoint for r in run.seen if isinstance(r, CheckpointSaved)]
    assert isinstance(started, RunStarted) and started.model["hidden_size"] == TINY_MODEL["hidden_size"]
    assert [c.step for c in saved] == [20, 40] and snapshots
    with session_scope() as s:
        row = s.get(Job, job_id)
        assert row.status == "succeeded" and row.device == started.device
        assert row.progress["step"] == result.steps and row.progress["val_loss"] == result.val_loss
        assert row.diagnosis == result.diagnosis.model_dump() and row.reference_losses == result.reference_losses
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        rows = {c.step: c for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))}
    # The events hold the records as they were sent.
    assert RunStarted.model_validate(next(e.data for e in events if e.data.get("train_chars"))) == started
    evented = [Snapshot.model_validate({k: v for k, v in e.data.items() if k != "sample"})
               for e in events if e.type in ("metrics", "sample")]
    assert evented == snapshots
    diagnosed = [r.diagnosis for r in run.seen if isinstance(r, Diagnosed)]
    assert diagnosed[-1] == result.diagnosis
    assert [e.data["diagnosis"] for e in events if "diagnosis" in e.data] == [d.model_dump() for d in diagnosed]
    checkpoint_events = [e.data for e in events if e.type == "checkpoint"]
    assert checkpoint_events == [c.model_dump(exclude={"path", "sha256"}) for c in saved]
    # The rows hold the checkpoint records, their paths relative to the data directory; the files hold
    # their stats, from which a resume rebuilds the same records.
    for record in saved:
        row = rows[record.step]
        relative = str((settings.data_dir / row.path).resolve())
        assert relative == record.path
        assert (row.size_bytes, row.sha256, row.train_loss, row.val_loss, row.is_best) == (
            record.size_bytes, record.sha256, record.train_loss, record.val_loss, record.is_best)
        assert CheckpointStats.from_file_metadata(read_metadata(record.path)) == CheckpointStats(
            **record.model_dump(include=set(CheckpointStats.model_fields)))
    on_disk = {c.step: c for c in run.checkpoints_on_disk()}
    assert {s: c.model_copy(update={"path": rows[s].path}) for s, c in on_disk.items()} == on_disk
    assert [on_disk[c.step].model_dump(exclude={"path"}) for c in saved] == [c.model_dump(exclude={"path"})
                                                                             for c in saved]
