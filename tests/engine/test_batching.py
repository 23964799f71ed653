"""Batched generation: concurrent requests share steps and each still gets its own sample; a seeded
request's text is the same alone or beside others, whenever they join and leave."""

import threading
import time

import pytest
import torch

from tests.harness import SHAKESPEARE
from worker.engine.batching import BatchedSampler, LowPrecisionStep
from worker.engine.data import Vocab
from worker.engine.model import CharRNN, ModelConfig
from worker.engine.sampler import Cancellation, Sampler, SampleRequest

TEXT = SHAKESPEARE.read_text()[:5000]


@pytest.fixture(params=["lstm", "gru"])
def samplers(request) -> tuple[Sampler, BatchedSampler]:
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell=request.param, hidden_size=24, num_layers=2))
    sampler = Sampler(model, vocab)
    batched = BatchedSampler(sampler)
    yield sampler, batched
    batched.close()


def test_concurrent_requests_share_steps(samplers):
    _, batched = samplers
    requests = [SampleRequest(prompt=p, length=300, num_samples=n) for p, n in [("the ", 1), ("First", 2), ("", 3)]]
    streams = [batched.stream(r) for r in requests]  # all submitted before any is read
    texts = [["".join(parts) for parts in zip(*list(s), strict=True)] for s in streams]
    assert [len(t) for t in texts] == [1, 2, 3]
    assert all(len(sample) == 300 for t in texts for sample in t)
    assert batched.peak_rows == 6  # every row of every request in one step
    assert batched.steps < 2 * 300  # alone they would take 3 x 299 steps
    assert len({sample for t in texts for sample in t}) == 6  # independent draws, not copies


def test_a_lone_greedy_request_matches_the_plain_sampler(samplers):
    sampler, batched = samplers
    request = SampleRequest(prompt="the ", length=80, temperature=0)
    assert batched.generate(request) == sampler.generate(request)


def test_requests_that_join_late_and_stop_early(samplers):
    _, batched = samplers
    long = batched.stream(SampleRequest(length=400))
    first = next(iter(long))  # the long one is running before the others arrive
    # Unseeded (batched), so five common stops: 400 characters that miss all of them are vanishingly
    # unlikely, where one stop ("e") missed about one run in 300.
    stops = ["e", "t", "a", "o", " "]
    stopped = batched.generate(SampleRequest(length=400, num_samples=3, stop=stops))
    empty = batched.generate(SampleRequest(prompt="the", length=0))
    rest = list(long)
    assert len(first[0]) + sum(len(p[0]) for p in rest) == 400
    assert all(not set(stops) & set(s.text) for s in stopped) and {s.finish_reason for s in stopped} == {"stop"}
    assert [(s.text, s.finish_reason) for s in empty] == [("", "length")]


def test_an_abandoned_stream_stops_costing_steps(samplers):
    _, batched = samplers
    stream = iter(batched.stream(SampleRequest(length=10_000)))
    next(stream)
    stream.close()  # the reader went away (a client that disconnected)
    batched.generate(SampleRequest(length=20))  # by the time this is done, the abandoned one has left
    steps = batched.steps
    time.sleep(0.2)
    assert batched.steps == steps < 1_000


def test_seeded_and_bad_requests_are_refused(samplers):
    sampler, batched = samplers
    with pytest.raises(ValueError, match="unseeded requests only"):
        batched.stream(SampleRequest(seed=1))
    seeded = BatchedSampler(sampler, seeded=True)
    with pytest.raises(ValueError, match="seeded requests only"):
        seeded.stream(SampleRequest())
    seeded.close()
    with pytest.raises(ValueError, match="temperature"):
        batched.stream(SampleRequest(temperature=-1))
    with pytest.raises(ValueError, match="num_samples"):
        batched.stream(SampleRequest(num_samples=65))


def test_a_cancelled_request_ends_and_stops_costing_steps(samplers):
    """The worker cancels a request whose caller hung up: its reader is woken (not left waiting for a
    _DONE that never comes) and the batch stops stepping it."""
    _, batched = samplers
    cancel = Cancellation()
    stream = iter(batched.stream(SampleRequest(length=10_000), cancel))
    first = next(stream)
    cancel.cancel()
    produced = len(first[0]) + sum(len(p[0]) for p in stream)  # ends by itself
    steps = batched.steps
    time.sleep(0.2)
    assert batched.steps == steps and produced < 10_000
    # A plain call past its deadline returns too, with what it had.
    samples = batched.generate(SampleRequest(length=10_000, num_samples=2), Cancellation(timeout_s=0.05))
    assert len(samples) == 2 and all(len(s.text) < 10_000 for s in samples)


