"""What the training child tells its supervisor: one small dataclass per kind of report, each carrying
the engine's record (worker/engine/records.py).

The child (child.py) puts these on a multiprocessing queue (they pickle by name, so both sides import
this module); the supervisor (supervisor.py) relays each to the database (app.jobs.run_records).
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.engine.records import CheckpointRecord, RunResult, RunStarted, Snapshot


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
class Finished:
    result: RunResult

    @property
    def shut_down(self) -> bool:
        return self.result.stopped_by == "shutdown"


@dataclass(frozen=True)
class Failed:
    error: str


Report = Started | Metrics | Evaluated | CheckpointSaved | Finished | Failed
Outcome = Finished | Failed
