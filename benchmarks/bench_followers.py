"""Followers at scale: what 100 clients following a running job's events cost everyone else.

With a job training, 8 clients generating back to back and one client polling GET /jobs/{id} every 100 ms,
each round measures the poll's latency (median, p99) and the generations answered, alternately with no
followers and with `--followers` clients following the running job's event stream (joined before the
round's clock starts, so their backlog reads are not counted). The same load otherwise, the same process,
alternating rounds (this shared machine's speed drifts), medians over the rounds. Targets: with followers,
the poll's median and p99 within 1.5x of without, and the generations answered at least 80% of without.
Each follower's events are checked too: strictly increasing ids, none twice.

    .venv/bin/python benchmarks/bench_followers.py [--seconds 20] [--rounds 3] [--followers 100]
        [--generators 8] [--corpus PATH]

Prints one JSON line (the figures, `ratios`, and `passed`: whether the targets held; exit status 1 if not)
and writes benchmarks/out/followers.json. tests/service/test_followers.py runs it short, with looser bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from _support import KEY, Service, add_corpus_argument, client_for, write_results

# A model to generate from, trained first; then a job that trains through every round.
MODEL = {"cell": "lstm", "hidden_size": 128, "num_layers": 1, "embedding_dim": 32}
TRAINING = {"seq_len": 32, "batch_size": 16, "max_steps": 60, "eval_every": 30, "checkpoint_every": 30, "seed": 1}
RUNNING = {"seq_len": 32, "batch_size": 16, "max_steps": None, "log_every": 10, "eval_every": 200,
           "checkpoint_every": 200, "seed": 2}
REQUEST = {"prompt": "ROMEO:", "length": 100, "temperature": 0.8}
POLL_EVERY = 0.1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Followers:
    """`n` clients following a job's event stream from one thread of their own (asyncio), until stopped."""

    def __init__(self, url: str, job_id: str, n: int):
        self.url, self.job_id, self.n = url, job_id, n
        self.joined = 0
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.errors: Counter[str] = Counter()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Followers:
        self.thread.start()
        if not self.ready.wait(120):
            raise RuntimeError(f"only {self.joined} of {self.n} followers joined")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    async def _main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        limits = httpx.Limits(max_connections=self.n + 5)
        headers = {"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=None, limits=limits) as client:
            tasks = [asyncio.create_task(self._one(client, i)) for i in range(self.n)]
            await self.stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, i: int) -> None:
        try:
            async with client.stream("GET", f"/jobs/{self.job_id}/events") as response:
                response.raise_for_status()
                first = True
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        self.ids[i].append(int(line[3:]))
                        if first:  # its backlog has begun to arrive: joined
                            first = False
                            self.joined += 1
                            if self.joined == self.n:
                                self.ready.set()
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1

    def check(self) -> dict:
        """Each follower's ids strictly increase (no duplicate, no reordering)."""
        bad = sum(any(b <= a for a, b in zip(ids, ids[1:], strict=False)) for ids in self.ids)
        return {"events_per_follower": statistics.median(len(ids) for ids in self.ids), "out_of_order": bad,
                "errors": dict(self.errors)}


def one_round(svc: Service, running: str, model: str, seconds: float, generators: int) -> dict:
    stop = threading.Event()
    answered: Counter[int] = Counter()
    latencies: list[float] = []

    def generate() -> None:
        with client_for(svc.url, KEY, timeout=120) as c:
            while not stop.is_set():
                status = c.post("/generate", json={"model": model, **REQUEST}).status_code
                if not stop.is_set():
                    answered[status] += 1

    def poll() -> None:
        with client_for(svc.url, KEY, timeout=120) as c:
            while not stop.is_set():
                start = time.perf_counter()
                c.get(f"/jobs/{running}").raise_for_status()
                latencies.append(time.perf_counter() - start)
                time.sleep(max(0.0, POLL_EVERY - (time.perf_counter() - start)))

    threads = [threading.Thread(target=generate) for _ in range(generators)] + [threading.Thread(target=poll)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return {"poll_median_ms": 1000 * statistics.median(latencies), "poll_p99_ms": 1000 * percentile(latencies, 0.99),
            "generations": answered[200], "statuses": dict(answered), "polls": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating")
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--generators", type=int, default=8, help="clients generating back to back")
    parser.add_argument("--no-bars", action="store_true",
                        help="judge only that every follower got every event in order, not the ratios (a smoke run)")
    parser.add_argument("--test-defaults", action="store_true", help="the tests' service settings (one thread each)")
    add_corpus_argument(parser)
    args = parser.parse_args()
    text = args.corpus.read_text(encoding="utf-8")[:200_000]

    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(Path(tmp), test_defaults=args.test_defaults)
        svc.start_api()
        svc.start_worker()
        try:
            with client_for(svc.url, KEY, timeout=120) as c:
                corpus = svc.upload(c, text, name="followers")
                model = svc.wait_job(c, svc.create_job(c, corpus["id"], model=MODEL, training=TRAINING)["id"],
                                     timeout=600, poll=1)
                assert model["status"] == "succeeded", model
                c.post("/generate", json={"model": model["id"], **REQUEST}).raise_for_status()  # loaded
                budget = 2 * args.rounds * (args.seconds + 60) + 120
                running = svc.create_job(c, corpus["id"], model=MODEL, training={**RUNNING, "max_seconds": budget})
                svc.wait_job(c, running["id"], statuses=("running",), timeout=120)
            rounds: dict[str, list[dict]] = {"none": [], "followers": []}
            checks = []
            for _ in range(args.rounds):
                rounds["none"].append(one_round(svc, running["id"], model["id"], args.seconds, args.generators))
                with Followers(svc.url, running["id"], args.followers) as followers:
                    rounds["followers"].append(
                        one_round(svc, running["id"], model["id"], args.seconds, args.generators))
                checks.append(followers.check())
                print(json.dumps({"round": len(checks), "none": rounds["none"][-1],
                                  "followers": rounds["followers"][-1], "check": checks[-1]}), flush=True)
            with client_for(svc.url, KEY) as c:
                c.post(f"/jobs/{running['id']}/cancel")
        finally:
            svc.stop()

    medians = {kind: {k: statistics.median(r[k] for r in rs) for k in ("poll_median_ms", "poll_p99_ms", "generations")}
               for kind, rs in rounds.items()}
    none, fol = medians["none"], medians["followers"]
    ratios = {
        "poll_median": fol["poll_median_ms"] / none["poll_median_ms"],
        "poll_p99": fol["poll_p99_ms"] / none["poll_p99_ms"],
        "generations": fol["generations"] / max(1, none["generations"]),
    }
    in_order = all(c["out_of_order"] == 0 and not c["errors"] for c in checks)
    passed = ratios["poll_median"] <= 1.5 and ratios["poll_p99"] <= 1.5 and ratios["generations"] >= 0.8 and in_order
    report = {"seconds": args.seconds, "rounds": args.rounds, "followers": args.followers,
              "generators": args.generators, "medians": medians, "ratios": ratios, "checks": checks,
              "in_order": in_order, "passed": passed, "rounds_raw": rounds}
    write_results("followers", report)
    print(json.dumps(report))
    raise SystemExit(0 if passed or (args.no_bars and in_order) else 1)


if __name__ == "__main__":
    main()
