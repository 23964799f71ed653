"""Supervises one training child (child.py): relays its reports into the database under the job's lease.

    worker (runner.py)                            training child (child.py)
    ------------------                            -------------------------
    JobRun.supervise()         ------fork---->    Trainer(...).train()
                 (from the worker's process server, which has torch imported)
    every ~0.5 s: renew lease + relay   <-queue-- Started / Metrics / Evaluated / CheckpointSaved
      reports to app.jobs.run_records             (reports.py), then Finished or Failed
    LeaseKeeper thread: renews the lease every lease/3 s until the outcome is written
      (however long a final evaluation, a checkpoint or the child's exit takes)
    lease lost or job cancelled: SIGKILL child
    child killed (exit by a signal): requeue while attempts are left (CHARRNN_MAX_ATTEMPTS), else fail
    worker stopping: set stop event ------------> should_stop() -> "shutdown": checkpoint, return
      then requeue the job                        (the next worker resumes from that checkpoint)

Every point the child reports becomes a metric row, so that a job's curve is the same however fast it
ran (twins match row for row, even after a kill -9 and a resume): a job with log_every=1 reports hundreds
of points a second, and they are written together, one transaction per flush. What is rate-limited
(LiveBudget) is only the live feed: the "metrics" events that followers of the job's stream receive.
Evaluations and checkpoints always go through. While the database is away (outage.py) the reports wait
here and training goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import queue as queue_module
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.checkpoints import repository as checkpoints
from app.checkpoints import service as checkpoint_service
from app.checkpoints.integrity import file_sha256
from app.db import session_scope
from app.jobs import lifecycle, run_records
from app.jobs.events import prune_metrics_events
from app.models import Job
from app.settings import Settings
from app.storage import StoreError, get_store, run_prefix
from worker.engine.header import read_metadata
from worker.engine.records import CheckpointRecord, CheckpointStats, JobSpec
from worker.service.child import train_job
from worker.service.exits import STDERR_FILE, death_message, stderr_tail
from worker.service.journal import read_journal
from worker.service.outage import DATABASE_ERRORS, Outage
from worker.service.reports import (
    CheckpointSaved,
    Diagnosed,
    Evaluated,
    Failed,
    FailureKind,
    Finished,
    Metrics,
    Outcome,
    Report,
    Started,
)
from worker.service.run_store import RunMirror

log = logging.getLogger("charrnn.worker")

# Training children are forked by a process server (multiprocessing's forkserver) that has already
# imported torch and the engine: a job starts at once instead of paying those imports (2.5 s on a
# 2-core CPU) every time. torch._dynamo is among them because torch.optim imports it on the first call
# of any optimizer (its methods are wrapped in torch._disable_dynamo): another 2 s per job, and 90% of
# a tiny job's CPU, when it was left to the child. The server is a fresh interpreter with no threads,
# locks or CUDA state, so what it forks is as clean as a spawned process. It exits when the worker does.
PRELOAD = [
    "worker.service.process_server",
    "torch",
    "torch._dynamo",
    "worker.engine.training_run",
    "worker.service.child",
]


def start_process_server() -> multiprocessing.context.BaseContext:
    """The context training children start from, its server running (the worker calls this at startup,
    so that its first job does not wait for the imports either)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return ctx

FLUSH_SECONDS = 0.5  # how often progress is written and the lease renewed (and a cancel noticed)
LIVE_POINTS_PER_SECOND = 4.0  # "metrics" events (the live feed) a job may add per second, on average ...
LIVE_POINTS_BURST = 40  # ... after a first burst of this many (a short job at log_every=10 never hits it)
# While the database is away the points wait here; past this many (minutes of an outage at log_every=1)
# the oldest go, and a resume fills them from the run's journal (app.jobs.run_records.started).
MAX_PENDING_METRICS = 100_000
# An evaluation that may be followed by its checkpoint waits this long for it, so that a checkpoint's
# row, its is_best and its loss point commit in one transaction (the trainer reports the evaluation,
# writes the files, then reports the checkpoint). A resume rebuilds them from the files if the worker
# dies in between anyway (run_records.started).
HOLD_EVALUATION_SECONDS = 2.0
GIVE_UP_FINISHING_SECONDS = 15.0  # a stopping worker gives up writing the outcome; the reaper requeues


