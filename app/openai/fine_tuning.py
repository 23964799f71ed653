"""Fine-tuning jobs on /v1 are native jobs: the request maps onto POST /jobs, the job reads back as OpenAI's.

- `model`: a preset (an architecture trained from scratch), or a fine-tuned model / checkpoint to continue
  from (the native `init_from`: its weights, vocabulary and architecture).
- `hyperparameters`: n_epochs -> training.max_epochs, batch_size -> training.batch_size,
  learning_rate_multiplier -> training.learning_rate as a multiple of the engine's default; "auto" (or
  nothing) leaves the engine's default.
- Extensions: `max_seconds` (a time budget) and `charrnn: {model, training}` (native settings).
- `validation_file`: the held-out set, scored instead of a split of the training file (val_fraction 0).
- `trained_tokens` counts characters: steps x batch_size x seq_len, once the job has finished.
"""

from __future__ import annotations

import codecs
import json
import time
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.checkpoints import repository as checkpoints_repository
from app.corpora import repository as corpora
from app.errors import unknown_field
from app.jobs import repository as jobs_repository
from app.jobs import service as jobs
from app.jobs.defaults import train_defaults
from app.jobs.schemas import JobCreate as NativeJobCreate
from app.models import FINAL_STATUSES, Checkpoint, Job, JobEvent, JobStatus
from app.openai import catalog, repository
from app.openai.errors import OpenAIError
from app.openai.schemas import Hyperparameters, JobCreate
from app.pagination import PageParams
from app.settings import Settings
from app.storage import CorruptObject, ObjectMissing, local_file
from worker.engine.header import read_metadata

EVENT_PREFIX = "ftevent-"
# A finished job's result file, as OpenAI lists one: its loss curve, the CSV of GET /jobs/{id}/metrics.csv,
# read at /v1/files/{id}/content. Derived from the job id, so it needs no row of its own.
METRICS_FILE_PREFIX = "file-metrics-"


def metrics_file_job(file_id: str) -> str | None:
    """The job whose metrics a result file id names, or None for any other file id."""
    return file_id.removeprefix(METRICS_FILE_PREFIX) if file_id.startswith(METRICS_FILE_PREFIX) else None


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _file(session: Session, owner: str, file_id: str, param: str) -> str:
    if corpora.get(session, owner=owner, corpus_id=file_id) is None:
        raise OpenAIError(400, f"invalid {param} {file_id!r}: no such file of yours (upload it with POST /v1/files)",
                          param, f"invalid_{param}")
    return file_id


def characters_of(path: Path) -> set[str]:
    """The distinct characters of a stored corpus, read in chunks."""
    decoder, chars = codecs.getincrementaldecoder("utf-8")("replace"), set()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            chars.update(decoder.decode(chunk))
    return chars


def check_vocabulary(session: Session, *, owner: str, settings: Settings, training_file: str,
                     validation_file: str | None, init_from: str | None) -> None:
    """Refuse now, not when the job runs, text with characters the model will not know: the model knows
    the training file's characters, or when continuing, those of the model it continues."""
    if validation_file is None and init_from is None:
        return
    rows = {c: corpora.get(session, owner=owner, corpus_id=c) for c in filter(None, (training_file, validation_file))}
    try:
        corpus_path = {c: local_file(settings, r.path, sha256=r.sha256, size=r.size_bytes) for c, r in rows.items()}
    except (ObjectMissing, CorruptObject):
        raise OpenAIError(404, "a file's content is unreadable or gone from the store", "training_file") from None
    checks = [("validation_file", validation_file)] if validation_file else []
    if init_from:
        checkpoint = checkpoints_repository.get(session, owner=owner, checkpoint_id=init_from)
        try:
            path = local_file(settings, checkpoint.path, sha256=checkpoint.sha256, size=checkpoint.size_bytes)
            known = set(json.loads(read_metadata(path)["vocab"]))
        except (OSError, KeyError, ValueError, ObjectMissing, CorruptObject):
            raise OpenAIError(404, "the checkpoint to continue from is unreadable or gone", "model") from None
        checks.insert(0, ("training_file", training_file))
    else:
        known = characters_of(corpus_path[training_file])
    for param, file_id in checks:
        unseen = sorted(characters_of(corpus_path[file_id]) - known)
        if unseen:
            shown = ", ".join(repr(c) for c in unseen[:20]) + (" ..." if len(unseen) > 20 else "")
            raise OpenAIError(
                400,
                f"{param} {file_id} has {len(unseen)} character(s) the model will not know: {shown} "
                f"(it knows the characters of {'the model it continues' if init_from else 'the training file'}); "
                "remove them, or train from scratch on text that has them",
                param,
            )


