"""What a caller can never get: a 5xx or a leak (stack trace, server path, SQL) on any raw input, on SQLite
and PostgreSQL; responses carry the hardening headers; errors echo only a short, JSON-safe prefix."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.harness import (
    KEY,
    ROOT,
    database_service,
    small_corpus,
)

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


# Raw JSON tokens, put in place of one field at a time (not json.dumps: NaN and lone surrogates are the point).
TOKENS = [
    "NaN", "Infinity", "-Infinity", '"\\ud800"', '"a\\u0000b"', "1180591620717411303424", "1e400", "-1e400",
    "-1", "0", "[]", "{}", "true", "null", '""', '"' + "x" * 20_000 + '"', "[" * 500 + "]" * 500, '{"a": 1}',
]


# Whole bodies: not JSON, empty, deep, of the wrong shape.
BODIES = [b"", b"not json", b"{", b"[]", b"null", b"NaN", b"\x00", b"\xff\xfe", b"[" * 100_000, b'{"a":' * 10_000,
          json.dumps([{}] * 1000).encode()]


# Query and path values, already percent-encoded as a client would send them.
PARAMS = ["NaN", "Infinity", "-Infinity", "%ED%A0%80", "%00", "a%00b", "1180591620717411303424", "1e400", "-1", "",
          "%5B%5D", "x" * 5000, "%FF", "true", "0"]


# What no error body may carry: a stack trace, the server's own file paths, SQL or the drivers' names.
LEAKS = ["Traceback", 'File "', str(ROOT), "SELECT ", "INSERT ", "sqlalchemy", "psycopg"]


PLACEHOLDER = "@@FUZZ@@"


def json_bodies(corpus_id: str) -> list[tuple[str, bytes]]:
    """(path, body) pairs: each route's valid body with one field replaced by each token."""
    templates = {
        "/jobs": {"corpus_id": corpus_id, "name": "n", "init_from": "ckpt_x",
                  "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "embedding_dim": 8, "dropout": 0.1},
                  "training": {"seq_len": 8, "batch_size": 2, "max_steps": 1, "max_seconds": 5, "learning_rate": 0.1,
                               "seed": 1, "val_fraction": 0.1, "gpus": 1}},
        "/generate": {"model": "job_nope", "prompt": "ab", "length": 5, "temperature": 0.8, "top_k": 3, "top_p": 0.9,
                      "seed": 1, "num_samples": 1, "stop": ["x"], "stream": False},
        "/score": {"model": "job_nope", "text": "abc"},
    }
    out = []
    for path, template in templates.items():
        for body in BODIES:
            out.append((path, body))
        fields = [(k,) for k in template] + [(k, sub) for k, v in template.items() if isinstance(v, dict) for sub in v]
        for field in fields:
            body = json.loads(json.dumps(template))
            target = body
            for part in field[:-1]:
                target = target[part]
            target[field[-1]] = PLACEHOLDER
            text = json.dumps(body)
            for token in TOKENS:
                out.append((path, text.replace(json.dumps(PLACEHOLDER), token).encode()))
    return out


def url_cases(corpus_id: str) -> list[tuple[str, str, dict]]:
    """(method, url, headers): every route's path ids and query parameters, one fuzzed value at a time."""
    cases = []
    for value in PARAMS:
        for path in ("/corpora/{v}", "/jobs/{v}", "/jobs/{v}/events", "/jobs/{v}/metrics", "/jobs/{v}/checkpoints",
                     "/checkpoints/{v}", "/checkpoints/{v}/download"):
            cases.append(("GET", path.format(v=value), {}))
        cases += [("DELETE", f"/corpora/{value}", {}), ("POST", f"/jobs/{value}/cancel", {})]
        for path, names in (("/corpora", ("limit", "after")), ("/jobs", ("limit", "after", "status")),
                            ("/jobs/job_x/events", ("after", "limit")), ("/jobs/job_x/metrics", ("max_points",)),
                            ("/jobs/job_x/checkpoints", ("limit", "after"))):
            for name in names:
                cases.append(("GET", f"{path}?{name}={value}", {}))
        cases.append(("GET", "/jobs?limit=1&limit=2", {}))
    for header in ("NaN", "-1", "1180591620717411303424", "1e400", "\u00b2", "x" * 5000, "", "7 7"):
        cases.append(("GET", "/jobs/job_x/events", {"Last-Event-ID": header.encode(), "Accept": "text/event-stream"}))
    return cases


