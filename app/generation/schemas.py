from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GenerateRequest(BaseModel):
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

    model: str = Field(
        ...,
        min_length=1,
        max_length=64,
        description="a job id (its best checkpoint so far, even while training) or a checkpoint id",
    )
    prompt: str = Field("", max_length=10_000, description="text the model reads before generating")
    length: int = Field(200, ge=0, le=10_000, description="characters to generate")
    temperature: float = Field(1.0, ge=0, le=10, description="0 = always the most likely character")
    top_k: int | None = Field(None, ge=1, le=100_000)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    num_samples: int = Field(1, ge=1, le=16)
    stop: list[str] = Field(default_factory=list, max_length=16, description="strings that end a sample")
    stream: bool = Field(False, description="answer Server-Sent Events, one per chunk, then a final one")


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
    model: str = Field(..., min_length=1, max_length=64, description="a job id or a checkpoint id")
    text: str = Field(..., min_length=2, max_length=10_000_000, description="at least 2 characters")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"loss": 1.52, "chars": 18, "model": "job_x", "checkpoint_id": "ckpt_x"}]}
    )
    loss: float
    chars: int
    model: str
    checkpoint_id: str
