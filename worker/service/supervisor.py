"""Supervises one training child (child.py): relays its reports into the database under the job's lease.

    worker (runner.py)                            training child (child.py)
    ------------------                            -------------------------
    JobRun.supervise()         ------spawn--->    Trainer(...).train()
    every ~0.5 s: renew lease + write   <-queue-- on_start / on_metrics / on_eval / on_checkpoint
      events, guarded by worker_id/status
    lease lost or job cancelled: SIGKILL child
    worker stopping: set stop event ------------> should_stop() -> "shutdown": checkpoint, return
      then requeue the job                        (the next worker resumes from that checkpoint)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue as queue_module
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from app.db import session_scope
from app.ids import new_id
from app.jobs import queue
from app.models import Checkpoint, Job

if TYPE_CHECKING:
    from worker.service.runner import Worker

log = logging.getLogger("charrnn.worker")

FLUSH_SECONDS = 0.5  # how often progress is written and the lease renewed (and a cancel noticed)
PROGRESS_KEYS = (
    "step",
    "max_steps",
    "epoch",
    "train_loss",
    "val_loss",
    "best_val_loss",
    "chars_per_second",
    "eta_seconds",
)


class JobRun:
    """Supervises one training child: relays its reports into the database under the lease."""

    def __init__(self, worker: Worker, job: Job, spec: dict):
        self.worker, self.job, self.spec = worker, job, spec
        self.settings = worker.settings
        self.pending: list[tuple[str, object]] = []
        self.progress: dict = dict(job.progress or {})
        self.outcome: tuple[str, object] | None = None
        self.stop_sent = False

    def supervise(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.messages = ctx.Queue()
        self.stop_event = ctx.Event()
        self.child = ctx.Process(
            target=_child_entry,
            args=(self.spec, self.messages, self.stop_event, os.getpid()),
            name=f"train-{self.job.id}",
            # A daemon dies with a worker that exits; but a daemon may not start processes of its own,
            # and a data-parallel job starts its ranks. PR_SET_PDEATHSIG covers that case (process.py).
            daemon=self.spec["training"].get("gpus", 1) <= 1,
        )
        self.child.start()
        last_flush = 0.0
        while True:
            if self.worker.stopping and not self.stop_sent:
                self.stop_event.set()
                self.stop_sent = True
            self.drain(timeout=0.1)
            child_done = not self.child.is_alive()
            if child_done:
                self.drain(timeout=0.5)  # the last messages may still be in the pipe
            # A checkpoint is written to the database at once: if this worker dies right after, the
            # next one resumes from that checkpoint and it must already be listed and downloadable.
            urgent = any(kind == "checkpoint" for kind, _ in self.pending)
            if time.monotonic() - last_flush >= FLUSH_SECONDS or urgent or child_done or self.outcome:
                last_flush = time.monotonic()
                if not self.flush():
                    self.kill("the job is no longer ours (cancelled, or the lease was lost)")
                    return
                self.worker.heartbeat()
                self.worker.reap(force=False)
            if self.outcome or child_done:
                break
        self.child.join(timeout=30)
        self.finish(self.outcome or ("crashed", self.child.exitcode))

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, payload = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except (queue_module.Empty, EOFError, OSError):
                return
            if kind in ("result", "error"):
                self.outcome = (kind, payload)
            else:
                self.pending.append((kind, payload))

    def kill(self, why: str) -> None:
        log.info("job %s: %s; stopping its training process", self.job.id, why)
        if self.child.is_alive():
            self.child.kill()
        self.child.join(timeout=10)

    def _snapshot(self, metrics: dict) -> None:
        self.progress = {k: metrics.get(k) for k in PROGRESS_KEYS}

    def flush(self) -> bool:
        """Write what the child reported, in one transaction that first proves the job is still ours."""
        job_id, data_dir = self.job.id, self.settings.data_dir.resolve()
        pending, self.pending = self.pending, []
        for kind, payload in pending:
            if kind in ("metrics", "eval"):
                self._snapshot(payload if kind == "metrics" else payload["metrics"])
        with session_scope() as session:
            if not queue.renew(
                session,
                job_id=job_id,
                worker_id=self.worker.id,
                lease_seconds=self.settings.job_lease_seconds,
                progress=self.progress,
            ):
                return False
            for kind, payload in pending:
                if kind == "start":
                    resumed = payload.get("resumed_from_step")
                    session.execute(
                        Job.__table__.update()
                        .where(Job.id == job_id, Job.worker_id == self.worker.id)
                        .values(device=payload.get("device"))
                    )
                    if resumed is not None:
                        queue.forget_metrics_after(session, job_id=job_id, step=resumed)
                        self.adopt_checkpoint(session, resumed)
                        queue.add_event(
                            session,
                            job_id=job_id,
                            type="log",
                            message=f"resumed from step {resumed}",
                            data={"resumed_from_step": resumed},
                        )
                    queue.add_event(
                        session,
                        job_id=job_id,
                        type="log",
                        message=(
                            f"training {payload['num_parameters']:,} parameters on {payload['device']} "
                            f"({payload['precision']}), {payload['train_chars']:,} training characters"
                        ),
                        data=payload,
                    )
                elif kind == "metrics":
                    queue.add_metric(session, job_id=job_id, snapshot=payload)
                    queue.add_event(
                        session,
                        job_id=job_id,
                        type="metrics",
                        message=f"step {payload['step']}: train_loss {payload['train_loss']:.4f}",
                        data=payload,
                    )
                elif kind == "eval":
                    metrics = payload["metrics"]
                    queue.add_metric(session, job_id=job_id, snapshot=metrics)
                    val = metrics.get("val_loss")
                    queue.add_event(
                        session,
                        job_id=job_id,
                        type="sample",
                        message=f"step {metrics['step']}: val_loss {val if val is None else round(val, 4)}",
                        data={**metrics, "sample": payload["sample"]},
                    )
                elif kind == "checkpoint":
                    path = Path(payload["path"]).resolve().relative_to(data_dir)
                    queue.add_checkpoint(
                        session,
                        job_id=job_id,
                        owner=self.job.owner,
                        checkpoint_id=new_id("ckpt"),
                        info=payload,
                        path=str(path),
                    )
                    queue.add_event(
                        session,
                        job_id=job_id,
                        type="checkpoint",
                        message=f"checkpoint at step {payload['step']}"
                        + (" (new best)" if payload.get("is_best") else ""),
                        data={k: v for k, v in payload.items() if k != "path"},
                    )
        return True

    def adopt_checkpoint(self, session, step: int) -> None:
        """List the checkpoint we resume from if the previous worker died before it could."""
        from app.checkpoints.files import read_metadata

        weights = self.settings.runs_dir / self.job.id / "checkpoints" / f"step-{step:08d}.safetensors"
        if not weights.is_file():
            return
        exists = session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == self.job.id, Checkpoint.step == step))
        if exists:
            return
        try:
            val = read_metadata(weights).get("val_loss")
            val_loss = float(val) if val not in (None, "None") else None
        except (OSError, ValueError):
            val_loss = None
        info = {
            "step": step,
            "train_loss": None,
            "val_loss": val_loss,
            "is_best": False,
            "size_bytes": weights.stat().st_size,
        }
        path = weights.resolve().relative_to(self.settings.data_dir.resolve())
        queue.add_checkpoint(
            session,
            job_id=self.job.id,
            owner=self.job.owner,
            checkpoint_id=new_id("ckpt"),
            info=info,
            path=str(path),
        )

    def finish(self, outcome: tuple[str, object]) -> None:
        kind, payload = outcome
        job_id, worker_id = self.job.id, self.worker.id
        with session_scope() as session:
            if kind == "result":
                result = payload
                if result["stopped_by"] == "shutdown":
                    queue.requeue(
                        session,
                        job_id=job_id,
                        worker_id=worker_id,
                        reason=f"worker shut down; checkpoint saved at step {result['steps']}",
                    )
                    return
                progress = {
                    **self.progress,
                    "step": result["steps"],
                    "max_steps": result["steps"],
                    "epoch": result["epoch"],
                    "train_loss": result["train_loss"],
                    "val_loss": result["val_loss"],
                    "best_val_loss": result["best_val_loss"],
                    "chars_per_second": result["chars_per_second"],
                    "eta_seconds": 0.0,
                }
                queue.finish(
                    session,
                    job_id=job_id,
                    worker_id=worker_id,
                    status="succeeded",
                    progress=progress,
                    message=f"succeeded after {result['steps']} steps ({result['stopped_by']}), "
                    f"val_loss {result['val_loss']}",
                )
            elif kind == "error":
                queue.finish(
                    session,
                    job_id=job_id,
                    worker_id=worker_id,
                    status="failed",
                    error=str(payload),
                    message=f"failed: {payload}",
                )
            else:
                error = (
                    f"the training process died unexpectedly (exit code {payload}); "
                    "if this repeats, the model may not fit in memory: lower hidden_size or batch_size"
                )
                queue.finish(
                    session,
                    job_id=job_id,
                    worker_id=worker_id,
                    status="failed",
                    error=error,
                    message=f"failed: {error}",
                )
        log.info("job %s finished: %s", job_id, kind, extra={"fields": {"job_id": job_id}})


def _child_entry(spec, messages, stop_event, parent_pid):
    from worker.service.child import train_job

    train_job(spec, messages, stop_event, parent_pid)


