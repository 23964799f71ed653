"""Corpora: uploads land in content-addressed files (`corpora/<sha256>.txt`) that identical uploads share.

A shared file must never be removed while a row may still claim it. An upload places the file and inserts
its row, and a delete removes its row and (when it was the last) the file, each holding one lock on the
content: SQLite's write lock (BEGIN IMMEDIATE), or on PostgreSQL an advisory lock keyed by the hash, so
the two never interleave. Without it, owner A's delete and owner B's upload of the same bytes raced, and B
got 201 for a corpus whose file was already gone.

The files live in the deployment's store (app/storage: the data directory, or an S3 bucket). An upload is
received into a temporary file on this machine (hashed and checked as it streams in), then put in the store
under the lock; only once its row commits does it count. With S3 the upload happens while the lock is held:
PostgreSQL's lock is per content, so only uploads and deletes of the same bytes wait for it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.corpora import repository
from app.corpora.references import references_of_upload
from app.corpora.upload import (
    NAME_MAX,
    TOMBSTONE_MIN_AGE_SECONDS,
    CorpusSink,
    Incoming,
    receive_multipart,
    receive_raw,
    sweep_stale_temp_files,
)
from app.db import after_commit, after_rollback, session_scope, utcnow
from app.errors import ApiError, not_found
from app.ids import new_id
from app.models import Checkpoint, Corpus
from app.owner_lock import lock_owner
from app.settings import Settings
from app.storage import ObjectMissing, Store, StoreError, get_store
from app.strings import NUL_MESSAGE

log = logging.getLogger("charrnn.api")
# An owner over their storage quota frees space by deleting corpora; nothing frees itself, so a client
# that retries blindly should at least not hammer.
QUOTA_RETRY_AFTER = "60"
CONTENT_NAME = re.compile(r"[0-9a-f]{64}\.txt")


async def upload(session: Session, *, owner: str, settings: Settings, body: Incoming, name: str | None) -> Corpus:
    """Store an upload (raw text/plain or a multipart form's `file`) as the owner's corpus, under every
    rule: Content-Type, size, UTF-8, distinct characters, the owner's stored-bytes quota, a full disk.
    The one upload path: POST /corpora and POST /v1/files both call it."""
    stream, content_type, content_length = body.stream, body.content_type, body.content_length
    media = content_type.split(";")[0].strip().lower()
    if media not in ("text/plain", "multipart/form-data"):
        raise ApiError(
            415,
            f"unsupported Content-Type {media or '(none)'!r}: send a multipart form with the field `file`, "
            "or the raw text with `Content-Type: text/plain`",
        )
    if content_length and content_length.isdigit() and int(content_length) > settings.max_corpus_bytes + 64 * 1024:
        raise ApiError(
            413,
            f"the upload ({int(content_length):,} bytes) is larger than the limit of "
            f"{settings.max_corpus_bytes:,} bytes (CHARRNN_MAX_CORPUS_BYTES)",
        )
    sink = CorpusSink(settings.corpora_dir, settings.max_corpus_bytes, settings.max_vocab_size)
    # Every way out but a stored corpus removes the temporary file: a refusal, a client that went away
    # mid-body (ClientDisconnect), a full disk, a database error, a cancelled request.
    try:
        if media == "text/plain":
            await receive_raw(stream, sink)
            form_name = None
        else:
            form_name = await receive_multipart(stream, content_type, sink)
        for field, given in (("name", name), ("the form's name", form_name)):
            if given and len(given) > NAME_MAX:
                raise ApiError(422, f"{field} is {len(given)} characters long; keep it to {NAME_MAX} or fewer")
            if given and "\x00" in given:
                raise ApiError(422, f"{field} {NUL_MESSAGE}")
        name = (name or form_name or "corpus").strip() or "corpus"
        sha256, key = sink.finish()
        reference_losses = await run_in_threadpool(references_of_upload, sink.tmp_path, sink.num_chars)
        corpus = Corpus(
            id=new_id("corpus"),
            owner=owner,
            name=name,
            sha256=sha256,
            size_bytes=sink.size,
            num_chars=sink.num_chars,
            vocab_size=len(sink.chars),
            path=key,
            created_at=utcnow(),
            reference_losses=reference_losses,
        )
        # Off the event loop: the insert may wait seconds for a database lock, and the API must keep answering.
        await run_in_threadpool(
            _store, session, sink, corpus, get_store(settings), settings.max_corpus_bytes_per_owner
        )
    finally:
        sink.discard()  # no-op once placed
    return corpus


def lock_content(session: Session, sha256: str) -> None:
    """Hold, until this transaction ends, the lock that serializes writes to one content-addressed file."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(sha256[:15], 16)})
    else:
        session.connection()  # SQLite: BEGIN IMMEDIATE takes the database's one write lock


def stored_bytes(session: Session, *, owner: str) -> tuple[int, int]:
    """(corpus bytes, checkpoint bytes) the owner stores: what CHARRNN_MAX_CORPUS_BYTES_PER_OWNER holds."""
    corpus_bytes = session.scalar(select(func.coalesce(func.sum(Corpus.size_bytes), 0)).where(Corpus.owner == owner))
    checkpoint_bytes = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0)).where(Checkpoint.owner == owner)
    )
    return int(corpus_bytes), int(checkpoint_bytes)


