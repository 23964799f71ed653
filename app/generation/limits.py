"""Concurrent generations per owner, counted across every API process on the database.

One count for every face: /generate, /score and /v1/completions take their slot through
app.generation.service.admit(), one slot per request (a /v1 request's prompts and logprobs calls run
under it, as a /generate's samples do).

Without it one key's flood of /generate filled every worker's queue and everyone else waited behind it.

The count that admits is this process's own, in memory: `take` checks and adds on the event loop with no
await between, and `release` subtracts at once, before the answer is sent (a stream's, before its last
event), so a client that sends its next request at once finds its slot free. The count every API process
shares is rows of generation_slots (app/generation/repository.py), taken under the owner's lock so that N
API processes on one database (SQLite on one host, or PostgreSQL) admit the limit in total, not N times
it. The rows cost no write per request: a freed row stays with this process for the next request of its
owner (IDLE_SECONDS) and only then is deleted, and the rows still held are renewed in one statement three
times per lease. So back-to-back requests write nothing, and a burst writes once per slot it adds. A
process that dies frees its rows after CHARRNN_GENERATION_SLOT_LEASE_SECONDS; one that stops gives them
back (`close`). The price of the kept rows: another API process on the same database can find a slot
that this one has just freed still taken for up to IDLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections import Counter, OrderedDict
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from app.db import get_engine, session_scope
from app.errors import ApiError
from app.generation import repository
from app.ids import new_id
from app.keys.service import hash_key
from app.keys.streams import KEY_RECHECK_SECONDS

RETRY_AFTER = "1"
# A free row is kept this long for the next request of its owner on this process, then deleted so that
# another API process can take it. Back-to-back requests reuse it; a process's idle rows hold no other
# process back for longer than this (plus one keeper tick).
IDLE_SECONDS = 1.0
KEEPER_TICK_SECONDS = 0.25  # a generation takes seconds at most: the next slot frees soon
# Keys whose owner was looked up recently: enough for every key in use on one API process.
KNOWN_KEYS = 10_000
log = logging.getLogger("charrnn.api")


class ApiPresence:
    """Whether this is the only API process on a SQLite database: each API process holds a shared lock on
    `<database file>.apis` (a POSIX record lock, which the kernel drops when the process dies, however it
    dies); "alone" is whether that lock can be turned into an exclusive one (at once back to shared, so that
    another process's check sees this one). SQLite is one host's, so every process that can share its file
    sees the lock. Elsewhere (PostgreSQL), never alone: API processes may run on other hosts."""

    def __init__(self, path: Path | None):
        self._fd: int | None = None
        if path is not None:
            # Kept open for the process's life: closing any descriptor of the file would drop its lock.
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.lockf(self._fd, fcntl.LOCK_SH)

    @classmethod
    def for_database(cls) -> ApiPresence:
        url = get_engine().url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return cls(None)
        return cls(Path(url.database + ".apis"))

    def alone(self) -> bool:
        if self._fd is None:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another API process holds its shared lock
            return False
        fcntl.lockf(self._fd, fcntl.LOCK_SH)
        return True


class OwnerSlots:
    """How many generations each owner has in flight; `acquire` refuses past the limit with a 429."""

    def __init__(self) -> None:
        self.holder = new_id("api")  # this process's name on the slots it holds
        self._in_flight: Counter[str] = Counter()  # this process's own: what admits or refuses here
        # This process's slot rows (in use or free), each with the monotonic time its lease ends.
        self._held: dict[str, float] = {}
        # owner -> rows no request uses now, with when each was freed: the next request takes one.
        self._free: dict[str, list[tuple[str, float]]] = {}
        self._giving_back: dict[str, set[asyncio.Task]] = {}  # owner -> deletes of its rows in progress
        self._presence: ApiPresence | None = None
        self._renewer: asyncio.Task | None = None
        self._renewer_loop: asyncio.AbstractEventLoop | None = None
        # hash of a key -> (its owner, when that was read): lets a flood past the limit be refused before
        # its database lookup. Measured (benchmarks/bench_fairness.py): without it, the flooder's 429s
        # filled the API's thread pool with lookups and another key's /generate queued behind them.
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def in_flight(self, owner: str) -> int:
        return self._in_flight[owner]

    def _refuse(self, owner: str, limit: int, in_flight: int | None = None) -> ApiError:
        in_flight = self._in_flight[owner] if in_flight is None else in_flight
        return ApiError(
            429,
            f"you already have {in_flight} generations in flight, the limit per owner "
            f"(CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER = {limit}); wait for one to finish, then retry",
            headers={"Retry-After": RETRY_AFTER},
        )

    def precheck(self, key: str, limit: int) -> None:
        """429 at once when this key's owner, as read in the last few seconds, is already at the limit.
        A key revoked meanwhile gets this 429 rather than its 401 for at most KEY_RECHECK_SECONDS: both
        refuse, and open streams tolerate the same delay (app/keys/streams.py)."""
        known = self._owners.get(hash_key(key))
        if known and time.monotonic() - known[1] < KEY_RECHECK_SECONDS and self._in_flight[known[0]] >= limit:
            raise self._refuse(known[0], limit)

    def _remember(self, key: str, owner: str) -> None:
        digest = hash_key(key)
        self._owners[digest] = (owner, time.monotonic())
        self._owners.move_to_end(digest)
        while len(self._owners) > KNOWN_KEYS:
            self._owners.popitem(last=False)

    def acquire(self, owner: str, limit: int, key: str | None = None) -> Slot:
        """A slot in this process's count only (no await between its check and increment: on the one event
        loop, that is atomic). `take` adds the shared count; this alone is the precheck's."""
        if key is not None:
            self._remember(key, owner)
        if self._in_flight[owner] >= limit:
            raise self._refuse(owner, limit)
        self._in_flight[owner] += 1
        return Slot(self, owner, None)

    async def take(self, owner: str, limit: int, lease_seconds: float, key: str | None = None) -> Slot:
        """A slot for `owner` in this process's count, then a row of the count every API process shares:
        one this process already holds and no request uses (no database write), else a new one."""
        slot = self.acquire(owner, limit, key)
        slot.id = self._reuse(owner, lease_seconds)
        if slot.id is not None:
            return slot
        try:
            giving_back = self._giving_back.get(owner)
            if giving_back:  # rows being deleted still count in the database until they are gone
                await asyncio.gather(*giving_back, return_exceptions=True)
            slot_id, in_flight = await run_in_threadpool(self._take, owner, limit, lease_seconds)
        except BaseException:
            slot.release()
            raise
        if slot_id is None:
            slot.release()
            raise self._refuse(owner, limit, in_flight)
        slot.id = slot_id
        self._held[slot_id] = time.monotonic() + lease_seconds
        self._keep_renewing(lease_seconds)
        return slot

    def _reuse(self, owner: str, lease_seconds: float) -> str | None:
        """A free row of this process for `owner` whose lease still has a renewal's margin, else None."""
        free = self._free.get(owner)
        now = time.monotonic()
        while free:
            slot_id, _idle_since = free.pop()  # the most recently freed: the others can go idle and be trimmed
            if self._held.get(slot_id, 0) - now > lease_seconds / 3:
                return slot_id
            self._give_back(owner, [slot_id])  # lapsing (its renewals failed): not trusted
        return None

    def _take(self, owner: str, limit: int, lease_seconds: float) -> tuple[str | None, int]:
        with session_scope() as session:
            return repository.take(session, owner=owner, holder=self.holder, limit=limit, lease_seconds=lease_seconds)

    def _count_down(self, owner: str) -> None:
        self._in_flight[owner] -= 1
        if self._in_flight[owner] <= 0:
            del self._in_flight[owner]

    def _release(self, owner: str, slot_id: str | None) -> None:
        """Free at once in this process's count, with no database write on the way out: the answer is never
        behind the database's lock, and a next request finds the slot free. The row is kept for the owner's
        next request: for IDLE_SECONDS while this is the only API process on the database, else only until
        the delete that starts on the loop's next turn (another process must see the slot free at once)."""
        self._count_down(owner)
        if slot_id is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller), so no keeper: delete the row here
            self._held.pop(slot_id, None)
            self._delete([slot_id])
            return
        self._free.setdefault(owner, []).append((slot_id, time.monotonic()))
        if not self._alone():
            asyncio.get_running_loop().call_soon(self._give_back_if_free, owner, slot_id)

    def _give_back_if_free(self, owner: str, slot_id: str) -> None:
        free = self._free.get(owner, [])
        if any(s == slot_id for s, _ in free):  # not reused meanwhile
            self._free[owner] = [(s, t) for s, t in free if s != slot_id]
            self._give_back(owner, [slot_id])

    def _give_back(self, owner: str, slot_ids: list[str]) -> None:
        """Delete rows on a thread; a `take` for the same owner waits for it (the rows count until gone)."""
        for slot_id in slot_ids:
            self._held.pop(slot_id, None)
        task = asyncio.get_running_loop().create_task(run_in_threadpool(self._delete, slot_ids))
        pending = self._giving_back.setdefault(owner, set())
        pending.add(task)

        def done(task: asyncio.Task) -> None:
            pending.discard(task)
            if not pending and self._giving_back.get(owner) is pending:
                del self._giving_back[owner]

        task.add_done_callback(done)

    @staticmethod
    def _delete(slot_ids: list[str]) -> None:
        try:
            with session_scope() as session:
                repository.release(session, slot_ids=slot_ids)
        except Exception:  # the rows expire by themselves after their lease: the slots are freed either way
            log.warning("could not release generation slots %s; they expire with their lease", slot_ids,
                        exc_info=True)

    def _alone(self) -> bool:
        """Whether this is the only API process on the database (see ApiPresence); False on PostgreSQL,
        whose API processes may run on other hosts."""
        if self._presence is None:
            try:
                self._presence = ApiPresence.for_database()
            except OSError:  # e.g. a read-only data dir: counted as shared, the safe side
                log.warning("could not take the API processes' lock file; slots are given back at once", exc_info=True)
                self._presence = ApiPresence(None)
        return self._presence.alone()

    def start(self) -> None:
        """At the API's start: make this process known to the others on the same database file."""
        self._alone()

    def _trim_idle(self, *, older_than: float) -> None:
        """Give back the free rows unused since `older_than` (monotonic): one delete per owner."""
        for owner in list(self._free):
            keep = [(s, t) for s, t in self._free[owner] if t > older_than]
            idle = [s for s, t in self._free[owner] if t <= older_than]
            if keep:
                self._free[owner] = keep
            else:
                del self._free[owner]
            if idle:
                self._give_back(owner, idle)

    def _keep_renewing(self, lease_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._renewer is None or self._renewer.done() or self._renewer_loop is not loop:
            self._renewer, self._renewer_loop = loop.create_task(self._keep(lease_seconds)), loop

    async def _keep(self, lease_seconds: float) -> None:
        """While this process holds rows: give back those idle past IDLE_SECONDS (all of them once another
        API process shares the database), and renew the rest in one statement three times per lease, so a
        slot in flight survives two failed renewals (a busy database) in a row. Ends when nothing is held;
        `take` starts it again."""
        renewed = time.monotonic()
        while self._held:
            await asyncio.sleep(KEEPER_TICK_SECONDS)
            now = time.monotonic()
            self._trim_idle(older_than=now - IDLE_SECONDS if self._alone() else now)
            if self._held and now - renewed >= lease_seconds / 3:
                held = list(self._held)
                try:
                    await run_in_threadpool(self._renew, held, lease_seconds)
                except Exception:
                    log.warning("could not renew this process's generation slots", exc_info=True)
                else:
                    for slot_id in held:
                        if slot_id in self._held:
                            self._held[slot_id] = now + lease_seconds
                renewed = now

    async def close(self) -> None:
        """At shutdown: give back every row this process holds, so no other process waits out their lease."""
        if self._renewer is not None:
            self._renewer.cancel()
        rows = list(self._held)
        self._held.clear()
        self._free.clear()
        if rows:
            await run_in_threadpool(self._delete, rows)

    @staticmethod
    def _renew(slot_ids: list[str], lease_seconds: float) -> None:
        with session_scope() as session:
            repository.renew(session, slot_ids=slot_ids, lease_seconds=lease_seconds)


class Slot:
    """One generation's place; released once, however many paths call `release`."""

    def __init__(self, slots: OwnerSlots, owner: str, slot_id: str | None):
        self._slots, self._owner, self.id, self._held = slots, owner, slot_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._owner, self.id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def is_last_event(event) -> bool:
    """The event that ends a generation's stream: its answer (`done`, /v1's `[DONE]`) or its error."""
    return isinstance(event, dict) and (event.get("event") in ("done", "error") or event.get("data") == "[DONE]")


class ReleasingEventSourceResponse(EventSourceResponse):
    """An event stream that releases `slot` when it is done, however it ends. Released just before its last
    event is sent: a client that reads the answer and asks again at once finds the slot free. Released
    again (a no-op once released) when the response ends otherwise: the client went away or the send
    failed. (The relay generator's `finally` is not enough: a stream the client leaves before its first
    event may never be started, and then its `finally` never runs.)"""

    def __init__(self, content, *, slot: Slot, **kwargs):
        super().__init__(self._released_before_last(content, slot), **kwargs)
        self.slot = slot

    @staticmethod
    async def _released_before_last(content, slot: Slot):
        async for event in content:
            if is_last_event(event):
                slot.release()
            yield event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
