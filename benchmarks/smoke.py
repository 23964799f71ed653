"""Every benchmark the README's Results table cites, in a seconds-long mode that only checks it runs to the
end: the same script and code path as its reproduce command, on the 40 KB test corpus, with the budgets,
rounds and sizes cut to the least that still goes through every step. The figures it prints mean nothing.

    .venv/bin/python benchmarks/smoke.py          # `make bench-smoke`; CI runs it after `make test`
    .venv/bin/python benchmarks/smoke.py bench_engine bench_steps    # some of them

Each runs as its own process; a failure prints its output and the run goes on to the next, then exits 1.
bench_queue_load needs PostgreSQL on 127.0.0.1:5432: without it, it is skipped with a message (under CI,
env CI set, it fails instead, as the tests do). benchmarks/out/, where the scripts write their raw figures,
is put back as it was afterwards, so a smoke run never overwrites a real measurement.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _support  # noqa: F401  (puts the repository root on the path)

from tests.harness import ROOT, postgres_available

HERE = Path(__file__).resolve().parent
CORPUS = str(ROOT / "tests" / "data" / "tinyshakespeare-40k.txt")

# Script: the quick arguments. Keep the set equal to the scripts the README's Results table cites
# (tests/test_bench_smoke.py checks it).
QUICK: dict[str, list[str]] = {
    "bench_engine.py": ["--rounds", "1", "--seconds", "1", "--chars", "50", "--corpus", CORPUS],
    "bench_quality.py": ["--corpus", CORPUS, "--seconds", "2", "--transformer", "transformer-cpu="],
    "bench_steps.py": ["--corpus", CORPUS, "--steps", "4", "--hidden", "32", "--run", "defaults=",
                       "--run", "old=min_lr_ratio=0.1,weight_decay=0.01", "--run", "muon=optimizer=muon",
                       "--run", "wsd=decay_fraction=0.2"],
    "bench_generation_load.py": ["--seconds", "1", "--rounds", "1", "--clients", "4", "--length", "20",
                                 "--overhead-requests", "4", "--train-steps", "5", "--corpus", CORPUS],
    "bench_followers.py": ["--seconds", "1", "--rounds", "1", "--followers", "10", "--no-bars", "--test-defaults",
                          "--corpus", CORPUS],
    "bench_storage_upload.py": ["--megabytes", "2", "--steps", "2"],
    "bench_read_latency.py": ["--seconds", "1", "--rounds", "1", "--clients", "2", "--length", "20",
                              "--corpus", CORPUS],
    "bench_service.py": ["--steps", "20", "--requests", "4", "--clients", "1", "--rounds", "1",
                         "--training-rounds", "1", "--corpus", CORPUS],
    "bench_fairness.py": ["--rounds", "1", "--probes", "2", "--flood", "400", "--flood-clients", "10",
                          "--corpus", CORPUS],
    "bench_queue_load.py": ["--jobs", "2", "--workers", "1", "--corpus", CORPUS],
    "bench_seeded_batching.py": ["--rows", "4", "--repeats", "2", "--streams", "2", "--chars", "20"],
    "bench_job_start.py": ["--rounds", "1", "--jobs", "1", "--corpus", CORPUS],
}
NEEDS_POSTGRES = {"bench_queue_load.py"}
TIMEOUT = 180  # seconds, for one script: its quick mode takes seconds on a quiet machine


def run(script: str) -> tuple[str, float, str]:
    """(outcome, seconds, output) of one benchmark's quick mode."""
    if script in NEEDS_POSTGRES and (why_not := postgres_available()):
        return ("failed" if os.environ.get("CI") else "skipped"), 0.0, why_not
    start = time.monotonic()
    # A session of its own: on a timeout the whole group goes (the servers and workers a benchmark started).
    proc = subprocess.Popen([sys.executable, str(HERE / script), *QUICK[script]], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return "failed", time.monotonic() - start, output + f"\n(killed after {TIMEOUT} s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
    return ("ok" if proc.returncode == 0 else "failed"), time.monotonic() - start, output


def main(names: list[str]) -> int:
    scripts = [n if n.endswith(".py") else n + ".py" for n in names] or list(QUICK)
    unknown = [s for s in scripts if s not in QUICK]
    if unknown:
        print(f"no quick mode for {', '.join(unknown)}; known: {', '.join(QUICK)}", file=sys.stderr)
        return 2
    total = time.monotonic()
    out = HERE / "out"
    with tempfile.TemporaryDirectory() as kept:
        if out.exists():
            shutil.copytree(out, Path(kept) / "out")
        try:
            failed = run_all(scripts)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            if (Path(kept) / "out").exists():
                shutil.copytree(Path(kept) / "out", out)
    print(f"{len(scripts) - failed} of {len(scripts)} ran to the end in {time.monotonic() - total:.0f} s")
    return 1 if failed else 0


def run_all(scripts: list[str]) -> int:
    """Runs each in turn, printing one line each (and the output of a failure); how many failed."""
    failed = 0
    for script in scripts:
        outcome, seconds, output = run(script)
        print(f"{outcome:8} {seconds:5.1f} s  {script} {' '.join(QUICK[script]).replace(CORPUS, 'CORPUS')}",
              flush=True)
        if outcome == "skipped":
            print(f"         {output}")
        if outcome == "failed":
            failed += 1
            print(output[-4000:], flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
