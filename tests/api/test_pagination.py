"""Cursor pagination: newest first, `after` continues, `limit` is bounded."""

from __future__ import annotations

from tests.harness import small_corpus


def test_pagination(api, client):
    ids = [api.upload(client, small_corpus(3000 + i), name=f"page-{i}")["id"] for i in range(5)]
    first = client.get("/corpora", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["has_more"]
    assert [c["id"] for c in first["data"]] == ids[::-1][:2]  # newest first
    second = client.get("/corpora", params={"limit": 2, "after": first["data"][-1]["id"]}).json()
    assert [c["id"] for c in second["data"]] == ids[::-1][2:4]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}):
        r = client.get("/corpora", params=bad)
        assert r.status_code == 422 and "limit" in r.json()["message"]