class LiveBudget:
    """A token bucket: how many of the pending training-loss points may also become "metrics" events now.

    Only the events: every point is a row whatever the rate. A follower of a fast job needs a few points
    a second to draw it live (the dashboard reads the whole curve from /metrics), and each event is sent
    to every follower."""

    def __init__(self, rate: float = LIVE_POINTS_PER_SECOND, burst: int = LIVE_POINTS_BURST):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self, wanted: int) -> int:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted


def live_points(pending: list[Report], budget: LiveBudget) -> set[int]:
    """The indices in `pending` of the Metrics that also become events: the latest ones the budget allows."""
    metrics = [i for i, r in enumerate(pending) if isinstance(r, Metrics)]
    return set(metrics[len(metrics) - budget.take(len(metrics)):])


class LeaseKeeper:
    """Renews the job's lease on its own thread, every third of a lease, from the child's start until the
    outcome is written: a final evaluation, a checkpoint, a child slow to exit or a slow outcome write
    report nothing for a while, and the lease must not lapse then (the reaper would requeue a job that
    is finishing). It stops renewing, and says so, once the job is no longer ours."""

    def __init__(self, job_id: str, worker_id: str, lease_seconds: float):
        self.job_id, self.worker_id, self.lease_seconds = job_id, worker_id, lease_seconds
        self.done = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.done.wait(self.lease_seconds / 3):
            try:
                with session_scope() as session:
                    ours = lifecycle.renew(
                        session, job_id=self.job_id, worker_id=self.worker_id, lease_seconds=self.lease_seconds
                    )
            except DATABASE_ERRORS:
                continue  # the supervisor's writes go through the outage's backoff; keep trying here
            if not ours:
                self.lost.set()
                return


