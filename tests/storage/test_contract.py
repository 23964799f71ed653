"""The storage interface's contract (app/storage/base.py), on both backends: the data directory and a real
S3 server (moto's, over HTTP with signed requests). Anything the services rely on is asserted here once."""

from __future__ import annotations

import hashlib
import io
import os
import re
import time

import pytest

from app.storage import CorruptObject, ObjectCache, ObjectMissing, StoreError, StoreFull
from app.storage.local import LocalStore
from app.storage.s3 import MULTIPART_BYTES, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        yield LocalStore(tmp_path / "data")
        return
    moto = request.getfixturevalue("moto_s3")
    url = moto.bucket()
    with moto.environment():
        yield S3Store(url)


def put(store, key: str, data: bytes, tmp_path) -> None:
    src = tmp_path / f"src-{time.monotonic_ns()}"
    src.write_bytes(data)
    store.put_file(key, src)


def test_put_read_size_list_delete(store, tmp_path):
    put(store, "corpora/a.txt", b"hello", tmp_path)
    store.put_bytes("runs/job_1/last.json", b'{"step": 2}')
    put(store, "runs/job_1/checkpoints/step-1.safetensors", b"w" * 10, tmp_path)
    assert store.get_bytes("corpora/a.txt") == b"hello"
    assert store.size("corpora/a.txt") == 5
    assert store.size("corpora/missing.txt") is None
    listed = {info.key: info.size for info in store.list("runs/job_1/")}
    assert listed == {"runs/job_1/last.json": 11, "runs/job_1/checkpoints/step-1.safetensors": 10}
    assert all(abs(info.modified - time.time()) < 300 for info in store.list("runs/"))
    store.delete(["corpora/a.txt", "corpora/never-there.txt"])  # a missing key is no error
    assert store.size("corpora/a.txt") is None
    with pytest.raises(ObjectMissing):
        store.get_bytes("corpora/a.txt")


def test_delete_prefix_removes_only_that_run(store, tmp_path):
    for job in ("job_1", "job_10"):
        store.put_bytes(f"runs/{job}/last.json", b"{}")
        store.put_bytes(f"runs/{job}/checkpoints/step-1.state.pt", b"s")
    store.delete_prefix("runs/job_1/")
    assert [i.key for i in store.list("runs/job_1/")] == []
    assert sorted(i.key for i in store.list("runs/job_10/")) == [
        "runs/job_10/checkpoints/step-1.state.pt", "runs/job_10/last.json"
    ]


def test_move_renames_and_a_missing_source_says_so(store, tmp_path):
    put(store, "corpora/x.txt", b"content", tmp_path)
    store.move("corpora/x.txt", "corpora/.deleted-1-x.txt")
    assert store.size("corpora/x.txt") is None
    assert store.get_bytes("corpora/.deleted-1-x.txt") == b"content"
    with pytest.raises(ObjectMissing):
        store.move("corpora/x.txt", "corpora/y.txt")


def test_a_large_file_streams_in_parts_and_round_trips(store, tmp_path):
    """Past the multipart threshold (S3: a multipart upload of 16 MB parts); read back in chunks."""
    data = os.urandom(1 << 16) * ((MULTIPART_BYTES + (3 << 20)) >> 16)
    put(store, "corpora/big.txt", data, tmp_path)
    chunks = list(store.iter_bytes("corpora/big.txt", chunk=1 << 20))
    assert max(len(c) for c in chunks) <= 1 << 20
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(data).hexdigest()


def test_fetch_checks_size_and_sha256(store, tmp_path):
    put(store, "corpora/c.txt", b"abc", tmp_path)
    out = io.BytesIO()
    assert store.fetch("corpora/c.txt", out, sha256=hashlib.sha256(b"abc").hexdigest(), size=3) == (
        hashlib.sha256(b"abc").hexdigest()
    )
    with pytest.raises(CorruptObject):
        store.fetch("corpora/c.txt", io.BytesIO(), sha256=hashlib.sha256(b"abd").hexdigest())


def test_keys_cannot_climb_out(store):
    for bad in ("../x", "/etc/passwd", "runs/../../x", ""):
        with pytest.raises(ValueError):
            store.size(bad)


def test_check_writable_leaves_nothing(store):
    store.check_writable()
    assert [i.key for i in store.list("")] == []


def test_cache_fetches_once_checks_and_evicts_least_recently_used(store, tmp_path):
    blobs = {name: name.encode() * 100 for name in ("a", "b", "c")}  # 100 bytes each
    for name, data in blobs.items():
        put(store, f"corpora/{name}.txt", data, tmp_path)
    cache = ObjectCache(tmp_path / "cache", max_bytes=250)
    digest = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    paths = {}
    for name in ("a", "b"):
        paths[name] = cache.path(store, f"corpora/{name}.txt", sha256=digest[name], size=100)
        assert paths[name].read_bytes() == blobs[name]
    if store.local_root is not None:
        # The data directory is its own copy: read in place, nothing cached.
        assert paths["a"] == store.local_root / "corpora/a.txt"
        assert not (tmp_path / "cache").exists()
        return
    os.utime(paths["a"], (time.time() + 5, time.time() + 5))  # a used after b
    store.delete(["corpora/a.txt"])
    assert cache.path(store, "corpora/a.txt", sha256=digest["a"]).read_bytes() == blobs["a"]  # from the cache
    cache.path(store, "corpora/c.txt", sha256=digest["c"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([digest["a"], digest["c"]])
    # A copy whose bytes do not match its record is refused, and nothing of it stays.
    put(store, "corpora/d.txt", b"tampered", tmp_path)
    with pytest.raises(CorruptObject):
        cache.path(store, "corpora/d.txt", sha256=hashlib.sha256(b"original").hexdigest())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([digest["a"], digest["c"]])


def test_s3_errors_name_the_store_and_what_to_check(moto_s3, tmp_path):
    with moto_s3.environment():
        missing = S3Store("s3://no-such-bucket-here/p")
        with pytest.raises(StoreError, match="no-such-bucket-here.*does not exist.*CHARRNN_STORAGE_URL"):
            missing.check_writable()
        os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # nothing listens on the discard port
        unreachable = S3Store(moto_s3.bucket())
        with pytest.raises(StoreError, match="unreachable.*AWS_ENDPOINT_URL") as caught:
            unreachable.check_writable()
        assert "testing" not in str(caught.value)  # never a credential


@pytest.mark.parametrize(
    ("code", "status", "kind", "says"),
    [
        ("AccessDenied", 403, StoreError, "access denied.*AWS_ACCESS_KEY_ID"),
        ("InvalidAccessKeyId", 403, StoreError, "access denied"),
        ("XMinioStorageFull", 507, StoreFull, "full or over its quota"),
        ("QuotaExceeded", 400, StoreFull, "full or over its quota"),
        ("NoSuchBucket", 404, StoreError, "does not exist"),
    ],
)
def test_s3_error_codes_map_to_503_or_507(moto_s3, code, status, kind, says):
    """What a store answers that moto cannot be made to (denied credentials, MinIO's full disk, a quota),
    as botocore reports it: the store's name and what to check, 503 or 507, never a credential."""
    from botocore.exceptions import ClientError

    with moto_s3.environment():
        store = S3Store("s3://some-bucket/p")
    error = ClientError({"Error": {"Code": code, "Message": "..."},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    judged = store._failed(error, "storing corpora/x.txt")
    assert type(judged) is kind and judged.status == (507 if kind is StoreFull else 503)
    assert re.search(says, judged.message) and "s3://some-bucket/p/" in judged.message
    assert "testing" not in judged.message
