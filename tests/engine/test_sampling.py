"""Sampling: determinism, greedy decoding, top-k/top-p support, stop strings, unseen characters."""


import pytest
import torch

from tests.conftest import SHAKESPEARE
from worker.engine.data import CorpusError, Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Sampler, SampleRequest, StopScanner
from worker.engine.sampling_params import MAX_NUM_SAMPLES
from worker.engine.scoring import score_text

TEXT = SHAKESPEARE.read_text()[:5000]


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def sampler(request) -> Sampler:
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=request.param, hidden_size=24, num_layers=2))
    return Sampler(model, vocab)


def test_fused_step_matches_the_module(sampler):
    """The hand-called cell functions compute what nn.RNN/LSTM/GRU compute."""
    ids = sampler.vocab.encode("ROMEO: Wherefore art thou")
    with torch.inference_mode():
        full_logits, _ = sampler.model(ids.unsqueeze(0))
        state, logits = sampler.prime(sampler.vocab.decode(ids[:1].tolist()), 1)
        stepped = [logits[0]]
        for i in ids[1:-1]:
            stepped.append(sampler.step(i.view(1), state)[0])
    assert torch.allclose(torch.stack(stepped), full_logits[0, :-1], atol=1e-5)


def test_same_seed_same_text_and_batches_are_independent_samples(sampler):
    request = SampleRequest(prompt="the ", length=60, seed=42, num_samples=3)
    first, second = sampler.generate(request), sampler.generate(request)
    assert [s.text for s in first] == [s.text for s in second]
    assert all(len(s.text) == 60 and s.finish_reason == "length" for s in first)
    assert len({s.text for s in first}) > 1
    other = sampler.generate(SampleRequest(prompt="the ", length=60, seed=43))
    assert other[0].text != first[0].text


def test_temperature_zero_is_greedy(sampler):
    request = SampleRequest(prompt="the ", length=30, temperature=0, num_samples=2)
    a, b = sampler.generate(request)
    assert a.text == b.text  # no randomness at all
    # and it is the argmax of the module's own next-character distribution at each step
    ids = sampler.vocab.encode("the " + a.text)
    with torch.inference_mode():
        logits, _ = sampler.model(ids.unsqueeze(0))
    greedy = logits[0, 3:-1].argmax(-1)
    assert sampler.vocab.decode(greedy.tolist()) == a.text


def draws(sampler: Sampler, n: int, **fields) -> set[str]:
    """The distinct texts of n samples, MAX_NUM_SAMPLES (the contract's bound) at a time, one seed each."""
    per = MAX_NUM_SAMPLES
    return {s.text for seed in range(-(-n // per))
            for s in sampler.generate(SampleRequest(**fields, num_samples=per, seed=seed))}


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_k_draws_only_from_the_k_most_likely(sampler, top_k):
    drawn = draws(sampler, 200, prompt="a", length=1, top_k=top_k, temperature=5.0)
    with torch.inference_mode():
        _, logits = sampler.prime("a", 1)
    allowed = {sampler.vocab.chars[i] for i in logits[0].topk(top_k).indices.tolist()}
    assert drawn <= allowed and len(drawn) == top_k


def test_top_p_draws_only_from_the_nucleus(sampler):
    with torch.inference_mode():
        _, logits = sampler.prime("a", 1)
    probs, order = logits[0].softmax(-1).sort(descending=True)
    nucleus_size = int((probs.cumsum(-1) < 0.5).sum()) + 1
    allowed = {sampler.vocab.chars[i] for i in order[:nucleus_size].tolist()}
    drawn = draws(sampler, 300, prompt="a", length=1, top_p=0.5)
    assert drawn <= allowed


def test_unseen_prompt_characters_are_listed(sampler):
    with pytest.raises(CorpusError, match=r"'é', '€'"):
        sampler.generate(SampleRequest(prompt="café €"))


@pytest.mark.parametrize(("field", "value"), [("length", -1), ("temperature", -0.5), ("top_k", 0),
                                              ("top_p", 1.5), ("num_samples", 0)])
def test_bad_request_fields_are_named(sampler, field, value):
    with pytest.raises(ValueError, match=field):
        sampler.generate(SampleRequest(**{field: value}))


def test_stop_strings_end_a_sample_without_emitting_the_stop():
    scanner = StopScanner(["\n\n", "END"])
    out = "".join(scanner.push(c) for c in "abc EN")
    assert out == "abc " and not scanner.stopped  # "EN" held back: it may be the start of "END"
    out += scanner.push("D")
    assert scanner.stopped and out == "abc "
    scanner = StopScanner(["END"])
    assert "".join(scanner.push(c) for c in "ENx") + scanner.flush() == "ENx"


def test_generation_with_stop_reports_finish_reason(sampler):
    samples = sampler.generate(SampleRequest(length=400, seed=3, num_samples=4, stop=["e"]))
    assert all("e" not in s.text for s in samples)
    assert {s.finish_reason for s in samples} == {"stop"}


def test_score_of_untrained_model_is_near_uniform(sampler):
    loss, chars = score_text(sampler.model, sampler.vocab, TEXT[:3000])
    assert chars == 2999
    assert 0.7 * torch.log(torch.tensor(len(sampler.vocab))).item() < loss < 1.5 * torch.log(
        torch.tensor(len(sampler.vocab))).item()
