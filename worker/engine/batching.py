"""Concurrent generation requests for one model, run as one batch a character at a time.

A sampling step is mostly fixed cost (dispatch and one small matrix product per layer), so four
requests stepped together cost little more than one, where four threads stepping their own requests
cost four times as much and fight over the cores. One thread per batch runs it: a request
joins at the next step after it arrives (its prompt is read first, on its own) and leaves as soon as
it is done, so nobody waits for a whole batch to finish.

Unseeded and seeded requests run in separate batches (two BatchedSamplers per model), because they
make different promises. An unseeded request promises no particular text, so its batch takes the
cheapest step: one matrix product over all rows, in bf16 where the hardware has it (LowPrecisionStep),
and every row's next character drawn in one call per group of sampling settings from one generator.
A seeded request promises the same text every time, whether it runs alone or beside 63 others. A
batched product's rounding depends on how many rows it has, so a seeded batch steps with
Sampler.seeded_step (a batch of 1-row products: each row's bits are its own) and each request draws
from its own generator (SeededDraws); the lone Sampler does the same, so alone == batched.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from worker.engine.device import resolve_precision
from worker.engine.sampler import (
    Cancellation,
    Sample,
    Sampler,
    SampleRequest,
    SampleStream,
    SeededDraws,
    StopScanner,
    cell_update,
)

_DONE = object()


class LowPrecisionStep:
    """The sampling step with its matrix products in bf16 (accumulated in fp32), and the state and the
    gates' arithmetic in fp32. On a CPU with bf16 units it steps 32 rows in about half the time of
    the fp32 step (377 against 710 µs for a 2x256 LSTM on one thread, 621 against 1,497 for 2x384),
    where the products are nearly all the time; a single row is slower (144 against 76 µs), and the
    two break even at about 4 rows (166 against 179 µs), so it is used from MIN_ROWS rows up.
    Unseeded batches only: its rounding depends on the batch, which a seeded text must not."""

    MIN_ROWS = 4
    DTYPE = torch.bfloat16

    def __init__(self, sampler: Sampler):
        self.cell = sampler.cell
        self.layers = [(w_ih.to(self.DTYPE), w_hh.to(self.DTYPE), b_ih, b_hh)
                       for w_ih, w_hh, b_ih, b_hh in sampler.layers]
        self.embedding_weight = sampler.embedding_weight
        # The head stays fp32: it is small, and bf16 logits would tie often enough to change top-k and
        # greedy choices.
        self.head_weight, self.head_bias = sampler.head_weight, sampler.head_bias

    @staticmethod
    def available(device: torch.device) -> bool:
        return resolve_precision("auto", device) == LowPrecisionStep.DTYPE

    def __call__(self, ids: torch.Tensor, state: list) -> torch.Tensor:
        """Sampler.step's contract: read one character per row, update `state` in place, return the logits."""
        x = F.embedding(ids, self.embedding_weight)
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = F.linear(x.to(self.DTYPE), w_ih).float() + b_ih
            gh = F.linear(state[layer][0].to(self.DTYPE), w_hh).float() + b_hh
            state[layer] = cell_update(self.cell, gi, gh, state[layer])
            x = state[layer][0]
        return F.linear(x, self.head_weight, self.head_bias)


@dataclass(eq=False)
class _Member:
    request: SampleRequest
    scanners: list[StopScanner]
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    state: list | None = None  # its rows of the hidden state while waiting to join
    logits: torch.Tensor | None = None  # next-character logits, its rows
    ids: torch.Tensor | None = None  # the characters just chosen, its rows
    produced: int = 0
    live: bool = True  # a stream wants each step's pieces; `generate` only the end, which saves a wakeup per step
    texts: list[str] | None = None  # the whole texts so far, kept when not live
    abandoned: bool = False  # the reader went away (a closed stream); stop spending steps on it
    cancel: Cancellation | None = None  # the requester went away or stopped waiting; end it, waking the reader
    draws: SeededDraws | None = None  # a seeded request's own random numbers
    on_end: Callable[[], None] | None = None  # called on the batch's thread once its end is in `out`

    @property
    def rows(self) -> int:
        return self.request.num_samples


