"""The shared feed of a job's events (app/jobs/feeds.py), in-process on a real SQLite file: followers that
fall behind its memory, or join mid-stream, still get every event once and in order.

Its memory is made tiny here (3 events, pages of 4) and events are written in bursts larger than that,
while one follower reads slowly, so the follower's path goes back and forth between the shared memory
and its own reads of the database.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from tests.harness import KEY, queue_dummy_jobs


def test_slow_and_late_followers_get_every_event_once_in_order(api, monkeypatch):
    from app.db import session_scope
    from app.jobs import feeds as feeds_module
    from app.jobs.events import add_event, add_status_event
    from app.models import Job, JobEvent, JobStatus

    monkeypatch.setattr(feeds_module, "HISTORY", 3)
    monkeypatch.setattr(feeds_module, "PAGE", 4)
    monkeypatch.setattr(feeds_module, "POLL_SECONDS", 0.01)
    (job_id,) = queue_dummy_jobs(1)  # owner "o", queued: not ended, so followers use the feed

    def write(n: int, end: bool = False) -> None:
        with session_scope() as s:
            for i in range(n):
                add_event(s, job_id=job_id, type="log", message=f"event {i}")
            if end:
                s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))
                add_status_event(s, job_id=job_id, status=JobStatus.SUCCEEDED, message="done")

    def all_ids() -> list[int]:
        with session_scope() as s:
            return list(s.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    write(10)

    async def follower(feeds, after: int, pause: float) -> list[int]:
        status, first, _ = await feeds.read("o", job_id, after)
        ids = []
        async for message in feeds.follow("o", job_id, KEY, after, status, first):
            ids.append(int(message.decode().split("id: ", 1)[1].split("\r\n", 1)[0]))
            await asyncio.sleep(pause)  # a slow reader falls behind the feed's memory of 3 events
        return ids

    async def scenario():
        feeds = feeds_module.Feeds()
        slow = asyncio.create_task(follower(feeds, 0, 0.01))
        fast = asyncio.create_task(follower(feeds, 0, 0))
        for _ in range(6):
            await asyncio.to_thread(write, 7)
            await asyncio.sleep(0.03)
        middle = all_ids()[30]
        late = asyncio.create_task(follower(feeds, middle, 0))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(write, 5, True)
        results = await asyncio.wait_for(asyncio.gather(slow, fast, late), timeout=30)
        return results, middle, feeds

    (slow, fast, late), middle, feeds = asyncio.run(scenario())
    everything = all_ids()
    assert len(everything) == 10 + 42 + 5 + 1
    assert slow == everything
    assert fast == everything
    assert late == [i for i in everything if i > middle]
    assert feeds.jobs == {}  # every feed ended with its job
