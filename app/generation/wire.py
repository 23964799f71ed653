"""What the API and a worker's generation server say to each other: one definition for both sides.

The API builds these bodies and parses these stream lines; the worker (worker/service/server.py)
validates the same bodies and writes the same lines. The worker takes a checkpoint id, never a path:
it finds the file itself, under its own data dir, so a caller cannot make it read anything else.
Every call carries the deployment's shared secret (app/workers/secret.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.generation.schemas import MAX_SCORE_CHARS, SampleOut
from worker.engine.sampling_params import SamplingParams

GENERATE = "/generate"
GENERATE_STREAM = "/generate/stream"
SCORE = "/score"
# On a 409 for a damaged checkpoint file, the worker names the checkpoint in this header: the API then
# falls back to the job's previous good checkpoint (the worker marked this one corrupt before answering).
CORRUPT_HEADER = "X-Charrnn-Corrupt-Checkpoint"

CheckpointId = Annotated[str, Field(pattern=r"^ckpt_[0-9a-z]{1,40}$", description="the checkpoint to load")]


class GenerateBody(SamplingParams):
    """POST /generate and /generate/stream: the sampling parameters, bounds included, and a checkpoint id.
    Any other field (a `path`) is refused with 422, as SamplingParams forbids extras."""

    checkpoint_id: CheckpointId


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint_id: CheckpointId
    text: str = Field(..., min_length=2, max_length=MAX_SCORE_CHARS)


class GenerateResult(BaseModel):
    samples: list[SampleOut]


class ScoreResult(BaseModel):
    loss: float
    chars: int


# The stream: one JSON object a line (NDJSON), chunks of newly safe text, then either the whole answer
# or an error (once the status line is sent, a failure can only be said in the stream).


class Chunk(BaseModel):
    kind: Literal["chunk"] = "chunk"
    pieces: list[str]  # the new text of each sample


class Done(BaseModel):
    kind: Literal["done"] = "done"
    samples: list[SampleOut]


class Failed(BaseModel):
    kind: Literal["error"] = "error"
    error: str


StreamMessage = Annotated[Chunk | Done | Failed, Field(discriminator="kind")]
_stream_message = TypeAdapter(StreamMessage)


def to_line(message: Chunk | Done | Failed) -> str:
    return message.model_dump_json() + "\n"


def from_line(line: str) -> Chunk | Done | Failed:
    return _stream_message.validate_json(line)
