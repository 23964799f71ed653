"""/metrics stays bounded whatever paths clients send (issue 21 item 6): every request is labelled by the
template of the route it matched, and everything no route matched shares one label."""

from __future__ import annotations

import itertools
import re
import uuid

import httpx
import pytest

from tests.harness import KEY, Service

# Each shape of path a scanner or a buggy client sends: nothing, a route with a made-up id, a mounted app.
SHAPES = [
    "/{r}",
    "/nope/{r}/deeper",
    "/jobs/{r}",
    "/jobs/{r}/events",
    "/corpora/{r}/x",
    "/v1/{r}",
    "/v1/models/{r}",
    "/static/dashboard/{r}",
]
SERIES = re.compile(r"^(charrnn_http_\w+)\{(.*)\} ")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("metrics"))
    svc.start_api()
    yield svc
    svc.stop()


def http_series(client: httpx.Client) -> set[tuple[str, str]]:
    """Each request series in /metrics: (metric, labels without the histogram's bucket bound)."""
    found = set()
    for line in client.get("/metrics").text.splitlines():
        m = SERIES.match(line)
        if m:
            found.add((m.group(1), re.sub(r'le="[^"]*",?', "", m.group(2))))
    return found


def send(client: httpx.Client, n: int, tokens: list[str]) -> None:
    combos = itertools.cycle(itertools.product(SHAPES, (None, KEY), ("GET", "DELETE")))
    for _ in range(n):
        shape, key, method = next(combos)
        token = uuid.uuid4().hex
        tokens.append(token)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client.request(method, shape.format(r=token), headers=headers)


def test_a_thousand_distinct_paths_add_no_series_per_path(api):
    tokens: list[str] = []
    with httpx.Client(base_url=api.url, timeout=30) as client:
        send(client, len(SHAPES) * 4, tokens)  # every shape, with and without a key, GET and DELETE
        first = http_series(client)
        send(client, 1000 - len(tokens), tokens)
        after = http_series(client)

    # 1,000 distinct paths in all: the series of the first round are all there are (plus /metrics itself).
    assert after - first <= {s for s in after if 'route="/metrics"' in s[1]}, sorted(after - first)
    labels = "\n".join(labels for _, labels in after)
    assert not any(token in labels for token in tokens), "a path a client sent became a label"
    routes = set(re.findall(r'route="([^"]*)"', labels))
    # Unknown paths share one label; a matched route, in /v1 too, is named by its template, mount prefix included.
    assert {"unmatched", "/jobs/{job_id}", "/jobs/{job_id}/events", "/v1/models/{model:path}"} <= routes, routes
    assert len(routes) <= 8, routes
