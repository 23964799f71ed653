"""The worker process's main loop: register, heartbeat, reap, claim a job, train it, repeat.

Each claimed job is trained in a child process supervised by supervisor.JobRun, under a lease that the
loop keeps renewing; SIGTERM makes the child checkpoint and the job go back to the queue.

The run directory is <data dir>/runs/<job id>, on storage every worker shares, so whoever claims the
job next finds the checkpoints there and the Trainer resumes from the latest one by itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from sqlalchemy import select

from app.corpora.references import references_for_split
from app.db import session_scope
from app.ids import new_id
from app.jobs import lifecycle
from app.jobs.reaper import reap_once
from app.models import Checkpoint, Corpus, Job
from app.settings import Settings, get_settings
from app.storage import CorruptObject, ObjectMissing, StoreError, local_file
from app.workers import repository as workers
from worker.engine.records import JobSpec
from worker.service.outage import DATABASE_ERRORS, Outage
from worker.service.server import GenerationServer, configure_generation_process
from worker.service.supervisor import JobRun, LeaseKeeper, start_process_server

log = logging.getLogger("charrnn.worker")

POLL_SECONDS = 0.5  # how often an idle worker looks for a job


class Worker:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.id = new_id("wrk")
        self.stopping = False
        self.server: GenerationServer | None = None
        self.current_job: str | None = None
        self.last_heartbeat = 0.0
        self.last_reap = 0.0
        # The loop's own writes (heartbeat, reap, claim); a job's writes have their own (supervisor.py).
        self.outage = Outage(f"worker {self.id}")

    # -- lifecycle ---------------------------------------------------------------------------------

    def handle_signal(self, signum, _frame) -> None:
        log.info("signal %s: finishing the current step, checkpointing, then stopping", signum)
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_signal)
        signal.signal(signal.SIGINT, self.handle_signal)
        if self.settings.storage_url:
            sweep_scratch(self.settings.data_dir / "scratch")
        else:
            self.settings.runs_dir.mkdir(parents=True, exist_ok=True)
        start_process_server()
        self.server = GenerationServer(self.settings)
        self.server.start()
        while not self.stopping:
            try:
                with session_scope() as session:
                    workers.register(
                        session,
                        worker_id=self.id,
                        hostname=socket.gethostname(),
                        pid=os.getpid(),
                        url=self.server.url,
                        device=self.settings.device,
                    )
                self.outage.succeeded()
                break
            except DATABASE_ERRORS as exc:
                time.sleep(self.outage.failed(exc))
        log.info(
            "worker %s up, generation server at %s",
            self.id,
            self.server.url,
            extra={"fields": {"worker_id": self.id, "url": self.server.url}},
        )
        try:
            while not self.stopping:
                self.heartbeat()
                self.reap()
                job = self.claim()
                if job is None:
                    time.sleep(POLL_SECONDS if not self.outage.ongoing else self.outage.delay)
                    continue
                self.run_job(job)
        finally:
            try:
                with session_scope() as session:
                    workers.stopped(session, worker_id=self.id)
            except DATABASE_ERRORS as exc:  # the heartbeat ages out instead
                log.warning("worker %s: could not record its stop (%s)", self.id, type(exc).__name__)
            self.server.stop()
            log.info("worker %s stopped", self.id)

    def heartbeat(self, force: bool = False) -> None:
        """Best effort: a heartbeat that fails is retried at the next call (it is also how the loop finds
        out that the database is back); /readyz goes by the last one written, so a worker that cannot
        write stops counting as live once that is a lease old."""
        now = time.monotonic()
        due = now - self.last_heartbeat >= self.settings.job_lease_seconds / 3 or self.outage.ongoing
        if not (force or due):
            return
        if not force and not self.outage.may_try():
            return
        try:
            with session_scope() as session:
                workers.heartbeat(session, worker_id=self.id, current_job_id=self.current_job)
        except DATABASE_ERRORS as exc:
            self.outage.failed(exc)
            return
        self.outage.succeeded()
        self.last_heartbeat = now

    def reap(self, force: bool = True) -> None:
        # Busy workers reap too (less often), so a dead worker's job shows as queued or failed even
        # while every other worker is occupied.
        now = time.monotonic()
        if not force and now - self.last_reap < self.settings.job_lease_seconds:
            return
        if self.outage.ongoing:
            return  # the heartbeat finds out when the database is back
        self.last_reap = now
        try:
            reap_once(self.settings.max_attempts)
        except DATABASE_ERRORS as exc:
            self.outage.failed(exc)

    def keep_alive(self) -> None:
        """What a running job's supervisor calls after each write: heartbeat, and reap now and then."""
        self.heartbeat()
        self.reap(force=False)

    def claim(self) -> Job | None:
        if self.outage.ongoing:
            return None
        try:
            with session_scope() as session:
                return lifecycle.claim(
                    session,
                    worker_id=self.id,
                    lease_seconds=self.settings.job_lease_seconds,
                    device=self.settings.device,
                )
        except DATABASE_ERRORS as exc:
            self.outage.failed(exc)
            return None

    # -- one job -----------------------------------------------------------------------------------

    def spec_for(self, job: Job) -> JobSpec | str:
        """What the child needs, as plain data; or a message saying why the job cannot run. Corpora and
        init_from come from the store: in place in the data directory, or fetched into this machine's
        cache (keyed and checked by sha256, app/storage/cache.py)."""
        with session_scope() as session:
            corpus = session.execute(
                select(Corpus.path, Corpus.sha256, Corpus.size_bytes, Corpus.reference_losses)
                .where(Corpus.id == job.corpus_id)
            ).one_or_none()
            val = init = None
            if job.validation_corpus_id:
                val = session.execute(
                    select(Corpus.path, Corpus.sha256, Corpus.size_bytes).where(Corpus.id == job.validation_corpus_id)
                ).one_or_none()
            if job.init_from:
                init = session.execute(
                    select(Checkpoint.path, Checkpoint.sha256, Checkpoint.size_bytes)
                    .where(Checkpoint.id == job.init_from)
                ).one_or_none()
        corpus_file = self.local_copy(corpus)
        if corpus_file is None:
            return f"corpus {job.corpus_id} is gone; upload it again and start a new job"
        val_file = self.local_copy(val) if job.validation_corpus_id else None
        if job.validation_corpus_id and val_file is None:
            return f"validation corpus {job.validation_corpus_id} is gone; upload it again and start a new job"
        init_file = self.local_copy(init) if job.init_from else None
        if job.init_from and init_file is None:
            return f"checkpoint {job.init_from} (init_from) is gone"
        # With a remote store the run directory is scratch space of this worker (run_store.py fills it).
        runs = self.settings.runs_dir if not self.settings.storage_url else self.settings.data_dir / "scratch" / self.id
        return JobSpec(
            corpus_path=str(corpus_file.resolve()),
            run_dir=str((runs / job.id).resolve()),
            model={k: v for k, v in job.model.items() if v is not None},
            training={**{k: v for k, v in job.training.items() if v is not None}, "device": self.settings.device},
            init_from=str(init_file.resolve()) if init_file else None,
            val_corpus_path=str(val_file.resolve()) if val_file else None,
            init_from_sha256=init.sha256 if init else None,
            threads=self.settings.train_thread_count,
            memory_limit=self.settings.worker_memory_limit,
            reference_losses=references_for_split(
                corpus.reference_losses, val_fraction=job.training.get("val_fraction"),
                separate_validation=bool(job.validation_corpus_id),
            ),
        )

    def local_copy(self, row) -> Path | None:
        """The file of a corpus or checkpoint row on this machine, or None when it is gone (or damaged: a
        copy that does not match its sha256 is never trained on). A store that does not answer raises
        StoreError: the job waits for another attempt rather than failing for good."""
        if row is None:
            return None
        try:
            path = local_file(self.settings, row.path, sha256=row.sha256, size=row.size_bytes)
        except (ObjectMissing, CorruptObject):
            return None
        return path if path.is_file() else None

    def run_job(self, job: Job) -> None:
        self.current_job = job.id
        self.heartbeat(force=True)
        log.info("job %s claimed (attempt %s)", job.id, job.attempts, extra={"fields": {"job_id": job.id}})
        try:
            # Renewed while the corpus is fetched into the cache: a large one takes longer than a lease.
            with LeaseKeeper(job.id, self.id, self.settings.job_lease_seconds):
                spec = self.spec_for(job)
            if isinstance(spec, str):
                with session_scope() as session:
                    lifecycle.failed(session, job_id=job.id, worker_id=self.id, error=spec)
                return
            JobRun(
                job,
                spec,
                settings=self.settings,
                worker_id=self.id,
                stopping=lambda: self.stopping,
                keep_alive=self.keep_alive,
            ).supervise()
        except DATABASE_ERRORS as exc:  # before training started: the lease runs out and the job is requeued
            self.outage.failed(exc)
        except StoreError as exc:  # the store did not answer: another attempt, later or on another worker
            log.warning("job %s: %s", job.id, exc.message)
            with session_scope() as session:
                lifecycle.retry_or_fail(session, job_id=job.id, worker_id=self.id, attempts=job.attempts,
                                        max_attempts=self.settings.max_attempts, why=exc.message)
        finally:
            self.current_job = None
            self.heartbeat(force=True)


SCRATCH_STALE_SECONDS = 3600.0


def sweep_scratch(scratch: Path) -> None:
    """With a remote store, each worker trains in <data dir>/scratch/<worker id>/ and removes a job's folder
    when the job ends; a worker killed -9 leaves its folder behind. Removed at start once nothing in it has
    changed for an hour (another worker on this data dir writes its own folder far more often)."""
    if not scratch.is_dir():
        return
    now = time.time()
    for folder in scratch.iterdir():
        try:
            newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
        except OSError:
            continue
        if now - newest > SCRATCH_STALE_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    from app.logs import setup_logging

    settings = get_settings()
    setup_logging(settings.log_level)
    # This process serves generation (beside supervising training children, which set their own threads).
    configure_generation_process(settings)
    Worker(settings).run()


if __name__ == "__main__":
    main()

