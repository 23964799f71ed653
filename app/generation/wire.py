"""What the API and a worker's generation server say to each other: one definition for both sides.

The API builds these bodies and parses these stream lines; the worker (worker/service/server.py)
validates the same bodies and writes the same lines. The worker takes a checkpoint id, never a path:
it finds the file itself, under its own data dir, so a caller cannot make it read anything else.
Every call carries the deployment's shared secret (app/workers/secret.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from app.generation.schemas import MAX_SCORE_CHARS, SampleOut
from app.inspection.schemas import InspectOptions
from worker.engine.sampling_params import MAX_LENGTH, MAX_PROMPT_CHARS, SamplingParams

GENERATE = "/generate"
GENERATE_STREAM = "/generate/stream"
SCORE = "/score"
LOGPROBS = "/logprobs"
INSPECT = "/inspect"

# /logprobs reads a prompt and what was generated after it (or, echoing, the prompt itself): at most a
# longest prompt and a longest generation together, read in one forward pass.
MAX_LOGPROBS_CHARS = MAX_PROMPT_CHARS + MAX_LENGTH
MAX_TOP_LOGPROBS = 20

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


class InspectBody(InspectOptions):
    """POST /inspect: a text read character by character (app/inspection/schemas.py has the fields)."""

    checkpoint_id: CheckpointId


class LogprobsBody(BaseModel):
    """POST /logprobs (the /v1/completions `logprobs`): each character of `text` after `context`, and the
    `top` most likely characters at each position. Bounded together, as the model reads both at once."""

    model_config = ConfigDict(extra="forbid")
    checkpoint_id: CheckpointId
    context: str = Field("", max_length=MAX_LOGPROBS_CHARS)
    text: str = Field(..., max_length=MAX_LOGPROBS_CHARS)
    top: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _bounded_together(self) -> LogprobsBody:
        if len(self.context) + len(self.text) > MAX_LOGPROBS_CHARS:
            raise ValueError(f"context and text together are over {MAX_LOGPROBS_CHARS:,} characters")
        return self


class LogprobsResult(BaseModel):
    token_logprobs: list[float]  # one per character of `text`
    top_logprobs: list[dict[str, float]]  # one per character of `text` when `top` > 0, else empty


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
