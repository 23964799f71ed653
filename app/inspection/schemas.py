"""POST /inspect: what it takes and what it answers (the worker answers `InspectResult` with its
`mean_surprise_bits`; the API relays those bytes with `model` and `checkpoint_id` in front)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.strings import DbStr

MAX_INSPECT_CHARS = 10_000
MAX_INSPECT_TOP_K = 20
MAX_INSPECT_UNITS = 1024  # the units listed in one request; the worker also bounds characters x units
MAX_INSPECT_LAYERS = 64  # beyond any model this service trains; the worker says the model's own range


class InspectOptions(BaseModel):
    """The fields the API and the worker share (the worker's body adds the checkpoint id)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=MAX_INSPECT_CHARS, description="1 to 10,000 characters")
    top_k: int = Field(5, ge=0, le=MAX_INSPECT_TOP_K, description="the likeliest characters listed per position")
    layer: int | None = Field(
        None, ge=0, lt=MAX_INSPECT_LAYERS, description="also each character's activations of this layer (0 = first)"
    )
    units: list[int] | None = Field(
        None,
        max_length=MAX_INSPECT_UNITS,
        description="only these units of `layer`, which it needs (default: all of them, if characters x units stays "
        "under 1,000,000)",
    )
    find_units: bool = Field(
        False, description="also rank, per text feature, the units of every layer whose activation tracks it best"
    )

    @model_validator(mode="after")
    def _units_need_a_layer(self):
        # Units are numbered within a layer: without one they would be silently ignored.
        if self.units is not None and self.layer is None:
            raise ValueError("`units` is given without `layer`: units are a layer's; add `layer` (0 = the first) "
                             "or leave `units` out")
        return self


class InspectRequest(InspectOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "job_0005f1a2b3c4d5e6a1b2c3d4e5", "text": 'He said "hi" (twice).', "top_k": 3}]
        },
    )
    model: DbStr = Field(..., min_length=1, max_length=64, description="a job id or a checkpoint id")


class Prediction(BaseModel):
    char: str
    prob: float


class CharacterOut(BaseModel):
    char: str
    prob: float = Field(description="the probability the model gave this character")
    surprise_bits: float = Field(description="-log2(prob)")
    rank: int = Field(description="1 when it was the model's likeliest character")
    entropy_bits: float = Field(description="how unsure the prediction was, in bits")
    top: list[Prediction] = Field(description="the top_k likeliest characters at this position")


class Activations(BaseModel):
    layer: int
    units: list[int]
    h: list[list[float]] = Field(description="per character (after reading it), per unit: the hidden state")
    c: list[list[float]] | None = Field(description="an LSTM's cell state, same shape; null for gru/rnn")


class FoundUnit(BaseModel):
    layer: int
    state: str = Field(description="h, or c for an LSTM's cell state")
    unit: int
    correlation: float = Field(description="Pearson correlation with the feature over the text's characters")


class FeatureUnits(BaseModel):
    feature: str
    description: str
    units: list[FoundUnit]
    note: str | None = None


class InspectResult(BaseModel):
    characters: list[CharacterOut]
    activations: Activations | None = None
    found_units: list[FeatureUnits] | None = None


class InspectResponse(InspectResult):
    model: str
    checkpoint_id: str
    mean_surprise_bits: float = Field(description="bits per character over the text")
