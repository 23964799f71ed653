"""Fairness between owners: one key floods /generate, another key's /generate latency is measured alone
and during the flood, in alternating rounds (this shared machine's speed drifts, so each round compares
like with like). The per-owner limit (CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER) is what keeps the flood
from queueing ahead of everyone else: past it the flooder gets 429s, and the other key's calls reach the
worker behind at most that many of the flooder's. Target: the ratio of medians <= 2.

    .venv/bin/python benchmarks/bench_fairness.py [--flood 500] [--flood-clients 50] [--rounds 3]
        [--probes 20] [--limit 8] [--corpus PATH]

Writes benchmarks/out/fairness.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _support import KEY, Service, add_corpus_argument, client_for, write_results

MODEL = {"cell": "lstm", "hidden_size": 128, "num_layers": 1, "embedding_dim": 32}
TRAINING = {"seq_len": 32, "batch_size": 16, "max_steps": 60, "eval_every": 30, "checkpoint_every": 30, "seed": 1}
REQUEST = {"prompt": "ROMEO:", "length": 200, "temperature": 0.8}


def new_key(svc: Service, owner: str) -> str:
    made = svc.cli("keys", "create", owner)
    made.check_returncode()
    return made.stdout.strip().splitlines()[-1]


def client(svc: Service, key: str) -> httpx.Client:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return client_for(svc.url, key, timeout=120, limits=limits)


def train(svc: Service, key: str, text: str) -> str:
    with client(svc, key) as c:
        corpus = svc.upload(c, text, name="fairness")
        job = svc.create_job(c, corpus["id"], model=MODEL, training=TRAINING)
        job = svc.wait_job(c, job["id"], timeout=600, poll=1)
        assert job["status"] == "succeeded", job
        c.post("/generate", json={"model": job["id"], **REQUEST}).raise_for_status()  # loaded on the worker
        return job["id"]


def probe(c: httpx.Client, job_id: str) -> float:
    start = time.perf_counter()
    c.post("/generate", json={"model": job_id, **REQUEST}).raise_for_status()
    return time.perf_counter() - start


def flood(url: str, job_id: str, n: int, clients: int, route: str, results) -> None:
    """`n` calls of the flooding key, `clients` at a time; puts (status counts, seconds). `route` "healthz" is
    the control: the same volume of calls that do no generation and pass no per-owner limit, which
    measures what the flood costs the victim through the shared CPU alone."""
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120, limits=limits) as c:

        def one(_):
            if route == "healthz":
                statuses[c.get("/healthz").status_code] += 1
            else:
                statuses[c.post("/generate", json={"model": job_id, **REQUEST}).status_code] += 1

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(n)))
    results.put((dict(statuses), time.perf_counter() - start))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=500, help="requests the flooding key sends each round")
    parser.add_argument("--flood-clients", type=int, default=50, help="of them at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=20, help="the other key's requests measured alone, per round")
    parser.add_argument("--limit", type=int, default=8, help="CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER")
    parser.add_argument("--flood-route", choices=("generate", "healthz"), default="generate",
                        help="healthz: the control, a flood that generates nothing and meets no per-owner limit")
    add_corpus_argument(parser)
    args = parser.parse_args()
    text = args.corpus.read_bytes()[:200_000].decode("utf-8", "ignore")

    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), test_defaults=False, device="cpu", job_lease_seconds=5,
                      max_concurrent_generations_per_owner=args.limit)
        svc.start_api()
        svc.start_worker()
        try:
            victim_key = new_key(svc, "victim")
            flood_job, victim_job = train(svc, KEY, text), train(svc, victim_key, text)
            alone, during, statuses, flood_seconds = [], [], Counter(), []
            with client(svc, victim_key) as victim:
                for _ in range(args.rounds):
                    alone += [probe(victim, victim_job) for _ in range(args.probes)]
                    # The flood runs in its own process, as another client would: in this one its 50 threads
                    # would hold the GIL the probe's client needs, and the probe would measure that instead.
                    results = multiprocessing.Queue()
                    flood_args = (svc.url, flood_job, args.flood, args.flood_clients, args.flood_route, results)
                    flooding = multiprocessing.Process(target=flood, args=flood_args)
                    flooding.start()
                    time.sleep(0.3)  # the flood is under way
                    while flooding.is_alive() and results.empty():
                        during.append(probe(victim, victim_job))
                    round_statuses, seconds = results.get(timeout=600)
                    flooding.join()
                    statuses.update(round_statuses)
                    flood_seconds.append(seconds)
        finally:
            svc.stop()
    if not during:
        raise SystemExit(f"every flood of {args.flood} requests ended before a probe could run beside it: "
                         "raise --flood")

    result = {
        "flood_route": args.flood_route,
        "flood_requests_per_round": args.flood,
        "flood_clients": args.flood_clients,
        "per_owner_limit": args.limit,
        "rounds": args.rounds,
        "flood_statuses": dict(statuses),
        "flood_seconds_by_round": [round(s, 2) for s in flood_seconds],
        "victim_ms_alone": {"n": len(alone), "median": statistics.median(alone) * 1000,
                            "p90": percentile(alone, 0.9) * 1000},
        "victim_ms_during_flood": {"n": len(during), "median": statistics.median(during) * 1000,
                                   "p90": percentile(during, 0.9) * 1000},
        "ratio_of_medians": statistics.median(during) / statistics.median(alone),
        "target": "ratio_of_medians <= 2",
    }
    print(json.dumps(result, indent=2))
    write_results(f"fairness-{args.flood_route}", result)


if __name__ == "__main__":
    main()
