"""The training doctor through the real service: reference losses stored at upload, a job's own for its
split, and a diagnosis in the job's JSON and its events."""

from __future__ import annotations

import math

import pytest

from tests.harness import small_corpus
from worker.engine import references

pytestmark = pytest.mark.slow


def test_references_at_upload_and_a_not_learning_job_diagnosed(service, client):
    text = small_corpus()
    corpus = service.upload(client, text, name="doctor")
    expected = references.of_text(text, 0.1)
    refs = corpus["reference_losses"]
    assert refs["val_fraction"] == 0.1
    assert (refs["unigram"], refs["bigram"]) == (pytest.approx(expected.unigram), pytest.approx(expected.bigram))
    assert refs["unigram_bits"] == pytest.approx(expected.unigram / math.log(2))
    assert client.get(f"/corpora/{corpus['id']}").json()["reference_losses"] == refs

    # Split as the upload was: the job has the corpus's references from the start (for the chart).
    same_split = service.create_job(client, corpus["id"], training={"max_steps": 10_000})
    assert same_split["reference_losses"] == refs
    assert client.post(f"/jobs/{same_split['id']}/cancel").status_code == 200

    # Its own split (val_fraction 0.2): the worker computes the references of that split at start.
    # eval_every left out: evaluations spaced over the budget.
    training = {"learning_rate": 1e-6, "val_fraction": 0.2, "eval_every": None, "max_steps": 40,
                "sample_length": 5}
    job = service.create_job(client, corpus["id"], training=training)
    assert job["reference_losses"] is None  # not known until the worker computes them
    job = service.wait_job(client, job["id"], timeout=300)
    assert job["status"] == "succeeded", job
    own = references.of_text(text, 0.2)
    assert job["reference_losses"]["val_fraction"] == 0.2
    assert job["reference_losses"]["bigram"] == pytest.approx(own.bigram)
    diagnosis = job["diagnosis"]
    assert diagnosis["kind"] == "not_learning" and diagnosis["step"] == 40
    assert "learned only how often each character occurs" in diagnosis["message"]

    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    logs = [e for e in events if e["type"] == "log"]
    reference_event = next(e for e in logs if e["message"].startswith("reference losses"))
    stored = {k: v for k, v in job["reference_losses"].items() if not k.endswith("_bits")}
    assert reference_event["data"]["reference_losses"] == stored
    assert f"{own.unigram:.3f}" in reference_event["message"]
    diagnosed = [e["data"]["diagnosis"] for e in logs if "diagnosis" in e["data"]]
    assert [d["kind"] for d in diagnosed] == ["not_learning", "not_learning"]  # a fifth in, and at the end
    assert diagnosed[-1] == diagnosis
    evaluations = [e for e in events if e["type"] == "sample"]
    assert len(evaluations) >= 10  # a 40-step job has a validation curve, not one point
