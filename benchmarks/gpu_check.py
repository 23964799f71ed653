"""Does charrnn's GPU path work? One script, under 5 minutes on one GPU, one JSON line on stdout, and a
non-zero exit status if any check failed.

    .venv/bin/python benchmarks/gpu_check.py                  # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick ...   # CI: tests/engine/test_gpu_check.py

The checks, each a key of the JSON line (a failed check adds its reason to "failures"):
  environment  torch and CUDA versions, the GPU, cuDNN's version and whether the LSTM ran on it, bf16
               support, and the determinism settings the resumption check runs under
  train        the engine with its defaults for --train-seconds on the corpus: the size the probe
               chose, the precision, chars/s, the held-out loss
  cpu_load     the trained checkpoint loads on the CPU, and greedy text there agrees with greedy text
               on the device for 200 characters
  resume       stop at step N, resume, finish: the same weights and losses as an unbroken run (on
               CUDA with cuDNN's deterministic mode and CUBLAS_WORKSPACE_CONFIG, which it sets; the
               default mode's differences are reported beside it)
  generation   the batched sampler on the device: 1 stream against --streams concurrent streams,
               chars/s; and seeded texts alone against the same seeds batched (must be identical)
  serve        `charrnn serve` with CHARRNN_DEVICE set: a job trained and a text generated through HTTP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import httpx  # noqa: E402
import torch  # noqa: E402
from _support import KEY, ROOT, SAMPLE_CORPUS, free_port  # noqa: E402

from worker.engine.batching import BatchedSampler  # noqa: E402
from worker.engine.checkpoint import load_model  # noqa: E402
from worker.engine.config import TrainConfig  # noqa: E402
from worker.engine.data import read_text  # noqa: E402
from worker.engine.sampler import Sampler, SampleRequest  # noqa: E402
from worker.engine.trainer import Trainer, TrainingObserver  # noqa: E402

GREEDY_CHARS = 200
# Small enough for a few seconds of steps on a CPU, big enough to use cuDNN's fused LSTM on a GPU.
RESUME_MODEL = {"cell": "lstm", "hidden_size": 64, "num_layers": 2, "embedding_dim": 32, "dropout": 0.0}


class StopAt(TrainingObserver):
    """Interrupts a run at a step, as a cancel or a shutdown would."""

    def __init__(self, step: int):
        self.stop_step, self.step = step, 0

    def on_metrics(self, metrics) -> None:
        self.step = metrics.step

    def should_stop(self) -> str | None:
        return "interrupted" if self.step >= self.stop_step else None


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["cudnn_rnn_used"] = lstm_runs_on_cudnn(device)
    else:
        info["bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    info["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return info


def lstm_runs_on_cudnn(device: torch.device) -> bool:
    """Whether nn.LSTM's forward on `device` calls cuDNN's fused RNN (the op is named in the profile)."""
    lstm = torch.nn.LSTM(32, 64, num_layers=2, batch_first=True).to(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        lstm(torch.randn(4, 16, 32, device=device))
        torch.cuda.synchronize(device)
    return any("cudnn" in event.name for event in prof.events())


def train(text: str, run_dir: Path, device: torch.device, seconds: float, quick: bool) -> tuple[dict, str]:
    config = TrainConfig(max_seconds=seconds, device=str(device), eval_every=10**9, checkpoint_every=10**9)
    # --quick (CI): a small fixed model, so a few seconds of training on a CPU need no probe of sizes.
    model = dict(RESUME_MODEL) if quick else None
    result = Trainer(text, run_dir, model, config).train()
    chosen = json.loads((run_dir / "run.json").read_text())
    report = {
        "model": chosen["model"],
        "chosen": chosen.get("chosen", []),
        "precision": result.precision,
        "steps": result.steps,
        "chars_per_second": round(result.chars_per_second),
        "val_loss": result.val_loss,
    }
    return report, result.checkpoint


def check_training(report: dict, vocab_size: int, failures: list[str]) -> None:
    loss = report["val_loss"]
    if not report["steps"]:
        failures.append("train: no training step ran in the time given")
    elif loss is None or not math.isfinite(loss) or loss >= math.log(vocab_size):
        failures.append(f"train: held-out loss {loss} is no better than uniform ({math.log(vocab_size):.3f})")


def greedy(sampler: Sampler, chars: int) -> str:
    return sampler.generate(SampleRequest(prompt="ROMEO:", length=chars, temperature=0))[0].text


def cpu_load(checkpoint: str, device: torch.device, failures: list[str]) -> dict:
    on_device = load_model(checkpoint, device=device)
    on_cpu = load_model(checkpoint, device="cpu")
    a = greedy(Sampler(on_device.model, on_device.vocab), GREEDY_CHARS)
    b = greedy(Sampler(on_cpu.model, on_cpu.vocab), GREEDY_CHARS)
    agree = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    if agree < GREEDY_CHARS:
        failures.append(f"cpu_load: greedy text on the CPU departs from the device's at character {agree}")
    return {"greedy_chars_agreeing": agree, "of": GREEDY_CHARS}


def resumption(text: str, root: Path, device: torch.device, steps: int) -> dict:
    """An unbroken run of 2 x steps against one stopped at `steps` and resumed: how far apart they end."""
    from safetensors.torch import load_file

    config = TrainConfig(max_steps=2 * steps, device=str(device), eval_every=steps, checkpoint_every=steps,
                         log_every=1, seq_len=32, batch_size=16, seed=3)
    whole = Trainer(text, root / "whole", RESUME_MODEL, config).train()
    Trainer(text, root / "parts", RESUME_MODEL, config, observer=StopAt(steps + steps // 2)).train()
    resumed = Trainer(text, root / "parts", RESUME_MODEL, config).train()
    a, b = load_file(whole.last_checkpoint), load_file(resumed.last_checkpoint)
    return {
        "steps": whole.steps,
        "resumed_from_step": resumed.resumed_from_step,
        "same_weights": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        "max_weight_difference": max(float((a[k].float() - b[k].float()).abs().max()) for k in a),
        "train_loss_difference": abs(whole.train_loss - resumed.train_loss),
        "val_loss_difference": abs(whole.val_loss - resumed.val_loss),
    }


def check_resumption(text: str, root: Path, device: torch.device, steps: int, failures: list[str]) -> dict:
    report = {}
    if device.type == "cuda":  # cuDNN's default algorithms may differ run to run: measured, not required
        torch.backends.cudnn.deterministic = False
        report["default_mode"] = resumption(text, root / "default", device, steps)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    report["cudnn_deterministic"] = torch.backends.cudnn.deterministic
    exact = resumption(text, root / "exact", device, steps)
    report.update(exact)
    if not (exact["same_weights"] and exact["train_loss_difference"] == 0 and exact["val_loss_difference"] == 0):
        failures.append(f"resume: a resumed run differs from an unbroken one: {exact}")
    return report


def rate(batched: BatchedSampler, streams: int, chars: int) -> float:
    """Characters per second with `streams` concurrent unseeded requests, each on its own thread."""
    request = SampleRequest(prompt="ROMEO:", length=chars)
    threads = [threading.Thread(target=batched.generate, args=(request,)) for _ in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams * chars / (time.perf_counter() - start)


def generation(checkpoint: str, device: torch.device, streams: int, chars: int, failures: list[str]) -> dict:
    loaded = load_model(checkpoint, device=device)
    sampler = Sampler(loaded.model, loaded.vocab)
    batched, seeded = BatchedSampler(sampler), BatchedSampler(sampler, seeded=True)
    try:
        rate(batched, 1, 20)  # warm up
        one, many = rate(batched, 1, chars), rate(batched, streams, chars)
        requests = [SampleRequest(prompt="ROMEO:", length=chars, seed=seed, top_k=20) for seed in range(streams)]
        alone = [sampler.generate(r) for r in requests]
        together = [seeded.stream(r) for r in requests]  # all submitted before any is read
        together = [[("".join(parts)) for parts in zip(*list(s), strict=True)] for s in together]
    finally:
        batched.close()
        seeded.close()
    differ = sum(texts != [s.text for s in lone] for texts, lone in zip(together, alone, strict=True))
    if differ:
        failures.append(f"generation: {differ} of {streams} seeded texts differ batched from alone")
    return {
        "streams": streams,
        "chars_per_request": chars,
        "one_stream_chars_per_second": round(one),
        "many_streams_chars_per_second": round(many),
        "ratio": round(many / one, 2),
        "seeded_texts_differing_batched": differ,
        "peak_rows": batched.peak_rows,
    }


def serve(text: str, root: Path, device: torch.device, steps: int, failures: list[str]) -> dict:
    """`charrnn serve` with CHARRNN_DEVICE: upload, train a small job, generate from it, all through HTTP."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(CHARRNN_DATA_DIR=str(root / "data"), CHARRNN_DEVICE=str(device), CHARRNN_BOOTSTRAP_KEY=KEY,
               PYTHONPATH=str(ROOT))
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            wait(lambda: _ready(client), 90, "serve to be ready", proc)
            r = client.post("/corpora", params={"name": "check"}, content=text.encode(),
                            headers={"Content-Type": "text/plain"})
            r.raise_for_status()
            model = {"cell": "lstm", "hidden_size": 64, "num_layers": 1, "embedding_dim": 16}
            training = {"max_steps": steps, "eval_every": steps, "checkpoint_every": steps, "seq_len": 32,
                        "batch_size": 8}
            r = client.post("/jobs", json={"corpus_id": r.json()["id"], "model": model, "training": training})
            r.raise_for_status()
            job_id = r.json()["id"]
            job = wait(lambda: _finished(client, job_id), 180, f"job {job_id} to finish", proc)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            body = {"model": job_id, "prompt": "ROMEO:", "length": 100, "seed": 1}
            r = client.post("/generate", json=body)
            r.raise_for_status()
            sample = r.json()["samples"][0]["text"]
            if len(sample) != 100:
                raise RuntimeError(f"/generate gave {len(sample)} characters, not 100")
            return {"job": job["status"], "job_device": job.get("device"),
                    "generated_chars": len(sample), "seconds": round(time.monotonic() - start, 1)}
    except Exception as exc:  # noqa: BLE001  a failed check is reported, with serve's last words
        failures.append(f"serve: {exc}; log tail: {log.read_text(errors='replace')[-1500:]}")
        return {"error": str(exc)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _finished(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def wait(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--corpus", type=Path, default=SAMPLE_CORPUS)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--resume-steps", type=int, default=40, help="steps of the unbroken run's each half")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams against one")
    parser.add_argument("--chars", type=int, default=400, help="characters per generated stream")
    parser.add_argument("--serve-steps", type=int, default=40, help="steps of the job trained through serve")
    parser.add_argument("--quick", action="store_true", help="a small fixed model instead of the probe's choice")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    text = read_text(args.corpus)
    failures: list[str] = []
    out: dict = {"failures": failures}
    started = time.monotonic()
    if device.type == "cuda" and not torch.cuda.is_available():
        failures.append(f"environment: --device {args.device} but no CUDA GPU is visible")
        print(json.dumps(out))
        return 1

    def part(name: str, fn, *fn_args):
        began = time.monotonic()
        try:
            out[name] = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001  one broken part must not hide the others' results
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            out[name] = {"error": traceback.format_exc(limit=3)[-1500:]}
        out.setdefault("part_seconds", {})[name] = round(time.monotonic() - began, 1)
        return out[name]

    with tempfile.TemporaryDirectory(prefix="charrnn-gpu-check-") as tmp:
        root = Path(tmp)
        env = part("environment", environment, device)
        if device.type == "cuda" and not env.get("cudnn_rnn_used"):
            failures.append("environment: nn.LSTM did not run on cuDNN")
        trained = part("train", train, text, root / "train", device, args.train_seconds, args.quick)
        checkpoint = None
        if isinstance(trained, tuple):
            out["train"], checkpoint = trained
            check_training(out["train"], len(set(text)), failures)
            if env.get("bf16_supported") and device.type == "cuda" and out["train"]["precision"] != "bf16":
                failures.append("train: the GPU has bf16 but the engine trained in fp32")
        if checkpoint:
            part("cpu_load", cpu_load, checkpoint, device, failures)
            part("generation", generation, checkpoint, device, args.streams, args.chars, failures)
        part("resume", check_resumption, text, root / "resume", device, args.resume_steps, failures)
        part("serve", serve, text[:200_000], root / "serve", device, args.serve_steps, failures)
    out["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
