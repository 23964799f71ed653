"""A training run kept in a remote store (CHARRNN_STORAGE_URL=s3://...), for workers that share no disk.

The trainer works in a local run directory as always (worker/engine/checkpoint.py); this module is its
boundary with the store. Keys mirror the directory: `runs/<job id>/checkpoints/step-N.safetensors`, ...

    training child: Trainer writes step-N files + last.json locally -> on_checkpoint -> push(N):
        is the job still ours? (else nothing is written)  ->  weights, training state, best weights,
        run.json, metrics journal  ->  last.json LAST (the store's commit point: it names N only once
        everything N needs is there)  ->  older training states deleted  ->  report CheckpointSaved
    supervisor: commits the checkpoint's row (now the object counts); if the job is gone when the child
        has ended, deletes everything under runs/<job id>/ (supervisor.py)
    next worker, any machine: pull() - a fresh local run directory from the store - and the Trainer
        resumes from last.json bitwise, as it would from its own disk

A worker killed mid-push leaves at worst objects that last.json does not name yet: the resume ignores
them (a step after last.json's is trained again and overwritten), and rows are made only for steps up
to last.json's (app/jobs/run_records.py started()).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from sqlalchemy import select

from app.db import session_scope
from app.models import ACTIVE_STATUSES, Job
from app.settings import Settings
from app.storage import Store, get_store, run_prefix
from worker.engine.records import CheckpointRecord
from worker.service.exits import STDERR_FILE
from worker.service.journal import JOURNAL_FILE

log = logging.getLogger("charrnn.worker")

LAST_FILE, RUN_FILE, BEST_FILE = "last.json", "run.json", "best.safetensors"


class RunMirror:
    """Plain data (settings and names), so that it travels to the training child; each process opens
    its own store client."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str, run_dir: str | Path):
        self.settings, self.job_id, self.worker_id = settings, job_id, worker_id
        self.run_dir = Path(run_dir)
        self.prefix = run_prefix(job_id)
        self.best_pushed: tuple[int, int] | None = None

    @property
    def store(self) -> Store:
        return get_store(self.settings)

    def key(self, path: Path) -> str:
        return self.prefix + path.relative_to(self.run_dir).as_posix()

    def pull(self) -> int:
        """A fresh local run directory with what the store holds of the run (nothing: a new run); returns
        how many files. Whatever a previous attempt left on this disk goes: the store's copy is the one
        the database's rows describe."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        count = 0
        for info in self.store.list(self.prefix):
            relative = info.key[len(self.prefix):]
            if relative in (LAST_FILE, STDERR_FILE):
                continue
            self._download(info.key, self.run_dir / relative)
            count += 1
        # last.json last: a run directory whose last.json is there has everything it names.
        if self.store.size(self.prefix + LAST_FILE) is not None:
            self._download(self.prefix + LAST_FILE, self.run_dir / LAST_FILE)
            count += 1
        return count

    def _download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.pull")
        with open(tmp, "wb") as out:
            self.store.fetch(key, out)
        tmp.replace(path)

    def still_ours(self) -> bool:
        """The job exists, is active and is leased to this worker: else nothing more is written for it."""
        with session_scope() as session:
            return session.scalar(
                select(Job.id).where(Job.id == self.job_id, Job.worker_id == self.worker_id,
                                     Job.status.in_(ACTIVE_STATUSES))
            ) is not None

    def push(self, checkpoint: CheckpointRecord) -> bool:
        """Put a checkpoint the trainer has just written into the store (see the module docstring);
        False if the job is no longer ours, and nothing was written."""
        if not self.still_ours():
            log.info("job %s is no longer ours: its checkpoint of step %s is not stored", self.job_id,
                     checkpoint.step)
            return False
        weights = Path(checkpoint.path)
        state = weights.with_name(weights.name.removesuffix(".safetensors") + ".state.pt")
        self.store.put_file(self.key(weights), weights)
        self.store.put_file(self.key(state), state)
        best = self.run_dir / BEST_FILE
        if best.is_file():
            stat = best.stat()
            if (stat.st_mtime_ns, stat.st_size) != self.best_pushed:
                self.store.put_file(self.key(best), best)
                self.best_pushed = (stat.st_mtime_ns, stat.st_size)
        for name in (RUN_FILE, JOURNAL_FILE):
            if (self.run_dir / name).is_file():
                self.store.put_file(self.prefix + name, self.run_dir / name)
        last = {"step": checkpoint.step, "sha256": checkpoint.sha256, "size_bytes": checkpoint.size_bytes}
        self.store.put_bytes(self.prefix + LAST_FILE, json.dumps(last).encode())
        # Only the latest training state is needed to resume (as on disk, checkpoint.py RunDirectory.save).
        older = [i.key for i in self.store.list(self.prefix + "checkpoints/")
                 if i.key.endswith(".state.pt") and i.key != self.key(state)]
        self.store.delete(older)
        return True
