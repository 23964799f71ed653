"""Generating text one character at a time.

The prompt is read in one call to the fused recurrent module; after that each character costs one
step. Calling nn.LSTM for a single step pays its whole Python and dispatch overhead every time, so the
step here calls the cell functions (torch.lstm_cell / gru_cell / rnn_tanh_cell) on the module's own
weights: the same math, a fraction of the overhead. Several samples run as one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from worker.engine.data import Vocab
from worker.engine.model import CharRNN

STEP_FUNCTIONS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}


def priming_text(vocab: Vocab, prompt: str) -> str:
    """What the model reads before the first generated character: the prompt, or with no prompt a
    fresh line (a newline if the corpus has one)."""
    return prompt or ("\n" if "\n" in vocab.chars else vocab.chars[0])


@dataclass
class SampleRequest:
    prompt: str = ""
    length: int = 200
    temperature: float = 1.0  # 0 = always the most likely character
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1
    stop: list[str] = field(default_factory=list)


@dataclass
class Sample:
    text: str
    finish_reason: str  # "length" or "stop"


class StopScanner:
    """Finds stop strings in a growing text and holds back what might be the start of one.

    Streaming must never emit characters that later turn out to belong to a stop string, so the
    longest tail of the text that is a prefix of some stop string waits until it is decided.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add generated text; return the part of it that is now safe to emit."""
        self.text += piece
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at != -1:
                self.text, self.stopped = self.text[:at], True
                return self.flush()
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        safe_end = len(self.text) - hold
        out, self.emitted = self.text[self.emitted : safe_end], max(self.emitted, safe_end)
        return out

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


class SampleStream:
    def __init__(self, steps: Iterator[list[str]], scanners: list[StopScanner]):
        self._steps, self._scanners = steps, scanners

    def __iter__(self) -> Iterator[list[str]]:
        return self._steps

    @property
    def finish_reasons(self) -> list[str]:
        return [s.finish_reason for s in self._scanners]


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

    def validate(self, request: SampleRequest) -> None:
        """Raise ValueError naming the field and the fix; also checks the prompt's characters."""
        self.vocab.encode(request.prompt, what="the prompt")
        if request.length < 0:
            raise ValueError("length must be 0 or more characters")
        if request.temperature < 0:
            raise ValueError("temperature must be 0 (greedy) or more")
        if request.top_k is not None and request.top_k < 1:
            raise ValueError("top_k must be at least 1 (or left out)")
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise ValueError("top_p must be in (0, 1] (or left out)")
        if request.num_samples < 1:
            raise ValueError("num_samples must be at least 1")

    def prime(self, prompt: str, n: int):
        """Hidden state and next-character logits after reading the prompt, for n samples."""
        ids = self.vocab.encode(priming_text(self.vocab, prompt), what="the prompt").to(self.device).unsqueeze(0)
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

    @staticmethod
    def choose(logits: torch.Tensor, request: SampleRequest, generator: torch.Generator) -> torch.Tensor:
        """The next character of each row, under the request's temperature, top-k and top-p."""
        if request.temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits.float() / request.temperature
        if request.top_k is not None and request.top_k < logits.shape[-1]:
            kth = torch.topk(logits, request.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if request.top_p is not None and request.top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # Drop a character when the ones more likely than it already reach top_p.
            drop = (probs.cumsum(dim=-1) - probs) >= request.top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)

    def next_characters(
        self, logits: torch.Tensor, request: SampleRequest, generator: torch.Generator, scanners: list[StopScanner]
    ) -> tuple[torch.Tensor, list[str]]:
        """Choose each row's next character; return them and the text each row may now emit (none once stopped)."""
        ids = self.choose(logits, request, generator)
        chars = self.vocab.chars
        pieces = [s.push(chars[c]) if not s.stopped else "" for s, c in zip(scanners, ids.tolist(), strict=True)]
        return ids, pieces

    def stream(self, request: SampleRequest) -> SampleStream:
        """Iterate it for the newly safe text of each sample, step by step (empty strings when none);
        afterwards its `finish_reasons` say how each sample ended."""
        scanners = [StopScanner(request.stop) for _ in range(request.num_samples)]
        return SampleStream(self._steps(request, scanners), scanners)

    def generate(self, request: SampleRequest) -> list[Sample]:
        stream = self.stream(request)
        texts = [""] * request.num_samples
        for pieces in stream:
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        return [Sample(t, r) for t, r in zip(texts, stream.finish_reasons, strict=True)]

    @torch.inference_mode()
    def _steps(self, request: SampleRequest, scanners: list[StopScanner]) -> Iterator[list[str]]:
        self.validate(request)
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        state, logits = self.prime(request.prompt, request.num_samples)
        for i in range(request.length):
            ids, pieces = self.next_characters(logits, request, generator, scanners)
            if all(s.stopped for s in scanners):
                yield pieces
                return
            if i + 1 < request.length:  # the last character needs no step after it
                logits = self.step(ids, state)
            yield pieces
        yield [s.flush() for s in scanners]
