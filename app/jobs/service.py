from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.checkpoints import integrity
from app.checkpoints import repository as checkpoints
from app.corpora import repository as corpora
from app.corpora import service as corpora_service
from app.corpora.references import references_for_split
from app.db import read_session, utcnow
from app.errors import ApiError, not_found, scrub_paths
from app.ids import new_id
from app.jobs import lifecycle, repository
from app.jobs.defaults import model_defaults
from app.jobs.schemas import JobCreate, JobOut, ModelSpec, TrainingSpec
from app.models import ACTIVE_STATUSES, Corpus, Job
from app.owner_lock import lock_owner
from app.settings import Settings
from app.storage import CorruptObject, ObjectMissing, local_file
from worker.engine.autoconfig import HIDDEN_SIZES
from worker.engine.config import (
    TrainConfig,
    batch_not_divisible,
    estimate_training_bytes,
    split_sizes,
    too_few_training_chars,
    too_much_memory,
    too_small_validation_split,
)
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
        reference_losses=job.reference_losses,
        diagnosis=job.diagnosis,
        device=job.device,
        attempts=job.attempts,
        error={"message": scrub_paths(job.error_message)} if job.error_message else None,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def effective_training(spec: TrainingSpec) -> dict:
    """What the job will run: the engine's own resolution of the given fields (TrainConfig), defaults
    and the default stopping rule included."""
    given = {k: v for k, v in spec.model_dump().items() if v is not None}
    resolved = TrainConfig(**given).to_dict()
    return {k: resolved[k] for k in TrainingSpec.model_fields}


def effective_model(spec: ModelSpec) -> dict:
    defaults = model_defaults()
    given = spec.model_dump()
    return {k: given[k] if given[k] is not None else defaults.get(k) for k in ModelSpec.model_fields}


def downsample(rows: list, max_points: int | None) -> list:
    """At most max_points rows at an even stride, the first and the last always kept."""
    if max_points is None or len(rows) <= max_points:
        return rows
    stride = (len(rows) - 1) / (max_points - 1)
    return [rows[round(i * stride)] for i in range(max_points)]


def check_training(num_chars: int, training: dict) -> None:
    """The engine's own rules (worker/engine/config.py), told before the job queues rather than after."""
    train_chars, _ = split_sizes(num_chars, training["val_fraction"])
    problem = (
        too_few_training_chars(train_chars, training["batch_size"], training["seq_len"])
        or too_small_validation_split(num_chars, training["val_fraction"])
        or batch_not_divisible(training["batch_size"], training["gpus"])
    )
    if problem:
        raise ApiError(422, problem)


def check_vocab_size(vocab_size: int, settings: Settings) -> None:
    """Uploads are held to the limit too; this catches corpora from before it, or from a higher one."""
    if vocab_size > settings.max_vocab_size:
        raise ApiError(
            422,
            f"the corpus has {vocab_size:,} distinct characters, more than the limit of {settings.max_vocab_size:,} "
            "(CHARRNN_MAX_VOCAB_SIZE): the model's output layer would not fit in memory. Upload a text with "
            "fewer distinct characters, or ask the operator to raise the limit.",
        )


def check_memory(vocab_size: int, model: dict, training: dict, settings: Settings) -> None:
    """Refuse, with the numbers, a job that would not fit in the worker's memory (the OOM killer's call
    otherwise, after the job had queued and started)."""
    # A size left to the worker is chosen under this same limit (autoconfig.py), down to its smallest.
    model = {**model_defaults(), "hidden_size": HIDDEN_SIZES[0], **{k: v for k, v in model.items() if v is not None}}
    estimate = estimate_training_bytes(
        vocab_size=max(vocab_size, 1),
        cell=model["cell"],
        hidden_size=model["hidden_size"],
        num_layers=model["num_layers"],
        embedding_dim=model["embedding_dim"],
        batch_size=training["batch_size"],
        seq_len=training["seq_len"],
        gpus=training["gpus"],
    )
    problem = too_much_memory(estimate, settings.worker_memory_limit)
    if problem:
        raise ApiError(422, problem)