def over_quota(what: str, corpus_bytes: int, checkpoint_bytes: int, adding: int, limit: int) -> ApiError:
    stored = corpus_bytes + checkpoint_bytes
    split = f"{corpus_bytes:,} in corpora, {checkpoint_bytes:,} in checkpoints"
    if adding:
        said = f"{what} would take what you store to {stored + adding:,} bytes ({split}, {adding:,} more), over"
    else:
        said = f"{what} needs room, and you already store {stored:,} bytes ({split}), at or over"
    return ApiError(
        429,
        f"{said} the limit of {limit:,} bytes per owner (CHARRNN_MAX_CORPUS_BYTES_PER_OWNER); delete what you "
        "no longer need: corpora (DELETE /corpora/{id}), ended jobs with their checkpoints (DELETE /jobs/{id}) "
        "or single checkpoints (DELETE /checkpoints/{id}), or ask the operator to raise the limit",
        headers={"Retry-After": QUOTA_RETRY_AFTER},
    )


def check_owner_quota(session: Session, *, owner: str, adding: int, limit: int, what: str = "this upload") -> None:
    """Corpora and checkpoints count alike. Call inside the write transaction that stores the bytes: the
    owner's lock makes the count and the write one step for every API process."""
    lock_owner(session, owner=owner, limit="bytes")
    corpus_bytes, checkpoint_bytes = stored_bytes(session, owner=owner)
    # A job adds no bytes when it queues (its checkpoints come later, pruned to a few by retention): it is
    # refused once the owner is already at the limit, so that space is freed before more is written.
    full = corpus_bytes + checkpoint_bytes + adding > limit if adding else corpus_bytes + checkpoint_bytes >= limit
    if full:
        raise over_quota(what, corpus_bytes, checkpoint_bytes, adding, limit)


def _store(session: Session, sink: CorpusSink, corpus: Corpus, store: Store, owner_limit: int) -> None:
    try:
        sent = store.local_root is None
        if sent:
            # A remote store: the bytes go before the lock is taken. Sending a large corpus takes seconds,
            # and on SQLite the lock is the database's one write lock: every worker's progress would wait.
            # The key is the content's hash, so a second upload of the same text sends the same object.
            sink.send(store, corpus.path)
            key, sha256, corpus_id = corpus.path, corpus.sha256, corpus.id
            after_rollback(session, lambda: _remove_if_unused(store, key, sha256, corpus_id))
        lock_content(session, corpus.sha256)
        check_owner_quota(
            session, owner=corpus.owner, adding=corpus.size_bytes, limit=owner_limit,
            what=f"this upload ({corpus.size_bytes:,} bytes)",
        )
        # Placed under the lock, so a delete of the same content either finished before (and the
        # file is re-created here) or starts after this row is committed (and sees it). A store that
        # fails (unreachable, full) raises StoreError: the request's transaction rolls back, nothing counts.
        # What was sent before the lock is there unless such a delete (or a start-up sweep of objects no
        # row names) removed it meanwhile.
        if not sent or store.size(corpus.path) != corpus.size_bytes:
            sink.place(store, corpus.path)
        session.add(corpus)
    finally:
        sink.discard()  # the temporary file, if it was never placed


