"""Following a job's events live: one reader per followed job, fanned out to every follower of it.

    followers of job J (SSE responses)            the API process, one event loop
    -----------------------------------           ---------------------------------------------
    join: read the backlog after Last-Event-ID    JobFeed(J): polls the database every 0.25 s
      from the database (pages of 500) ...          (events after its cursor, the job's status, and
    ... then take from the feed's memory            every 2 s the followers' keys), keeps the latest
      the events after its own position   <------   HISTORY events already encoded, wakes followers
    a follower that falls behind the memory       ends when its last follower leaves, or once the
      reads the database again, then rejoins        job has ended and every event is read

Before, every follower polled the database on its own, four times a second, on the thread pool: 100 of
them made 400 reads a second, held the pool's connections and slowed every other request. Now a job's
followers cost one read per poll between them, and every read the feeds make (polls and backlogs) waits
for one of READERS slots, so followers never hold more than READERS database connections and no request
waits behind them for one.

Exactness: a follower's position is the id of the last event it sent. The feed's memory holds every event
after `floor` (up to its cursor), in id order; a follower takes from it only when its position is at or
past `floor`, and only the events after its position. So neither a late joiner nor a resumer sees a gap or
a duplicate, however the reads interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from sqlalchemy import func, select
from sse_starlette.sse import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.db import read_session
from app.jobs import repository
from app.jobs.schemas import EventOut
from app.keys.service import hash_key, owners_of_key_hashes
from app.keys.streams import KEY_RECHECK_SECONDS, REVOKED_EVENT
from app.models import FINAL_STATUSES, JobEvent, JobStatus

log = logging.getLogger("charrnn.api")

POLL_SECONDS = 0.25  # how often a followed job's new events are looked for (as each follower did before)
PAGE = 500  # events per read
HISTORY = 2000  # events a feed keeps in memory: a follower further behind reads the database again
READERS = 2  # database reads all the feeds of this process make at once


def encode(event: JobEvent) -> bytes:
    """An event as its Server-Sent Events message, encoded once for every follower (off the event loop)."""
    payload = EventOut.model_validate(event).model_dump(mode="json")
    return ServerSentEvent(json.dumps(payload), id=str(event.id), event=event.type).encode()


def read_events(owner: str, job_id: str, after: int | None, limit: int = PAGE, key_hashes: tuple[str, ...] = ()):
    """(status, [(id, message)], cursor, {key hash: owner}) in one read session: the job's status (None if
    it is gone), then its events after `after`, and the owners of the still valid keys among `key_hashes`.
    `cursor` is the id the page goes up to: with `after` None, the job's latest event (the page starts
    there), and after a short page the latest event then (every event up to it has been read, or deleted)."""
    with read_session() as session:  # reads only: on SQLite it never waits for the write lock
        owners = owners_of_key_hashes(session, key_hashes) if key_hashes else {}
        job = repository.get(session, owner=owner, job_id=job_id)  # the status before the events: none missed
        if job is None:
            return None, [], after or 0, owners
        latest = select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)
        if after is None:
            after = session.scalar(latest) or 0
        events = repository.events(session, owner=owner, job_id=job_id, after=after, limit=limit)
        cursor = events[-1].id if events else after
        if len(events) < limit:
            cursor = max(cursor, session.scalar(latest) or 0)
        return job.status, [(e.id, encode(e)) for e in events], cursor, owners


class JobFeed:
    """One followed job: its reader task and what it has read."""

    def __init__(self, feeds: Feeds, owner: str, job_id: str):
        self.feeds, self.owner, self.job_id = feeds, owner, job_id
        self.history: deque[tuple[int, bytes]] = deque()
        self.floor: int | None = None  # every event after this id, up to the last read, is in `history`
        self.ended = False  # the job ended (or is gone) and everything was read, or the reader failed
        self.keys: dict[str, int] = {}  # each follower's key hash, counted
        self.revoked: set[str] = set()
        self.changed = asyncio.Event()  # replaced after each wake-up: a follower waits on the one it saw
        self.followers = 0
        self.task: asyncio.Task | None = None

    def events_after(self, position: int) -> list[tuple[int, bytes]] | None:
        """The events after `position` in memory; None when memory does not reach back that far."""
        if self.floor is None or position < self.floor:
            return None
        newer = []
        for item in reversed(self.history):  # from the newest: a follower that keeps up wants only the last few
            if item[0] <= position:
                break
            newer.append(item)
        newer.reverse()
        return newer

    def _wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        checked_at = time.monotonic()
        try:
            while self.followers > 0:
                due = time.monotonic() - checked_at >= KEY_RECHECK_SECONDS
                hashes = tuple(self.keys) if due else ()
                cursor = self.history[-1][0] if self.history else self.floor
                async with self.feeds.readers:
                    status, items, cursor, owners = await run_in_threadpool(
                        read_events, self.owner, self.job_id, cursor, PAGE, hashes
                    )
                if due:  # checked in the poll's own session: no extra trip to the database
                    checked_at = time.monotonic()
                    self.revoked |= {h for h in hashes if owners.get(h) != self.owner}
                if self.floor is None:
                    self.floor = cursor
                self.history.extend(items)
                while len(self.history) > HISTORY:
                    self.floor = self.history.popleft()[0]
                if status is None or (status in FINAL_STATUSES and not items):
                    self.ended = True
                self._wake()
                if self.ended:
                    return
                if len(items) < PAGE:
                    await asyncio.sleep(POLL_SECONDS)
        except Exception:  # the database is away: the streams end, and their clients resume with Last-Event-ID
            log.warning("job %s: could not read its events for its followers", self.job_id, exc_info=True)
            self.ended = True
            self._wake()
        finally:
            self.feeds.forget(self)


class Feeds:
    """This API process's followed jobs (app.state.feeds)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> None:
        # asyncio primitives belong to one loop; in-process tests run an app on several, one at a time.
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.loop, self.jobs, self.readers = loop, {}, asyncio.Semaphore(READERS)

    async def read(self, owner: str, job_id: str, after: int):
        """One page of a job's events after `after`, taking a reader slot: (status, [(id, message)], cursor)."""
        self._bind()
        async with self.readers:
            status, items, cursor, _ = await run_in_threadpool(read_events, owner, job_id, after)
        return status, items, cursor

    def forget(self, feed: JobFeed) -> None:
        if self.jobs.get((feed.owner, feed.job_id)) is feed:
            del self.jobs[(feed.owner, feed.job_id)]

    @contextlib.contextmanager
    def joined(self, owner: str, job_id: str, key_hash: str):
        self._bind()
        feed = self.jobs.get((owner, job_id))
        if feed is None or feed.ended:
            feed = self.jobs[(owner, job_id)] = JobFeed(self, owner, job_id)
        feed.followers += 1
        feed.keys[key_hash] = feed.keys.get(key_hash, 0) + 1
        if feed.task is None:
            feed.task = asyncio.create_task(feed.run(), name=f"feed-{job_id}")
        try:
            yield feed
        finally:
            feed.followers -= 1
            feed.keys[key_hash] -= 1
            if not feed.keys[key_hash]:
                del feed.keys[key_hash]
            if not feed.followers:  # no one left to read for: the next follower starts a new feed
                feed.ended = True
                if feed.task is not None:
                    feed.task.cancel()

    async def follow(
        self, owner: str, job_id: str, key: str, after: int, status: JobStatus, first: list[tuple[int, bytes]]
    ) -> AsyncIterator[dict | bytes]:
        """A follower's stream: `first` (the route's read of the backlog after `after`), the rest of the
        backlog, then the job's shared feed until the job ends, the follower leaves or its key is revoked."""
        position = after
        for event_id, message in first:
            position = event_id
            yield message
        # The job had ended when the route read: nothing more will come, so no feed is needed.
        while status in FINAL_STATUSES and len(first) == PAGE:
            status, first, _ = await self.read(owner, job_id, position)
            for event_id, message in first:
                position = event_id
                yield message
        if status is None or status in FINAL_STATUSES:
            return
        key_hash = hash_key(key)
        with self.joined(owner, job_id, key_hash) as feed:
            behind = len(first) == PAGE  # the backlog goes on past the first page
            while True:
                changed = feed.changed  # taken before looking: a wake-up after this is not missed
                if key_hash in feed.revoked:
                    yield REVOKED_EVENT
                    return
                items = None if behind else feed.events_after(position)
                if items is None and (behind or feed.floor is not None):  # behind the memory: the database
                    ended = feed.ended  # before the read: everything the feed saw is then in the database
                    status, items, cursor = await self.read(owner, job_id, position)
                    behind = len(items) == PAGE
                    for event_id, message in items:
                        position = event_id
                        yield message
                    if status is None:  # the job was deleted
                        return
                    if behind or items:
                        continue
                    # Every event up to `cursor` has been sent (or was deleted): usually past the memory's
                    # floor now; if not, what lies between comes with the next read.
                    position = max(position, cursor)
                    if ended:
                        return
                    if feed.events_after(position) is None:
                        await changed.wait()
                    continue
                for event_id, message in items or ():
                    position = event_id
                    yield message
                if items:
                    continue
                if feed.ended and (items is not None or feed.floor is None):  # all sent, or the reader failed
                    return
                await changed.wait()
