"""Model names on /v1: the base presets, and fine-tuned models named as OpenAI names them.

A fine-tuned model is a succeeded job: `ft:{base}:{owner}:{suffix}:{job id}`; each of its checkpoints is
`…:{job id}:ckpt-step-{step}`. The job id is the last part, so the name parses whatever the owner's
name holds; the whole name must match what the job would be called, so a made-up name never resolves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.checkpoints import repository as checkpoints
from app.jobs import deletion
from app.jobs import repository as jobs
from app.models import Job, JobStatus
from app.openai import repository
from app.openai.errors import OpenAIError
from app.settings import Settings

# The base models: each is an architecture to train from scratch; `charrnn` takes the engine's defaults.
PRESETS: dict[str, dict] = {
    "charrnn": {},
    "charrnn-lstm": {"cell": "lstm"},
    "charrnn-gru": {"cell": "gru"},
    "charrnn-rnn": {"cell": "rnn"},
}
PRESETS_CREATED = 1_767_225_600  # 2026-01-01: the presets are as old as the service
OWNED_BY_SERVICE = "charrnn"
CKPT_MARK = ":ckpt-step-"


def base_of(job: Job) -> str:
    requested = job.openai_model or ""
    if requested in PRESETS:
        return requested
    if requested.startswith("ft:") and requested.count(":") >= 4:
        return requested.split(":")[1]  # a continued fine-tune keeps its ancestor's base, as OpenAI's do
    return f"charrnn-{(job.model or {}).get('cell', 'lstm')}"


def fine_tuned_name(job: Job) -> str:
    return f"ft:{base_of(job)}:{job.owner}:{job.suffix or ''}:{job.id}"


def checkpoint_name(job: Job, step: int) -> str:
    return f"{fine_tuned_name(job)}{CKPT_MARK}{step}"


def not_found(name: str, why: str = "") -> OpenAIError:
    return OpenAIError(
        404, f"The model {name!r} does not exist or you do not have access to it{why}.", "model", "model_not_found"
    )


@dataclass
class Resolved:
    """What a model name stands for: a job (its best checkpoint), or one checkpoint of it."""

    job: Job
    checkpoint_id: str | None = None

    @property
    def native(self) -> str:
        """The native `model` (POST /generate): a checkpoint id, or a job id for its best checkpoint."""
        return self.checkpoint_id or self.job.id


def resolve(session: Session, *, owner: str, name: str) -> Resolved | None:
    """A fine-tuned model or checkpoint name, a job id or a checkpoint id; None for a preset.

    Raises 404 for anything else, for a deleted model, and for a job that has not succeeded (by name)."""
    if name in PRESETS:
        return None
    if name.startswith("ckpt_"):
        checkpoint = checkpoints.get(session, owner=owner, checkpoint_id=name)
        if checkpoint is None:
            raise not_found(name)
        return Resolved(jobs.get(session, owner=owner, job_id=checkpoint.job_id), checkpoint.id)
    if name.startswith("job_"):
        job = jobs.get(session, owner=owner, job_id=name)
        if job is None:
            raise not_found(name)
        return Resolved(job)
    if not name.startswith("ft:"):
        raise not_found(name, "; use a fine-tuned model (ft:…), a job id, a checkpoint id, or one of "
                              + ", ".join(PRESETS) + " to fine-tune from")
    model_name, step = name, None
    if CKPT_MARK in name:
        model_name, _, step_text = name.rpartition(CKPT_MARK)
        if not step_text.isdigit():
            raise not_found(name)
        step = int(step_text)
    job = jobs.get(session, owner=owner, job_id=model_name.rpartition(":")[2])
    if job is None or fine_tuned_name(job) != model_name:
        raise not_found(name)
    if job.model_deleted_at is not None:
        raise not_found(name, " (it was deleted)")
    if step is not None:
        checkpoint = repository.checkpoint_at_step(session, owner=owner, job_id=job.id, step=step)
        if checkpoint is None:
            raise not_found(name, f" (job {job.id} has no checkpoint at step {step})")
        return Resolved(job, checkpoint.id)
    if job.status != JobStatus.SUCCEEDED:
        raise not_found(name, f" yet: job {job.id} is {job.status}; use its job id for its best checkpoint so far")
    return Resolved(job)


def model_object(name: str, created: int, owned_by: str) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def list_models(session: Session, *, owner: str) -> list[dict]:
    presets = [model_object(name, PRESETS_CREATED, OWNED_BY_SERVICE) for name in PRESETS]
    tuned = [
        model_object(fine_tuned_name(job), int((job.finished_at or job.created_at).timestamp()), owner)
        for job in repository.fine_tuned_jobs(session, owner=owner)
    ]
    return presets + tuned


def retrieve(session: Session, *, owner: str, name: str) -> dict:
    resolved = resolve(session, owner=owner, name=name)
    if resolved is None:
        return model_object(name, PRESETS_CREATED, OWNED_BY_SERVICE)
    job = resolved.job
    if not name.startswith("ft:") and job.status != JobStatus.SUCCEEDED and resolved.checkpoint_id is None:
        raise not_found(name, f" yet: job {job.id} is {job.status}")
    return model_object(name, int((job.finished_at or job.created_at).timestamp()), owner)


def delete(session: Session, *, owner: str, settings: Settings, name: str) -> dict:
    """Delete a fine-tuned model: its job, checkpoints and run folder, as DELETE /jobs/{id} does (the one
    service function for both faces)."""
    if name in PRESETS:
        raise OpenAIError(403, f"{name!r} is a base model; only fine-tuned models (ft:…) can be deleted",
                          "model", "model_not_deletable")
    if not name.startswith("ft:") or CKPT_MARK in name:
        raise not_found(name, "; delete a fine-tuned model by its name (ft:…)")
    job_id = resolve(session, owner=owner, name=name).job.id
    deletion.delete_job(session, owner=owner, settings=settings, job_id=job_id)
    return {"id": name, "object": "model", "deleted": True}
