"""Text to characters to training batches.

Characters are Unicode code points, never bytes: a model trained on "café" has "é" in its vocabulary.
The vocabulary is the sorted set of characters of the corpus and travels inside every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from worker.engine.config import split_sizes, too_few_training_chars
from worker.engine.errors import CorpusError


def decode_utf8(raw: bytes, source: str = "the file") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{source} is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason}). Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`."
        ) from None


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path} does not exist or is not a file.")
    text = decode_utf8(path.read_bytes(), source=str(path))
    if not text:
        raise CorpusError(f"{path} is empty: a corpus needs text to learn from.")
    return text


@dataclass(frozen=True)
class Vocab:
    chars: str  # index -> character; sorted, no duplicates

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    # Built once per vocabulary, not per call: every generation request encodes its prompt, and a corpus
    # can have thousands of distinct characters.
    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, in order of first appearance."""
        index = self.index
        return list(dict.fromkeys(c for c in text if c not in index))

    def encode(self, text: str, what: str = "text", param: str | None = None) -> torch.Tensor:
        """`text` as ids; a CorpusError naming `what` (and the request field `param`) if the model never saw
        some of its characters."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise CorpusError(
                f"{what} contains {len(missing)} character(s) the model never saw in training: {shown}. "
                "Remove or replace them; the model's vocabulary is available from its checkpoint.",
                param=param,
            )
        index = self.index
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def split_train_val(data: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `val_fraction` of the text is held out, as nanoGPT does (no shuffling: text is ordered)."""
    n_train, _ = split_sizes(len(data), val_fraction)
    return data[:n_train], data[n_train:]


class StreamBatcher:
    """Cuts one long token stream into B parallel streams for truncated BPTT.

    The (shifted) training text is laid out as B rows, each a contiguous slice of the corpus;
    batch i is the i-th window of T columns. Row b of batch i+1 continues exactly where
    row b of batch i stopped, which is what lets the trainer carry the hidden state across batches:

        text:   [ s0 ............ | s1 ............ | ... | s(B-1) ......... ] (+ unused tail)
                  <---- L ----->
        batch i:  x[b] = text[off + b*L + i*T : ... + T]      y[b] = the same window shifted by one

          row 0:  | batch 0 | batch 1 | batch 2 | ...      hidden state flows left to right
          row 1:  | batch 0 | batch 1 | batch 2 | ...      and is reset at each new epoch
          ...

    Each epoch starts at a small offset (0 <= off < T, a pure function of seed and epoch), so window
    boundaries fall on different characters from epoch to epoch without any state to save.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        self.data, self.batch_size, self.seq_len, self.seed = data, batch_size, seq_len, seed
        problem = too_few_training_chars(len(data), batch_size, seq_len)
        if problem:
            raise CorpusError(problem)
        # Every epoch has the same number of batches whatever its offset, so a step number alone
        # tells where in the data a run is.
        self.row_len = (len(data) - seq_len) // batch_size
        self.batches_per_epoch = (self.row_len - 1) // seq_len

    def offset(self, epoch: int) -> int:
        if epoch == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randint(0, self.seq_len, (1,), generator=g))

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of shape (B, T) for batch `index` of `epoch`."""
        start = self.offset(epoch) + index * self.seq_len
        rows = start + torch.arange(self.batch_size).unsqueeze(1) * self.row_len
        cols = torch.arange(self.seq_len + 1).unsqueeze(0)
        window = self.data[rows + cols]
        return window[:, :-1], window[:, 1:]


def eval_streams(data: torch.Tensor, num_streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay out `data` as S rows so that every character after the first is a target exactly once.

    Row s reads data[s*L : s*L + L] and predicts data[s*L + 1 : s*L + L + 1]; targets past the end
    are -100 (ignored by cross_entropy). Returns inputs and targets of shape (S, L).
    """
    n_targets = len(data) - 1
    num_streams = max(1, min(num_streams, n_targets))
    row_len = math.ceil(n_targets / num_streams)
    padded = torch.full((num_streams * row_len + 1,), -100, dtype=torch.long)
    padded[: len(data)] = data
    idx = torch.arange(num_streams).unsqueeze(1) * row_len + torch.arange(row_len).unsqueeze(0)
    inputs, targets = padded[idx].clone(), padded[idx + 1].clone()
    inputs[inputs < 0] = 0  # padding positions: any valid id, their targets are ignored
    return inputs, targets
