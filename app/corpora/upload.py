"""Streaming an upload to disk: the byte limit is enforced while reading, memory stays flat.

Bodies arrive either raw (text/plain) or as multipart/form-data; both are read chunk by chunk from
the ASGI stream. The UTF-8 check runs incrementally over the same chunks and reports the byte offset
of the first bad byte, so a 200 MB file is never held in memory, decoded or not.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from app.errors import ApiError
from app.storage import Store

# After the limit is passed the rest of the body is read and dropped (so the client sees the 413
# instead of a broken pipe) - but only up to this much, then the connection is simply answered.
DRAIN_LIMIT = 256 * 1024 * 1024
NAME_MAX = 200
TMP_GLOB = ".upload-*.tmp"
# A crashed delete's tombstone is only judged once it is this old: a live delete (in this or another API
# process) holds its tombstone for milliseconds, between its commit and its unlink.
TOMBSTONE_GLOB = ".deleted-*"
TOMBSTONE_MIN_AGE_SECONDS = 60.0
# Out of space, or over a disk quota: either way the upload cannot be stored.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Incoming:
    """An upload's body as it arrives, before a byte of it is read: what every upload route hands the
    service (app/corpora/service.py upload()), taken from the request by the `IncomingUpload` dependency."""

    stream: AsyncIterator[bytes]
    content_type: str
    content_length: str | None


def incoming(request: Request) -> Incoming:
    return Incoming(request.stream(), request.headers.get("content-type", ""), request.headers.get("content-length"))


IncomingUpload = Annotated[Incoming, Depends(incoming)]


class TooLarge(Exception):
    pass


class DiskFull(Exception):
    pass


def disk_full() -> ApiError:
    return ApiError(
        507,
        "the server's disk is full: the upload could not be stored and nothing of it was kept. Free space by "
        "deleting what you no longer need: corpora (DELETE /corpora/{id}), ended jobs with their checkpoints "
        "(DELETE /jobs/{id}) or single checkpoints (DELETE /checkpoints/{id}); deletes work even now. Then "
        "retry, or ask the operator to free space in the data directory",
        headers={"Retry-After": "60"},
    )


class CorpusSink:
    """Writes bytes to a temporary file while hashing, counting and UTF-8-checking them."""

    def __init__(self, directory: Path, max_bytes: int, max_vocab: int | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.max_bytes, self.max_vocab = directory, max_bytes, max_vocab
        self.tmp_path = directory / f".upload-{secrets.token_hex(8)}.tmp"
        self.file = open(self.tmp_path, "wb")  # noqa: SIM115  (closed in finish/discard)
        # Held while the upload lives (the OS drops it if the process dies): the start-up sweep removes
        # only temp files nobody holds, so it never deletes another API process's upload in flight.
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.sha = hashlib.sha256()
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.size = 0
        self.num_chars = 0
        self.chars: set[str] = set()
        self.bad: str | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.size + len(data) > self.max_bytes:
            raise TooLarge
        if self.bad is None:
            pending = len(self.decoder.buffer)
            try:
                text = self.decoder.decode(data)
            except UnicodeDecodeError as exc:
                offset = self.size - pending + exc.start
                byte = (self.decoder.buffer + data)[exc.start] if exc.start < pending + len(data) else 0
                self.bad = (
                    f"the upload is not valid UTF-8: byte 0x{byte:02x} at offset {offset} ({exc.reason}). "
                    "Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`."
                )
            else:
                self.num_chars += len(text)
                # Counting stops one past the limit: a million distinct code points must not fill memory here.
                if self.max_vocab is None or len(self.chars) <= self.max_vocab:
                    self.chars.update(text)
        self.size += len(data)
        self.sha.update(data)
        try:
            self.file.write(data)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull from None
            raise

    @property
    def too_many_chars(self) -> bool:
        return self.max_vocab is not None and len(self.chars) > self.max_vocab

    def finish(self) -> tuple[str, str]:
        """Validate the whole upload; returns (sha256, the content-addressed key it will have in the store).

        The file stays in its temporary place: `place()` moves it, under the lock that keeps a delete
        of the same content from removing it at the same moment (see corpora/service.py)."""
        if self.bad is None:
            try:
                self.num_chars += len(self.decoder.decode(b"", final=True))
            except UnicodeDecodeError as exc:
                self.bad = (
                    f"the upload is not valid UTF-8: it ends inside a multi-byte character at offset "
                    f"{self.size - len(self.decoder.buffer) + exc.start} ({exc.reason}). Re-save it as UTF-8."
                )
        try:
            self.file.flush()
            os.fsync(self.file.fileno())  # ENOSPC can wait until here (delayed allocation); say it now
        except OSError as exc:
            self.discard()
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full() from None
            raise
        if self.bad:
            self.discard()
            raise ApiError(422, self.bad)
        if self.size == 0:
            self.discard()
            raise ApiError(422, "the upload is empty: a corpus needs text to learn from")
        if self.too_many_chars:
            self.discard()
            raise ApiError(
                422,
                f"the upload has more than {self.max_vocab:,} distinct characters (CHARRNN_MAX_VOCAB_SIZE); "
                "a model's output layer grows with each one, so this would not fit in memory. Keep only the "
                "text (and scripts) you want the model to learn, or ask the operator to raise the limit.",
            )
        digest = self.sha.hexdigest()
        return digest, f"corpora/{digest}.txt"

    def send(self, store: Store, key: str) -> None:
        """Copy the upload to a remote store, keeping the temporary file (for `place`, if it must be sent
        again under the lock)."""
        self.file.flush()
        store.put_file(key, self.tmp_path)

    def place(self, store: Store, key: str) -> None:
        """Put the upload in the store: renamed into the data directory, or streamed to S3 (multipart)."""
        self.file.flush()
        store.put_file(key, self.tmp_path, move=True)  # same content, same name: replacing is harmless
        self._close()  # held (locked) until now, so that no start-up sweep takes it mid-put

    def _close(self) -> None:
        with contextlib.suppress(OSError):  # flushing the rest failed (disk full): it is closed all the same
            self.file.close()

    def discard(self) -> None:
        """Remove the temporary file; safe to call on every path out, any number of times."""
        self._close()
        self.tmp_path.unlink(missing_ok=True)


def sweep_stale_temp_files(corpora_dir: Path) -> list[Path]:
    """Remove upload temp files that no live upload holds (left by a crash or a kill -9); returns them."""
    removed = []
    for path in corpora_dir.glob(TMP_GLOB):
        try:
            with open(path, "rb") as held:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
        except BlockingIOError:
            continue  # an upload in flight, in another API process on this data dir
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


async def _drain(stream: AsyncIterator[bytes], already: int) -> None:
    seen = already
    async for chunk in stream:
        seen += len(chunk)
        if seen > DRAIN_LIMIT:
            break


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than the limit of {limit:,} bytes (CHARRNN_MAX_CORPUS_BYTES); "
        "upload a smaller file or ask the operator to raise the limit",
    )


async def receive_raw(stream: AsyncIterator[bytes], sink: CorpusSink) -> None:
    try:
        async for chunk in stream:
            sink.write(chunk)
    except TooLarge:
        sink.discard()
        await _drain(stream, sink.size)
        raise _too_large(sink.max_bytes) from None
    except DiskFull:
        sink.discard()
        await _drain(stream, sink.size)  # so the client reads the 507 rather than a reset connection
        raise disk_full() from None


async def receive_multipart(stream: AsyncIterator[bytes], content_type: str, sink: CorpusSink) -> str | None:
    """Stream the `file` part into the sink; return the `name` field (or the file name) if any."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(422, "multipart upload without a boundary; let your HTTP client build the form body")

    state = {"header_field": b"", "headers": {}, "part": None, "file_seen": False, "name_too_long": False}
    name_field = bytearray()
    filename: list[str] = []

    def on_header_field(data, start, end):
        state["header_field"] += data[start:end]

    def on_header_value(data, start, end):
        key = state["header_field"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]

    def on_header_end():
        state["header_field"] = b""

    def on_headers_finished():
        disposition = state["headers"].get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        state["part"] = field
        if field == "file":
            if state["file_seen"]:  # joining them would train on a text nobody uploaded
                raise ApiError(422, "the form has more than one `file` field; upload one file per request")
            state["file_seen"] = True
            if options.get(b"filename"):
                filename.append(options[b"filename"].decode("utf-8", "replace"))

    def on_part_data(data, start, end):
        if state["part"] == "file":
            sink.write(data[start:end])
        elif state["part"] == "name":
            # NAME_MAX characters are at most 4 bytes each; past that the name is too long, whatever
            # it holds (and a cut there may split a character, which must not read as "bad UTF-8").
            room = NAME_MAX * 4 - len(name_field)
            if end - start > room:
                state["name_too_long"] = True
            name_field.extend(data[start : start + max(0, min(room, end - start))])

    def on_part_end():
        state["part"], state["headers"] = None, {}

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except TooLarge:
        sink.discard()
        await _drain(stream, sink.size)
        raise _too_large(sink.max_bytes) from None
    except DiskFull:
        sink.discard()
        await _drain(stream, sink.size)
        raise disk_full() from None
    except ApiError:
        sink.discard()
        await _drain(stream, sink.size)  # so the client reads the answer rather than a reset connection
        raise
    except Exception as exc:  # the multipart parser's own errors: a malformed body
        sink.discard()
        if isinstance(exc, ClientDisconnect):
            raise
        raise ApiError(422, f"malformed multipart body ({exc}); send the text as the form field `file`") from None
    if not state["file_seen"]:
        sink.discard()
        raise ApiError(422, "the multipart form has no field named `file`; put the text in a field called `file`")
    if state["name_too_long"]:
        sink.discard()
        raise ApiError(
            422, f"the form field `name` is longer than {NAME_MAX} characters; keep it to {NAME_MAX} or fewer"
        )
    if name_field:
        try:
            return name_field.decode("utf-8")
        except UnicodeDecodeError:
            sink.discard()
            raise ApiError(422, "the form field `name` is not valid UTF-8") from None
    return filename[0] if filename else None
