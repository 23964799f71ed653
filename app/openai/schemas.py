"""Request and response bodies of the /v1 routes, as OpenAI documents them (characters are tokens)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.schemas import ModelSpec, TrainingSpec
from worker.engine.config import TrainConfig
from worker.engine.sampling_params import MAX_LENGTH, MAX_NUM_SAMPLES, MAX_SEED, MAX_STOPS, MAX_TOP_K
from worker.engine.settings import setting_named

Auto = Literal["auto"]

# Native field names (as POST /jobs and POST /generate name them; a job's as `training.x`, `model.x`) ->
# OpenAI's `param` for the same value. The one table: completions, fine-tuning and the error renderer all
# map through openai_param(). tests/test_faces.py checks that each side names a real field.
OPENAI_PARAMS = {
    "length": "max_tokens",
    "num_samples": "n",
    "corpus_id": "training_file",
    "validation_corpus_id": "validation_file",
    "init_from": "model",
    "name": "suffix",
    "training": "charrnn.training",
    "training.max_epochs": "hyperparameters.n_epochs",
    "training.batch_size": "hyperparameters.batch_size",
    "training.learning_rate": "hyperparameters.learning_rate_multiplier",
    "training.seed": "seed",
    "training.max_seconds": "max_seconds",
}


def openai_param(native: str | None) -> str | None:
    """OpenAI's `param` for a native field: the table's name, else a job setting's path in the `charrnn`
    extension (`charrnn.training.seq_len`), else the same name (prompt, temperature, ...)."""
    if native is None or native in OPENAI_PARAMS:
        return OPENAI_PARAMS.get(native)
    if native.split(".")[0] in ("model", "training") and "." in native:
        return f"charrnn.{native}"
    return native


def _training_field(name: str, description: str):
    """An optional field bounded as the engine's training setting `name` is (its one definition, config.py)."""
    s = setting_named(TrainConfig, name)
    return Field(None, ge=s.ge, gt=s.gt, le=s.le, lt=s.lt, description=description)


# -- files -------------------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str = "fine-tune"
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# -- fine-tuning -------------------------------------------------------------------------------------


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked as training.max_epochs and training.batch_size, named back through OPENAI_PARAMS.
    n_epochs: Auto | float | None = Field(None, description="passes over the training file (max_epochs)")
    batch_size: Auto | int | None = Field(None, description="parallel streams of characters")
    learning_rate_multiplier: Auto | float | None = Field(None, description="times the engine's default rate")


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: SupervisedMethod | None = None


class CharrnnOptions(BaseModel):
    """The extension: native job settings (POST /jobs's `model` and `training`) that OpenAI has no name for."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec, description="POST /jobs's `model` settings")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="POST /jobs's `training` settings")


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "training_file": "corpus_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "model": "charrnn-lstm",
                    "hyperparameters": {"n_epochs": 2},
                    "suffix": "shakespeare",
                    "seed": 1,
                    "max_seconds": 120,
                }
            ]
        },
    )

    model: str = Field(..., min_length=1, max_length=300,
                       description="charrnn, charrnn-lstm, charrnn-gru, charrnn-rnn, or a fine-tuned model to continue")
    training_file: str = Field(..., min_length=1, max_length=64, description="a file id (a corpus)")
    validation_file: str | None = Field(None, max_length=64, description="a file scored as the held-out set")
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64, description="up to 64 characters in the fine-tuned model's name")
    seed: int | None = _training_field("seed", "the training run's random seed")
    metadata: dict[str, str] | None = None
    integrations: list[dict] | None = None
    # Extensions: a time budget, and native settings.
    max_seconds: float | None = _training_field("max_seconds", "charrnn: stop after this much training time")
    charrnn: CharrnnOptions | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: Auto | float
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict] | None = None
    metadata: dict | None = None
    method: dict
    suffix: str | None = None
    user_provided_suffix: str | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict | None = None
    type: Literal["message", "metrics"]


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# -- models ------------------------------------------------------------------------------------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


# -- completions -------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "ft:charrnn-lstm:alice:poems:job_0005f1a2b3c4d5e6a1b2c3d4e5", "prompt": "ROMEO:",
                 "max_tokens": 100, "temperature": 0.8, "seed": 1, "stop": ["\n\n"]}
            ]
        },
    )

    model: str = Field(..., min_length=1, max_length=400,
                       description="a fine-tuned model name, a job id (its best checkpoint) or a checkpoint id")
    prompt: str | list[str] = Field("", description="a string or a list of strings (not token arrays)")
    # Bounded as the native sampling parameters are (SamplingParams), bar temperature and top_p: OpenAI's range.
    max_tokens: int | None = Field(16, ge=0, le=MAX_LENGTH, description="characters to generate")
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=MAX_NUM_SAMPLES)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings that end a completion")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=5, description="the most likely characters to list per position")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Accepted as OpenAI's defaults only (the service refuses other values, saying so).
    best_of: int | None = Field(None, ge=1, le=MAX_NUM_SAMPLES)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = Field(None, max_length=256)
    # Extension: the native sampler's top-k.
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="draw only from the k most likely characters")
