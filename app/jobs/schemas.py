"""Job requests and responses.

Every field is optional and bounded; a left-out field takes the engine's default."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.corpora.schemas import LOSS_UNITS, ReferenceLosses
from app.errors import scrub_paths
from app.models import JobStatus
from app.strings import DbStr
from worker.engine.autoconfig import AUTO_MODEL_FIELDS
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.settings import Setting, request_model

# Settings of the run that a job does not choose: the worker that claims it does (CHARRNN_DEVICE).
WORKER_SETTINGS = ("device", "precision")


def _model_help(s: Setting) -> str:
    if s.name in AUTO_MODEL_FIELDS:
        return f"{s.help} (default: chosen for the job's budget and corpus when it starts)"
    return f"{s.help} (default {s.default!r})"


def _training_help(s: Setting) -> str:
    return s.help if s.default is None else f"{s.help} (default {s.default!r})"


# Generated from the engine's definitions (worker/engine/config.py): every field optional (left out, the
# engine's default), bounded as the engine bounds it.
ModelSpec = request_model("ModelSpec", ModelConfig, _model_help, "The model's settings; each may be left out.")
TrainingSpec = request_model("TrainingSpec", TrainConfig, _training_help,
                             "The run's settings; each may be left out.", exclude=WORKER_SETTINGS)


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "corpus_id": "corpus_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "name": "shakespeare-small",
                    "model": {"cell": "lstm", "hidden_size": 256, "num_layers": 2},
                    "training": {"seq_len": 32, "batch_size": 32, "max_seconds": 600, "seed": 1},
                }
            ]
        },
    )

    corpus_id: DbStr = Field(..., min_length=1, max_length=64, description="the corpus to train on")
    name: DbStr | None = Field(None, max_length=200)
    init_from: DbStr | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a checkpoint id: continue from its weights (and architecture)",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)


class Progress(BaseModel):
    step: int = 0
    max_steps: int | None = None
    epoch: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    chars_per_second: float | None = None
    eta_seconds: float | None = None


# The keys of a job's stored `progress`: the worker keeps these of each trainer snapshot.
PROGRESS_KEYS = tuple(Progress.model_fields)


class JobError(BaseModel):
    message: str


class DiagnosisOut(BaseModel):
    """The training doctor's latest reading of the run, in plain words with the numbers and what to change."""

    kind: Literal["not_learning", "diverged", "overfitting", "still_improving", "healthy"] = Field(
        description="not_learning: training loss still at or above the unigram reference after a fifth of the "
        "budget; diverged: the loss became non-finite or exploded (the job stops, failed); overfitting: "
        "validation loss rising over consecutive evaluations while training loss falls (the best checkpoint "
        "is kept and served); still_improving: validation loss still falling steeply when the budget ran out; "
        "healthy: none of these, with where the final loss stands against the references"
    )
    message: str = Field(description="what the doctor sees, with the numbers (nats per character), and what to change")
    step: int = Field(description="the step it was given at")


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "job_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "name": "shakespeare-small",
                    "status": "running",
                    "corpus_id": "corpus_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "init_from": None,
                    "model": {
                        "cell": "lstm",
                        "hidden_size": 256,
                        "num_layers": 2,
                        "embedding_dim": 64,
                        "dropout": 0.0,
                    },
                    "training": {"seq_len": 32, "batch_size": 32, "max_steps": 2000},
                    "progress": {
                        "step": 420,
                        "max_steps": 2000,
                        "epoch": 0,
                        "train_loss": 1.71,
                        "val_loss": 1.83,
                        "best_val_loss": 1.83,
                        "chars_per_second": 95000.0,
                        "eta_seconds": 61.0,
                    },
                    "reference_losses": {"unigram": 3.347, "bigram": 2.482, "val_fraction": 0.1,
                                         "unigram_bits": 4.829, "bigram_bits": 3.581},
                    "diagnosis": None,
                    "device": "cpu",
                    "attempts": 1,
                    "error": None,
                    "created_at": "2026-01-01T12:00:00Z",
                    "started_at": "2026-01-01T12:00:01Z",
                    "finished_at": None,
                }
            ]
        }
    )

    id: str
    name: str | None
    status: JobStatus
    corpus_id: str
    init_from: str | None
    model: dict
    training: dict
    progress: Progress = Field(description="live progress; its losses are nats per character (/ ln 2 for bits)")
    reference_losses: ReferenceLosses | None = Field(
        None, description="the unigram and bigram reference losses of the job's own split, set when it starts; "
        "a validation loss below the bigram reference means the model learned more than pairs of characters. "
        + LOSS_UNITS
    )
    diagnosis: DiagnosisOut | None = Field(
        None, description="the training doctor's latest diagnosis (also each one as a `log` event): set during "
        "the run when it sees a problem, and at the end"
    )
    device: str | None
    attempts: int
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "created_at": "2026-01-01T12:00:05Z",
                    "type": "metrics",
                    "message": "step 100",
                    "data": {"step": 100, "train_loss": 2.1},
                }
            ]
        },
    )
    id: int
    created_at: datetime
    type: Literal["status", "metrics", "sample", "checkpoint", "log"]
    message: str
    data: dict

    @field_validator("message")
    @classmethod
    def _no_server_paths(cls, message: str) -> str:
        return scrub_paths(message)  # a worker's error may name files under the data dir

    @field_validator("data")
    @classmethod
    def _no_server_paths_in_data(cls, data: dict) -> dict:
        return {k: scrub_paths(v) for k, v in data.items()}


class EventPage(BaseModel):
    data: list[EventOut]
    has_more: bool


class MetricOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "step": 100,
                    "train_loss": 2.1,
                    "val_loss": None,
                    "learning_rate": 0.003,
                    "chars_per_second": 90000.0,
                    "time": "2026-01-01T12:00:05Z",
                }
            ]
        },
    )
    step: int
    train_loss: float | None
    val_loss: float | None
    learning_rate: float | None
    chars_per_second: float | None
    time: datetime


class JobDefaults(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {
                        "cell": "lstm", "hidden_size": None, "num_layers": 2, "embedding_dim": 64, "dropout": None
                    },
                    "training": {"seq_len": 64, "batch_size": 32, "max_steps": None, "max_seconds": None},
                    "default_max_steps": 2000,
                    "fields": {
                        "model": {"cell": {"type": "choice", "help": "recurrent cell",
                                           "choices": ["lstm", "gru", "rnn"]}},
                        "training": {"seq_len": {"type": "int", "help": "characters of backprop per window", "ge": 1,
                                                 "le": 4096}},
                    },
                }
            ]
        }
    )
    model: dict = Field(description="every field of `model` with the value a job that leaves it out gets")
    training: dict = Field(description="every field of `training` likewise (null: no such limit; for "
                           "eval_every, evaluations spaced over the budget)")
    default_max_steps: int = Field(description="the steps a job trains for when it sets no max_steps/epochs/seconds")
    fields: dict = Field(description="each field of `model` and `training` as a form draws it: its type (int, float, "
                         "or choice, with its choices), its bounds (ge, gt, le, lt) and its help")
