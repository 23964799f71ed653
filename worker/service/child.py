"""The training child process: one job, one process, so that cancel is a kill and a crash stays here.

The worker's process server forks this (supervisor.py: a fresh interpreter with torch imported and
no threads, locks or CUDA state to inherit). The worker sends it everything it needs as plain data,
and reads back observer calls from a queue as typed reports (reports.py). The child writes nothing
to the database: the worker does, under its lease.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from worker.engine.errors import DeviceError, EngineError
from worker.engine.records import CheckpointRecord, Diagnosis, JobSpec, RunResult, RunStarted, Snapshot
from worker.service.bugs import internal_error_message, new_error_id
from worker.service.exits import STDERR_FILE
from worker.service.journal import Journal
from worker.service.reports import (
    CheckpointSaved,
    Diagnosed,
    Evaluated,
    Failed,
    FailureKind,
    Finished,
    Metrics,
    Outcome,
    Started,
)

if TYPE_CHECKING:
    from worker.service.run_store import RunMirror

PR_SET_PDEATHSIG = 1


def die_with_parent(worker_pid: int) -> None:
    """Ask Linux to SIGKILL us when our parent dies (even by kill -9); elsewhere the observer polls. The
    parent is the worker's process server (which exits with the worker), or for a data-parallel rank the
    training child that started it: `worker_pid` names whichever of those we serve."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent or not process_alive(worker_pid):  # it died before prctl took effect
        os._exit(1)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


class QueueObserver:
    """Forwards the trainer's hooks to the worker; stops when asked or when the worker is gone."""

    def __init__(self, queue, stop_event, worker_pid: int, run_dir: str, mirror: RunMirror | None = None):
        self.queue, self.stop_event, self.worker_pid = queue, stop_event, worker_pid
        self.journal = Journal(run_dir)
        self.mirror = mirror  # a remote store's copy of the run (run_store.py), pushed at each checkpoint

    def on_start(self, info: RunStarted) -> None:
        self.journal.resumed(info.resumed_from_step)
        self.queue.put(Started(info))

    def on_metrics(self, metrics: Snapshot) -> None:
        self.journal.append(metrics)
        self.queue.put(Metrics(metrics))

    def on_eval(self, metrics: Snapshot, sample: str) -> None:
        self.journal.append(metrics, sample)
        self.queue.put(Evaluated(metrics, sample))

    def on_checkpoint(self, checkpoint: CheckpointRecord) -> None:
        self.journal.checkpointed(checkpoint.step)
        if self.mirror is not None and not push_or_fail(self.mirror, checkpoint):
            return  # the job is gone or no longer ours: nothing written, nothing to report
        self.queue.put(CheckpointSaved(checkpoint))

    def on_diagnosis(self, diagnosis: Diagnosis) -> None:
        self.queue.put(Diagnosed(diagnosis))

    def should_stop(self) -> str | None:
        # Orphaned: the job will belong to someone else. Checked here, at every step, because the process
        # server we were forked from may take a second to exit (and so to kill us) after the worker died.
        if not process_alive(self.worker_pid):
            os._exit(1)
        return "shutdown" if self.stop_event.is_set() else None


def push_or_fail(mirror: RunMirror, checkpoint: CheckpointRecord) -> bool:
    """Push to the store; a store that fails stops the run with its message (an EngineError: the job
    fails saying what to check, and a resume starts from the last checkpoint the store holds whole)."""
    from app.storage import StoreError
    from worker.engine.errors import EngineError

    try:
        return mirror.push(checkpoint)
    except StoreError as exc:
        raise EngineError(f"the checkpoint of step {checkpoint.step} could not be stored: {exc.message}") from None


def _train(spec: JobSpec, observer) -> RunResult:
    from worker.engine.training_run import build_trainer

    return build_trainer(spec, observer).train()


def _train_rank(spec: JobSpec, queue, stop_event, parent_pid: int, mirror: RunMirror | None = None) -> Outcome:
    """One rank of a data-parallel job; rank 0 reports through the queue, the others only train.
    Returns how the run ended, or the user's error it was refused with; a bug fails the launch."""
    import torch

    from worker.engine.distributed import leave_process_group, setup_process_group

    die_with_parent(parent_pid)
    torch.set_num_threads(max(1, (spec.threads or torch.get_num_threads()) // spec.gpus))
    spec = spec.model_copy(update={"training": setup_process_group(spec.training)})
    finished = False
    try:
        result = _train(spec, QueueObserver(queue, stop_event, parent_pid, spec.run_dir, mirror))
        finished = True
        return Finished(result)
    except EngineError as exc:
        finished = True  # every rank agrees on these (same data, same averaged loss)
        return Failed(FailureKind.USER, str(exc))
    finally:
        leave_process_group(finished)


def crashed(exc: BaseException) -> Failed:
    """The report of a bug: the job's error names a new error id, and the traceback goes with it to the
    worker's log (supervisor.py), and to this process's stderr file in case the report never arrives."""
    error_id = new_error_id()
    trace = "".join(traceback.format_exception(exc))
    print(f"internal error {error_id}:\n{trace}", file=sys.stderr, flush=True)
    return Failed(FailureKind.INTERNAL, internal_error_message(error_id, "the training process"), error_id, trace)


def capture_stderr(run_dir: str) -> None:
    """Send this process's stderr (fd 2: Python's traces, C libraries' messages, a fatal error's trace
    from faulthandler) to the run directory, where the supervisor reads its end if we die (exits.py)."""
    try:
        path = Path(run_dir) / STDERR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return  # a full or read-only disk: keep the worker's stderr
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()


def data_parallel_capacity(device: str) -> tuple[int, str]:
    """How many data-parallel processes this worker can run: its GPUs (NCCL), or on a CPU its cores (gloo)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"


def train_job(spec: JobSpec, queue, stop_event, worker_pid: int, mirror: RunMirror | None = None) -> None:
    # Ctrl-C, and a supervisor's SIGTERM, reach the whole process group (`kill -TERM -PGID`, systemd):
    # the worker decides when training stops (it checkpoints and requeues), not the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(worker_pid)
    capture_stderr(spec.run_dir)
    try:
        import torch

        gpus = spec.gpus
        if gpus > 1:
            from worker.engine.distributed import launch

            # Checked before any process starts: 16 gloo ranks on a 2-core worker would take the machine.
            available, unit = data_parallel_capacity(spec.training.get("device", "auto"))
            if gpus > available:
                raise DeviceError(
                    f"training.gpus={gpus}, but this worker has {available} {unit}; "
                    f"lower training.gpus to {available} or less (batch_size a multiple of it)"
                )
            outcome = launch(gpus, _train_rank, spec, queue, stop_event, os.getpid(), mirror)
        else:
            if spec.threads:
                torch.set_num_threads(spec.threads)
            outcome = Finished(_train(spec, QueueObserver(queue, stop_event, worker_pid, spec.run_dir, mirror)))
        queue.put(outcome)
    except EngineError as exc:  # the user's problem: its message is the job's error
        queue.put(Failed(FailureKind.USER, str(exc)))
    except Exception as exc:  # anything else is a bug, a ValueError included
        queue.put(crashed(exc))
    finally:
        queue.close()
        queue.join_thread()
