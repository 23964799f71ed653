"""A run's metric journal: each training-loss point and evaluation the child reports is also appended to
<run dir>/metrics.jsonl, before it goes on the queue to the supervisor.

Why: a run resumes from its last checkpoint and reports only the steps after it. A worker killed whole
(kill -9) after a checkpoint's files were written, but before the points up to it reached the database,
would leave a hole in the loss curve. On resume the supervisor writes from the journal the points up to
the checkpoint that the database lacks (app.jobs.run_records.started), so the curve equals an unbroken
run's. A line written before a kill -9 is in the kernel's page cache: it survives the process.

The child keeps the journal in line with the run: on resume it drops the lost attempt's lines after the
checkpoint (they are reported again), and past MAX_LINES it keeps only the lines after the checkpoint
before the latest (the earlier ones were written to the database long since).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from worker.engine.records import Snapshot

JOURNAL_FILE = "metrics.jsonl"
MAX_LINES = 5000


class Journal:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / JOURNAL_FILE
        self.lines = 0
        self.checkpoints: list[int] = []  # the steps of the latest two checkpoints

    def append(self, snapshot: Snapshot, sample: str | None = None) -> None:
        """One point (`sample` None) or evaluation. Best effort: a full disk must not stop training."""
        line = json.dumps({"snapshot": snapshot.model_dump(), **({"sample": sample} if sample is not None else {})})
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            return
        self.lines += 1

    def checkpointed(self, step: int) -> None:
        self.checkpoints = [*self.checkpoints[-1:], step]
        if self.lines > MAX_LINES and len(self.checkpoints) == 2:
            self._rewrite(lambda entry_step: entry_step > self.checkpoints[0])

    def resumed(self, step: int | None) -> None:
        """A new attempt: from its checkpoint at `step` (its lines after it go), or from scratch (all go)."""
        self._rewrite(lambda entry_step: step is not None and entry_step <= step)

    def _rewrite(self, keep) -> None:
        kept = [line for line in self._raw_lines() if keep(json.loads(line)["snapshot"]["step"])]
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.path)  # the supervisor reads either version whole
        except OSError:
            return
        self.lines = len(kept)

    def _raw_lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return []
        # A line cut short (a disk that filled mid-write) is skipped, not fatal.
        out = []
        for line in text.splitlines():
            try:
                json.loads(line)
            except ValueError:
                continue
            out.append(line)
        return out


def read_journal(run_dir: str | Path, *, up_to: int) -> list[tuple[Snapshot, str | None]]:
    """The journal's points and evaluations up to step `up_to`, in the order they were reported."""
    entries = []
    for line in Journal(run_dir)._raw_lines():
        entry = json.loads(line)
        snapshot = Snapshot.model_validate(entry["snapshot"])
        if snapshot.step <= up_to:
            entries.append((snapshot, entry.get("sample")))
    return entries