class PendingSamples:
    """A submitted `generate`: `result()` waits for its samples (or raises what failed it)."""

    def __init__(self, member: _Member):
        self._member = member

    def result(self) -> list[Sample]:
        member = self._member
        for _ in BatchedSampler._pieces(member):
            pass
        return [Sample(t, s.finish_reason) for t, s in zip(member.texts, member.scanners, strict=True)]


class BatchedSampler:
    """`stream` and `generate` like Sampler's, batched with whatever else is running: unseeded requests,
    or with `seeded`, seeded ones (each with the text it gets alone)."""

    def __init__(self, sampler: Sampler, max_rows: int = 64, seeded: bool = False):
        self.sampler, self.max_rows, self.seeded = sampler, max_rows, seeded
        self._waiting: list[_Member] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        low_precision = not seeded and LowPrecisionStep.available(sampler.device)
        self._low_precision = LowPrecisionStep(sampler) if low_precision else None
        # Unseeded requests promise no particular text, so one generator serves every row of the batch.
        self._generator = torch.Generator(device=sampler.device).manual_seed(int.from_bytes(os.urandom(8), "little"))
        self.steps = 0  # batched steps taken; with `peak_rows`, shows that requests shared steps
        self.peak_rows = 0

    def stream(self, request: SampleRequest, cancel: Cancellation | None = None) -> SampleStream:
        member = self._submit(request, live=True, cancel=cancel)
        return SampleStream(self._pieces(member), member.scanners)

    def generate(self, request: SampleRequest, cancel: Cancellation | None = None) -> list[Sample]:
        return self.submit(request, cancel).result()

    def submit(
        self, request: SampleRequest, cancel: Cancellation | None = None, on_end: Callable[[], None] | None = None
    ) -> PendingSamples:
        """`generate` without waiting: `on_end()` is called (on the batch's thread, so it must be quick and
        must not raise) once the request has ended, after which `result()` returns at once. An event loop
        awaits a generation this way with no thread of its own blocked on it."""
        return PendingSamples(self._submit(request, live=False, cancel=cancel, on_end=on_end))

    def _submit(
        self, request: SampleRequest, live: bool, cancel: Cancellation | None, on_end: Callable[[], None] | None = None
    ) -> _Member:
        # ValueError, not an EngineError: these are the caller's bugs (the server routes requests by seed,
        # and SamplingParams bounds num_samples below max_rows), never a request's problem.
        if (request.seed is not None) != self.seeded:
            which = "seeded" if self.seeded else "unseeded"
            raise ValueError(f"this batch runs {which} requests only: seeded and unseeded ones step differently")
        self.sampler.validate(request)
        if request.num_samples > self.max_rows:
            raise ValueError(f"num_samples must be at most {self.max_rows}")
        member = _Member(
            request,
            [StopScanner(request.stop) for _ in range(request.num_samples)],
            live=live,
            texts=[""] * request.num_samples,
            cancel=cancel,
            draws=SeededDraws(request.seed, request.num_samples, self.sampler.device) if self.seeded else None,
            on_end=on_end,
        )
        with self._wake:
            self._waiting.append(member)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="batched-sampler")
                self._thread.start()
            self._wake.notify()
        return member

    def close(self) -> None:
        """Stop the thread once it has nothing to run (the model left the cache)."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    @staticmethod
    def _pieces(member: _Member) -> Iterator[list[str]]:
        try:
            while (item := member.out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            member.abandoned = True

    def _run(self) -> None:
        with torch.inference_mode():
            running: list[_Member] = []
            state: list | None = None
            while True:
                with self._wake:
                    while not running and not self._waiting and not self._closed:
                        self._wake.wait()
                    if not running and not self._waiting and self._closed:
                        self._thread = None  # a request that still holds this sampler starts a new one
                        return
                    joining = self._admit(running)
                try:
                    running, state = self._advance(running, joining, state)
                except Exception as exc:  # noqa: BLE001  a failed step fails its requests, not the thread
                    for member in [*running, *joining]:
                        self._end(member, exc)
                    running, state = [], None

    def _admit(self, running: list[_Member]) -> list[_Member]:
        """Waiting requests that fit next to the running ones (called holding the lock)."""
        rows = sum(m.rows for m in running)
        joining = []
        while self._waiting and rows + self._waiting[0].rows <= self.max_rows:
            member = self._waiting.pop(0)
            rows += member.rows
            joining.append(member)
        return joining

    def _advance(self, running: list[_Member], joining: list[_Member], state: list | None):
        """Choose a character for every row, retire the finished, then advance the rest one step."""
        for member in joining:
            member.state, member.logits = self.sampler.prime(member.request.prompt, member.rows)
        members = running + joining
        finished = set()
        choosing = []
        for member in members:
            if member.abandoned:
                finished.add(member)
            elif member.cancel is not None and member.cancel.cancelled:
                self._end(member, _DONE)  # its reader (if any is left) gets what was made so far
                finished.add(member)
            elif member.produced == member.request.length:  # a length-0 request
                self._finish(member)
                finished.add(member)
            else:
                choosing.append(member)

        for member, ids, chosen in self._choose(choosing):
            member.ids = ids
            member.produced += 1
            self._emit(member, self.sampler.pieces(member.scanners, chosen))
            if member.produced == member.request.length or all(s.stopped for s in member.scanners):
                self._finish(member)
                finished.add(member)

        stay = [m for m in members if m not in finished]
        if not stay:
            return [], None
        unchanged = not joining and not finished
        layers = state if unchanged else self._regroup(running, joining, finished, state)
        ids = torch.cat([m.ids for m in stay]) if len(stay) > 1 else stay[0].ids
        step = self.sampler.seeded_step if self.seeded else self.sampler.step
        if self._low_precision is not None and len(ids) >= LowPrecisionStep.MIN_ROWS:
            step = self._low_precision
        logits = step(ids, layers)
        self.steps += 1
        self.peak_rows = max(self.peak_rows, logits.shape[0])
        offset = 0
        for member in stay:
            member.logits = logits[offset : offset + member.rows]
            offset += member.rows
        return stay, layers

    def _choose(self, members: list[_Member]) -> Iterator[tuple[_Member, torch.Tensor, list[int]]]:
        """Each member's next characters (a tensor and a list), drawn for all the rows that share sampling
        settings in one call: per member, the softmax and the draw cost more than the batched step itself
        (at 32 requests, 32 small calls against one)."""
        groups: dict[tuple, list[_Member]] = {}
        for member in members:
            r = member.request
            groups.setdefault((r.temperature, r.top_k, r.top_p), []).append(member)
        for group in groups.values():
            logits = torch.cat([m.logits for m in group]) if len(group) > 1 else group[0].logits
            uniforms = None
            if self.seeded:  # each request's own numbers, in its rows' order
                uniforms = torch.cat([m.draws.next() for m in group]) if len(group) > 1 else group[0].draws.next()
            ids = Sampler.choose(logits, group[0].request, self._generator, uniforms)
            chosen = ids.tolist()
            offset = 0
            for member in group:
                rows = slice(offset, offset + member.rows)
                yield member, ids[rows], chosen[rows]
                offset += member.rows

    @staticmethod
    def _emit(member: _Member, pieces: list[str]) -> None:
        if member.live:
            member.out.put(pieces)
        else:
            member.texts = [t + p for t, p in zip(member.texts, pieces, strict=True)]

    def _finish(self, member: _Member) -> None:
        self._emit(member, [s.flush() for s in member.scanners])
        self._end(member, _DONE)

    @staticmethod
    def _end(member: _Member, last: object) -> None:
        """Its last item: _DONE, or the exception that failed it."""
        member.out.put(last)
        if member.on_end is not None:
            member.on_end()

    def _regroup(self, running: list[_Member], joining: list[_Member], finished: set, state: list | None) -> list:
        """The batch's hidden state after members left or joined: the staying rows in order, then the newcomers'."""
        layers = []
        for layer in range(len(self.sampler.layers)):
            parts = []
            offset = 0
            for member in running:
                if member not in finished:
                    parts.append(tuple(h[offset : offset + member.rows] for h in state[layer]))
                offset += member.rows
            parts += [member.state[layer] for member in joining if member not in finished]
            layers.append(tuple(torch.cat(hs) if len(parts) > 1 else hs[0] for hs in zip(*parts, strict=True)))
        for member in joining:
            member.state = None
        return layers