def _hyperparameters(body: JobCreate) -> Hyperparameters:
    if body.method is not None and body.method.type != "supervised":
        raise OpenAIError(400, f"method.type {body.method.type!r} is not supported: charrnn trains language models "
                               "on text (`supervised`)", "method.type")
    from_method = body.method.supervised.hyperparameters if body.method and body.method.supervised else None
    if body.hyperparameters is not None and from_method is not None:
        raise OpenAIError(400, "give hyperparameters either at the top level or in method.supervised, not both",
                          "hyperparameters")
    return body.hyperparameters or from_method or Hyperparameters()


def native_request(session: Session, *, owner: str, settings: Settings, body: JobCreate
                   ) -> tuple[NativeJobCreate, dict]:
    """The POST /jobs body and the extra job columns for an OpenAI job request."""
    training_file = _file(session, owner, body.training_file, "training_file")
    validation_file = _file(session, owner, body.validation_file, "validation_file") if body.validation_file else None
    options = body.charrnn
    model = dict(options.model) if options else {}
    training = dict(options.training) if options else {}
    init_from = None
    if body.model in catalog.PRESETS:
        preset = catalog.PRESETS[body.model]
        if "cell" in preset and model.get("cell", preset["cell"]) != preset["cell"]:
            raise OpenAIError(400, f"charrnn.model.cell {model['cell']!r} contradicts the model {body.model!r}",
                              "charrnn.model.cell")
        model = {**model, **preset}
    else:
        resolved = catalog.resolve(session, owner=owner, name=body.model)
        if resolved.checkpoint_id is None:
            best = checkpoints_repository.best_of_job(session, owner=owner, job_id=resolved.job.id)
            if best is None or best.checkpoint_id is None:
                raise OpenAIError(400, f"{body.model} has no checkpoint to continue from yet", "model")
            init_from = best.checkpoint_id
        else:
            init_from = resolved.checkpoint_id
    check_vocabulary(session, owner=owner, settings=settings, training_file=training_file,
                     validation_file=validation_file, init_from=init_from)
    hp = _hyperparameters(body)
    if isinstance(hp.n_epochs, int | float) and not isinstance(hp.n_epochs, bool):
        training["max_epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int) and not isinstance(hp.batch_size, bool):
        training["batch_size"] = hp.batch_size
    if isinstance(hp.learning_rate_multiplier, int | float) and not isinstance(hp.learning_rate_multiplier, bool):
        if hp.learning_rate_multiplier <= 0:
            raise OpenAIError(400, "learning_rate_multiplier must be above 0",
                              "hyperparameters.learning_rate_multiplier")
        training["learning_rate"] = train_defaults()["learning_rate"] * hp.learning_rate_multiplier
    if body.seed is not None:
        training["seed"] = body.seed
    if body.max_seconds is not None:
        training["max_seconds"] = body.max_seconds
    if validation_file:
        training["val_fraction"] = 0.0  # the whole training file is trained on; the validation file is scored
    try:
        native = NativeJobCreate(
            corpus_id=training_file, name=body.suffix, init_from=init_from, model=model, training=training
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "charrnn." + ".".join(str(p) for p in first["loc"])
        where = where.replace("charrnn.training.max_epochs", "hyperparameters.n_epochs").replace(
            "charrnn.training.batch_size", "hyperparameters.batch_size").replace(
            "charrnn.training.learning_rate", "hyperparameters.learning_rate_multiplier")
        message = unknown_field(NativeJobCreate, first["loc"]) if first["type"] == "extra_forbidden" else first["msg"]
        raise OpenAIError(400, f"{where}: {message}", where) from None
    columns = {
        "validation_corpus_id": validation_file,
        "openai_model": body.model,
        "suffix": body.suffix,
    }
    return native, columns


def create(session: Session, *, owner: str, settings: Settings, body: JobCreate) -> dict:
    native, columns = native_request(session, owner=owner, settings=settings, body=body)
    session.rollback()  # the native create opens its own transaction
    job = jobs.create(session, owner=owner, settings=settings, body=native, columns=columns)
    return job_object(job)


def _auto_or(value, default=None):
    return "auto" if value is None else value if default is None else round(value / default, 6)


def job_object(job: Job) -> dict:
    training, progress = job.training or {}, job.progress or {}
    hyperparameters = {
        "n_epochs": _auto_or(training.get("max_epochs")),
        "batch_size": _auto_or(training.get("batch_size")),
        "learning_rate_multiplier": _auto_or(training.get("learning_rate"), train_defaults()["learning_rate"]),
    }
    trained_tokens = None
    if job.status in FINAL_STATUSES:
        trained_tokens = int(progress.get("step") or 0) * int(training.get("batch_size") or 0) * int(
            training.get("seq_len") or 0)
    eta = progress.get("eta_seconds")
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "error": (
            {"code": "training_failed", "message": job.error_message or "the job failed", "param": None}
            if job.status == JobStatus.FAILED else None
        ),
        "fine_tuned_model": catalog.fine_tuned_name(job) if job.status == JobStatus.SUCCEEDED else None,
        "finished_at": _ts(job.finished_at),
        "hyperparameters": hyperparameters,
        "model": job.openai_model or catalog.base_of(job),
        "organization_id": job.owner,
        "result_files": [METRICS_FILE_PREFIX + job.id] if job.status in FINAL_STATUSES else [],
        "seed": training.get("seed", 0),
        "status": job.status,  # ours are OpenAI's, bar validating_files: files are checked before the job queues
        "trained_tokens": trained_tokens,
        "training_file": job.corpus_id,
        "validation_file": job.validation_corpus_id,
        "estimated_finish": int(time.time() + eta) if job.status == JobStatus.RUNNING and eta is not None else None,
        "integrations": None,
        "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "suffix": job.suffix,
        "user_provided_suffix": job.suffix,
    }


def get(session: Session, *, owner: str, job_id: str) -> Job:
    job = jobs_repository.get(session, owner=owner, job_id=job_id)
    if job is None:
        raise OpenAIError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_id", "fine_tuning_job_not_found")
    return job


def list_page(session: Session, *, owner: str, params: PageParams) -> dict:
    rows, has_more = jobs_repository.list_page(session, owner=owner, params=params)
    return {"object": "list", "data": [job_object(j) for j in rows], "has_more": has_more}


def cancel(session: Session, *, owner: str, job_id: str) -> dict:
    get(session, owner=owner, job_id=job_id)
    session.rollback()
    return job_object(jobs.cancel(session, owner=owner, job_id=job_id))  # 409 once it has finished


def event_object(event: JobEvent) -> dict:
    data = event.data or {}
    failed = event.type == "status" and data.get("status") == JobStatus.FAILED
    return {
        "id": f"{EVENT_PREFIX}{event.id}",
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at),
        "level": "error" if failed else "info",
        "message": event.message,
        "data": {"kind": event.type, **data},
        "type": "metrics" if event.type == "metrics" else "message",
    }


