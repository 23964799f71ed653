"""What a running job reports, written to the database: its start, metric points, evaluations.

The records come from the engine (worker/engine/records.py) through the worker's supervisor. Every
write is one of the worker's, under its lease: the supervisor first renews the lease in the same
transaction (lifecycle.renew), so a worker that lost the job writes nothing. The functions take the
caller's session and do not commit.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.checkpoints import repository as checkpoints
from app.db import utcnow
from app.jobs.events import add_event, prune_metrics_events
from app.jobs.lifecycle import mine
from app.jobs.schemas import PROGRESS_KEYS
from app.models import Checkpoint, Job, JobEvent, JobMetric
from worker.engine.records import CheckpointRecord, Diagnosis, RunStarted, Snapshot


def progress_from(snapshot: Snapshot) -> dict:
    """The job's `progress` (the Progress schema's fields) from a trainer snapshot."""
    return snapshot.model_dump(include=set(PROGRESS_KEYS))


def started(
    session: Session,
    *,
    job_id: str,
    owner: str,
    worker_id: str,
    info: RunStarted,
    on_disk: list[CheckpointRecord] = (),
    journal: list[tuple[Snapshot, str | None]] = (),
) -> None:
    """Training started (or resumed): record the device, and on resume put the record in line with the files.

    A resumed run redoes the steps after its checkpoint, so their first-time metrics go. A worker
    killed right after writing a checkpoint's files never wrote its row and metrics: `journal` (the
    run's reported points and evaluations up to the resumed step, worker/service/journal.py) restores
    the points, `on_disk` (the run directory's checkpoints up to the resumed step) the rows.
    """
    # The model as it runs: the fields the job left out are now chosen (autoconfig.py).
    model = {k: v for k, v in info.model.items() if k != "vocab_size"}
    values = {"device": info.device, **({"model": model} if model else {})}
    if info.reference_losses:
        values["reference_losses"] = info.reference_losses
    if info.chosen_training:  # an epoch limit chosen with the size: the job's training says when it stops
        training = session.scalar(select(Job.training).where(Job.id == job_id)) or {}
        values["training"] = {**training, **info.chosen_training}
    session.execute(update(Job).where(*mine(job_id, worker_id)).values(**values))
    resumed = info.resumed_from_step
    _forget_points_after(session, job_id, -1 if resumed is None else resumed)
    if resumed is not None:
        _restore_points(session, job_id, [entry for entry in journal if entry[0].step <= resumed])
        # Only files newer than the newest row are ones a killed worker never recorded; an older file
        # without a row is one retention removed before that worker could delete the file.
        newest = session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))
        for checkpoint in on_disk:
            if (
                checkpoint.step <= resumed
                and (newest is None or checkpoint.step > newest)
                and checkpoints.adopt(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
            ):
                _add_point_of(session, job_id, checkpoint)
        add_event(
            session,
            job_id=job_id,
            type="log",
            message=f"resumed from step {resumed}",
            data={"resumed_from_step": resumed},
        )
    add_event(
        session,
        job_id=job_id,
        type="log",
        message=(
            f"training {info.num_parameters:,} parameters on {info.device} "
            f"({info.precision}), {info.train_chars:,} training characters"
            + "".join(f"; chose {reason}" for reason in info.chosen)
        ),
        data=info.model_dump(),
    )
    if info.reference_losses:
        refs = info.reference_losses
        add_event(
            session,
            job_id=job_id,
            type="log",
            message=(
                f"reference losses of this split: {refs['unigram']:.3f} nats per character for a model that "
                f"knows only character frequencies (unigram), {refs['bigram']:.3f} for one that knows only the "
                "previous character (bigram); a model that learns scores below both"
            ),
            data={"reference_losses": refs},
        )


def _forget_points_after(session: Session, job_id: str, step: int) -> None:
    """The lost attempt's points after `step` (and their metrics and sample events) go: the run reports
    them again. From scratch (an attempt that died before its first checkpoint) `step` is -1: all go."""
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > step))
    events = session.execute(
        select(JobEvent.id, JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type.in_(("metrics", "sample")))
    )
    stale = [event_id for event_id, data in events if (data or {}).get("step", -1) > step]
    if stale:
        session.execute(delete(JobEvent).where(JobEvent.id.in_(stale)))


def _restore_points(session: Session, job_id: str, journal: list[tuple[Snapshot, str | None]]) -> None:
    """Write the journal's points the database lacks, wherever they fall: at each step, the entries past
    the rows it has (the supervisor writes reports in the order they came, so the rows of a step are its
    first entries). A kill -9 leaves the database a prefix of the reports, so this is usually the points
    after its latest row; a long database outage (supervisor.MAX_PENDING_METRICS) can leave earlier holes."""
    have = Counter(dict(session.execute(
        select(JobMetric.step, func.count()).where(JobMetric.job_id == job_id).group_by(JobMetric.step)
    ).all()))
    for snapshot, sample in journal:
        if have[snapshot.step] > 0:
            have[snapshot.step] -= 1
            continue
        if sample is None:
            record_metrics(session, job_id=job_id, snapshot=snapshot, prune=False)
        else:
            record_evaluation(session, job_id=job_id, snapshot=snapshot, sample=sample)
    prune_metrics_events(session, job_id=job_id)


def _add_point_of(session: Session, job_id: str, checkpoint: CheckpointRecord) -> None:
    """The metric point an adopted checkpoint was saved at, where its step has none."""
    has_metric = session.scalar(
        select(JobMetric.id).where(JobMetric.job_id == job_id, JobMetric.step == checkpoint.step).limit(1)
    )
    if not has_metric and (checkpoint.train_loss is not None or checkpoint.val_loss is not None):
        point = Snapshot(step=checkpoint.step, train_loss=checkpoint.train_loss, val_loss=checkpoint.val_loss)
        _add_metric_row(session, job_id, point)


def _add_metric_row(session: Session, job_id: str, snapshot: Snapshot) -> None:
    session.add(
        JobMetric(
            job_id=job_id,
            step=snapshot.step,
            train_loss=snapshot.train_loss,
            val_loss=snapshot.val_loss,
            learning_rate=snapshot.learning_rate,
            chars_per_second=snapshot.chars_per_second,
            time=utcnow(),
        )
    )


def record_metrics(
    session: Session, *, job_id: str, snapshot: Snapshot, event: bool = True, prune: bool = True
) -> None:
    """A training-loss point: a metrics row and, with `event`, a "metrics" event (the live feed; older ones
    pruned past the bound, here with `prune`, or once by a caller that writes many points)."""
    _add_metric_row(session, job_id, snapshot)
    if not event:
        return
    add_event(
        session,
        job_id=job_id,
        type="metrics",
        message=f"step {snapshot.step}: train_loss {snapshot.train_loss:.4f}",
        data=snapshot.model_dump(),
    )
    if prune:
        prune_metrics_events(session, job_id=job_id)


def record_evaluation(session: Session, *, job_id: str, snapshot: Snapshot, sample: str) -> None:
    """An evaluation: a metrics row with the validation loss, and a "sample" event with the sample text."""
    _add_metric_row(session, job_id, snapshot)
    val = snapshot.val_loss
    add_event(
        session,
        job_id=job_id,
        type="sample",
        message=f"step {snapshot.step}: val_loss {val if val is None else round(val, 4)}",
        data={**snapshot.model_dump(), "sample": sample},
    )


def record_diagnosis(session: Session, *, job_id: str, worker_id: str, diagnosis: Diagnosis) -> None:
    """The training doctor's reading (worker/engine/doctor.py): the job's `diagnosis`, and a "log" event."""
    session.execute(update(Job).where(*mine(job_id, worker_id)).values(diagnosis=diagnosis.model_dump()))
    add_event(
        session,
        job_id=job_id,
        type="log",
        message=diagnosis.message,
        data={"diagnosis": diagnosis.model_dump()},
    )
