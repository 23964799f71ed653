"""In-process checks of the generation plumbing that need no worker: the API<->worker contract, the
worker secret, and where process state lives."""

from __future__ import annotations

import asyncio
import stat
import sys
import threading

import httpx
import pytest

from app.generation import service, wire
from app.generation.schemas import GenerateRequest, SampleOut
from app.settings import Settings
from app.workers import secret


def test_the_worker_affinity_is_app_state_not_module_state():
    from app.main import create_app

    one, two = create_app(), create_app()
    assert isinstance(one.state.generation.affinity, service.Affinity)
    assert one.state.generation.affinity is not two.state.generation.affinity
    assert one.state.generation.slots is not two.state.generation.slots
    assert not hasattr(service, "_affinity")
    affinity = service.Affinity(size=2)
    affinity.remember("ckpt_a", "http://w2")
    assert affinity.order(["http://w1", "http://w2"], "ckpt_a") == ["http://w2", "http://w1"]
    assert affinity.order(["http://w1"], "ckpt_a") == ["http://w1"]  # a worker no longer live is skipped
    affinity.remember("ckpt_b", "http://w1")
    affinity.remember("ckpt_c", "http://w1")
    assert affinity.order(["http://w1", "http://w2"], "ckpt_a") == ["http://w1", "http://w2"]  # forgotten


def test_the_api_and_worker_bodies_are_one_definition():
    request = GenerateRequest(model="job_x", prompt="ab", length=3, stop=["\n"], stream=True)
    body = service.generate_body(service.Target("ckpt_0123abc", []), request.sampling_params())
    assert wire.GenerateBody.model_validate_json(body.model_dump_json()) == body
    with pytest.raises(ValueError, match="path"):
        wire.GenerateBody(checkpoint_id="ckpt_0123abc", path="/etc/passwd")
    for message in (
        wire.Chunk(pieces=["a", ""]),
        wire.Done(samples=[SampleOut(text="ab", finish_reason="stop")]),
        wire.Failed(error="boom"),
    ):
        line = wire.to_line(message)
        assert line.endswith("\n") and "\n" not in line[:-1]
        assert wire.from_line(line) == message


def test_a_secret_is_generated_once_private_and_shared(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(secret.worker_secret(settings))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) >= 32
    assert stat.S_IMODE(settings.worker_secret_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in settings.worker_secret_file.parent.iterdir()) == ["worker-secret"]
    assert secret.worker_secret(Settings(data_dir=tmp_path / "data", worker_secret="from-env")) == "from-env"
    assert secret.worker_secret(Settings(data_dir=tmp_path / "data", worker_secret="")) == results[0]
    assert secret.is_valid(results[0], results[0]) and not secret.is_valid(None, results[0])
    assert not secret.is_valid(results[0][:-1], results[0])


@pytest.fixture
def worker_app(tmp_path):
    pytest.importorskip("torch")
    from worker.service.server import create_server_app

    return create_server_app(Settings(data_dir=tmp_path, worker_secret="s3cret-" * 6, generation_threads=1))


def test_building_the_generation_server_leaves_the_process_alone(worker_app, tmp_path):
    import torch

    from worker.service.server import create_server_app

    before = (sys.getswitchinterval(), torch.get_num_threads())
    create_server_app(Settings(data_dir=tmp_path, worker_secret="x" * 32, generation_threads=7))
    assert (sys.getswitchinterval(), torch.get_num_threads()) == before


def call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_the_generation_server_wants_the_secret_before_anything_else(worker_app):
    assert call(worker_app, "GET", "/healthz").status_code == 200
    body = {"checkpoint_id": "ckpt_0123abc", "length": 5}
    assert call(worker_app, "POST", "/generate", json=body).status_code == 401
    r = call(worker_app, "POST", "/generate", content=b"not json", headers={secret.HEADER: "wrong"})
    assert r.status_code == 401
    good = {secret.HEADER: "s3cret-" * 6}
    r = call(worker_app, "POST", "/generate", json={"path": "/etc/passwd", "length": 5}, headers=good)
    assert r.status_code == 422 and "path" in r.text
    r = call(worker_app, "POST", "/generate", json={**body, "num_samples": 1000}, headers=good)
    assert r.status_code == 422 and "num_samples" in r.text


def test_the_live_workers_list_is_kept_briefly_and_read_again_when_forgotten():
    from app.generation.state import LiveWorkers

    reads = []

    def read(urls):
        def once():
            reads.append(urls)
            return list(urls)

        return once

    workers = LiveWorkers(max_age=60)
    assert workers.urls(read([])) == [] and workers.urls(read(["http://w1"])) == ["http://w1"]  # none: not kept
    assert workers.urls(read(["http://w2"])) == ["http://w1"]  # kept
    listed = workers.urls(read(["http://w2"]))
    listed.remove("http://w1")  # callers reorder their copy (Affinity.order); the kept list is unchanged
    assert workers.urls(read(["http://w2"])) == ["http://w1"]
    workers.forget()
    assert workers.urls(read(["http://w2"])) == ["http://w2"]
    assert reads == [[], ["http://w1"], ["http://w2"]]
    assert LiveWorkers(max_age=0).urls(read(["http://w3"])) == ["http://w3"]  # expired at once: read every time
