"""What the training child tells its supervisor: one small dataclass per kind of report.

The child (child.py) puts these on a multiprocessing queue (they pickle by name, so both sides import
this module); the supervisor (supervisor.py) relays each to its function in app.jobs.lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Started:
    info: dict  # the trainer's on_start info: device, precision, sizes, resumed_from_step

    @property
    def resumed_from_step(self) -> int | None:
        return self.info.get("resumed_from_step")


@dataclass(frozen=True)
class Metrics:
    snapshot: dict  # the trainer's snapshot: step, losses, learning rate, speed, eta


@dataclass(frozen=True)
class Evaluated:
    snapshot: dict
    sample: str


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: str  # absolute
    size_bytes: int
    train_loss: float | None
    val_loss: float | None
    is_best: bool
    sha256: str | None = None  # of the weights file's bytes, as written


@dataclass(frozen=True)
class Finished:
    result: dict  # the engine's TrainResult as a dict

    @property
    def shut_down(self) -> bool:
        return self.result["stopped_by"] == "shutdown"


@dataclass(frozen=True)
class Failed:
    error: str


Report = Started | Metrics | Evaluated | CheckpointSaved | Finished | Failed
Outcome = Finished | Failed
