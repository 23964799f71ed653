"""Long-lived responses (event streams) outlive the key check at their start; these re-check it as they go.

Without this, a key revoked with `charrnn keys revoke` kept receiving an open stream for as long as the
stream lasted: hours, for a job's events.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from starlette.concurrency import run_in_threadpool

from app.db import read_session
from app.keys.service import owner_for_key

# Often enough that a revoked key stops receiving within seconds; rare enough to cost nothing.
KEY_RECHECK_SECONDS = 2.0
REVOKED_EVENT = {"event": "error", "data": json.dumps({"detail": "the API key was revoked; the stream ends"})}


def key_is_valid(key: str) -> bool:
    with read_session() as session:
        return owner_for_key(session, key=key) is not None


async def end_when_revoked(
    events: AsyncIterator[dict], key: str, every: float = KEY_RECHECK_SECONDS, revoked_event: dict = REVOKED_EVENT
) -> AsyncIterator[dict]:
    """Relay `events`, checking the key at most every `every` seconds; on revocation, say so (with
    `revoked_event`: /v1 says it in OpenAI's error shape) and stop."""
    checked_at = time.monotonic()
    async with aclosing(events):  # closing the source ends its upstream work (e.g. a worker's stream)
        async for event in events:
            if time.monotonic() - checked_at >= every:
                if not await run_in_threadpool(key_is_valid, key):
                    yield revoked_event
                    return
                checked_at = time.monotonic()
            yield event
