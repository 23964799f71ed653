"""The worker's generation server answers only the API: a shared secret, checkpoint ids it resolves
itself (never a path), and the same bounds as the API."""

from __future__ import annotations

import stat

import httpx
import pytest

from app.workers.secret import HEADER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker_url(service) -> str:
    return service.worker_url()


@pytest.fixture(scope="module")
def secret(service) -> str:
    return (service.data_dir / "worker-secret").read_text().strip()


@pytest.fixture(scope="module")
def checkpoint(service, trained_job) -> dict:
    with service.client() as c:
        return c.get(f"/jobs/{trained_job['id']}/checkpoints").json()["data"][0]


def post(worker_url: str, path: str, body: dict, secret: str | None) -> httpx.Response:
    headers = {HEADER: secret} if secret is not None else {}
    return httpx.post(worker_url + path, json=body, headers=headers, timeout=30)


def test_the_generated_secret_is_private(service, client, trained_job):
    path = service.data_dir / "worker-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32
    # The API and the worker found the same one: generation through the API works.
    r = client.post("/generate", json={"model": trained_job["id"], "prompt": "ROMEO:", "length": 20, "seed": 1})
    assert r.status_code == 200 and len(r.json()["text"]) == 20


@pytest.mark.parametrize("given", [None, "", "wrong-secret", "x" * 43])
@pytest.mark.parametrize("path", ["/generate", "/generate/stream", "/score"])
def test_calls_without_the_secret_are_refused(worker_url, checkpoint, given, path):
    body = {"checkpoint_id": checkpoint["id"], "length": 5, **({"text": "abc"} if path == "/score" else {})}
    if path == "/score":
        body.pop("length")
    r = post(worker_url, path, body, given)
    assert r.status_code == 401 and HEADER in r.json()["detail"]


def test_health_needs_no_secret(worker_url):
    r = httpx.get(worker_url + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_a_path_is_refused_and_ids_are_resolved_by_the_worker(service, worker_url, secret, checkpoint):
    # Even with the secret, a file path is no part of the contract.
    files = sorted((service.data_dir / "runs").rglob("*.safetensors"))
    assert files
    r = post(worker_url, "/generate", {"path": str(files[0]), "length": 5}, secret)
    assert r.status_code == 422 and "path" in r.text
    r = post(worker_url, "/generate", {"checkpoint_id": checkpoint["id"], "path": str(files[0])}, secret)
    assert r.status_code == 422
    for bad_id in ("../runs/x", "/etc/passwd", "ckpt_../../x", ""):
        assert post(worker_url, "/generate", {"checkpoint_id": bad_id}, secret).status_code == 422, bad_id
    assert post(worker_url, "/score", {"path": str(files[0]), "text": "abc"}, secret).status_code == 422
    assert post(worker_url, "/generate", {"checkpoint_id": "ckpt_0000nope"}, secret).status_code == 404
    ok = post(worker_url, "/generate", {"checkpoint_id": checkpoint["id"], "length": 7, "seed": 1}, secret)
    assert ok.status_code == 200 and len(ok.json()["samples"][0]["text"]) == 7


def test_another_owners_checkpoint_stays_theirs(service, checkpoint, trained_job):
    bob_key = service.cli("keys", "create", "mallory").stdout.strip().splitlines()[-1]
    with service.client(bob_key) as bob:
        for model in (checkpoint["id"], trained_job["id"]):
            assert bob.post("/generate", json={"model": model, "length": 5}).status_code == 404
            assert bob.post("/score", json={"model": model, "text": "abc"}).status_code == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 1000),
        ("length", 10_001),
        ("prompt", "a" * 10_001),
        ("stop", ["x"] * 17),
        ("stop", ["x" * 1_001]),
        ("temperature", -1),
        ("top_p", 0),
    ],
)
def test_the_contracts_bounds_apply_on_the_worker_too(worker_url, secret, checkpoint, field, value):
    r = post(worker_url, "/generate", {"checkpoint_id": checkpoint["id"], field: value}, secret)
    assert r.status_code == 422 and field in r.text