def events(session: Session, *, owner: str, job_id: str, after: str | None, limit: int) -> dict:
    get(session, owner=owner, job_id=job_id)
    before = None
    if after is not None:
        number = after.removeprefix(EVENT_PREFIX)
        if not number.isdigit():
            raise OpenAIError(400, f"after {after!r} is not an event id (ftevent-N)", "after")
        before = int(number)
    rows = repository.events_newest_first(session, owner=owner, job_id=job_id, before=before, limit=limit + 1)
    return {"object": "list", "data": [event_object(e) for e in rows[:limit]], "has_more": len(rows) > limit}


def checkpoint_object(job: Job, checkpoint: Checkpoint) -> dict:
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(checkpoint.created_at),
        "fine_tuned_model_checkpoint": catalog.checkpoint_name(job, checkpoint.step),
        "fine_tuning_job_id": job.id,
        "metrics": {
            "step": checkpoint.step,
            "train_loss": checkpoint.train_loss,
            "valid_loss": checkpoint.val_loss,
            "full_valid_loss": checkpoint.val_loss,
        },
        "step_number": checkpoint.step,
    }


def checkpoints(session: Session, *, owner: str, job_id: str, params: PageParams) -> dict:
    job = get(session, owner=owner, job_id=job_id)
    rows, has_more = checkpoints_repository.for_job(session, owner=owner, job_id=job_id, params=params)
    data = [checkpoint_object(job, c) for c in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
