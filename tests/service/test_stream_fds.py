"""Event-stream followers that hang up leave nothing open behind them (issue 21 item 5).

The API's open files climb over the first round and then stay flat (measured: 18 before, 35 after each of
20 rounds): what they climb to is the database connection pool (SQLAlchemy's 5 kept + 10 overflow
connections; SQLite keeps a closed connection's file open for reuse while other connections hold locks on the
same file), not one file per stream. Twenty rounds tell that ceiling from a leak, which would go on climbing
by about a file per follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import httpx

from tests.harness import KEY, Service, small_corpus, wait_for

ROUNDS = 20
FOLLOWERS = 30
# SQLAlchemy's QueuePool (pool_size 5 + max_overflow 10) connections, each with the database file and its
# write-ahead log open: the most a burst of reads can hold at once.
POOL_FILES = 2 * (5 + 10)
THREAD_POOL = 40  # anyio's default thread limiter, which run_in_threadpool uses


def open_files(pid: int) -> tuple[int, int]:
    """(sockets, other files) the process has open, from one listing."""
    found = [0, 0]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            found[not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")] += 1
    return found[0], found[1]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def follow_and_hang_up(url: str, job_id: str) -> None:
    """FOLLOWERS streams at once, each dropped as soon as its first event arrives."""

    async def one(client: httpx.AsyncClient) -> None:
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for text in response.aiter_text():
                if "data:" in text:
                    return

    limits = httpx.Limits(max_connections=FOLLOWERS + 5)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(FOLLOWERS)))


def test_followers_that_hang_up_leave_no_open_files(tmp_path):
    svc = Service(tmp_path)
    svc.start_api()  # no worker: the job stays queued, so every follower waits on a live stream
    try:
        with svc.client() as client:
            job = svc.create_job(client, svc.upload(client, small_corpus())["id"])
        pid = svc.api_proc.pid
        sockets, files = open_files(pid)
        before = {"files": files, "sockets": sockets, "threads": threads(pid)}
        counts = []  # files other than sockets after each round: a dropped stream's socket closes a moment later
        for _ in range(ROUNDS):
            asyncio.run(follow_and_hang_up(svc.url, job["id"]))
            counts.append(open_files(pid)[1])
        # Never above the pool's ceiling: 600 dropped streams leaked nothing (a file each would be 600 more).
        assert max(counts) <= before["files"] + POOL_FILES + 4, (before, counts)
        # And every dropped stream's connection is closed: the server notices when it next polls or writes.
        wait_for(lambda: open_files(pid)[0] <= before["sockets"], 10, "the dropped streams' connections to close")
        # The streams' database reads run on anyio's thread pool: at most its 40 threads, reaped once idle for
        # 10 s, and holding no files of their own, so they explain no climb in open files.
        assert threads(pid) <= before["threads"] + THREAD_POOL, (before, threads(pid))
    finally:
        svc.stop()