def test_a_tiny_temperature_is_greedy_in_a_batch_too(samplers):
    sampler, batched = samplers
    greedy = sampler.generate(SampleRequest(prompt="the ", length=40, temperature=0))
    assert batched.generate(SampleRequest(prompt="the ", length=40, temperature=5e-324)) == greedy
    assert batched.generate(SampleRequest(prompt="the ", length=40, top_p=1e-300)) == greedy


def test_rows_with_different_sampling_settings_share_a_step_and_keep_their_own(samplers):
    _, batched = samplers
    greedy = SampleRequest(prompt="the ", length=120, temperature=0)
    top5 = SampleRequest(prompt="the ", length=120, top_k=5)
    hot = SampleRequest(prompt="the ", length=120, temperature=1.5, num_samples=2)
    streams = [batched.stream(r) for r in (greedy, top5, hot)]  # all running before any is read
    texts = [["".join(parts) for parts in zip(*list(s), strict=True)] for s in streams]
    assert batched.peak_rows == 4  # one step for the three settings
    assert all(len(t) == 120 for group in texts for t in group)
    assert len(set(texts[2])) == 2  # the hot rows are draws of their own
    # (Greedy is not compared with a lone greedy run: when the others join, and whether the step runs
    # in bf16, changes how a near-tie rounds.)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_low_precision_step_follows_the_fp32_step(cell):
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    sampler = Sampler(CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=64, num_layers=2)), vocab)
    low = LowPrecisionStep(sampler)
    with torch.inference_mode():
        state, _ = sampler.prime("the ", 32)
        state = [tuple(h + torch.randn_like(h) * 0.3 for h in layer) for layer in state]
        same = [tuple(h.clone() for h in layer) for layer in state]
        for _ in range(20):  # 20 characters on: the state stays close too
            ids = torch.randint(len(vocab), (32,))
            exact, approx = sampler.step(ids, state), low(ids, same)
        assert approx.dtype == torch.float32 and all(h.dtype == torch.float32 for layer in same for h in layer)
        assert (exact.softmax(-1) - approx.softmax(-1)).abs().max() < 0.02
        assert (exact - approx).abs().max() > 0  # bf16 products: not the same bits


def test_a_big_batch_of_unseeded_requests_runs_in_low_precision_where_the_cpu_has_bf16(samplers):
    _, batched = samplers
    texts = batched.generate(SampleRequest(prompt="the ", length=50, num_samples=LowPrecisionStep.MIN_ROWS))
    assert len(texts) == LowPrecisionStep.MIN_ROWS and all(len(t.text) == 50 for t in texts)
    assert (batched._low_precision is not None) == LowPrecisionStep.available(torch.device("cpu"))


def texts_of(streams) -> list[list[str]]:
    return [["".join(parts) for parts in zip(*list(s), strict=True)] for s in streams]


# Seeded requests with every kind of setting: plain, hot with several samples, top-k, top-p, greedy
# and a stop string (which ends it at a different step than the others).
SEEDED = [
    SampleRequest(prompt="the ", length=150, seed=1),
    SampleRequest(prompt="First", length=150, seed=2, temperature=1.5, num_samples=3),
    SampleRequest(prompt="", length=120, seed=3, top_k=5),
    SampleRequest(prompt="O, ", length=150, seed=4, top_p=0.8, temperature=0.7),
    SampleRequest(prompt="the ", length=100, seed=5, temperature=0),
    SampleRequest(prompt="and ", length=150, seed=6, stop=["e"], num_samples=2),
]


@pytest.fixture
def seeded_batch(samplers):
    sampler, _ = samplers
    seeded = BatchedSampler(sampler, seeded=True)
    yield sampler, seeded
    seeded.close()


