"""Sampling: determinism, greedy decoding, top-k/top-p support, stop strings, unseen characters."""


import pytest
import torch

from tests.harness import SHAKESPEARE
from worker.engine.data import CorpusError, Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Cancellation, Sample, Sampler, SampleRequest, StopScanner
from worker.engine.sampling_params import MAX_NUM_SAMPLES, MAX_STOP_CHARS, MAX_STOPS
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


def _reference_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the first stop string (the earliest to end; on a tie, the first listed)."""
    for end in range(1, len(text) + 1):
        for stop in stops:
            if stop and text[:end].endswith(stop):
                return text[: end - len(stop)], True
    return text, False


def _reference_hold(text: str, stops: list[str]) -> int:
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def test_stop_scanner_matches_a_plain_search_and_holds_back_exactly_the_undecided_tail():
    import random

    rng = random.Random(0)
    for _ in range(2000):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        scanner = StopScanner(stops)
        emitted, seen = "", ""
        for char in text:
            emitted += scanner.push(char)
            seen += char
            if scanner.stopped:
                break
            assert emitted + scanner.pending == seen
            assert len(scanner.pending) == _reference_hold(seen, [s for s in stops if s]), (stops, seen)
        emitted += scanner.flush()
        assert (emitted, scanner.stopped) == _reference_stop(text, stops), (stops, text)


def test_stop_scanning_costs_bounded_work_per_character():
    """Issue 13 item 10: the longest stops the contract allows, in a text built to make a naive scan
    quadratic (every tail is a long prefix of every stop), cost at most two automaton moves per
    character and stop."""
    stops = ["a" * (MAX_STOP_CHARS - 1) + chr(ord("b") + i) for i in range(MAX_STOPS)]
    scanner = StopScanner(stops)
    text = "a" * 5_000
    out = "".join(scanner.push(c) for c in text)
    assert not scanner.stopped and out == text[: -(MAX_STOP_CHARS - 1)]  # the undecided tail is held back
    assert scanner.work <= 2 * len(text) * len(stops)
    assert scanner.flush() == "a" * (MAX_STOP_CHARS - 1)
    assert scanner.push("a" * 10 + "c") == "" and scanner.stopped  # "a"*999 + "c" is the second stop


def test_sixteen_long_stops_cost_bounded_work_in_a_generation(sampler):
    stops = [("the " * 250)[: MAX_STOP_CHARS - 1] + chr(0x100 + i) for i in range(MAX_STOPS)]
    request = SampleRequest(prompt="the ", length=500, num_samples=MAX_NUM_SAMPLES, stop=stops, seed=1)
    stream = sampler.stream(request)
    texts = ["".join(parts) for parts in zip(*list(stream), strict=True)]
    assert [len(t) for t in texts] == [500] * MAX_NUM_SAMPLES  # their last characters are not in the vocabulary
    assert stream.scan_work <= 2 * 500 * MAX_STOPS * MAX_NUM_SAMPLES


def test_an_over_long_stop_list_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="stop"):
        SampleRequest(stop=["x"] * (MAX_STOPS + 1))
    with pytest.raises(ValueError, match="stop"):
        SampleRequest(stop=["x" * (MAX_STOP_CHARS + 1)])


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 1e-30, 1e-20])
def test_tiny_temperatures_are_greedy(sampler, temperature):
    """Issue 13 item 12: no inf/NaN from dividing by a temperature float32 cannot hold."""
    greedy = sampler.generate(SampleRequest(prompt="the ", length=40, temperature=0))
    assert sampler.generate(SampleRequest(prompt="the ", length=40, temperature=temperature, seed=1)) == greedy


@pytest.mark.parametrize("top_p", [1e-300, 5e-324, 1e-40])
def test_a_tiny_top_p_keeps_the_most_likely_character(sampler, top_p):
    greedy = sampler.generate(SampleRequest(prompt="the ", length=40, temperature=0))
    for temperature in (1.0, 1e-30):
        request = SampleRequest(prompt="the ", length=40, top_p=top_p, temperature=temperature, seed=1)
        assert sampler.generate(request) == greedy


def test_a_cancelled_request_stops_at_the_next_step(sampler):
    cancel = Cancellation()
    stream = iter(sampler.stream(SampleRequest(length=10_000, seed=1), cancel))
    next(stream)
    steps = sampler.steps
    cancel.cancel()
    assert list(stream) == [] and sampler.steps == steps
    assert sampler.generate(SampleRequest(length=10_000, seed=1), Cancellation(timeout_s=0)) == [Sample("", "length")]
