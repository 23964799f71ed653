"""The routes the dashboard added to the API: job defaults, a thinned loss curve, the page and the offline docs."""

from __future__ import annotations

import re
import tomllib

import httpx

from app.jobs.service import downsample
from tests.harness import ROOT, TINY_TRAINING

STATIC = ROOT / "app" / "dashboard" / "static"


def test_downsample_keeps_first_and_last_at_an_even_stride():
    rows = list(range(100_000))
    thin = downsample(rows, 1000)
    assert len(thin) == 1000 and thin[0] == 0 and thin[-1] == 99_999
    gaps = {b - a for a, b in zip(thin, thin[1:], strict=False)}
    assert gaps <= {100, 101}, gaps
    assert downsample(rows[:5], 10) == rows[:5] and downsample(rows[:5], None) == rows[:5]
    assert downsample(rows[:5], 2) == [0, 4]


def test_job_defaults_are_the_engines_and_need_a_key(service, client):
    from worker.engine.config import DEFAULT_MAX_STEPS, ModelConfig, TrainConfig

    assert httpx.get(service.url + "/jobs/defaults").status_code == 401
    r = client.get("/jobs/defaults")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["num_layers"] == ModelConfig.num_layers and body["model"]["cell"] == ModelConfig.cell
    # left out, these are chosen for the job's budget and corpus when it starts (worker/engine/autoconfig.py)
    assert body["model"]["hidden_size"] is None and body["model"]["dropout"] is None
    assert "vocab_size" not in body["model"]
    assert body["training"]["seq_len"] == TrainConfig().seq_len
    assert body["training"]["max_seconds"] is None and "device" not in body["training"]
    # the default stopping rule is not a field value: sent back beside max_seconds it would cut the job short
    assert body["training"]["max_steps"] is None
    assert body["default_max_steps"] == DEFAULT_MAX_STEPS


def test_metrics_max_points_thins_the_curve(client, trained_job):
    path = f"/jobs/{trained_job['id']}/metrics"
    full = client.get(path).json()
    assert len(full) >= 4
    thin = client.get(path, params={"max_points": 3}).json()
    assert len(thin) == 3
    assert thin[0] == full[0] and thin[-1] == full[-1] and full[-1]["step"] == TINY_TRAINING["max_steps"]
    assert client.get(path, params={"max_points": 10_000}).json() == full
    assert client.get(path, params={"max_points": 1}).status_code == 422


def test_the_dashboard_and_docs_are_served_without_a_key(service):
    page = httpx.get(service.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert '<script type="module" src="/static/dashboard/app.js">' in page.text
    docs = httpx.get(service.url + "/docs")
    assert "/static/docs/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()
    assert "script-src" not in docs.headers["content-security-policy"] and "<script>" not in docs.text
    assert httpx.get(service.url + "/static/docs/swagger-ui-bundle.js").status_code == 200
    redoc = httpx.get(service.url + "/redoc").text
    assert "/static/docs/redoc.standalone.js" in redoc and "cdn" not in redoc.lower()
    spec = httpx.get(service.url + "/openapi.json").json()
    assert "/" not in spec["paths"] and "/jobs/defaults" in spec["paths"]


def test_every_dashboard_module_is_served_as_javascript_and_packaged(service):
    # A browser refuses a module script served with any type but JavaScript's, and a file the wheel's
    # package-data leaves out is a 404 in an installed copy: every file under static/ is in a pattern.
    with open(ROOT / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["app"]
    packaged = {path for pattern in patterns for path in (ROOT / "app").glob(pattern) if path.is_file()}
    assert {p for p in STATIC.rglob("*") if p.is_file()} <= packaged
    modules = sorted(STATIC.rglob("*.js"))
    assert len(modules) > 5, modules
    for module in modules:
        url = f"{service.url}/static/dashboard/{module.relative_to(STATIC).as_posix()}"
        r = httpx.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), (url, r.headers)
        for imported in re.findall(r'^import (?:.* from )?"(\./[^"]+|\.\./[^"]+)";', r.text, flags=re.M):
            target = (module.parent / imported).resolve()
            assert target.is_file(), f"{module.name} imports {imported}, which is not there"
