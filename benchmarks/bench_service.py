"""The service's own cost, side by side with the engine in one run.

1. Training: the same config trained by `charrnn train` and by a job through the service (API +
   worker + training child), alternating; characters per second of each.
2. Generation: the worker's samplers called in-process against POST /generate (API -> worker ->
   back) on the same checkpoint and request, with a few concurrent clients, in alternating rounds;
   the overhead is the difference of the medians.

Everything alternates because this shared machine's speed drifts by 20% and more within minutes.

    .venv/bin/python benchmarks/bench_service.py [--steps 300] [--requests 200] [--clients 4] [--rounds 5]
        [--training-rounds 3] [--corpus PATH]

Writes benchmarks/out/service.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _support import ROOT, Service, add_corpus_argument, write_results

MODEL = {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "embedding_dim": 64}
TRAINING = {"seq_len": 64, "batch_size": 32, "eval_every": 10**6, "checkpoint_every": 10**6,
            "seed": 1}
# The job's logging and end-of-run sample, as the published figures were measured.
SERVICE_TRAINING = {"log_every": 10, "sample_length": 40}
# A seeded request is sampled alone (its text never changes); unseeded ones share batched steps.
# One character is nearly all service: its overhead is measured with little of the machine's noise.
REQUESTS = {
    "200 chars, seeded": {"prompt": "ROMEO:", "length": 200, "temperature": 0.8, "seed": 3},
    "200 chars, unseeded": {"prompt": "ROMEO:", "length": 200, "temperature": 0.8},
    "1 char, seeded": {"prompt": "ROMEO:", "length": 1, "temperature": 0.8, "seed": 3},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def engine_training(corpus: Path, steps: int, out: Path) -> float:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**MODEL, **TRAINING, "max_steps": steps}.items()]
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "train", str(corpus), "--out", str(out), *flags],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])["chars_per_second"]


def in_process_generate(checkpoint: Path):
    """The worker's samplers called directly, set up as its generation server sets itself up."""
    from app.settings import Settings
    from worker.engine.checkpoint import load_model
    from worker.engine.sampler import SampleRequest
    from worker.service.server import ServedModel, configure_generation_process

    configure_generation_process(Settings())
    served = ServedModel(load_model(checkpoint))

    def generate(request: dict):
        sample_request = SampleRequest(**request)
        return served.runner_for(sample_request).generate(sample_request)

    return generate


def latencies(call, n: int, clients: int) -> list[float]:
    """n calls from `clients` threads at once; seconds each."""

    def one(_):
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def compare_generation(client, job_id: str, local_generate, request: dict, args) -> dict:
    """POST /generate against the in-process call, in alternating rounds, so that a slow spell of this
    shared machine hits both."""
    body = {"model": job_id, **request}
    client.post("/generate", json=body).raise_for_status()  # the worker loads the model once
    api, local, round_overheads = [], [], []
    for _ in range(args.rounds):
        n = args.requests // args.rounds
        api_round = latencies(lambda: client.post("/generate", json=body).raise_for_status(), n, args.clients)
        local_round = latencies(lambda: local_generate(request), n, args.clients)
        api += api_round
        local += local_round
        round_overheads.append(statistics.median(api_round) - statistics.median(local_round))
    return {
        "clients": args.clients,
        "in_process_median": statistics.median(local) * 1000,
        "in_process_p99": percentile(local, 0.99) * 1000,
        "api_median": statistics.median(api) * 1000,
        "api_p99": percentile(api, 0.99) * 1000,
        "overhead_median": (statistics.median(api) - statistics.median(local)) * 1000,
        "overhead_median_by_round": [round(o * 1000, 1) for o in round_overheads],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="generation rounds")
    parser.add_argument("--training-rounds", type=int, default=3)
    add_corpus_argument(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # The service's thread defaults: training takes all cores, generation a quarter.
        (Path(tmp) / "svc").mkdir()
        svc = Service(Path(tmp) / "svc", test_defaults=False, device="cpu", job_lease_seconds=3,
                      max_concurrent_generations_per_owner=max(8, args.clients))  # one owner sends all
        svc.start_api()
        svc.start_worker()
        try:
            with svc.client() as client:
                corpus = svc.upload(client, args.corpus.read_text(), name=args.corpus.stem)
                # Alternating, with the service up (and idle) during the engine's runs too.
                engine_cps, service_cps = [], []
                for i in range(args.training_rounds):
                    engine_cps.append(engine_training(args.corpus, args.steps, Path(tmp) / f"engine-{i}"))
                    job = svc.create_job(client, corpus["id"], model=MODEL,
                                         training={**TRAINING, **SERVICE_TRAINING, "max_steps": args.steps})
                    job = svc.wait_job(client, job["id"], timeout=1800, poll=3)  # light polling: 2 cores
                    service_cps.append(job["progress"]["chars_per_second"])
                checkpoint = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"][0]
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(client.get(f"/checkpoints/{checkpoint['id']}/download").content)
                local_generate = in_process_generate(path)
                generation = {kind: compare_generation(client, job["id"], local_generate, request, args)
                              for kind, request in REQUESTS.items()}
        finally:
            svc.stop()

    result = {
        "training_chars_per_second": {
            "charrnn train median": statistics.median(engine_cps),
            "service median": statistics.median(service_cps),
            "ratio of medians": statistics.median(service_cps) / statistics.median(engine_cps),
            "ratio by round": [round(s / e, 3) for e, s in zip(engine_cps, service_cps, strict=True)],
        },
        "generate_ms": generation,
    }
    print(json.dumps(result, indent=2))
    write_results("service", result)


if __name__ == "__main__":
    main()
