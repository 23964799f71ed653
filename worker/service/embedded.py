"""`charrnn serve`'s worker: a child process that is restarted, with backoff, whenever it dies.

The API runs in the serving process itself, so it learns the embedded worker's state from
app.ops.embedded (for /readyz) rather than from the database alone: while the worker restarts,
readiness says so instead of only "no worker".
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time

from app.ops import embedded

log = logging.getLogger("charrnn.serve")

BACKOFF_SECONDS = (1, 2, 5, 10, 30)  # waits before the 1st, 2nd, ... restart in a row
STABLE_SECONDS = 60  # a worker that ran this long starts the backoff over when it dies


PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """In the worker, before it runs (Popen's preexec_fn): Linux sends it SIGTERM when serve dies, even by
    kill -9, so that it checkpoints and requeues its job instead of training on without a supervisor.
    (The signal comes when the thread that started it ends: the watcher, which lives as long as it.)"""
    with contextlib.suppress(OSError):  # not Linux: a worker whose serve died is stopped by nobody
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedWorker:
    """Runs `python -m worker.service.runner` as a child and keeps it running until the context exits."""

    def __init__(self, command: list[str] | None = None, stop_timeout: float = 60):
        self.command = command or [sys.executable, "-m", "worker.service.runner"]
        self.stop_timeout = stop_timeout
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.lock = threading.Lock()
        self.watcher = threading.Thread(target=self._watch, name="embedded-worker", daemon=True)

    def __enter__(self) -> EmbeddedWorker:
        self.watcher.start()
        return self

    def request_stop(self) -> None:
        """Ask the worker to stop now (it checkpoints its job and hands it back); safe in a signal handler."""
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        with self.lock:
            child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # it checkpoints its job and hands it back
            try:
                child.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.watcher.join(timeout=5)

    def _watch(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                self.child = subprocess.Popen(self.command, preexec_fn=stop_with_parent)
            self._publish("running")
            started = time.monotonic()
            code = self.last_exit = self.child.wait()
            # Exit 0 is a worker that was asked to stop (SIGTERM to the whole group, Ctrl-C): it already
            # checkpointed and requeued its job, and serve is on its way out too.
            if self.stopping.is_set() or code == 0:
                self._publish("stopped")
                return
            failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1]
            log.warning(
                "the worker died (exit code %s); restarting it in %s s", code, delay,
                extra={"fields": {"exit_code": code, "restart_in_seconds": delay}},
            )
            self.restarts += 1
            self._publish("restarting")
            if self.stopping.wait(delay):
                return

    def _publish(self, status: str) -> None:
        embedded.publish(status=status, restarts=self.restarts, pid=self.child.pid, last_exit=self.last_exit)