# Jobs end by themselves; a client over its limit can come back in a little while.
ACTIVE_JOBS_RETRY_AFTER = "30"


def check_active_jobs(session: Session, *, owner: str, settings: Settings) -> None:
    """At most max_active_jobs_per_owner queued + running jobs: one key must not fill the queue for all."""
    # Concurrent creates of one owner, in any API process, count one after the other.
    lock_owner(session, owner=owner, limit="jobs")
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(ACTIVE_STATUSES))
    )
    limit = settings.max_active_jobs_per_owner
    if active >= limit:
        raise ApiError(
            429,
            f"you have {active} queued or running jobs, the limit per owner (CHARRNN_MAX_ACTIVE_JOBS_PER_OWNER "
            f"= {limit}); wait for some to finish, or cancel some (POST /jobs/{{id}}/cancel), then retry",
            headers={"Retry-After": ACTIVE_JOBS_RETRY_AFTER},
        )


def check_stored_bytes(session: Session, *, owner: str, settings: Settings) -> None:
    """A job writes checkpoints, which count in the owner's stored bytes: refused while already at the limit."""
    corpora_service.check_owner_quota(
        session, owner=owner, adding=0, limit=settings.max_corpus_bytes_per_owner, what="a new job's checkpoints"
    )


def check_init_from_intact(checkpoint, settings: Settings) -> None:
    """A damaged `init_from` file is refused now (409 naming it), not by the worker after the job was queued:
    its size and sha256 must be those recorded when it was written."""
    try:
        path = local_file(settings, checkpoint.path, sha256=checkpoint.sha256, size=checkpoint.size_bytes)
        _, problem = integrity.mismatch(path, sha256=checkpoint.sha256, size_bytes=checkpoint.size_bytes)
    except (OSError, ObjectMissing):
        raise ApiError(410, f"the file of checkpoint {checkpoint.id} is unreadable or gone") from None
    except CorruptObject:
        problem = "the stored object's size or sha256 differs from the one recorded when it was written"
    if problem:
        raise ApiError(409, integrity.corrupt_message(checkpoint.id, problem))


def characters_of(path: Path) -> set[str]:
    """The distinct characters of a stored corpus, read in chunks."""
    decoder, chars = codecs.getincrementaldecoder("utf-8")("replace"), set()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            chars.update(decoder.decode(chunk))
    return chars


def _fetched(settings: Settings, corpus: Corpus) -> Path:
    """A local copy of a stored corpus, its sha256 checked (app/storage: the data directory's own file, or
    the cache's copy of an object)."""
    try:
        return local_file(settings, corpus.path, sha256=corpus.sha256, size=corpus.size_bytes)
    except (ObjectMissing, CorruptObject):
        raise ApiError(410, f"the content of corpus {corpus.id} is unreadable or gone from the store") from None


def check_vocabulary(session: Session, *, owner: str, settings: Settings, corpus: Corpus, init_from: str | None,
                     init_vocab: set[str] | None, validation_corpus_id: str | None) -> None:
    """Refuse now, not when the job runs, text with characters the model will not know: the model knows
    its init_from checkpoint's characters when it continues one, else those of the corpus it trains on."""
    if init_vocab is None and validation_corpus_id is None:
        return
    checks = [("corpus_id", corpus)] if init_vocab is not None else []
    if validation_corpus_id:
        validation = corpora.get(session, owner=owner, corpus_id=validation_corpus_id)
        if validation is None:
            raise not_found("corpus", validation_corpus_id)
        checks.append(("validation_corpus_id", validation))
    known = init_vocab if init_vocab is not None else characters_of(_fetched(settings, corpus))
    source = f"the init_from checkpoint {init_from}" if init_vocab is not None else f"the corpus {corpus.id}"
    for field, checked in checks:
        unseen = sorted(characters_of(_fetched(settings, checked)) - known)
        if unseen:
            shown = ", ".join(repr(c) for c in unseen[:20]) + (" ..." if len(unseen) > 20 else "")
            raise ApiError(
                422,
                f"corpus {checked.id} has {len(unseen)} character(s) the model will not know: {shown} (it knows "
                f"the characters of {source}); remove them, or train from scratch on text that has them",
                param=field,
            )


