"""An S3-compatible bucket as a store (AWS S3, MinIO, Ceph, R2...), through boto3.

`CHARRNN_STORAGE_URL=s3://bucket/prefix`. Everything else is read the way the AWS tools read it (boto3
is their library): `AWS_ENDPOINT_URL` (MinIO, or any non-AWS store), `AWS_REGION`/`AWS_DEFAULT_REGION`,
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE` and ~/.aws, or an instance
role. No credential is ever logged or put in a message.

Uploads go through s3transfer's managed upload: a file over MULTIPART_BYTES is sent as a multipart
upload of MULTIPART_BYTES parts, a few at a time, so memory stays flat whatever the size; S3 makes the
object visible only when the last part completes, and an interrupted upload is aborted (or, if the
process was killed, its parts are invisible and swept by `abort_stale_uploads`). Reads stream the body.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from app.storage.base import CHUNK, ObjectInfo, ObjectMissing, Store, StoreError, StoreFull, check_key

MULTIPART_BYTES = 16 * 1024 * 1024
MULTIPART_CONCURRENCY = 4  # parts in flight: memory is about this many parts, whatever the file's size
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken",
                "InvalidToken", "AllAccessDisabled"}
FULL_CODES = {"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded", "InsufficientStorage",
              "507"}


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, "prefix/"), or ValueError saying what is wrong."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url!r} is not s3://bucket[/prefix]")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


class S3Store(Store):
    def __init__(self, url: str):
        self.bucket, self.prefix = parse_url(url)
        self.describe = f"the object store s3://{self.bucket}/{self.prefix}"
        # Short timeouts and few retries: an unreachable store must answer 503 in seconds, not minutes.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self.client = boto3.session.Session().client("s3", config=config)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
            max_concurrency=MULTIPART_CONCURRENCY, io_chunksize=CHUNK,
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _failed(self, exc: Exception, doing: str) -> Exception:
        """What a botocore error means for the operator, naming the store and what to check."""
        where = self.describe
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"{where}: no credentials ({doing}); set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the machine a role")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in MISSING_CODES:
                return ObjectMissing(doing)
            if code == "NoSuchBucket":
                return StoreError(f"{where}: the bucket {self.bucket!r} does not exist ({doing}); create it, "
                                  "or fix CHARRNN_STORAGE_URL (and AWS_ENDPOINT_URL for a non-AWS store)")
            if code in DENIED_CODES or status == "403":
                return StoreError(f"{where}: access denied ({doing}, {code}); check AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY (or the role) and the bucket's policy")
            if code in FULL_CODES or status == "507":
                return StoreFull(f"{where} is full or over its quota ({doing}, {code}); free space in the bucket "
                                 "or raise its quota")
            return StoreError(f"{where}: {doing} failed ({code or status}); check the store's health")
        if isinstance(exc, BotoCoreError):
            return StoreError(f"{where} is unreachable ({doing}: {type(exc).__name__}); check AWS_ENDPOINT_URL "
                              "and that the store is up and reachable from this machine")
        return exc

    def _call(self, doing: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, doing) from None
        except Boto3Error as exc:  # a managed transfer's wrapper (S3UploadFailedError): judge what it wraps
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, BotoCoreError | ClientError):
                raise self._failed(cause, doing) from None
            raise StoreError(f"{self.describe}: {doing} failed ({type(exc).__name__}); check the store") from None

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        self._call(f"storing {key}", self.client.upload_file, str(src), self.bucket, self._key(key),
                   Config=self.transfer)
        if move:
            Path(src).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"storing {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def iter_bytes(self, key: str, chunk: int = CHUNK) -> Iterator[bytes]:
        response = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, f"reading {key}") from None
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        try:
            head = self._call(f"reading {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return None
        return int(head["ContentLength"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(self.prefix):], int(item["Size"]),
                                     item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, f"listing {prefix or '/'}") from None

    def delete(self, keys: Iterable[str]) -> None:
        keys = [self._key(k) for k in keys]
        for start in range(0, len(keys), 1000):  # S3's limit per request
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            result = self._call("deleting objects", self.client.delete_objects, Bucket=self.bucket,
                                Delete={"Objects": batch, "Quiet": True})
            errors = [e for e in result.get("Errors", []) if e.get("Code") not in MISSING_CODES]
            if errors:
                raise StoreError(f"{self.describe}: deleting {errors[0].get('Key')} failed "
                                 f"({errors[0].get('Code')}); check the credentials' delete permission")

    def move(self, src: str, dst: str) -> None:
        # A managed copy: server-side, in parts for large objects; no byte passes through this process.
        self._call(f"moving {src}", self.client.copy, {"Bucket": self.bucket, "Key": self._key(src)},
                   self.bucket, self._key(dst), Config=self.transfer)
        self.delete([src])

    def check_writable(self) -> None:
        probe = f".write-check-{int(time.time() * 1000)}"
        self.put_bytes(probe, b"ok")
        if self.get_bytes(probe) != b"ok":
            raise StoreError(f"{self.describe}: a probe object read back different bytes; check the store")
        self.delete([probe])

    def abort_stale_uploads(self, older_than: float) -> int:
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if time.time() - upload["Initiated"].timestamp() < older_than:
                        continue  # may be in flight in another process
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(exc, "listing unfinished uploads") from None
        return aborted