def _remove_if_unused(store: Store, key: str, sha256: str, corpus_id: str) -> None:
    """After a refused upload to a remote store: remove the object it sent, unless a corpus uses that content
    (checked under the content's lock, as a delete does). Best effort: the start-up sweep removes orphans."""
    try:
        with session_scope() as session:
            lock_content(session, sha256)
            if not repository.others_with_file(session, path=key, corpus_id=corpus_id):
                store.delete([key])
    except Exception:  # noqa: BLE001 - the refusal is the answer; an orphan only waits for the sweep
        log.warning("could not remove %s after a refused upload; the start-up sweep will", key, exc_info=True)


def get(session: Session, *, owner: str, corpus_id: str) -> Corpus:
    corpus = repository.get(session, owner=owner, corpus_id=corpus_id)
    if corpus is None:
        raise not_found("corpus", corpus_id)
    return corpus


def delete(session: Session, *, owner: str, settings: Settings, corpus_id: str) -> None:
    store = get_store(settings)
    corpus = get(session, owner=owner, corpus_id=corpus_id)
    jobs = repository.active_jobs_using(session, owner=owner, corpus_id=corpus_id)
    if jobs:
        raise ApiError(
            409,
            f"corpus {corpus_id} is used by {len(jobs)} queued or running job(s) "
            f"({', '.join(jobs[:5])}); "
            "cancel them or wait for them to finish, then delete it",
        )
    lock_content(session, corpus.sha256)
    deleted = session.execute(sql_delete(Corpus).where(Corpus.id == corpus_id, Corpus.owner == owner))
    if not deleted.rowcount:
        raise not_found("corpus", corpus_id)  # a concurrent delete of the same corpus got here first
    if not repository.others_with_file(session, path=corpus.path, corpus_id=corpus_id):
        # The last row to use the file: move it aside under the lock, and remove it once the delete
        # has committed (or put it back if the transaction rolls back, so no row is left without its file).
        tombstone = _move_aside(store, corpus.path)
        if tombstone is not None:
            after_commit(session, lambda: _remove_tombstone(store, tombstone))
            after_rollback(session, lambda: store.move(tombstone, corpus.path))


def _remove_tombstone(store: Store, tombstone: str) -> None:
    try:
        store.delete([tombstone])
    except StoreError:  # the row is gone, so it no longer counts; the start-up sweep removes it later
        log.warning("could not remove %s; the start-up sweep will", tombstone)


def _move_aside(store: Store, key: str) -> str | None:
    folder, name = key.rsplit("/", 1)
    tombstone = f"{folder}/.deleted-{secrets.token_hex(8)}-{name}"
    try:
        store.move(key, tombstone)
    except ObjectMissing:
        return None
    return tombstone


def sweep_leftovers(settings: Settings) -> None:
    """At API start: remove what a crash left in corpora/ - upload temp files nobody holds, and the
    tombstones of deletes that died between moving a file aside and removing it.

    A tombstone whose content a corpus row still claims is put back (the delete never committed);
    otherwise it is removed. Each is judged under the content's lock, like a delete."""
    directory = settings.corpora_dir
    if directory.is_dir():
        for path in sweep_stale_temp_files(directory):
            log.info("removed a stale upload temp file %s", path.name)
    store = get_store(settings)
    now = time.time()
    for info in list(store.list("corpora/.deleted-")):
        if now - info.modified < TOMBSTONE_MIN_AGE_SECONDS:
            continue
        final_name = info.key.rsplit("/", 1)[-1].split("-", 2)[-1]  # .deleted-<hex>-<sha256>.txt
        if not CONTENT_NAME.fullmatch(final_name):
            continue  # not ours to judge
        final = f"corpora/{final_name}"
        with session_scope() as session:
            lock_content(session, final_name.removesuffix(".txt"))
            claimed = session.scalar(select(func.count()).where(Corpus.path == final))
            if claimed and store.size(final) is None:
                store.move(info.key, final)
                log.warning("restored %s from an unfinished delete", final_name)
            else:
                store.delete([info.key])
                log.info("removed %s left by an unfinished delete", info.key.rsplit("/", 1)[-1])
