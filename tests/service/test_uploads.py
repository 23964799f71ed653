"""Uploads against the real server: a big streamed upload is refused in flat memory, a client that walks away
or a full disk (507) leaves no temp file, leftovers are swept at start, identical uploads share a file
safely, and a multipart form is held to its rules."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import (
    KEY,
    Service,
    database_service,
    new_key,
    small_corpus,
)


def rss_kb(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_big_streamed_upload_is_refused_with_flat_memory(service, client):
    """40 MB against a 1 MB limit, chunked (no Content-Length): refused with 413, and the server's
    peak memory barely moves (the body is never held in memory)."""
    pid = service.api_proc.pid
    client.get("/corpora")  # warm up the code path first
    before = rss_kb(pid)
    chunk = b"All the world's a stage.\n" * 4000  # 100 kB

    def body():
        for _ in range(400):
            yield chunk

    r = client.post("/corpora", content=body(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 413
    r = client.post("/corpora", files={"file": ("big.txt", b"".join([chunk] * 30), "text/plain")})
    assert r.status_code == 413
    grown_mb = (rss_kb(pid) - before) / 1024
    print(f"API peak RSS growth over a 40 MB streamed upload: {grown_mb:.1f} MB")
    assert grown_mb < 15, f"peak RSS grew by {grown_mb:.1f} MB"
    assert client.get("/healthz").status_code == 200


def half_upload(svc: Service, chunked: bool) -> None:
    """Send half a body over a raw socket, then close: what a client killed mid-upload does."""
    piece = b"All the world's a stage.\n" * 2000  # 50 KB
    with socket.create_connection(("127.0.0.1", svc.port)) as sock:
        head = (f"POST /corpora?name=half HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: text/plain\r\n")
        if chunked:
            head += "Transfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head.encode())
            for _ in range(4):
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        else:
            head += f"Content-Length: {len(piece) * 10}\r\n\r\n"
            sock.sendall(head.encode())
            for _ in range(4):
                sock.sendall(piece)
        time.sleep(0.5)  # the API has the first half on disk by now


def temp_files(svc: Service) -> list[Path]:
    return sorted((svc.data_dir / "corpora").glob(".upload-*.tmp"))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_leaving_mid_upload_leaves_no_temp_file_and_no_traceback(tmp_path, chunked):
    with database_service(tmp_path, "sqlite") as svc:
        with svc.client() as c:
            svc.upload(c, "a first corpus, so the corpora dir exists")
            for _ in range(3):
                half_upload(svc, chunked)
            deadline = time.monotonic() + 10
            while temp_files(svc) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not temp_files(svc)
            assert c.get("/healthz").status_code == 200
        # The file goes before the line is logged: on a busy machine the line may come a moment later.
        deadline = time.monotonic() + 10
        while svc.log_text().count("client disconnected before") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        log = svc.log_text()
        assert "Traceback" not in log and "unhandled" not in log, log[-3000:]
        assert log.count("client disconnected before its request body was complete") == 3, log[-3000:]


def test_leftovers_are_swept_at_start(tmp_path):
    svc = Service(tmp_path)
    corpora = svc.data_dir / "corpora"
    corpora.mkdir(parents=True)
    stale = corpora / ".upload-0123456789abcdef.tmp"
    stale.write_bytes(b"half an upload")
    orphan = corpora / f".deleted-0011223344556677-{'a' * 64}.txt"  # a delete that committed, then crashed
    orphan.write_bytes(b"deleted")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    try:
        svc.start_api()
        assert not stale.exists() and not orphan.exists()
        with svc.client() as c:  # a delete that crashed before its commit: the row is there, its file put back
            corpus = svc.upload(c, "a corpus whose delete will be cut short")
            final = next(corpora.glob("*.txt"))  # the one corpus file
        svc.stop()
        tombstone = final.with_name(f".deleted-8899aabbccddeeff-{final.name}")
        os.replace(final, tombstone)
        os.utime(tombstone, (old, old))
        svc.start_api()
        assert final.exists() and not tombstone.exists()
        with svc.client() as c:
            assert c.get(f"/corpora/{corpus['id']}").status_code == 200
    finally:
        svc.stop()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs (needs root to mount); unmounted afterwards."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run as root (CI does) to test a full disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"could not mount a tmpfs ({done.stderr.strip()}); a full disk is not tested here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("form", ["raw", "multipart"])
def test_upload_on_a_full_disk_answers_507_and_leaves_nothing(tmp_path, small_tmpfs, form):
    svc = Service(tmp_path / "svc", max_corpus_bytes=10_000_000)
    svc.data_dir.mkdir(parents=True)
    (svc.data_dir / "corpora").symlink_to(small_tmpfs)  # corpora/ on the small disk, the database beside it
    try:
        svc.start_api()
        text = (small_corpus(40_000) * 80)[:3_000_000].encode()  # 3 MB into 2 MB
        with svc.client() as c:
            if form == "raw":
                r = c.post("/corpora", content=text, headers={"Content-Type": "text/plain"})
            else:
                r = c.post("/corpora", files={"file": ("big.txt", text, "text/plain")})
            assert r.status_code == 507, r.text
            assert "disk is full" in r.json()["detail"] and "nothing of it was kept" in r.json()["detail"]
            assert list(small_tmpfs.iterdir()) == []
            assert c.get("/healthz").status_code == 200
            assert svc.upload(c, "a small corpus still fits")["size_bytes"] > 0  # the API carries on
        assert "Traceback" not in svc.log_text()
    finally:
        svc.stop()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_delete_racing_identical_upload_keeps_the_file(tmp_path, kind):
    rounds = 60
    with database_service(tmp_path, kind) as svc:
        bob_key, _ = new_key(svc, "bob")
        lost, last_b = [], None
        with svc.client() as alice, svc.client(key=bob_key) as bob:
            for i in range(rounds):
                text = small_corpus(3000) + f"\nround {i} {uuid.uuid4().hex}\n"
                a = svc.upload(alice, text, name=f"a-{i}")
                start = threading.Barrier(2)
                results = {}

                def delete_a(a_id=a["id"], start=start, results=results):
                    start.wait()
                    results["delete"] = alice.delete(f"/corpora/{a_id}").status_code

                def upload_b(text=text, start=start, results=results, name=f"b-{i}"):
                    start.wait()
                    results["upload"] = svc.upload(bob, text, name=name)

                threads = [threading.Thread(target=delete_a), threading.Thread(target=upload_b)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)
                assert results["delete"] == 204, results
                b = results["upload"]
                assert b["sha256"] == hashlib.sha256(text.encode()).hexdigest()
                if not (svc.data_dir / "corpora" / f"{b['sha256']}.txt").is_file():
                    lost.append(i)
                last_b = b
            assert not lost, f"owner B's corpus file was deleted by owner A's delete in rounds {lost} of {rounds}"
            assert not list((svc.data_dir / "corpora").glob(".deleted-*")), "a deleted file was left behind"

            # And a job on B's corpus can read it: train a few steps on it.
            svc.start_worker()
            job = svc.create_job(bob, last_b["id"], training={"max_steps": 5, "eval_every": 5, "checkpoint_every": 5})
            job = svc.wait_job(bob, job["id"], timeout=120)
            assert job["status"] == "succeeded", job


def test_upload_with_too_many_distinct_characters_is_refused(client):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 20_000))  # 20,000 distinct CJK characters
    r = client.post("/corpora", content=text.encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 422, r.text
    assert "CHARRNN_MAX_VOCAB_SIZE" in r.json()["detail"] and "10,000" in r.json()["detail"]
    ok = client.post("/corpora", content=text[:5000].encode(), headers={"Content-Type": "text/plain"})
    assert ok.status_code == 201 and ok.json()["vocab_size"] == 5000


def multipart_in_chunks(fields: list[tuple[str, str | None, bytes]], chunk: int = 64, pause: float = 0.01):
    """A multipart body sent in small, spaced chunks, as a slow client's arrives (one chunk hides cut-off bugs)."""
    boundary = "charrnn-test-boundary"
    body = b""
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def chunks():
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]
            time.sleep(pause)

    return chunks(), headers


def test_multipart_name_too_long_says_so(client):
    for name in ("€" * 300, "€" * 201):
        chunks, headers = multipart_in_chunks([("name", None, name.encode()), ("file", "a.txt", b"hello world")])
        r = client.post("/corpora", content=chunks, headers=headers)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert ("longer than 200" in detail or "201 characters" in detail) and "UTF-8" not in detail, detail
    chunks, headers = multipart_in_chunks([("name", None, ("€" * 200).encode()), ("file", "a.txt", b"hello world")])
    r = client.post("/corpora", content=chunks, headers=headers)
    assert r.status_code == 201 and r.json()["name"] == "€" * 200


def test_multipart_with_two_files_is_refused(client):
    chunks, headers = multipart_in_chunks([("file", "a.txt", b"first file\n"), ("file", "b.txt", b"second file\n")])
    r = client.post("/corpora", content=chunks, headers=headers)
    assert r.status_code == 422, r.text
    assert "more than one `file`" in r.json()["detail"]
