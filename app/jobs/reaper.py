"""Jobs whose worker went silent go back to the queue (or fail after too many tries).

Workers reap as they poll for work. The API reaps too: with every worker dead nobody else would, and
a dead worker's job would show as running forever instead of waiting in the queue.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from app.db import session_scope
from app.jobs import lifecycle
from app.settings import Settings

log = logging.getLogger("charrnn.jobs")


def reap_once(max_attempts: int) -> None:
    with session_scope() as session:
        for job_id, outcome in lifecycle.reap_expired(session, max_attempts=max_attempts):
            log.warning("job %s lost its worker: %s", job_id, outcome)


async def reap_forever(settings: Settings) -> None:
    """The API's reaper: once a lease length, in the background of the event loop."""
    while True:
        await asyncio.sleep(max(1.0, settings.job_lease_seconds))
        try:
            await run_in_threadpool(reap_once, settings.max_attempts)
        except Exception:  # the database may be away for a moment; the next round tries again
            log.exception("reaping expired leases failed")
