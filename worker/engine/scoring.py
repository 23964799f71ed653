"""How well a model predicts a text: mean cross-entropy in nats per character."""

from __future__ import annotations

import torch

from worker.engine.data import Vocab, eval_streams
from worker.engine.errors import InputError
from worker.engine.model import CharRNN, mean_cross_entropy

# Long texts are scored as this many parallel streams of at least this many characters each:
# one stream would be exact but serial, and a stream only loses context at its first character.
MAX_STREAMS = 64
MIN_STREAM_CHARS = 4096


def score_ids(model: CharRNN, data: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> tuple[float, int]:
    if len(data) < 2:
        raise InputError(
            "the text must have at least 2 characters to be scored (the first one has no prediction)", param="text"
        )
    streams = max(1, min(MAX_STREAMS, len(data) // MIN_STREAM_CHARS))
    inputs, targets = eval_streams(data, streams)
    return mean_cross_entropy(model, inputs, targets, autocast_dtype=autocast_dtype)


def score_text(model: CharRNN, vocab: Vocab, text: str) -> tuple[float, int]:
    return score_ids(model, vocab.encode(text, what="the text to score", param="text"))


@torch.inference_mode()
def character_logprobs(
    model: CharRNN, vocab: Vocab, context: str, text: str, top: int = 0
) -> tuple[list[float], list[dict[str, float]]]:
    """The log-probability of each character of `text` after reading `context` (the prompt; none reads
    as the sampler starts, see sampler.priming_text), under the model's own distribution (temperature 1),
    and the `top` most likely characters at each position. Characters are the tokens, so this is exact."""
    from worker.engine.sampler import priming_text

    if not text:
        return [], []
    prime = priming_text(vocab, context)
    vocab.encode(context, what="the prompt", param="prompt")
    ids = vocab.encode(prime + text, what="the text").to(next(model.parameters()).device)
    logits, _ = model.eval()(ids[:-1].unsqueeze(0))
    logprobs = logits[0, len(prime) - 1 :].float().log_softmax(dim=-1)
    targets = ids[len(prime) :]
    chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
    tops: list[dict[str, float]] = []
    if top > 0:
        values, indices = logprobs.topk(min(top, len(vocab)), dim=-1)
        tops = [
            {vocab.chars[i]: v for i, v in zip(row_i, row_v, strict=True)}
            for row_i, row_v in zip(indices.tolist(), values.tolist(), strict=True)
        ]
    return chosen, tops
