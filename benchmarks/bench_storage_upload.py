"""A large corpus uploaded to an S3 store (moto's server) through the API, with the API's peak memory
measured around it, then trained on briefly by a worker with a data directory of its own.

    .venv/bin/python benchmarks/bench_storage_upload.py [--megabytes 200] [--steps 20]

Prints one JSON line: the upload's size and time, the API's peak RSS (VmHWM) before and after, and the job.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _support import ROOT, Service

from tests.harness import TINY_MODEL, MotoS3


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    chunk = (ROOT / "tests" / "data" / "tinyshakespeare-40k.txt").read_bytes()
    chunk = chunk[: chunk.rfind(b"\n") + 1]  # whole lines: every chunk is valid UTF-8
    total = args.megabytes * 1024 * 1024
    moto = MotoS3()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        svc = Service(root, storage_url=moto.bucket(), worker_secret="bench-secret",
                      database_url=f"sqlite:///{root / 'data' / 'charrnn.db'}",
                      max_corpus_bytes=total + 1, job_lease_seconds=30)
        svc.env.update(moto.env)
        try:
            svc.start_api()
            client = svc.client()
            client.timeout = 1800
            pid = svc.api_proc.pid
            client.get("/corpora")
            before = vm_hwm_kb(pid)

            def body():
                sent = 0
                while sent < total:
                    piece = chunk[: total - sent] if total - sent < len(chunk) else chunk
                    piece = piece[: piece.rfind(b"\n") + 1] or piece
                    sent += len(piece)
                    yield piece

            started = time.monotonic()
            r = client.post("/corpora", params={"name": "big"}, content=body(),
                            headers={"Content-Type": "text/plain"})
            upload_seconds = time.monotonic() - started
            assert r.status_code == 201, r.text
            corpus = r.json()
            after = vm_hwm_kb(pid)
            objects = moto.objects(svc.env["CHARRNN_STORAGE_URL"])
            svc.start_worker(data_dir=root / "worker-disk")
            started = time.monotonic()
            job = svc.create_job(client, corpus["id"], model=TINY_MODEL,
                                 training={"max_steps": args.steps, "eval_every": args.steps,
                                           "checkpoint_every": args.steps})
            job = svc.wait_job(client, job["id"], timeout=1800, poll=1)
            train_seconds = time.monotonic() - started
            print(json.dumps({
                "bytes": corpus["size_bytes"], "upload_seconds": round(upload_seconds, 1),
                "api_vm_hwm_kb_before": before, "api_vm_hwm_kb_after": after,
                "objects": objects, "job_status": job["status"], "job_steps": job["progress"].get("step"),
                "job_seconds": round(train_seconds, 1), "job_error": job.get("error"),
            }))
        finally:
            svc.stop()
            moto.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
