"""Uploads (raw body and multipart), what they refuse and why, and deleting a corpus."""

from __future__ import annotations


def test_upload_variants_and_errors(api, client):
    raw = client.post(
        "/corpora",
        params={"name": "raw"},
        content="héllo wörld\n".encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert raw.status_code == 201
    assert raw.json()["num_chars"] == 12 and raw.json()["size_bytes"] == 14 and raw.json()["vocab_size"] == 10

    form = client.post("/corpora", files={"file": ("my file.txt", b"abc abc\n", "text/plain")})
    assert form.status_code == 201 and form.json()["name"] == "my file.txt"
    # Stored by content hash, never under the name the client sent.
    stored = list((api.data_dir / "corpora").glob("*.txt"))
    assert all(p.stem in {raw.json()["sha256"], form.json()["sha256"]} or len(p.stem) == 64 for p in stored)

    empty = client.post("/corpora", content=b"", headers={"Content-Type": "text/plain"})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]

    bad = b"good text " * 10 + b"\xff\xfe rest"
    r = client.post("/corpora", content=bad, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "offset 100" in r.json()["detail"] and "0xff" in r.json()["detail"]
    # The bad byte split across chunks and inside a multipart form: the offset is still exact.
    split = "é".encode() * 5000 + b"\xc3(" + b"x" * 10
    r = client.post("/corpora", files={"file": ("x.txt", split, "text/plain")})
    assert r.status_code == 422 and "offset 10000" in r.json()["detail"]
    truncated = "abc€".encode()[:-1]
    r = client.post("/corpora", content=truncated, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and "offset 3" in r.json()["detail"]

    r = client.post("/corpora", json={"text": "hello"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]
    r = client.post("/corpora", files={"other": ("x.txt", b"abc", "text/plain")})
    assert r.status_code == 422 and "`file`" in r.json()["detail"]
    r = client.post("/corpora", params={"name": "n" * 201}, content=b"abc", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422

    too_big = client.post("/corpora", content=b"a" * 1_100_000, headers={"Content-Type": "text/plain"})
    assert too_big.status_code == 413 and "CHARRNN_MAX_CORPUS_BYTES" in too_big.json()["detail"]
    assert not list((api.data_dir / "corpora").glob(".upload-*"))  # no temp files left behind


def test_delete_corpus(api, client):
    c = api.upload(client, "a unique text to delete\n" * 10, name="to-delete")
    path = api.data_dir / "corpora" / f"{c['sha256']}.txt"
    assert path.is_file()
    assert client.delete(f"/corpora/{c['id']}").status_code == 204
    assert client.get(f"/corpora/{c['id']}").status_code == 404
    assert not path.exists()
    assert client.delete(f"/corpora/{c['id']}").status_code == 404
