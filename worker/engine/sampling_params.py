"""The sampling parameters and their bounds: the one definition of what a generation request may ask.

The API validates /generate bodies with it, the worker validates what the API forwards with it, and
the engine's sampler takes it as its request (sampler.SampleRequest is this class). It imports only
pydantic, so the API (which never imports torch) may use it; tests/test_layout.py keeps it that way.

The bounds are resource limits as much as sanity checks: a request inside them costs a bounded amount
of work (length x num_samples steps, each scanning at most MAX_STOPS stops of at most MAX_STOP_CHARS).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_PROMPT_CHARS = 10_000
MAX_LENGTH = 10_000
MAX_TEMPERATURE = 10.0
MAX_TOP_K = 100_000
MAX_SEED = 2**32 - 1
MAX_NUM_SAMPLES = 16
MAX_STOPS = 16
MAX_STOP_CHARS = 1_000

StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class SamplingParams(BaseModel):
    # Forbid unknown fields: a misspelt `temprature` must not be silently ignored, and the worker's
    # body (which extends this) must refuse anything but a checkpoint id, such as a file path.
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="text the model reads before generating")
    length: int = Field(200, ge=0, le=MAX_LENGTH, description="characters to generate")
    temperature: float = Field(
        1.0, ge=0, le=MAX_TEMPERATURE, description="0 = always the most likely character (so is any tiny value)"
    )
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="draw only from the k most likely characters")
    top_p: float | None = Field(
        None, gt=0, le=1, description="draw only from the most likely characters whose probabilities reach top_p"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed gives the same text")
    num_samples: int = Field(1, ge=1, le=MAX_NUM_SAMPLES, description="independent samples of the same prompt")
    stop: list[StopString] = Field(
        default_factory=list,
        max_length=MAX_STOPS,
        description=f"strings that end a sample (at most {MAX_STOPS}, each at most {MAX_STOP_CHARS} characters)",
    )