def create(
    session: Session, *, owner: str, settings: Settings, body: JobCreate, columns: dict | None = None
) -> Job:
    """Queue a job. `columns` sets further Job columns in the same transaction (the /v1 API's own)."""
    corpus = corpora.get(session, owner=owner, corpus_id=body.corpus_id)
    if corpus is None:
        raise not_found("corpus", body.corpus_id)
    check_vocab_size(corpus.vocab_size, settings)
    model = effective_model(body.model)
    init_vocab = None
    if body.init_from:
        checkpoint = checkpoints.get(session, owner=owner, checkpoint_id=body.init_from)
        if checkpoint is None:
            raise not_found("checkpoint", body.init_from)
        check_init_from_intact(checkpoint, settings)
        try:
            path = local_file(settings, checkpoint.path, sha256=checkpoint.sha256, size=checkpoint.size_bytes)
            metadata = read_metadata(path)
            config, init_vocab = json.loads(metadata["config"]), set(json.loads(metadata["vocab"]))
        except (OSError, KeyError, ValueError, TypeError, ObjectMissing, CorruptObject):
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
    # Text the model cannot read is refused before any rule about its size: no setting would fix it.
    check_vocabulary(session, owner=owner, settings=settings, corpus=corpus, init_from=body.init_from,
                     init_vocab=init_vocab, validation_corpus_id=(columns or {}).get("validation_corpus_id"))
    training = effective_training(body.training)
    # Memory first: a job too big for the machine is refused whatever its corpus (and says what to lower).
    check_memory(corpus.vocab_size, model, training, settings)
    check_training(corpus.num_chars, training)
    check_active_jobs(session, owner=owner, settings=settings)
    check_stored_bytes(session, owner=owner, settings=settings)
    job = Job(
        id=new_id("job"),
        owner=owner,
        name=body.name,
        corpus_id=corpus.id,
        init_from=body.init_from,
        model=model,
        training=training,
        progress={},
        attempts=0,
        created_at=utcnow(),
        # Known now when the job splits the corpus as its upload did; else set when the job starts.
        reference_losses=references_for_split(
            corpus.reference_losses, val_fraction=training.get("val_fraction"),
            separate_validation=bool((columns or {}).get("validation_corpus_id")),
        ),
        **(columns or {}),
    )
    lifecycle.queued(session, job)
    return job


def get(session: Session, *, owner: str, job_id: str) -> Job:
    job = repository.get(session, owner=owner, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel(session: Session, *, owner: str, job_id: str) -> Job:
    if not lifecycle.cancel(session, owner=owner, job_id=job_id):
        job = get(session, owner=owner, job_id=job_id)
        raise ApiError(409, f"job {job_id} has already finished ({job.status}); there is nothing to cancel")
    return get(session, owner=owner, job_id=job_id)


METRICS_CSV_COLUMNS = ("step", "train_loss", "val_loss", "learning_rate", "chars_per_second", "elapsed")


def metrics_csv(owner: str, job_id: str, started_at) -> Iterator[str]:
    """The loss curve as CSV lines, read from the database as they are sent (its own session: the
    request's is closed before a streamed body is read). `elapsed`: seconds since the job started
    (since its first metric when the start time is unknown); losses in nats per character."""
    yield ",".join(METRICS_CSV_COLUMNS) + "\r\n"
    with read_session() as session:
        start = started_at
        for m in repository.iter_metrics(session, owner=owner, job_id=job_id):
            start = start or m.time
            elapsed = round((m.time - start).total_seconds(), 3) if m.time and start else ""
            values = (m.step, m.train_loss, m.val_loss, m.learning_rate, m.chars_per_second, elapsed)
            yield ",".join("" if v is None else repr(v) if isinstance(v, float) else str(v) for v in values) + "\r\n"