def upload_cases() -> list[tuple[str, bytes, dict]]:
    """(query, body, headers) for POST /corpora, raw and multipart."""
    cases = []
    for value in PARAMS:
        cases.append((f"?name={value}", b"hello there", {"Content-Type": "text/plain"}))
    for content_type in ("text/plain", "multipart/form-data", "multipart/form-data; boundary=", "application/json",
                         "text/plain; charset=latin1", "", "multipart/form-data; boundary=x"):
        for body in (b"", b"\x00\x00", b"\xff\xfe\xfd", b"--x\r\n", b"NaN", "caf\u00e9".encode()):
            cases.append(("", body, {"Content-Type": content_type}))
    for name in ("a\x00b", "\ud800", "n" * 500, ""):
        form = (b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n"
                + name.encode("utf-8", "surrogatepass") + b"\r\n"
                b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\n\r\n"
                b"hello there\r\n--x--\r\n")
        cases.append(("", form, {"Content-Type": "multipart/form-data; boundary=x"}))
    return cases


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_fuzzed_bodies_and_parameters_never_answer_5xx_or_leak(tmp_path, kind):
    with database_service(tmp_path, kind) as svc:
        data_dir = str(svc.data_dir.resolve())
        failures, leaks, seen = [], [], 0

        def check(response: httpx.Response, what: str) -> None:
            nonlocal seen
            seen += 1
            if response.status_code >= 500:
                failures.append(f"{response.status_code} on {what}: {response.text[:300]}")
            if response.status_code >= 400:
                for needle in (*LEAKS, data_dir):
                    if needle in response.text:
                        leaks.append(f"{needle!r} in the {response.status_code} body of {what}: {response.text[:300]}")

        # A plain client: this test collects the 5xx itself rather than stopping at the first.
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=svc.url, headers=headers, timeout=60) as c:
            corpus = svc.upload(c, small_corpus(5000), name="fuzz")
            for path, body in json_bodies(corpus["id"]):
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                check(r, f"POST {path} {body[:80]!r}")
            for method, url, extra in url_cases(corpus["id"]):
                r = c.request(method, url, headers=extra)
                check(r, f"{method} {url[:80]} {extra and str(extra)[:80]}")
            for query, body, extra in upload_cases():
                r = c.post("/corpora" + query, content=body, headers=extra)
                check(r, f"POST /corpora{query[:60]} {body[:60]!r} {extra}")
            # Bad keys and headers too.
            for auth in ("Bearer", "Bearer NaN", "Basic x", "Bearer " + "k" * 5000, "bearer \u00e9"):
                r = c.get("/jobs", headers={"Authorization": auth.encode("utf-8")})
                check(r, f"GET /jobs Authorization {auth[:40]!r}")
            assert c.get("/healthz").status_code == 200
        log = svc.log_text()
    assert seen > 500
    assert not failures, f"{len(failures)} of {seen} answered 5xx:\n" + "\n".join(failures[:20])
    assert not leaks, "\n".join(leaks[:20])
    assert "Traceback" not in log, log[-3000:]


def test_security_headers_on_every_response(service, client, corpus):
    anonymous = [
        httpx.get(service.url + "/healthz"),
        httpx.get(service.url + "/openapi.json"),
        httpx.get(service.url + "/corpora"),  # 401
        httpx.get(service.url + "/no-such-route"),  # 404
    ]
    keyed = [
        client.get("/corpora"),
        client.get(f"/corpora/{corpus['id']}"),
        client.get("/jobs/job_nope"),  # 404
        client.post("/jobs", json={}),  # 422
    ]
    for response in anonymous + keyed:
        where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, f"{where}: {name} is {response.headers.get(name)!r}"
        assert "server" not in response.headers, f"{where}: Server: {response.headers['server']}"
    for response in keyed:
        assert response.headers.get("cache-control") == "no-store", response.request.url


def test_openapi_declares_bearer_scheme_and_worker_errors(service):
    spec = httpx.get(service.url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert spec["paths"]["/corpora"]["get"]["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/jobs/{job_id}/events"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    for path in ("/generate", "/score"):
        assert {"502", "503"} <= set(spec["paths"][path]["post"]["responses"]), path


def test_validation_error_echoes_only_a_short_prefix(client):
    huge = "x" * 10_000_000
    r = client.post("/generate", json={"model": "job_nope", "prompt": huge})
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 4000, f"the 422 is {len(r.content):,} bytes"
    assert "prompt" in r.json()["message"]
    # A huge unknown field: the whole body is the input, and it is clipped too.
    r = client.post("/jobs", json={"corpus_id": "corpus_x", "junk": huge})
    assert r.status_code == 422 and len(r.content) < 4000, len(r.content)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", '{"model": "job_nope", "temperature": NaN}'),
        ("/generate", '{"model": "job_nope", "temperature": -Infinity}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "training": {"max_seconds": Infinity}}'),
        ("/generate", '{"model": "' + "\\ud800" * 100 + '"}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "training": {"seq_len": "\\udfff"}}'),
        ("/jobs", '{"corpus_id": "\\ud800"}'),
        ("/jobs", '{"corpus_id": "corpus_nope", "name": "\\ud800"}'),
    ],
)
def test_nan_infinity_and_lone_surrogates_are_not_500(client, path, body):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (404, 422), r.text
    r.json()  # valid JSON whatever it echoes


def test_lone_surrogate_prompt_is_422(client, trained_job):
    r = client.post(
        "/generate",
        content=json.dumps({"model": trained_job["id"], "length": 5}).replace("}", ', "prompt": "ab\\ud800"}'),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "prompt" in r.json()["message"]


def test_no_server_paths_in_errors(service, client, corpus):
    job = service.create_job(client, corpus["id"], name="to-corrupt")
    job = service.wait_job(client, job["id"])
    assert job["status"] == "succeeded", job
    checkpoint = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"][0]
    for path in (service.data_dir / "runs").rglob("*.safetensors"):
        if job["id"] in str(path):
            path.write_bytes(path.read_bytes()[:100])  # every checkpoint of this job, corrupt
    r = client.post("/generate", json={"model": checkpoint["id"], "length": 5})
    assert r.status_code in (409, 410, 422), r.text
    root = str(service.data_dir.resolve())
    assert root not in r.text and "/runs/" not in r.text, r.text


def test_error_handler_output_is_json_safe():
    from app.errors import _echo

    assert _echo(float("nan")) == "nan" and _echo(float("-inf")) == "-inf"
    assert _echo("\ud800") == "\\ud800"
    assert len(json.dumps(_echo({"prompt": "x" * 10_000_000}))) < 300
    assert _echo(2**80) == str(2**80)
