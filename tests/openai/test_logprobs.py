"""The per-character logprobs behind /v1/completions' `logprobs` (worker/engine/scoring.character_logprobs)."""

import math

import pytest
import torch

from tests.harness import SHAKESPEARE
from worker.engine.data import CorpusError, Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Sampler, SampleRequest
from worker.engine.scoring import character_logprobs, score_text

TEXT = SHAKESPEARE.read_text()[:5000]


@pytest.fixture(scope="module", params=["lstm", "gru"])
def sampler(request) -> Sampler:
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=request.param, hidden_size=24, num_layers=2))
    return Sampler(model, vocab)


def test_they_add_up_to_the_score(sampler):
    text = "ROMEO: Wherefore art thou"
    chosen, top = character_logprobs(sampler.model, sampler.vocab, "a", text)
    assert len(chosen) == len(text) and top == []
    loss, chars = score_text(sampler.model, sampler.vocab, "a" + text)
    assert chars == len(text) and math.isclose(-sum(chosen) / len(chosen), loss, rel_tol=1e-5)


@pytest.mark.parametrize("prompt", ["", "the "])
def test_greedy_text_takes_the_top_character_each_time(sampler, prompt):
    (sample,) = sampler.generate(SampleRequest(prompt=prompt, length=30, temperature=0))
    chosen, top = character_logprobs(sampler.model, sampler.vocab, prompt, sample.text, top=3)
    for char, logprob, best in zip(sample.text, chosen, top, strict=True):
        assert len(best) == 3 and max(best, key=best.get) == char and abs(best[char] - logprob) < 1e-5


def test_unseen_characters_are_named(sampler):
    with pytest.raises(CorpusError, match="☃"):
        character_logprobs(sampler.model, sampler.vocab, "☃", "the")
    assert character_logprobs(sampler.model, sampler.vocab, "a", "") == ([], [])
