"""GET /jobs/{id} latency while a job trains with log_every 1 and 8 clients generate.

On SQLite every progress write of the worker takes the database's one write lock. A GET that took the
write lock too (BEGIN IMMEDIATE) queued behind each of them; read routes now use read-only sessions
(plain BEGIN), which in WAL mode never wait for a writer. This measures what a client polling a job
sees under that load: the poll's latency (median, p99) and the generations answered meanwhile.

The service (API and one worker, real processes) first trains a small model to generate from, then
starts a job that reports every step (`log_every` 1) and, while it trains, runs `--rounds` windows of
`--seconds`: `--clients` threads sending unseeded `--length`-character /generate requests back to back
and one thread polling GET /jobs/{id} every `--poll-ms`.

    .venv/bin/python benchmarks/bench_read_latency.py [--seconds 20] [--rounds 3] [--clients 8]
        [--poll-ms 100] [--length 100] [--corpus PATH]

Run it on an older checkout (copy the file there) for the "before" figures. Writes
benchmarks/out/read_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _support import Service, add_corpus_argument, write_results
from bench_service import percentile

GENERATOR = {"cell": "lstm", "hidden_size": 128, "num_layers": 1, "embedding_dim": 32}
GENERATOR_TRAINING = {"seq_len": 32, "batch_size": 16, "max_steps": 50, "eval_every": 10**6, "seed": 1}
# Trains for the whole measurement, reporting every step: the worker's write rate is the point.
TRAINING_JOB = {"cell": "lstm", "hidden_size": 64, "num_layers": 1, "embedding_dim": 16}


def window(svc: Service, generator_job: str, training_job: str, args) -> dict:
    stop_at = time.monotonic() + args.seconds
    polls: list[float] = []
    answered = refused = 0
    lock = threading.Lock()
    body = {"model": generator_job, "prompt": "ROMEO:", "length": args.length, "temperature": 0.8}

    def generate() -> None:
        nonlocal answered, refused
        with svc.client() as client:
            while time.monotonic() < stop_at:
                code = client.post("/generate", json=body).status_code
                with lock:
                    answered += code == 200
                    refused += code == 429

    def poll() -> None:
        with svc.client() as client:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                client.get(f"/jobs/{training_job}").raise_for_status()
                polls.append(time.perf_counter() - t0)
                time.sleep(args.poll_ms / 1000)

    threads = [threading.Thread(target=generate) for _ in range(args.clients)] + [threading.Thread(target=poll)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"polls": len(polls), "poll_median_ms": statistics.median(polls) * 1000,
            "poll_p99_ms": percentile(polls, 0.99) * 1000, "generations_answered": answered, "refused_429": refused}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20, help="per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="clients generating")
    parser.add_argument("--poll-ms", type=float, default=100)
    parser.add_argument("--length", type=int, default=100, help="characters per /generate")
    add_corpus_argument(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), test_defaults=False, device="cpu",
                      max_concurrent_generations_per_owner=max(8, args.clients))
        svc.start_api()
        svc.start_worker()
        try:
            with svc.client() as client:
                corpus = svc.upload(client, args.corpus.read_text()[:200_000], name=args.corpus.stem)
                generator = svc.create_job(client, corpus["id"], model=GENERATOR, training=GENERATOR_TRAINING)
                generator = svc.wait_job(client, generator["id"], timeout=600, poll=1)
                assert generator["status"] == "succeeded", generator
                client.post("/generate", json={"model": generator["id"], "length": 10}).raise_for_status()
                budget = args.rounds * args.seconds + 120  # outlasts every window, with room to start
                training = svc.create_job(client, corpus["id"], model=TRAINING_JOB, training={
                    "max_seconds": budget, "log_every": 1, "eval_every": 10**6, "checkpoint_every": 10**6})
                svc.wait_job(client, training["id"], statuses=("running",), timeout=300, poll=0.5)
                time.sleep(5)  # past the start: the sizing probe and the first reports
                rounds = []
                for _ in range(args.rounds):
                    rounds.append(window(svc, generator["id"], training["id"], args))
                    print(json.dumps(rounds[-1]), flush=True)
                still = client.get(f"/jobs/{training['id']}").json()
                client.post(f"/jobs/{training['id']}/cancel")
        finally:
            svc.stop()

    result = {
        "rounds": rounds,
        "poll_median_ms": statistics.median(r["poll_median_ms"] for r in rounds),
        "poll_p99_ms": statistics.median(r["poll_p99_ms"] for r in rounds),
        "generations_answered_median": statistics.median(r["generations_answered"] for r in rounds),
        "training_still_running": still["status"] == "running",
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(f"\nGET /jobs/{{id}} every {args.poll_ms:g} ms while a job trains at log_every 1 and {args.clients} clients "
          f"generate {args.length} characters, {args.seconds:g} s x {args.rounds} (medians of the rounds):")
    print(f"  poll latency median {result['poll_median_ms']:.1f} ms, p99 {result['poll_p99_ms']:.1f} ms; "
          f"generations answered per window {result['generations_answered_median']:.0f}")
    print(f"  the job was still training at the end: {result['training_still_running']}; load average before "
          f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    write_results("read_latency", result)


if __name__ == "__main__":
    main()
