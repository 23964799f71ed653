"""Generating text one character at a time.

The prompt is read in one call to the fused recurrent module; after that each character costs one
step. Calling nn.LSTM for a single step pays its whole Python and dispatch overhead every time, so the
step here calls the cell functions (torch.lstm_cell / gru_cell / rnn_tanh_cell) on the module's own
weights: the same math, a fraction of the overhead. Several samples run as one batch.

A seeded request promises the same text every time, whether it runs alone or beside other requests
(worker/engine/batching.py). A batched matrix product's rounding depends on how many rows it has, so
seeded rows step with `seeded_step`: every product is a batch of 1-row products (baddbmm), whose bits do
not depend on the other rows. And each seeded request draws from its own generator (SeededDraws), one
uniform number per row and character, turned into a character by the probabilities' running sum.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from worker.engine.data import Vocab
from worker.engine.model import CharRNN
from worker.engine.sampling_params import SamplingParams

STEP_FUNCTIONS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}


def priming_text(vocab: Vocab, prompt: str) -> str:
    """What the model reads before the first generated character: the prompt, or with no prompt a
    fresh line (a newline if the corpus has one)."""
    return prompt or ("\n" if "\n" in vocab.chars else vocab.chars[0])


# The request is the one contract's sampling parameters (sampling_params.py), bounds included: the API,
# the worker and the engine validate a request with the same class.
SampleRequest = SamplingParams

# Below this temperature sampling is greedy. Dividing the logits by a tiny temperature overflows
# float32 (1e-40 is a subnormal, 5e-324 rounds to 0) into inf and NaN; long before that the softmax is
# one-hot already: at 1e-20 two logits must agree to 20 digits, which float32 cannot tell apart, for
# the second to be drawn at all.
GREEDY_BELOW_TEMPERATURE = 1e-20


def cell_update(cell: str, gi: torch.Tensor, gh: torch.Tensor, layer_state: tuple) -> tuple:
    """A layer's new state from its input and recurrent pre-activations (biases included): the math of
    torch.lstm_cell / gru_cell / rnn_tanh_cell, for steps that compute the products themselves."""
    if cell == "lstm":  # torch's gate order: input, forget, cell, output
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * layer_state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if cell == "gru":  # reset, update, new; the reset gate scales the recurrent part only
        # The sigmoids read slices of one sum, as the LSTM's do: on a strided slice torch loops row by
        # row, so a row rounds the same whatever the batch; a whole contiguous tensor runs as one vector
        # loop whose scalar tail falls on different elements as rows join (seeded texts would change).
        reset, update, _ = (gi + gh).chunk(3, dim=-1)
        z = torch.sigmoid(update)
        n = torch.tanh(gi.chunk(3, dim=-1)[2] + torch.sigmoid(reset) * gh.chunk(3, dim=-1)[2])
        return ((1 - z) * n + z * layer_state[0],)
    return (torch.tanh(gi + gh),)


class SeededDraws:
    """A seeded request's random numbers: one uniform in [0, 1) per row and character, from the request's
    own generator. They are drawn BLOCK characters at a time (one call instead of BLOCK), in the same
    order whether the request runs alone or in a batch, so its text depends on its seed alone."""

    BLOCK = 64

    def __init__(self, seed: int, rows: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.rows, self.device = rows, device
        self._block: torch.Tensor | None = None
        self._used = self.BLOCK

    def next(self) -> torch.Tensor:
        if self._used == self.BLOCK:
            self._block = torch.rand(self.BLOCK, self.rows, generator=self.generator, device=self.device)
            self._used = 0
        self._used += 1
        return self._block[self._used - 1]


class Cancellation:
    """Set when whoever asked for the text has gone or stopped waiting; sampling ends at its next step.

    A plain flag (and an optional deadline) read once a step: cheaper than an Event, and setting a bool
    from another thread is safe.
    """

    def __init__(self, timeout_s: float | None = None):
        self._cancelled = False
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        if not self._cancelled and self._deadline is not None and time.monotonic() > self._deadline:
            self._cancelled = True
        return self._cancelled


@dataclass
class Sample:
    text: str
    finish_reason: str  # "length" or "stop"


@lru_cache(maxsize=256)  # at most ~2 MB for 1,000-character stops
def _failure(stop: str) -> tuple[int, ...]:
    """Knuth-Morris-Pratt's table: for each prefix of `stop`, the length of its longest proper border
    (a prefix that is also a suffix). Cached: every sample of a request, and the next request, scan the
    same stops."""
    table = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k - 1]
        if stop[i] == stop[k]:
            k += 1
        table[i] = k
    return tuple(table)


class StopScanner:
    """Finds stop strings in a growing text and holds back what might be the start of one.

    Streaming must never emit characters that later turn out to belong to a stop string, so the
    longest tail of the text that is a prefix of some stop string waits until it is decided.

    Each stop string is followed by a Knuth-Morris-Pratt automaton: its state is the length of the
    longest tail of the text that is a prefix of the stop, which says both whether the stop just
    completed and how much to hold back. A character costs amortised O(1) per stop string (`work`
    counts the automaton moves: at most two per character and stop), whatever the stops' lengths;
    searching the text and trying every prefix of every stop cost O(length^2) per character.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._tables = [_failure(s) for s in self.stops]
        self._matched = [0] * len(self.stops)  # per stop: the longest tail of the text that is a prefix of it
        self.pending = ""  # generated but not emitted yet: the tail that may still start a stop
        self.stopped = False
        self.work = 0

    def push(self, piece: str) -> str:
        """Add generated text; return the part of it that is now safe to emit."""
        if not self.stops:
            return piece
        if self.stopped:
            return ""
        out = []
        for char in piece:
            self.pending += char
            for i, stop in enumerate(self.stops):
                k, table = self._matched[i], self._tables[i]
                while k and stop[k] != char:
                    k = table[k - 1]
                    self.work += 1
                if stop[k] == char:
                    k += 1
                self.work += 1
                if k == len(stop):  # the first stop in the list that completes here wins
                    self.pending, self.stopped = self.pending[: max(0, len(self.pending) - k)], True
                    return "".join(out) + self.flush()
                self._matched[i] = k
            hold = max(self._matched)
            if hold < len(self.pending):
                out.append(self.pending[: len(self.pending) - hold])
                self.pending = self.pending[len(self.pending) - hold :]
        return "".join(out)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class SampleStream:
    def __init__(self, steps: Iterator[list[str]], scanners: list[StopScanner]):
        self._steps, self._scanners = steps, scanners

    def __iter__(self) -> Iterator[list[str]]:
        return self._steps

    @property
    def finish_reasons(self) -> list[str]:
        return [s.finish_reason for s in self._scanners]

    @property
    def scan_work(self) -> int:
        """Stop-scanning work so far, all samples together (see StopScanner.work)."""
        return sum(s.work for s in self._scanners)


