from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, computed_field

LOSS_UNITS = (
    "Losses are in nats per character (natural-log cross-entropy, as the trainer and /score report them); "
    "divide by ln 2 (0.6931) for bits per character, as the *_bits fields do."
)


class ReferenceLosses(BaseModel):
    """What the simplest models score on a split's held-out text: the yardstick a trained model's
    validation loss is read against."""

    model_config = ConfigDict(
        json_schema_extra={
            "description": "Reference losses of the held-out text. " + LOSS_UNITS,
            "examples": [{"unigram": 3.347, "bigram": 2.482, "val_fraction": 0.1,
                          "unigram_bits": 4.829, "bigram_bits": 3.581}],
        }
    )

    unigram: float = Field(description="nats per character of a model that knows only how often each character "
                           "occurs (fitted on the training part, add-one smoothed): a model that learns scores "
                           "below it")
    bigram: float = Field(description="nats per character of a model that knows only the previous character "
                          "(add-one smoothed, trained on the training part, scored on the held-out part)")
    val_fraction: float | None = Field(
        None, description="the held-out share of the text they were scored on (the last val_fraction, as a job "
        "holds it out); null for a job with a separate validation file"
    )

    @computed_field(description="unigram in bits per character (unigram / ln 2)")
    @property
    def unigram_bits(self) -> float:
        return self.unigram / math.log(2)

    @computed_field(description="bigram in bits per character (bigram / ln 2)")
    @property
    def bigram_bits(self) -> float:
        return self.bigram / math.log(2)


class CorpusOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "corpus_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "name": "tinyshakespeare",
                    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    "size_bytes": 1115394,
                    "num_chars": 1115394,
                    "vocab_size": 65,
                    "created_at": "2026-01-01T12:00:00Z",
                    "reference_losses": {"unigram": 3.347, "bigram": 2.482, "val_fraction": 0.1,
                                         "unigram_bits": 4.829, "bigram_bits": 3.581},
                }
            ]
        },
    )

    id: str
    name: str
    sha256: str
    size_bytes: int
    num_chars: int
    vocab_size: int
    created_at: datetime
    reference_losses: ReferenceLosses | None = Field(
        None, description="the unigram and bigram reference losses of the default split (the last 10% held "
        "out), computed at upload; null when too little would be held out. " + LOSS_UNITS
    )
