"""POST /inspect, the metrics CSV and the /v1 result file, against the real API and worker."""

from __future__ import annotations

import asyncio
import csv
import io
import math

import httpx

from app.generation import service as generation
from app.inspection import service as inspection
from app.inspection.schemas import InspectRequest
from app.workers import secret
from tests.harness import Service, new_key


def test_inspect_answers_each_character(client, trained_job):
    r = client.post("/inspect", json={"model": trained_job["id"], "text": "First Citizen:", "top_k": 3,
                                      "layer": 0, "units": [0, 31], "find_units": True})
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["characters"]
    assert "".join(c["char"] for c in rows) == "First Citizen:"
    for row in rows:
        assert 0 < row["prob"] <= 1 and row["rank"] >= 1 and len(row["top"]) == 3
        assert math.isclose(row["surprise_bits"], -math.log2(row["prob"]), abs_tol=2e-3)
    assert body["checkpoint_id"].startswith("ckpt_") and body["model"] == trained_job["id"]
    assert body["mean_surprise_bits"] > 0
    assert body["activations"]["units"] == [0, 31] and len(body["activations"]["c"]) == len(rows)  # an LSTM
    assert {f["feature"] for f in body["found_units"]} >= {"upper_case", "start_of_word", "position_in_line"}
    upper = next(f for f in body["found_units"] if f["feature"] == "upper_case")
    assert upper["units"] and all(abs(u["correlation"]) <= 1 for u in upper["units"])


def test_inspect_refusals_name_the_field_and_the_fix(service, client, trained_job):
    job = trained_job["id"]
    cases = [
        ({"model": job, "text": ""}, "text"),
        ({"model": job, "text": "a" * 10_001}, "text"),
        ({"model": job, "text": "ab", "top_k": 21}, "top_k"),
        ({"model": job, "text": "ab", "layer": 1}, "layer must be between 0 and 0"),  # a 1-layer model
        ({"model": job, "text": "ab", "layer": 0, "units": [32]}, "units must be between 0 and 31"),
        ({"model": job, "text": "ab☃"}, "☃"),
        ({"model": job, "text": "ab", "colour": "red"}, "colour"),
    ]
    for body, named in cases:
        r = client.post("/inspect", json=body)
        assert r.status_code == 422, (body, r.text)
        assert named in r.text, (body, r.text)
    assert client.post("/inspect", json={"model": "job_nope", "text": "ab"}).status_code == 404
    other_key, _ = new_key(service, "someone-else")
    with service.client(other_key) as other:  # another owner's job is not found, not forbidden
        assert other.post("/inspect", json={"model": job, "text": "ab"}).status_code == 404
        assert other.get(f"/jobs/{job}/metrics.csv").status_code == 404
        assert other.get(f"/v1/files/file-metrics-{job}/content").status_code == 404


def test_inspect_is_one_worker_call(service: Service, trained_job):
    calls = []

    async def run():
        async def count(request):
            calls.append(request.url.path)

        headers = {secret.HEADER: (service.data_dir / "worker-secret").read_text().strip()}
        async with httpx.AsyncClient(headers=headers, event_hooks={"request": [count]}, timeout=60) as http:
            best = httpx.get(f"{service.url}/jobs/{trained_job['id']}/checkpoints",
                             headers={"Authorization": "Bearer " + service.env["CHARRNN_BOOTSTRAP_KEY"]}).json()
            checkpoint = next(c["id"] for c in best["data"] if c["is_best"])
            target = generation.Target(checkpoint, [service.worker_url()])
            body = InspectRequest(model=trained_job["id"], text="First", top_k=2, layer=0, find_units=True)
            return await inspection.inspect(http, target, generation.Affinity(), body)

    result = asyncio.run(run())
    assert calls == ["/inspect"]
    assert len(result["characters"]) == 5 and result["found_units"]


def test_metrics_csv_and_the_v1_result_file(client, trained_job):
    job = trained_job["id"]
    r = client.get(f"/jobs/{job}/metrics.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["step", "train_loss", "val_loss", "learning_rate", "chars_per_second", "elapsed"]
    curve = client.get(f"/jobs/{job}/metrics").json()
    assert [int(row["step"]) for row in rows] == [m["step"] for m in curve]
    assert [float(row["train_loss"]) for row in rows] == [m["train_loss"] for m in curve]
    assert any(row["val_loss"] for row in rows)
    elapsed = [float(row["elapsed"]) for row in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    fine_tuning = client.get(f"/v1/fine_tuning/jobs/{job}").json()
    assert fine_tuning["result_files"] == [f"file-metrics-{job}"]
    content = client.get(f"/v1/files/file-metrics-{job}/content")
    assert content.status_code == 200 and content.text == r.text
