"""What the training child tells its supervisor: one small dataclass per kind of report, each carrying
the engine's record (worker/engine/records.py).

The child (child.py) puts these on a multiprocessing queue (they pickle by name, so both sides import
this module); the supervisor (supervisor.py) relays each to the database (app.jobs.run_records).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.engine.records import CheckpointRecord, Diagnosis, RunResult, RunStarted, Snapshot


@dataclass(frozen=True)
class Started:
    info: RunStarted


@dataclass(frozen=True)
class Metrics:
    snapshot: Snapshot


@dataclass(frozen=True)
class Evaluated:
    snapshot: Snapshot
    sample: str


@dataclass(frozen=True)
class CheckpointSaved:
    checkpoint: CheckpointRecord  # its path absolute


@dataclass(frozen=True)
class Diagnosed:
    diagnosis: Diagnosis


@dataclass(frozen=True)
class Finished:
    result: RunResult

    @property
    def shut_down(self) -> bool:
        return self.result.stopped_by == "shutdown"


class FailureKind(StrEnum):
    """Why a run failed, as the supervisor acts on it (never read from the message's words)."""

    USER = "user"  # an EngineError: the message says what to change, and is the job's error
    INTERNAL = "internal"  # a bug: the job's error names error_id; the worker logs the traceback under it


@dataclass(frozen=True)
class Failed:
    kind: FailureKind
    error: str  # the job's error, as its owner reads it
    error_id: str | None = None  # INTERNAL: what the worker's log files the traceback under
    traceback: str = ""  # INTERNAL: for the worker's log only, never for the owner


Report = Started | Metrics | Evaluated | CheckpointSaved | Diagnosed | Finished | Failed
Outcome = Finished | Failed
