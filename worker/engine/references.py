"""Reference losses: what the simplest models score on a corpus's held-out text, in nats per character.

A trained model's loss means little alone ("is 1.47 good?"); beside these two it does:
- unigram: a model that knows only how often each character occurs (the entropy of the character
  frequencies, as a cross-entropy on the held-out part);
- bigram: a model that knows only the previous character.
Both are fitted on the training part and scored on the held-out part of the same split a job uses (the
last `val_fraction` held out, config.split_sizes), with add-one (Laplace) smoothing over the corpus's
characters, so a character never seen in training still gets a finite loss. Like the trainer's
validation loss, every held-out character after the first is a target.

Torch-free and streaming (the API computes them at upload, the worker for a job with another split):
the text is read in chunks, and memory is bounded by the vocabulary (pair counts), not the file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from worker.engine.config import split_sizes

CHUNK_CHARS = 1 << 20


@dataclass(frozen=True)
class ReferenceLosses:
    unigram: float  # nats per character
    bigram: float
    val_fraction: float | None  # the split they were scored on (None: a separate validation text)

    def to_dict(self) -> dict:
        return asdict(self)


class _Counts:
    """Character and character-pair counts of one part of the text, fed chunk by chunk."""

    def __init__(self) -> None:
        self.chars: Counter[str] = Counter()
        self.pairs: Counter[tuple[str, str]] = Counter()
        self.last: str | None = None  # the previous chunk's last character: a pair spans the boundary

    def add(self, chunk: str) -> None:
        if not chunk:
            return
        self.chars.update(chunk)
        joined = chunk if self.last is None else self.last + chunk
        self.pairs.update(pairwise(joined))
        self.last = chunk[-1]


def _score(train: _Counts, val: _Counts, vocab: set[str], val_fraction: float | None) -> ReferenceLosses | None:
    targets = sum(val.pairs.values())  # each held-out character after the first
    if targets == 0:
        return None
    v = len(vocab)
    n_train = sum(train.chars.values())
    # The held-out targets are the second characters of its pairs.
    target_counts: Counter[str] = Counter()
    for (_, b), n in val.pairs.items():
        target_counts[b] += n
    unigram = -sum(n * math.log((train.chars[c] + 1) / (n_train + v)) for c, n in target_counts.items())
    # P(b | a) = (count(a b) + 1) / (count(a followed by anything) + V), both in the training part.
    followed: Counter[str] = Counter()
    for (a, _), n in train.pairs.items():
        followed[a] += n
    bigram = -sum(n * math.log((train.pairs[(a, b)] + 1) / (followed[a] + v)) for (a, b), n in val.pairs.items())
    return ReferenceLosses(unigram=unigram / targets, bigram=bigram / targets, val_fraction=val_fraction)


def _fit(train_chunks: Iterable[str], val_chunks: Iterable[str], val_fraction: float | None) -> ReferenceLosses | None:
    train, val = _Counts(), _Counts()
    for chunk in train_chunks:
        train.add(chunk)
    for chunk in val_chunks:
        val.add(chunk)
    return _score(train, val, set(train.chars) | set(val.chars), val_fraction)


def of_text(text: str, val_fraction: float) -> ReferenceLosses | None:
    """The references of `text` split as a job splits it; None when fewer than 2 characters are held out."""
    n_train, _ = split_sizes(len(text), val_fraction)
    return _fit([text[:n_train]], [text[n_train:]], val_fraction)


def of_texts(train_text: str, val_text: str) -> ReferenceLosses | None:
    """The references of a job with a separate validation text (the whole corpus is trained on)."""
    return _fit([train_text], [val_text], None)


def _chunks(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="") as f:
        while chunk := f.read(CHUNK_CHARS):
            yield chunk


def of_file(path: str | Path, val_fraction: float, num_chars: int | None = None) -> ReferenceLosses | None:
    """The references of a UTF-8 file, streamed; `num_chars` (when known) saves a counting pass."""
    path = Path(path)
    if num_chars is None:
        num_chars = sum(len(chunk) for chunk in _chunks(path))
    n_train, _ = split_sizes(num_chars, val_fraction)
    train, val = _Counts(), _Counts()
    seen = 0
    for chunk in _chunks(path):
        cut = max(0, min(len(chunk), n_train - seen))
        train.add(chunk[:cut])
        val.add(chunk[cut:])
        seen += len(chunk)
    return _score(train, val, set(train.chars) | set(val.chars), val_fraction)
