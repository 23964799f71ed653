from __future__ import annotations

import json

from sqlalchemy.orm import Session

from app.checkpoints import repository as checkpoints
from app.corpora import repository as corpora
from app.db import utcnow
from app.errors import ApiError, not_found
from app.ids import new_id
from app.jobs import lifecycle, repository
from app.jobs.defaults import model_defaults, train_defaults
from app.jobs.schemas import JobCreate, JobOut, ModelSpec, TrainingSpec
from app.models import Job, JobStatus
from app.settings import Settings
from worker.engine.config import largest_batch_that_fits, min_train_chars
from worker.engine.header import read_metadata


def to_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        name=job.name,
        status=job.status,
        corpus_id=job.corpus_id,
        init_from=job.init_from,
        model=job.model,
        training=job.training,
        progress=job.progress or {},
        device=job.device,
        attempts=job.attempts,
        error={"message": job.error_message} if job.error_message else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def effective_training(spec: TrainingSpec) -> dict:
    defaults = train_defaults()
    given = spec.model_dump()
    return {k: given[k] if given[k] is not None else defaults.get(k) for k in TrainingSpec.model_fields}


def effective_model(spec: ModelSpec) -> dict:
    defaults = model_defaults()
    given = spec.model_dump()
    return {k: given[k] if given[k] is not None else defaults.get(k) for k in ModelSpec.model_fields}


def check_corpus_size(num_chars: int, training: dict) -> None:
    """The same rule as the engine's StreamBatcher, told before the job queues rather than after."""
    seq_len, batch_size, val_fraction = training["seq_len"], training["batch_size"], training["val_fraction"]
    n_val = int(num_chars * val_fraction)
    train_chars = num_chars - n_val
    needed = min_train_chars(batch_size, seq_len)
    if train_chars < needed:
        fit_batch = largest_batch_that_fits(train_chars, seq_len)
        fix = (
            f"lower training.batch_size to {fit_batch} or less"
            if fit_batch >= 1
            else (f"lower training.seq_len (to at most {max(1, (train_chars - 1) // 2)}) and training.batch_size")
        )
        raise ApiError(
            422,
            f"the corpus is too small for these settings: its training part has {train_chars:,} characters, "
            f"and batch_size={batch_size} with seq_len={seq_len} needs at least {needed:,}. "
            f"Upload more text, or {fix}.",
        )
    if val_fraction > 0 and n_val < 2:
        raise ApiError(
            422,
            f"training.val_fraction={val_fraction} holds out {n_val} character(s) of {num_chars:,}; "
            "at least 2 are "
            "needed. Raise val_fraction, set it to 0 (no validation), or upload more text.",
        )


def create(session: Session, *, owner: str, settings: Settings, body: JobCreate) -> Job:
    with session.begin():
        corpus = corpora.get(session, owner=owner, corpus_id=body.corpus_id)
        if corpus is None:
            raise not_found("corpus", body.corpus_id)
        model = effective_model(body.model)
        if body.init_from:
            checkpoint = checkpoints.get(session, owner=owner, checkpoint_id=body.init_from)
            if checkpoint is None:
                raise not_found("checkpoint", body.init_from)
            try:
                config = json.loads(read_metadata(settings.data_dir / checkpoint.path)["config"])
            except (OSError, KeyError, ValueError):
                raise ApiError(410, f"the file of checkpoint {body.init_from} is unreadable or gone") from None
            given = {k: v for k, v in body.model.model_dump().items() if v is not None}
            clash = {k: v for k, v in given.items() if config.get(k) != v}
            if clash:
                raise ApiError(
                    422,
                    f"model {clash} differs from the init_from checkpoint's architecture "
                    f"{ {k: config.get(k) for k in clash} }; "
                    "leave `model` out when continuing from a checkpoint",
                )
            model = {k: config.get(k) for k in ModelSpec.model_fields}
        training = effective_training(body.training)
        check_corpus_size(corpus.num_chars, training)
        if training["batch_size"] % training["gpus"]:
            raise ApiError(
                422,
                f"training.batch_size={training['batch_size']} must be a multiple of training.gpus="
                f"{training['gpus']} (each process trains an equal share of the streams); "
                f"try batch_size={training['batch_size'] // training['gpus'] * training['gpus'] or training['gpus']}",
            )
        job = Job(
            id=new_id("job"),
            owner=owner,
            name=body.name,
            corpus_id=corpus.id,
            init_from=body.init_from,
            status=JobStatus.QUEUED,
            model=model,
            training=training,
            progress={},
            attempts=0,
            created_at=utcnow(),
        )
        lifecycle.queued(session, job)
    return job


def get(session: Session, *, owner: str, job_id: str) -> Job:
    job = repository.get(session, owner=owner, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel(session: Session, *, owner: str, job_id: str) -> Job:
    with session.begin():
        if not lifecycle.cancel(session, owner=owner, job_id=job_id):
            job = get(session, owner=owner, job_id=job_id)
            raise ApiError(409, f"job {job_id} has already finished ({job.status}); there is nothing to cancel")
    return get(session, owner=owner, job_id=job_id)
