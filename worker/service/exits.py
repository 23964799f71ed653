"""What to tell a job's owner when its training child died without reporting an outcome.

The child (child.py) sends its stderr to a file in the run directory, so a death leaves its last words
there: an exception the child could not report, or a fatal error's trace (faulthandler). A death by
signal has none; its signal says what happened (SIGKILL, on Linux, is most often the out-of-memory killer).
"""

from __future__ import annotations

import signal
from pathlib import Path

STDERR_FILE = "stderr.log"  # in the job's run directory
TAIL_BYTES = 8192  # of the stderr file: enough for the end of a trace
MESSAGE_CHARS = 300  # of the exception line, in the job's error message


def stderr_tail(path: Path) -> list[str]:
    """The last lines the child wrote to stderr (none if it wrote nothing or the file is unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def last_error_line(lines: list[str]) -> str | None:
    """The exception line of the last trace ("ModuleNotFoundError: No module named 'torch'"): the last
    line that is not a frame of the trace; or the last line of whatever was written."""
    for line in reversed(lines):
        if not line.startswith((" ", "\t", "Traceback ", "Fatal Python error", "Current thread", "Thread ")):
            return line[:MESSAGE_CHARS]
    return lines[-1].strip()[:MESSAGE_CHARS] if lines else None


def death_message(exit_code: int | None, stderr_lines: list[str]) -> str:
    """The job's error for a child that ended without an outcome: its signal, or its exit code and error."""
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        if name == "SIGKILL":
            return (
                "the training process was killed by SIGKILL, most likely by the out-of-memory killer: "
                "lower hidden_size or batch_size (or give the worker more memory)"
            )
        error = last_error_line(stderr_lines)
        return f"the training process was killed by {name}" + (f": {error}" if error else "")
    error = last_error_line(stderr_lines)
    if error:
        return f"the training process exited with code {exit_code}: {error}"
    return f"the training process exited with code {exit_code} without an error message; see the worker's log"
