"""How well a model predicts a text: mean cross-entropy in nats per character."""

from __future__ import annotations

import torch

from worker.engine.data import Vocab, eval_streams
from worker.engine.model import CharRNN, mean_cross_entropy

# Long texts are scored as this many parallel streams of at least this many characters each:
# one stream would be exact but serial, and a stream only loses context at its first character.
MAX_STREAMS = 64
MIN_STREAM_CHARS = 4096


def score_ids(model: CharRNN, data: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> tuple[float, int]:
    if len(data) < 2:
        raise ValueError("the text must have at least 2 characters to be scored (the first one has no prediction)")
    streams = max(1, min(MAX_STREAMS, len(data) // MIN_STREAM_CHARS))
    inputs, targets = eval_streams(data, streams)
    return mean_cross_entropy(model, inputs, targets, autocast_dtype=autocast_dtype)


def score_text(model: CharRNN, vocab: Vocab, text: str) -> tuple[float, int]:
    return score_ids(model, vocab.encode(text, what="the text to score"))