class Sampler:
    def __init__(self, model: CharRNN, vocab: Vocab):
        self.model, self.vocab = model.eval(), vocab
        self.cell = model.config.cell
        self.step_fn = STEP_FUNCTIONS[self.cell]
        rnn = model.rnn
        self.layers = [
            tuple(getattr(rnn, f"{name}_l{i}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for i in range(model.config.num_layers)
        ]
        # The embedding and the head are called as functions too: nn.Module's __call__ costs more than
        # the lookup itself at one character per step.
        self.embedding_weight = model.embedding.weight
        self.head_weight, self.head_bias = model.head.weight, model.head.bias
        self.device = next(model.parameters()).device
        # seeded_step's weights: transposed once, as batched products of (1 x in) by (in x out) take them.
        self.row_layers = [(w_ih.t(), w_hh.t(), b_ih, b_hh) for w_ih, w_hh, b_ih, b_hh in self.layers]
        self.head_weight_t = self.head_weight.t()
        self.steps = 0  # steps taken by `stream`/`generate`, all requests together (approximate across threads)

    def validate(self, request: SampleRequest) -> None:
        """Raise CorpusError naming the prompt's characters the model never saw. The fields' own bounds
        were checked when the request was built (SamplingParams)."""
        self.vocab.encode(request.prompt, what="the prompt", param="prompt")

    def prime(self, prompt: str, n: int):
        """Hidden state and next-character logits after reading the prompt, for n samples."""
        ids = self.vocab.encode(priming_text(self.vocab, prompt), what="the prompt", param="prompt")
        ids = ids.to(self.device).unsqueeze(0)
        logits, hidden = self.model(ids)
        hs = list(hidden) if self.cell == "lstm" else [hidden]
        per_layer = [tuple(h[layer].expand(n, -1).contiguous() for h in hs) for layer in range(len(self.layers))]
        return per_layer, logits[0, -1].expand(n, -1)

    def step(self, ids: torch.Tensor, state: list) -> torch.Tensor:
        """Read one character per row; return the next logits. `state` (one entry per layer) is updated in place."""
        x = F.embedding(ids, self.embedding_weight)
        for layer, weights in enumerate(self.layers):
            if self.cell == "lstm":
                h, c = self.step_fn(x, state[layer], *weights)
                state[layer] = (h, c)
            else:
                h = self.step_fn(x, state[layer][0], *weights)
                state[layer] = (h,)
            x = h
        return F.linear(x, self.head_weight, self.head_bias)

    def seeded_step(self, ids: torch.Tensor, state: list) -> torch.Tensor:
        """`step` with every matrix product a batch of 1-row products: each row's bits are the same
        whatever other rows share the call, which a seeded text needs (see the module's docstring)."""
        rows = ids.shape[0]
        x = F.embedding(ids, self.embedding_weight)[:, None]  # (rows, 1, in): one 1-row product per row
        for layer, (w_ih_t, w_hh_t, b_ih, b_hh) in enumerate(self.row_layers):
            gi = torch.baddbmm(b_ih, x, w_ih_t.expand(rows, -1, -1))[:, 0]
            gh = torch.baddbmm(b_hh, state[layer][0][:, None], w_hh_t.expand(rows, -1, -1))[:, 0]
            state[layer] = cell_update(self.cell, gi, gh, state[layer])
            x = state[layer][0][:, None]
        return torch.baddbmm(self.head_bias, x, self.head_weight_t.expand(rows, -1, -1))[:, 0]

    @staticmethod
    def choose(
        logits: torch.Tensor,
        request: SampleRequest,
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The next character of each row, under the request's temperature, top-k and top-p: drawn with
        `generator`, or (seeded rows) chosen by one uniform number per row from SeededDraws."""
        if request.temperature < GREEDY_BELOW_TEMPERATURE:
            return logits.argmax(dim=-1)
        logits = logits.float() / request.temperature
        if request.top_k is not None and request.top_k < logits.shape[-1]:
            kth = torch.topk(logits, request.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if request.top_p is not None and request.top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # Drop a character when the ones more likely than it already reach top_p. The most likely
            # one always stays: a top_p below float32's range (1e-300 compares as 0) would drop them all.
            drop = (probs.cumsum(dim=-1) - probs) >= request.top_p
            drop[:, 0] = False
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(dim=-1)
        if uniforms is None:
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        # The first character whose running sum passes u x total. Each row's sum runs along its own row,
        # so it does not depend on the batch; the point stays below the total, so a character with no
        # probability (a flat stretch of the sum) is never the first to pass it.
        cumulative = probs.cumsum(dim=-1)
        total = cumulative[:, -1:]
        point = torch.minimum(uniforms[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cumulative, point, right=True).squeeze(-1)

    def pieces(self, scanners: list[StopScanner], chosen: list[int]) -> list[str]:
        """The text each row may emit after its chosen character (none once its scanner has stopped)."""
        chars = self.vocab.chars
        return [s.push(chars[c]) if not s.stopped else "" for s, c in zip(scanners, chosen, strict=True)]

    def stream(self, request: SampleRequest, cancel: Cancellation | None = None) -> SampleStream:
        """Iterate it for the newly safe text of each sample, step by step (empty strings when none);
        afterwards its `finish_reasons` say how each sample ended. It ends early once `cancel` is set."""
        scanners = [StopScanner(request.stop) for _ in range(request.num_samples)]
        return SampleStream(self._steps(request, scanners, cancel), scanners)

    def generate(self, request: SampleRequest, cancel: Cancellation | None = None) -> list[Sample]:
        stream = self.stream(request, cancel)
        texts = [""] * request.num_samples
        for pieces in stream:
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        return [Sample(t, r) for t, r in zip(texts, stream.finish_reasons, strict=True)]

    @torch.inference_mode()
    def _steps(
        self, request: SampleRequest, scanners: list[StopScanner], cancel: Cancellation | None
    ) -> Iterator[list[str]]:
        self.validate(request)
        # Seeded: the products and draws a batch of seeded requests uses too (BatchedSampler), so the
        # text is the same alone or batched. Unseeded: the cheaper fused step and one multinomial draw.
        if request.seed is not None:
            step, draws, generator = self.seeded_step, SeededDraws(request.seed, request.num_samples, self.device), None
        else:
            step, draws = self.step, None
            generator = torch.Generator(device=self.device).manual_seed(int.from_bytes(os.urandom(4), "little"))
        state, logits = self.prime(request.prompt, request.num_samples)
        for i in range(request.length):
            if cancel is not None and cancel.cancelled:
                return
            ids = self.choose(logits, request, generator, draws.next() if draws is not None else None)
            pieces = self.pieces(scanners, ids.tolist())
            if all(s.stopped for s in scanners):
                yield pieces
                return
            if i + 1 < request.length:  # the last character needs no step after it
                logits = step(ids, state)
                self.steps += 1
            yield pieces
        yield [s.flush() for s in scanners]