class JobRun:
    """Supervises one training child: relays its reports into the database under the lease."""

    def __init__(
        self,
        job: Job,
        spec: JobSpec,
        *,
        settings: Settings,
        worker_id: str,
        stopping: Callable[[], bool],
        keep_alive: Callable[[], None],
    ):
        """`stopping`: whether the worker is shutting down; `keep_alive`: called after each write (the
        worker's heartbeat and reaping go on while it supervises)."""
        self.job, self.spec, self.settings, self.worker_id = job, spec, settings, worker_id
        self.stopping, self.keep_alive = stopping, keep_alive
        self.pending: list[Report] = []
        self.progress: dict = dict(job.progress or {})
        self.outcome: Outcome | None = None
        self.stop_sent = False
        self.budget = LiveBudget()
        self.rows_only: set[int] = set()  # ids of this flush's points that get no "metrics" event
        self.last_report_at = 0.0
        self.outage = Outage(f"job {job.id}")
        self.doomed_files: list[str] = []  # checkpoint files retention removes once their rows' delete commits
        self.store = get_store(settings)
        # With a remote store the run directory is this machine's working copy, pushed at each checkpoint.
        self.mirror = RunMirror(settings, job.id, worker_id, spec.run_dir) if settings.storage_url else None

    def supervise(self) -> None:
        # The lease is renewed from here on: fetching a run from the store may take longer than a lease.
        with LeaseKeeper(self.job.id, self.worker_id, self.settings.job_lease_seconds) as self.lease:
            if self.mirror is not None and not self._pull():
                return
            try:
                self._start_and_supervise()
            finally:
                self._clean_up()

    def _pull(self) -> bool:
        """The run as the store holds it, into this machine's run directory (a resume on another machine)."""
        try:
            pulled = self.mirror.pull()
        except StoreError as exc:
            with session_scope() as session:
                lifecycle.retry_or_fail(
                    session, job_id=self.job.id, worker_id=self.worker_id, attempts=self.job.attempts,
                    max_attempts=self.settings.max_attempts,
                    why=f"could not read the run from the store: {exc.message}",
                )
            return False
        if pulled:
            log.info("job %s: %d file(s) of its run fetched from %s", self.job.id, pulled, self.store.describe)
        return True

    def _clean_up(self) -> None:
        """Once the child has ended: a job deleted meanwhile (cancel, then DELETE at once) loses whatever its
        child wrote after the delete had removed the run; a remote store's working copy goes in any case."""
        try:
            with session_scope() as session:
                gone = session.get(Job, self.job.id) is None
            if gone:
                log.info("job %s was deleted while it stopped; removing what it wrote", self.job.id)
                self.store.delete_prefix(run_prefix(self.job.id))
        except (*DATABASE_ERRORS, StoreError):  # the orphan sweep (app/storage/sweep.py) gets it later
            log.warning("job %s: could not check for a deleted job's leftovers", self.job.id, exc_info=True)
        if self.mirror is not None:
            shutil.rmtree(self.spec.run_dir, ignore_errors=True)

    def _start_and_supervise(self) -> None:
        ctx = start_process_server()
        self.messages = ctx.Queue()
        self.stop_event = ctx.Event()
        self.child = ctx.Process(
            # Defined in a module the process server has imported (PRELOAD): the child unpickles it at
            # once. A function of this module would make every child import it, and with it FastAPI and
            # the database layer (a second of CPU per job).
            target=train_job,
            args=(self.spec, self.messages, self.stop_event, os.getpid(), self.mirror),
            name=f"train-{self.job.id}",
            # A daemon dies with a worker that exits; but a daemon may not start processes of its own,
            # and a data-parallel job starts its ranks. PR_SET_PDEATHSIG covers that case (child.py).
            daemon=self.spec.gpus <= 1,
        )
        self.child.start()
        self._supervise()

    def _supervise(self) -> None:
        last_flush = 0.0
        while True:
            if self.lease.lost.is_set():
                # The lease keeper learnt it from the database: if an outage was going on, it is over (the
                # job may have been requeued meanwhile, when the outage outlasted its lease).
                self.outage.succeeded()
                self.kill("the job is no longer ours (cancelled, or the lease was lost)")
                return
            if self.stopping() and not self.stop_sent:
                self.stop_event.set()
                self.stop_sent = True
            self.drain(timeout=0.1)
            child_done = not self.child.is_alive()
            if child_done:
                self.drain(timeout=0.5)  # the last messages may still be in the pipe
            # A checkpoint is written to the database at once: if this worker dies right after, the
            # next one resumes from that checkpoint and it must already be listed and downloadable.
            urgent = any(isinstance(r, CheckpointSaved) for r in self.pending)
            due = time.monotonic() - last_flush >= FLUSH_SECONDS or urgent or child_done or self.outcome
            if due and self.outage.may_try():
                last_flush = time.monotonic()
                try:
                    ours = self.flush()
                except DATABASE_ERRORS as exc:
                    self.outage.failed(exc)  # the reports wait in self.pending; training goes on
                    continue
                self.outage.succeeded()
                if not ours:
                    self.kill("the job is no longer ours (cancelled, or the lease was lost)")
                    return
                self.keep_alive()
                if self.outcome or child_done:
                    break
            elif child_done or self.outcome:
                time.sleep(0.1)  # waiting out the database's backoff with everything reported
        self.child.join(timeout=30)
        self.finish(self.outcome)

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except (queue_module.Empty, EOFError, OSError):
                return
            self.last_report_at = time.monotonic()
            if isinstance(report, Finished | Failed):
                self.outcome = report
            else:
                self.pending.append(report)
                if isinstance(report, Metrics):
                    self._cap_pending_metrics()

    def _cap_pending_metrics(self) -> None:
        # Counted only past the bound (reports other than points are few), and then the oldest tenth goes at
        # once: no scan of the whole list per point.
        if len(self.pending) > MAX_PENDING_METRICS:
            metrics = [i for i, r in enumerate(self.pending) if isinstance(r, Metrics)]
            if len(metrics) > MAX_PENDING_METRICS:
                dropped = set(metrics[: len(metrics) - MAX_PENDING_METRICS * 9 // 10])
                self.pending = [r for i, r in enumerate(self.pending) if i not in dropped]

    def kill(self, why: str) -> None:
        log.info("job %s: %s; stopping its training process", self.job.id, why)
        if self.child.is_alive():
            self.child.kill()
        self.child.join(timeout=10)

    def flush(self) -> bool:
        """Write what the child reported, in one transaction that first proves the job is still ours.

        False: the job is no longer ours. A database error leaves the reports pending for the next try.
        """
        pending, self.pending = self.pending, []
        if self._may_have_a_checkpoint_coming(pending):
            self.pending.append(pending.pop())
        for report in pending:
            if isinstance(report, Metrics | Evaluated):
                self.progress = run_records.progress_from(report.snapshot)
        try:
            with session_scope() as session:
                if not lifecycle.renew(
                    session,
                    job_id=self.job.id,
                    worker_id=self.worker_id,
                    lease_seconds=self.settings.job_lease_seconds,
                    progress=self.progress,
                ):
                    return False
                live = live_points(pending, self.budget)
                self.rows_only = {id(r) for i, r in enumerate(pending) if isinstance(r, Metrics) and i not in live}
                for report in pending:
                    self.relay(session, report)
                # Once per flush, not per point: the bound on a job's metrics events (a select and a delete).
                if live:
                    prune_metrics_events(session, job_id=self.job.id)
        except BaseException:
            self.pending = pending + self.pending
            self.doomed_files = []  # their rows' delete rolled back: the files stay with them
            raise
        checkpoint_service.remove_files(self.store, self.doomed_files)
        self.doomed_files = []
        return True

    def _may_have_a_checkpoint_coming(self, pending: list[Report]) -> bool:
        """An evaluation is the latest report and the child is still at it: its checkpoint may follow."""
        return (
            bool(pending)
            and isinstance(pending[-1], Evaluated)
            and self.outcome is None
            and self.child.is_alive()
            and time.monotonic() - self.last_report_at < HOLD_EVALUATION_SECONDS
        )

    def relay(self, session, report: Report) -> None:
        """Write one report (a training-loss point in `rows_only`, this flush's over the live budget, as a row
        without its event)."""
        job_id, owner, worker_id = self.job.id, self.job.owner, self.worker_id
        match report:
            case Started():
                resumed = report.info.resumed_from_step
                on_disk = self.checkpoints_on_disk() if resumed is not None else []
                journal = read_journal(self.spec.run_dir, up_to=resumed) if resumed is not None else []
                run_records.started(
                    session, job_id=job_id, owner=owner, worker_id=worker_id, info=report.info, on_disk=on_disk,
                    journal=journal,
                )
            case Metrics():
                run_records.record_metrics(session, job_id=job_id, snapshot=report.snapshot,
                                           event=id(report) not in self.rows_only, prune=False)
            case Evaluated():
                run_records.record_evaluation(session, job_id=job_id, snapshot=report.snapshot, sample=report.sample)
            case CheckpointSaved():
                checkpoint = report.checkpoint.model_copy(update={"path": self.relative(Path(report.checkpoint.path))})
                checkpoints.record(session, job_id=job_id, owner=owner, checkpoint=checkpoint)
                # Retention, as the job runs: its best and its last CHARRNN_KEEP_CHECKPOINTS stay (resume
                # uses the last); the older rows go in this transaction, their files once it commits.
                self.doomed_files += checkpoint_service.prune(
                    session, job_id=job_id, keep=self.settings.keep_checkpoints
                )
            case Diagnosed():
                run_records.record_diagnosis(session, job_id=job_id, worker_id=worker_id,
                                             diagnosis=report.diagnosis)

    def relative(self, path: Path) -> str:
        """A file of the run directory as its key in the store (and its path in the checkpoint's row)."""
        return run_prefix(self.job.id) + path.resolve().relative_to(Path(self.spec.run_dir).resolve()).as_posix()

    def checkpoints_on_disk(self) -> list[CheckpointRecord]:
        """The run directory's step checkpoints, described by their own metadata (see Trainer._checkpoint)."""
        from worker.engine.checkpoint import RunDirectory  # torch: only the worker process loads it, on resume

        found = []
        for weights in RunDirectory(self.spec.run_dir).step_weights().values():
            try:
                stats = CheckpointStats.from_file_metadata(read_metadata(weights))
                # Its writer died before reporting it; the file is complete (last.json named it, or a
                # later step), so its digest now is the one it was written with.
                found.append(CheckpointRecord.of_file(
                    stats, path=self.relative(weights), size_bytes=weights.stat().st_size, sha256=file_sha256(weights)
                ))
            except (OSError, ValueError):
                continue  # unreadable: nothing to list
        return found

    def finish(self, outcome: Outcome | None) -> None:
        """Write the outcome; through a database outage, retry (a stopping worker gives up after a while,
        and then the reaper puts the job back in the queue once its lease runs out)."""
        if isinstance(outcome, Failed) and outcome.kind is FailureKind.INTERNAL:
            # A bug: its owner is told the id only; the operator finds the traceback here, under it.
            fields = {"job_id": self.job.id, "error_id": outcome.error_id}
            log.error("internal error %s in job %s's training process:\n%s", outcome.error_id, self.job.id,
                      outcome.traceback.rstrip(), extra={"fields": fields})
        started = time.monotonic()
        while True:
            try:
                with session_scope() as session:
                    self._write_outcome(session, outcome)
                self.outage.succeeded()
                break
            except DATABASE_ERRORS as exc:
                delay = self.outage.failed(exc)
                if self.stopping() and time.monotonic() - started > GIVE_UP_FINISHING_SECONDS:
                    log.error("job %s: could not write its outcome; the reaper will requeue it", self.job.id)
                    return
                time.sleep(delay)
        kind = type(outcome).__name__ if outcome else "crashed"
        if isinstance(outcome, Failed):
            kind += f" ({outcome.kind})"
        log.info("job %s finished: %s", self.job.id, kind, extra={"fields": {"job_id": self.job.id}})

    def stderr_lines(self) -> list[str]:
        return stderr_tail(Path(self.spec.run_dir) / STDERR_FILE)

    def death_message(self) -> str:
        """Why the child ended without an outcome, from its exit code and the end of its stderr file."""
        lines = self.stderr_lines()
        if lines:  # the whole tail goes to the worker's log; the job's error gets the exception line
            log.error("job %s: the training process's last words:\n%s", self.job.id, "\n".join(lines[-30:]))
        return death_message(self.child.exitcode, lines)

    def _write_outcome(self, session, outcome: Outcome | None) -> None:
        job_id, worker_id = self.job.id, self.worker_id
        match outcome:
            case Finished() if outcome.shut_down:
                reason = f"worker shut down; checkpoint saved at step {outcome.result.steps}"
                lifecycle.requeue(session, job_id=job_id, worker_id=worker_id, reason=reason)
            case Finished():
                lifecycle.succeeded(
                    session, job_id=job_id, worker_id=worker_id, result=outcome.result, progress=self.progress
                )
            case Failed():  # the user's problem, or a bug whose error names only its id (logged in finish)
                lifecycle.failed(session, job_id=job_id, worker_id=worker_id, error=outcome.error)
            case None if self.child.exitcode is not None and self.child.exitcode < 0:
                # Killed: often transient (an operator, another process's memory spike): resume from the
                # last checkpoint while attempts are left.
                lifecycle.retry_or_fail(
                    session, job_id=job_id, worker_id=worker_id, attempts=self.job.attempts,
                    max_attempts=self.settings.max_attempts, why=self.death_message(),
                )
            case None:
                error = self.death_message()
                lifecycle.failed(session, job_id=job_id, worker_id=worker_id, error=error)
