"""Checkpoints: weights in safetensors, training state beside them; every file written atomically.

A run directory looks like this:

    DIR/run.json                          what was trained on, and how (read by `train --resume DIR`)
    DIR/checkpoints/step-00000500.safetensors   weights + config + vocabulary: self-contained, CPU-loadable
    DIR/checkpoints/step-00000500.state.pt      optimizer, step, data position, hidden state, RNG states
    DIR/best.safetensors                  the weights with the lowest validation loss so far
    DIR/last.json                         which step checkpoint is the latest complete one

Only tensors, numbers, strings, lists and dicts are ever stored, and the state is read back with
`torch.load(weights_only=True)`: loading a checkpoint never unpickles arbitrary objects.
A checkpoint counts only once `last.json` names it, and `last.json` is replaced only after both of
its files are on disk, so a crash mid-write (or a full disk) leaves the previous checkpoint in force.
`last.json` also records the weights' size and sha256: a file changed or truncated since it was
written is refused on load (`load_model(..., expected_sha256=...)`) instead of being trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from worker.engine.data import Vocab
from worker.engine.errors import CheckpointError, CorruptCheckpointError
from worker.engine.header import read_metadata
from worker.engine.model import CharRNN, ModelConfig

FORMAT = "charrnn/1"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over the target, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def weights_bytes(model: CharRNN, vocab: Vocab, extra: dict[str, str] | None = None) -> bytes:
    """The safetensors file: the weights, and as metadata the config, the vocabulary and `extra`."""
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "vocab": json.dumps(vocab.chars, ensure_ascii=False),
        **(extra or {}),
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors_bytes(tensors, metadata=metadata)


@dataclass
class LoadedModel:
    model: CharRNN
    vocab: Vocab
    metadata: dict[str, str]


def load_model(
    path: str | Path, device: torch.device | str = "cpu", expected_sha256: str | None = None
) -> LoadedModel:
    """Load a .safetensors checkpoint onto `device` (the CPU by default, whatever trained it).

    With `expected_sha256` (recorded when the file was written), a file whose bytes differ is refused
    with CorruptCheckpointError, before anything in it is parsed; its message names the file, not its folder.
    """
    path = Path(path)
    if path.is_dir():  # a run directory: take its best weights
        path = path / "best.safetensors"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise CorruptCheckpointError(
            f"checkpoint file {path.name} is corrupt: its {len(data)} bytes do not match the sha256 "
            "recorded when it was written"
        )
    try:
        metadata = read_metadata(path)
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a charrnn checkpoint (format {metadata.get('format')!r})")
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        vocab = Vocab(json.loads(metadata["vocab"]))
        state = load_safetensors_bytes(data)
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated or foreign file: say so instead of a stack trace
        raise CheckpointError(f"{path} is not a readable charrnn checkpoint: {exc}") from None
    model = CharRNN(config)
    model.load_state_dict(state)
    return LoadedModel(model.to(device).eval(), vocab, metadata)


@dataclass
class TrainingState:
    """Everything beside the weights that a run needs to continue bitwise identically, saved and
    loaded as one object (the trainer keeps its counters in it while it runs)."""

    corpus_sha256: str  # a run resumes only on the text it was trained on
    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # the data position within the epoch
    elapsed: float = 0.0  # seconds spent in this run so far, across resumes (autoconfig's probe included)
    train_seconds: float = 0.0  # of which in training steps (for chars/s)
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    train_loss: float | None = None
    hidden: list[torch.Tensor] = field(default_factory=list)  # all B rows, so any world size can resume
    optimizer: dict = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    # With weight averaging (averaging.py) the weights file holds the average; these are the trained weights,
    # and the number of steps averaged so far.
    training_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    average_updates: int = 0

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, buffer)
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


class RunDirectory:
    """The files of one training run; see the module docstring for the layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.best = self.root / "best.safetensors"
        self.run_file = self.root / "run.json"
        self.last_file = self.root / "last.json"

    STEP_PREFIX = "step-"

    def step_paths(self, step: int) -> tuple[Path, Path]:
        stem = self.checkpoints / f"{self.STEP_PREFIX}{step:08d}"
        return stem.with_suffix(".safetensors"), stem.with_suffix(".state.pt")

    def step_weights(self) -> dict[int, Path]:
        """The weights of every step checkpoint on disk, by step (temp files of unfinished writes excluded)."""
        found = {}
        for path in self.checkpoints.glob(f"{self.STEP_PREFIX}*.safetensors"):
            digits = path.name[len(self.STEP_PREFIX) : -len(".safetensors")]
            if digits.isdigit():
                found[int(digits)] = path
        return dict(sorted(found.items()))

    def write_run(self, info: dict) -> None:
        atomic_write(self.run_file, json.dumps(info, indent=2).encode())

    def read_run(self) -> dict:
        if not self.run_file.is_file():
            raise CheckpointError(f"{self.root} is not a charrnn run directory (no run.json)")
        try:
            run = json.loads(self.run_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.run_file} is not readable: {exc}") from None
        if not isinstance(run, dict):
            raise CheckpointError(f"{self.run_file} is not a charrnn run record (not a JSON object)")
        return run

    def save(self, step: int, weights: bytes, state: TrainingState) -> Path:
        """Write a step checkpoint, then make it the latest; drop older training states."""
        weights_path, state_path = self.step_paths(step)
        atomic_write(weights_path, weights)
        state.save(state_path)
        # The commit point, written last: it names the step and what its weights must hash to.
        last = {"step": step, "sha256": sha256_hex(weights), "size_bytes": len(weights)}
        atomic_write(self.last_file, json.dumps(last).encode())
        # Only the latest state is needed to resume; older weights stay (they are small and downloadable).
        for old in self.checkpoints.glob("step-*.state.pt"):
            if old != state_path:
                old.unlink(missing_ok=True)
        return weights_path

    def save_best(self, weights: bytes) -> Path:
        atomic_write(self.best, weights)
        return self.best

    def last_record(self) -> dict | None:
        """last.json: {"step", "sha256", "size_bytes"}, or None before the first checkpoint."""
        if not self.last_file.is_file():
            return None
        return json.loads(self.last_file.read_text())

    def latest(self) -> tuple[int, Path, TrainingState] | None:
        """(step, weights path, training state) of the latest complete checkpoint, or None."""
        record = self.last_record()
        if record is None:
            return None
        step = record["step"]
        weights_path, state_path = self.step_paths(step)
        return step, weights_path, TrainingState.load(state_path)
