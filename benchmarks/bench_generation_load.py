"""Generation under concurrency, through HTTP against the sampler with no HTTP, alternating, in one run.

The service (API and worker as real processes) trains a 2x256 LSTM briefly, then serves unseeded
400-character POST /generate requests. Each round measures, one after the other:
  one      one HTTP client sending requests one after another
  many     `--clients` HTTP clients at once
  sampler  `--clients` threads calling the worker's batched sampler directly (the same checkpoint,
           the same thread settings as the worker: Settings.generation_thread_count), no HTTP at all
The load generator and the direct sampler each run in a process of their own (not the benchmark's),
so neither shares an interpreter with the service or with the other. Reported: characters per second
(all clients together), each request's latency (median, p99), the ratios many/sampler (the bar:
at least 0.8, the goal 0.9) and many/one, and the service's own cost on a 1-character request with one
client (POST /generate against the worker's sampler called in-process, alternating in chunks within the
round, sent with the standard library's http.client so that the client's own work counts as little as it
can; the bar: at most 5 ms, the goal 3 ms). The summary takes the medians of the rounds and prints the
machine's load average before and after (the figures mean something only on a quiet machine).

The owner's limit is set to the number of clients: a 429 there is a bug (the slot of an answered request
still counted), counted and reported, and the run goes on.

With --profile DIR, py-spy records the API and the worker during the first round's `many`
(DIR/api.txt, DIR/worker.txt: collapsed stacks of the thread holding the GIL, i.e. the Python work).

    .venv/bin/python benchmarks/bench_generation_load.py [--clients 32] [--length 400] [--seconds 10]
        [--rounds 3] [--overhead-requests 100] [--train-steps 100] [--corpus PATH] [--profile DIR]

A quick run that only proves the script runs to its end: --seconds 2 --rounds 1 --overhead-requests 20
--train-steps 5.

Writes benchmarks/out/generation_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from _support import KEY, Service, add_corpus_argument, write_results
from bench_service import in_process_generate, latencies, percentile

MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embedding_dim": 64}
TRAINING = {"seq_len": 64, "batch_size": 32, "max_steps": 100, "eval_every": 10**6, "seed": 1}


async def load(url: str, model: str, clients: int, length: int, seconds: float) -> dict:
    """`clients` clients, each sending the next request as soon as its last one is answered, for `seconds`.
    They share one aiohttp session (the API's own client to workers): on these 2 cores the load generator
    competes with the service for CPU, and httpx's client spent about 1.5 ms of CPU per request where
    aiohttp spends 0.5."""
    body = {"model": model, "prompt": "ROMEO:", "length": length, "temperature": 0.8}
    took: list[float] = []
    chars = refused = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {KEY}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal chars, refused
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with client.post("/generate", json=body) as response:
                    if response.status == 429:
                        refused += 1
                        continue
                    response.raise_for_status()
                    answer = await response.json()
                took.append(time.perf_counter() - start)
                chars += sum(len(s["text"]) for s in answer["samples"])

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"clients": clients, "requests": len(took), "refused_429": refused, "chars_per_second": chars / wall,
            "latency_median_ms": statistics.median(took) * 1000, "latency_p99_ms": percentile(took, 0.99) * 1000,
            "load_generator_cpu_ms_per_request": cpu / max(1, len(took) + refused) * 1000}


def http_rate(url: str, model: str, clients: int, length: int, seconds: float) -> dict:
    """`load`, run in the load generator's own process."""
    return asyncio.run(load(url, model, clients, length, seconds))


class PlainClient:
    """POSTs over one kept-alive connection with the standard library's http.client, for the 1-character
    overhead: it should be the service's cost, and httpx's own work is about 1 ms of CPU per request here."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict) -> bytes:
        try:
            response = self._send(path, body)
        except (ConnectionError, http.client.RemoteDisconnected):  # the server closed the idle connection
            self.connection.close()
            response = self._send(path, body)
        content = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {content[:200]!r}")
        return content

    def _send(self, path: str, body: dict) -> http.client.HTTPResponse:
        self.connection.request("POST", path, json.dumps(body), self.headers)
        return self.connection.getresponse()


def sampler_rate(checkpoint: str, clients: int, length: int, seconds: float) -> dict:
    """`clients` threads calling the worker's batched sampler directly for `seconds`, set up as the
    worker sets up its generation (threads, switch interval): the rate HTTP is measured against."""
    from app.settings import Settings
    from worker.engine.batching import BatchedSampler
    from worker.engine.checkpoint import load_model
    from worker.engine.sampler import Sampler, SampleRequest
    from worker.service.server import configure_generation_process

    configure_generation_process(Settings())
    loaded = load_model(checkpoint)
    batched = BatchedSampler(Sampler(loaded.model, loaded.vocab))
    request = SampleRequest(prompt="ROMEO:", length=length, temperature=0.8)
    batched.generate(request.model_copy(update={"length": 10}))
    took: list[float] = []
    chars = 0
    deadline = time.perf_counter() + seconds

    def one_client() -> None:
        nonlocal chars
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            samples = batched.generate(request)
            took.append(time.perf_counter() - start)
            chars += sum(len(s.text) for s in samples)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    batched.close()
    return {"clients": clients, "requests": len(took), "chars_per_second": chars / wall,
            "latency_median_ms": statistics.median(took) * 1000, "latency_p99_ms": percentile(took, 0.99) * 1000}


def start_profiles(svc: Service, seconds: float, out: Path) -> list[subprocess.Popen]:
    """py-spy on the API and the worker for `seconds` (collapsed stacks of whichever thread holds the GIL)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([py_spy, "record", "--pid", str(proc.pid), "--duration", str(int(seconds)),
                              "--rate", "200", "--gil", "--format", "raw", "--output", str(out / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, proc in (("api", svc.api_proc), ("worker", svc.workers[0]))]


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def latency(measured: dict) -> str:
    return f"{measured['latency_median_ms']:.0f} / {measured['latency_p99_ms']:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--length", type=int, default=400, help="characters per request")
    parser.add_argument("--seconds", type=float, default=10, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overhead-requests", type=int, default=100, help="1-character requests per side")
    parser.add_argument("--train-steps", type=int, default=TRAINING["max_steps"],
                        help="steps of the model served (fewer: a quick run that proves the script, not figures)")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles of the API and worker here")
    add_corpus_argument(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()

    # The load generator and the direct sampler run in a process of their own, not this one.
    others = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with tempfile.TemporaryDirectory() as tmp:
        # One key sends everything, so its concurrent-generation limit must admit every client.
        svc = Service(Path(tmp), test_defaults=False, device="cpu",
                      max_concurrent_generations_per_owner=max(8, args.clients))
        svc.start_api()
        svc.start_worker()
        try:
            with svc.client() as client:
                corpus = svc.upload(client, args.corpus.read_text()[:200_000], name=args.corpus.stem)
                job = svc.create_job(client, corpus["id"], model=MODEL,
                                     training={**TRAINING, "max_steps": args.train_steps})
                job = svc.wait_job(client, job["id"], timeout=600, poll=1)
                client.post("/generate", json={"model": job["id"], "length": 10}).raise_for_status()
                checkpoint = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"][0]
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(client.get(f"/checkpoints/{checkpoint['id']}/download").content)
                # The service's own cost: a 1-character seeded request through HTTP against in-process.
                local = in_process_generate(path)
                request = {"prompt": "ROMEO:", "length": 1, "temperature": 0.8, "seed": 3}
                plain = PlainClient(svc.url)
                rounds = []
                for i in range(args.rounds):
                    one = others.submit(http_rate, svc.url, job["id"], 1, args.length, args.seconds).result()
                    profiles = start_profiles(svc, args.seconds, args.profile) if args.profile and i == 0 else []
                    many = others.submit(http_rate, svc.url, job["id"], args.clients, args.length,
                                         args.seconds).result()
                    for profile in profiles:
                        profile.wait()
                    direct = others.submit(sampler_rate, str(path), args.clients, args.length, args.seconds).result()
                    api_ms, local_ms = [], []
                    for _ in range(4):  # alternating in chunks, so that a slow spell of the machine hits both
                        n = max(1, args.overhead_requests // 4)
                        api_ms += latencies(lambda: plain.post("/generate", {"model": job["id"], **request}), n, 1)
                        local_ms += latencies(lambda: local(request), n, 1)
                    rounds.append({"one": one, "many": many, "sampler": direct,
                                   "of_sampler": many["chars_per_second"] / direct["chars_per_second"],
                                   "ratio": many["chars_per_second"] / one["chars_per_second"],
                                   "one_char_overhead_ms": (statistics.median(api_ms) - statistics.median(local_ms))
                                   * 1000,
                                   "one_char_api_ms": statistics.median(api_ms) * 1000,
                                   "one_char_in_process_ms": statistics.median(local_ms) * 1000})
                    print(json.dumps(rounds[-1]), flush=True)
        finally:
            svc.stop()
            others.shutdown()

    load_after = os.getloadavg()
    overhead = statistics.median(r["one_char_overhead_ms"] for r in rounds)
    efficiency = statistics.median(r["of_sampler"] for r in rounds)
    refused = sum(r["one"]["refused_429"] + r["many"]["refused_429"] for r in rounds)
    result = {"rounds": rounds, "ratio_median": statistics.median(r["ratio"] for r in rounds),
              "of_sampler_median": efficiency, "one_char_overhead_median_ms": overhead, "refused_429": refused,
              "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count()}
    print(f"\n{args.length}-character unseeded requests, 2x256 LSTM, {args.seconds:g} s per measurement, "
          f"{args.rounds} rounds\n")
    n = args.clients
    print(f"| round | HTTP, 1 client: chars/s (latency median / p99) | HTTP, {n} clients | sampler, {n} threads | "
          f"HTTP / sampler | {n} / 1 | 1-char overhead |\n|---|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, 1):
        cells = [f"{m['chars_per_second']:,.0f} ({latency(m)})" for m in (r["one"], r["many"], r["sampler"])]
        print(f"| {i} | {' | '.join(cells)} | {r['of_sampler']:.0%} | {r['ratio']:.2f}x | "
              f"{r['one_char_overhead_ms']:.1f} ms |")
    print(f"\nmedians of {args.rounds} rounds:")
    print(f"  1-character /generate overhead against the in-process sampler: {overhead:.1f} ms "
          f"(bar 5 ms, goal 3 ms: {'met' if overhead <= 5 else 'NOT met'})")
    print(f"  {n} HTTP clients against the in-process batched sampler: {efficiency:.0%} "
          f"(bar 80%, goal 90%: {'met' if efficiency >= 0.8 else 'NOT met'}); {n} / 1: {result['ratio_median']:.2f}x")
    print(f"  429s at a limit of {n}: {refused}")
    print(f"  load average (1, 5, 15 min) before {fmt_load(load_before)}, after {fmt_load(load_after)}, "
          f"on {os.cpu_count()} CPUs")
    write_results("generation_load", result)


if __name__ == "__main__":
    main()
