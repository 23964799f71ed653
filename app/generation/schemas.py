from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.strings import DbStr
from worker.engine.sampling_params import SamplingParams

MAX_SCORE_CHARS = 10_000_000


class GenerateRequest(SamplingParams):
    """The sampling parameters (their one definition, bounds included, is SamplingParams), plus which model
    and how to answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "job_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "prompt": "ROMEO:",
                    "length": 200,
                    "temperature": 0.8,
                    "top_k": 40,
                    "seed": 1,
                    "num_samples": 1,
                    "stop": ["\n\n"],
                    "stream": False,
                }
            ]
        },
    )

    model: DbStr = Field(
        ...,
        min_length=1,
        max_length=64,
        description="a job id (its best checkpoint so far, even while training) or a checkpoint id",
    )
    stream: bool = Field(False, description="answer Server-Sent Events, one per chunk, then a final one")

    def sampling_params(self) -> dict:
        return self.model_dump(exclude={"model", "stream"})


class SampleOut(BaseModel):
    text: str
    finish_reason: str


class Usage(BaseModel):
    prompt_chars: int
    generated_chars: int


class GenerateResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "job_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "checkpoint_id": "ckpt_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "text": " What say you?",
                    "samples": [{"text": " What say you?", "finish_reason": "length"}],
                    "usage": {"prompt_chars": 6, "generated_chars": 14},
                }
            ]
        }
    )
    model: str
    checkpoint_id: str
    text: str
    samples: list[SampleOut]
    usage: Usage


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "job_0005f1a2b3c4d5e6a1b2c3d4e5", "text": "To be, or not to be"}]},
    )
    model: DbStr = Field(..., min_length=1, max_length=64, description="a job id or a checkpoint id")
    text: str = Field(..., min_length=2, max_length=MAX_SCORE_CHARS, description="at least 2 characters")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"loss": 1.52, "chars": 18, "model": "job_x", "checkpoint_id": "ckpt_x"}]}
    )
    loss: float
    chars: int
    model: str
    checkpoint_id: str