@pytest.mark.parametrize("batch", [1, 2, 5, 32])
def test_a_seeded_text_is_the_same_alone_and_beside_others(seeded_batch, batch):
    """`batch` seeded requests submitted together share steps; each text is the one the lone sampler
    gives, bit for bit (greedy and stop included)."""
    sampler, seeded = seeded_batch
    requests = [SEEDED[i % len(SEEDED)].model_copy(update={"seed": 100 + i}) for i in range(batch)]
    streams = [seeded.stream(r) for r in requests]  # all submitted before any is read
    together = texts_of(streams)
    assert batch == 1 or seeded.peak_rows > max(r.num_samples for r in requests)  # they shared steps
    for request, texts in zip(requests, together, strict=True):
        assert texts == [s.text for s in sampler.generate(request)]
    assert len({t for texts in together for t in texts}) > batch // 2  # different seeds, different texts


def test_a_seeded_request_that_joins_midway_gets_its_own_text(seeded_batch):
    """Joining while 31 others run, and running on while they leave one by one, changes nothing."""
    sampler, seeded = seeded_batch
    others = [seeded.stream(SampleRequest(prompt="the ", length=40 + 5 * i, seed=200 + i)) for i in range(31)]
    readers = [iter(s) for s in others]
    for reader in readers:
        for _ in range(20):  # the others are 20 characters in when the newcomer arrives
            next(reader)
    request = SEEDED[1]
    joined = seeded.generate(request)
    assert seeded.peak_rows >= 31 + request.num_samples  # it did share steps with them
    assert joined == sampler.generate(request)
    for reader in readers:
        list(reader)


def test_a_seeded_request_keeps_its_text_as_others_join_it(seeded_batch):
    sampler, seeded = seeded_batch
    request = SampleRequest(prompt="the ", length=300, seed=7, num_samples=2, top_k=10)
    stream = seeded.stream(request)
    reader = iter(stream)
    parts = [next(reader) for _ in range(30)]  # it runs alone for 30 characters
    late = [seeded.generate(SEEDED[i]) for i in range(len(SEEDED))]  # then others come and go
    parts += list(reader)
    texts = ["".join(p) for p in zip(*parts, strict=True)]
    assert seeded.peak_rows > request.num_samples
    assert texts == [s.text for s in sampler.generate(request)]
    assert late == [sampler.generate(r) for r in SEEDED]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("hidden", [40, 128])
def test_seeded_rows_step_the_same_in_any_batch(cell, hidden):
    """The step itself: a row's logits and state after seeded_step are the same bits in a batch of 1,
    3 and 32 rows (a plain batched product changes them). 40 is no multiple of a vector's width, so
    elementwise loops meet their tails."""
    torch.manual_seed(0)
    vocab = Vocab.from_text(TEXT)
    sampler = Sampler(CharRNN(ModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=hidden, num_layers=2)), vocab)
    with torch.inference_mode():
        state, _ = sampler.prime("the ", 32)
        state = [tuple(h + torch.randn_like(h) * 0.3 for h in layer) for layer in state]
        ids = torch.randint(len(sampler.vocab), (32,))

        def step(rows: slice):
            rows_state = [tuple(h[rows].clone() for h in layer) for layer in state]
            return sampler.seeded_step(ids[rows], rows_state), rows_state

        logits, after = step(slice(0, 32))
        for rows in (slice(0, 1), slice(5, 8), slice(31, 32)):
            part_logits, part_after = step(rows)
            assert torch.equal(part_logits, logits[rows])
            pairs = [(a, b) for la, lb in zip(part_after, after, strict=True) for a, b in zip(la, lb, strict=True)]
            assert all(torch.equal(a, b[rows]) for a, b in pairs)


def test_a_submitted_request_calls_on_end_once_and_its_result_is_then_ready(samplers):
    sampler, batched = samplers
    ended = threading.Event()
    calls = []

    def on_end():
        calls.append(threading.current_thread().name)
        ended.set()

    request = SampleRequest(prompt="the ", length=40, temperature=0)
    pending = batched.submit(request, on_end=on_end)
    assert ended.wait(30)
    assert calls == ["batched-sampler"]  # called on the batch's thread, once
    assert pending.result() == sampler.generate(request)
    # A failed step ends its requests too: on_end is called and result() raises what failed it.
    failed = threading.Event()
    broken = BatchedSampler(sampler)
    broken._advance = lambda *_args: (_ for _ in ()).throw(RuntimeError("planted"))
    pending = broken.submit(SampleRequest(prompt="a", length=5), on_end=failed.set)
    assert failed.wait(30)
    with pytest.raises(RuntimeError, match="planted"):
        pending.result()
    broken.close()
