"""Every record that crosses a process boundary, defined once (torch-free: the API imports it too).

    worker (supervisor.py) --JobSpec--> training child (child.py), or a SPEC.json file for torchrun
    trainer --RunStarted, Snapshot, CheckpointRecord, RunResult--> observer --queue--> supervisor
    supervisor --the same records--> database rows and events (app/jobs, app/checkpoints)
    trainer --CheckpointStats.file_metadata()--> the checkpoint file itself, read back on resume

Each is a pydantic model: validated where it is built, serialised (to JSON, or pickled across the
multiprocessing queue) by pydantic, and read back by the same class.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobSpec(Record):
    """What a training run needs, as plain data: built by the worker for a job, or by `charrnn train`."""

    corpus_path: str  # absolute
    run_dir: str
    model: dict = {}  # ModelConfig fields except vocab_size; those left out are chosen (autoconfig.py)
    training: dict = {}  # TrainConfig fields
    init_from: str | None = None  # start from these weights
    init_from_sha256: str | None = None  # what that file must hash to (a corrupt one is refused)
    val_corpus_path: str | None = None  # a held-out text: the whole corpus is trained on
    threads: int | None = None  # torch threads for the run (split between data-parallel ranks)
    memory_limit: int | None = None  # model sizes left to the engine stay under it

    @property
    def gpus(self) -> int:
        return self.training.get("gpus", 1)


class RunStarted(Record):
    """What a run is about to train, and on what."""

    num_parameters: int
    vocab_size: int
    device: str
    precision: str
    train_chars: int
    val_chars: int
    batches_per_epoch: int
    resumed_from_step: int | None
    model: dict  # the ModelConfig as it runs (fields the job left out are chosen now)
    chosen: list[str] = []  # autoconfig's reasons
    chosen_training: dict = {}  # training fields autoconfig chose (an epoch limit)


class Snapshot(Record):
    """Progress at a step: reported with every metrics point and evaluation."""

    step: int
    max_steps: int | None = None  # an estimate, when the run stops by epochs or time
    epoch: int = 0
    train_loss: float | None = None
    val_loss: float | None = None  # the latest evaluation's
    best_val_loss: float | None = None
    learning_rate: float | None = None
    chars_per_second: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None


METADATA_KEY = "checkpoint"  # the safetensors metadata entry that holds a checkpoint's stats as JSON


class CheckpointStats(Record):
    """What a checkpoint file says about itself, in its own metadata: a resumed run rebuilds the record of
    a checkpoint whose worker died before reporting it from there."""

    step: int
    train_loss: float | None = None
    val_loss: float | None = None
    is_best: bool = False

    def file_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.model_dump_json(include=set(CheckpointStats.model_fields))}

    @classmethod
    def from_file_metadata(cls, metadata: dict[str, str]) -> CheckpointStats:
        """ValueError when the metadata holds no (valid) stats."""
        if METADATA_KEY not in metadata:
            raise ValueError("the file's metadata holds no checkpoint record")
        return CheckpointStats.model_validate_json(metadata[METADATA_KEY])


class CheckpointRecord(CheckpointStats):
    """A checkpoint: reported when written, found on disk on resume, listed as a row."""

    path: str  # absolute from the trainer; relative to the data directory in the database
    size_bytes: int
    sha256: str  # of the file's bytes as written; checked whenever it is read

    @classmethod
    def of_file(cls, stats: CheckpointStats, *, path: str, size_bytes: int, sha256: str) -> CheckpointRecord:
        return cls(**stats.model_dump(), path=path, size_bytes=size_bytes, sha256=sha256)


class RunResult(Record):
    """How a run ended."""

    steps: int
    epoch: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    chars_per_second: float
    seconds: float
    checkpoint: str  # the best checkpoint's path
    last_checkpoint: str
    num_parameters: int
    stopped_by: str  # max_steps | max_epochs | max_seconds | or the observer's reason
    device: str
    precision: str
    resumed_from_step: int | None = None
