"""Objects no row claims, swept: what a crash, a kill -9 or a lost race left in the store.

An object counts only once the row naming it has committed, so an object without a row is either being
written right now (its row is about to commit) or a leftover. Only objects older than ORPHAN_MIN_AGE
are judged: a live write finishes long before. Judged: corpora/<sha256>.txt that no corpus row names;
runs/<job id>/... of a job that no longer exists (a worker that wrote after the job was deleted, a
delete that could not reach the store); and, on S3, the invisible parts of interrupted uploads.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from app.db import session_scope
from app.models import Corpus, Job
from app.storage.base import Store

log = logging.getLogger("charrnn.api")

ORPHAN_MIN_AGE_SECONDS = 3600.0


def sweep_orphans(store: Store, *, min_age: float = ORPHAN_MIN_AGE_SECONDS) -> list[str]:
    """Remove the orphans older than `min_age` seconds; returns their keys."""
    now = time.time()
    corpora = [i for i in store.list("corpora/") if now - i.modified >= min_age and "/." not in i.key]
    runs = [i for i in store.list("runs/") if now - i.modified >= min_age]
    with session_scope() as session:
        claimed = set(session.scalars(select(Corpus.path).where(Corpus.path.in_([i.key for i in corpora]))))
        job_ids = {i.key.split("/")[1] for i in runs if i.key.count("/") >= 2}
        live_jobs = set(session.scalars(select(Job.id).where(Job.id.in_(job_ids))))
    doomed = [i.key for i in corpora if i.key not in claimed]
    doomed += [i.key for i in runs if i.key.count("/") >= 2 and i.key.split("/")[1] not in live_jobs]
    if doomed:
        store.delete(doomed)
        log.info("removed %d object(s) no row claims from %s", len(doomed), store.describe)
    aborted = store.abort_stale_uploads(older_than=min_age)
    if aborted:
        log.info("aborted %d interrupted upload(s) in %s", aborted, store.describe)
    return doomed
