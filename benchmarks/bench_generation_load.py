"""Generation under concurrency, through HTTP: one client against many, alternating, in one run.

The service (API and worker as real processes) trains a 2x256 LSTM briefly, then serves unseeded
400-character POST /generate requests: one client sending them one after another, then `--clients`
clients at once, in alternating rounds. Reported: characters per second (all clients together), the
ratio many/one, each request's latency (median, p99), and the service's own cost on a 1-character
request with one client (POST /generate against the worker's sampler called in-process).

    .venv/bin/python benchmarks/bench_generation_load.py [--clients 32] [--length 400] [--seconds 10]
        [--rounds 3] [--corpus PATH]

Writes benchmarks/out/generation_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _support import KEY, Service, add_corpus_argument
from bench_service import in_process_generate, latencies, percentile

MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embedding_dim": 64}
TRAINING = {"seq_len": 64, "batch_size": 32, "max_steps": 100, "eval_every": 10**6, "seed": 1}


async def load(url: str, model: str, clients: int, length: int, seconds: float) -> dict:
    """`clients` clients, each sending the next request as soon as its last one is answered, for `seconds`."""
    body = {"model": model, "prompt": "ROMEO:", "length": length, "temperature": 0.8}
    took: list[float] = []
    chars = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                 limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal chars
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post("/generate", json=body)
                response.raise_for_status()
                took.append(time.perf_counter() - start)
                chars += sum(len(s["text"]) for s in response.json()["samples"])

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(took), "chars_per_second": chars / wall,
            "latency_median_ms": statistics.median(took) * 1000, "latency_p99_ms": percentile(took, 0.99) * 1000}


def latency(measured: dict) -> str:
    return f"{measured['latency_median_ms']:.0f} / {measured['latency_p99_ms']:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--length", type=int, default=400, help="characters per request")
    parser.add_argument("--seconds", type=float, default=10, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overhead-requests", type=int, default=100, help="1-character requests per side")
    add_corpus_argument(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # One key sends everything, so its concurrent-generation limit must admit every client.
        svc = Service(Path(tmp), test_defaults=False, device="cpu",
                      max_concurrent_generations_per_owner=max(8, args.clients))
        svc.start_api()
        svc.start_worker()
        try:
            with svc.client() as client:
                corpus = svc.upload(client, args.corpus.read_text()[:200_000], name=args.corpus.stem)
                job = svc.create_job(client, corpus["id"], model=MODEL, training=TRAINING)
                job = svc.wait_job(client, job["id"], timeout=600, poll=1)
                client.post("/generate", json={"model": job["id"], "length": 10}).raise_for_status()
                rounds = []
                for _ in range(args.rounds):
                    one = asyncio.run(load(svc.url, job["id"], 1, args.length, args.seconds))
                    many = asyncio.run(load(svc.url, job["id"], args.clients, args.length, args.seconds))
                    rounds.append({"one": one, "many": many,
                                   "ratio": many["chars_per_second"] / one["chars_per_second"]})
                    print(json.dumps(rounds[-1]), flush=True)

                # The service's own cost: a 1-character seeded request through HTTP against in-process.
                checkpoint = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"][0]
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(client.get(f"/checkpoints/{checkpoint['id']}/download").content)
                local = in_process_generate(path)
                request = {"prompt": "ROMEO:", "length": 1, "temperature": 0.8, "seed": 3}
                api_ms, local_ms = [], []
                for _ in range(4):
                    n = args.overhead_requests // 4
                    api_ms += latencies(lambda: client.post("/generate", json={"model": job["id"], **request}), n, 1)
                    local_ms += latencies(lambda: local(request), n, 1)
        finally:
            svc.stop()

    overhead = (statistics.median(api_ms) - statistics.median(local_ms)) * 1000
    result = {"rounds": rounds, "ratio_median": statistics.median(r["ratio"] for r in rounds),
              "one_char_overhead_median_ms": overhead}
    print(f"\n{args.length}-character unseeded requests, 2x256 LSTM, {args.seconds:g} s per measurement\n")
    print("| round | 1 client chars/s | latency median / p99 | "
          f"{args.clients} clients chars/s | latency median / p99 | ratio |\n|---|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rounds, 1):
        one, many = r["one"], r["many"]
        print(f"| {i} | {one['chars_per_second']:,.0f} | {latency(one)} | {many['chars_per_second']:,.0f} | "
              f"{latency(many)} | {r['ratio']:.2f}x |")
    print(f"\nmedian ratio {result['ratio_median']:.2f}x; "
          f"service cost on a 1-character request: {overhead:.1f} ms median")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "generation_load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
