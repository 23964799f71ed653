"""In-process checks of how /v1 (app/openai) sits on the app and on the generation contract: its error shape
beside the native one, the security headers, its offline docs, and the worker's /logprobs body."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.routing import Mount

from app.generation import wire
from app.openai import completions
from app.openai.schemas import CompletionRequest
from app.settings import Settings
from app.workers import secret
from tests.api.test_generation_wiring import call

SECURITY = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def has_security_headers(response) -> bool:
    return all(response.headers.get(name) == value for name, value in SECURITY.items())


def test_v1_keeps_openais_error_shape_and_the_native_routes_keep_theirs(api, client):
    v1 = client.get("/v1/files/corpus_nope")
    assert v1.status_code == 404 and set(v1.json()["error"]) == {"message", "type", "param", "code"}
    native = client.get("/corpora/corpus_nope")
    assert native.status_code == 404 and set(native.json()) == {"detail"}
    with api.client(key=None) as anonymous:
        unauthorized = anonymous.get("/v1/models")
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "invalid_api_key"
    nan = b'{"model": "x", "prompt": "a", "max_tokens": NaN}'  # the answer must still be JSON
    bad = client.post("/v1/completions", content=nan, headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    for response in (v1, native, unauthorized, bad):
        assert has_security_headers(response), response.headers


def test_v1_serves_its_docs_offline(client):
    page = client.get("/v1/docs")
    assert page.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in page.text and "cdn" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no CDN, no inline
    spec = client.get("/v1/openapi.json").json()
    assert "/completions" in spec["paths"] and "/fine_tuning/jobs" in spec["paths"]


def test_v1_shares_the_apps_worker_affinity_and_generation_slots():
    from app.main import create_app

    app = create_app()
    (v1,) = [r for r in app.routes if isinstance(r, Mount) and r.path == "/v1"]
    assert v1.app.state.generation is app.state.generation  # one affinity, one per-owner count, one client


def test_completion_params_are_the_one_contracts():
    body = CompletionRequest(model="job_x", prompt="ab", max_tokens=5, top_p=0, n=2, stop="\n")
    params = completions.native_params(body, "ab")
    assert params["temperature"] == 0 and params["top_p"] is None and params["num_samples"] == 2
    assert wire.GenerateBody(checkpoint_id="ckpt_0123abc", **params).length == 5
    too_long = CompletionRequest(model="job_x", prompt="ab", stop=["x" * 1001])
    with pytest.raises(Exception, match="stop") as caught:
        completions.native_params(too_long, "ab")
    assert caught.value.status_code == 400


def test_the_logprobs_body_names_a_checkpoint_and_is_bounded():
    body = wire.LogprobsBody(checkpoint_id="ckpt_0123abc", context="ab", text="cd", top=3)
    assert wire.LogprobsBody.model_validate_json(body.model_dump_json()) == body
    with pytest.raises(ValidationError, match="path"):
        wire.LogprobsBody(checkpoint_id="ckpt_0123abc", path="/etc/passwd", text="a")
    with pytest.raises(ValidationError, match="together"):
        wire.LogprobsBody(checkpoint_id="ckpt_0123abc", context="a" * wire.MAX_LOGPROBS_CHARS, text="b")
    with pytest.raises(ValidationError):
        wire.LogprobsBody(checkpoint_id="ckpt_0123abc", text="a", top=wire.MAX_TOP_LOGPROBS + 1)


def test_the_workers_logprobs_wants_the_secret_and_a_checkpoint_id(tmp_path):
    pytest.importorskip("torch")
    from worker.service.server import create_server_app

    worker = create_server_app(Settings(data_dir=tmp_path, worker_secret="s3cret-" * 6, generation_threads=1))
    body = {"checkpoint_id": "ckpt_0123abc", "context": "a", "text": "b"}
    assert call(worker, "POST", wire.LOGPROBS, json=body).status_code == 401
    good = {secret.HEADER: "s3cret-" * 6}
    r = call(worker, "POST", wire.LOGPROBS, json={"path": "/etc/passwd", "text": "b"}, headers=good)
    assert r.status_code == 422 and "path" in r.text
    r = call(worker, "POST", wire.LOGPROBS, json={**body, "text": "b" * (wire.MAX_LOGPROBS_CHARS + 1)}, headers=good)
    assert r.status_code == 422
