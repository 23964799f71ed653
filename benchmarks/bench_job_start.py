"""How long a small job takes from the moment a worker claims it to its end: what a user waits for beyond
the training itself (the training process starting, its imports, the supervisor relaying its reports).

Each round starts a service (API and one worker, real processes) and runs `--jobs` 5-step jobs of the
harness's tiny model one after another; a job's time is its `finished_at - started_at`. With
`--against DIR` (another checkout, with this file copied into its benchmarks/), each round runs there
too, alternating, so the two builds are compared side by side on the same machine.

    .venv/bin/python benchmarks/bench_job_start.py [--rounds 5] [--jobs 3] [--against ../old-checkout]

Writes benchmarks/out/job_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from _support import ROOT, Service, add_corpus_argument, write_results

TRAINING = {"max_steps": 5, "eval_every": 5, "checkpoint_every": 5, "log_every": 5}


def one_round(jobs: int, corpus: Path) -> list[float]:
    """Seconds from claim to end of each of `jobs` jobs, on a fresh service of this checkout."""
    with tempfile.TemporaryDirectory() as root:
        svc = Service(Path(root))
        try:
            svc.start_api()
            svc.start_worker()
            with svc.client() as client:
                corpus_id = svc.upload(client, corpus.read_text(encoding="utf-8")[:20_000])["id"]
                seconds = []
                for _ in range(jobs):
                    job = svc.create_job(client, corpus_id, training=TRAINING)
                    job = svc.wait_job(client, job["id"], poll=0.05)
                    assert job["status"] == "succeeded", job
                    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
                    seconds.append((finished - started).total_seconds())
                return seconds
        finally:
            svc.stop()


def round_in(checkout: Path, args) -> list[float]:
    """One round run by `checkout`'s copy of this script, in its own process (its code, its harness)."""
    script = checkout / "benchmarks" / Path(__file__).name
    if not script.is_file():
        sys.exit(f"{script} is missing: copy {Path(__file__).name} into that checkout's benchmarks/ first")
    done = subprocess.run(
        [sys.executable, str(script), "--one-round", "--jobs", str(args.jobs), "--corpus", str(args.corpus.resolve())],
        cwd=checkout, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=3, help="jobs per round, one after another")
    parser.add_argument("--against", type=Path, help="another checkout to alternate with, round by round")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    add_corpus_argument(parser)
    args = parser.parse_args()
    if args.one_round:
        print(json.dumps(one_round(args.jobs, args.corpus)))
        return
    builds = {"this": ROOT, **({"against": args.against.resolve()} if args.against else {})}
    seconds: dict[str, list[float]] = {name: [] for name in builds}
    for r in range(args.rounds):
        for name, checkout in builds.items():
            got = round_in(checkout, args)
            seconds[name] += got
            print(f"round {r + 1} {name}: " + " ".join(f"{s:.2f}" for s in got) + " s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"{name} ({builds[name]}): median {median:.2f} s from claim to end of a 5-step job")
    if args.against:
        print(f"this / against: {medians['this'] / medians['against']:.2f}x")
    write_results("job_start", {"builds": {k: str(v) for k, v in builds.items()}, "seconds": seconds,
                                "medians": medians, "rounds": args.rounds, "jobs": args.jobs})


if __name__ == "__main__":
    main()
