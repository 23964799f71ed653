"""Concurrent generations per owner, counted across every API process on the database.

One count for every face: /generate, /score and /v1/completions take their slot through
app.generation.service.admit(), one slot per request (a /v1 request's prompts and logprobs calls run
under it, as a /generate's samples do).

Without it one key's flood of /generate filled every worker's queue and everyone else waited behind it.
Each slot is a row of generation_slots (app/generation/repository.py), taken under the owner's lock so
that N API processes behind a load balancer still admit the limit in total, not N times it. The process
holding a slot renews its expiry while the request runs, so a process that dies frees its slots after
CHARRNN_GENERATION_SLOT_LEASE_SECONDS. A count per process stays in front of it: a flood past the limit
on this process is refused before any database write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from app.db import session_scope
from app.errors import ApiError
from app.generation import repository
from app.ids import new_id
from app.keys.service import hash_key
from app.keys.streams import KEY_RECHECK_SECONDS

RETRY_AFTER = "1"  # a generation takes seconds at most: the next slot frees soon
# Keys whose owner was looked up recently: enough for every key in use on one API process.
KNOWN_KEYS = 10_000
log = logging.getLogger("charrnn.api")


class OwnerSlots:
    """How many generations each owner has in flight; `acquire` refuses past the limit with a 429."""

    def __init__(self) -> None:
        self.holder = new_id("api")  # this process's name on the slots it holds
        self._in_flight: Counter[str] = Counter()  # this process's own, for the precheck
        self._held: set[str] = set()  # ids of this process's slot rows, renewed while held
        self._renewer: asyncio.Task | None = None
        self._renewer_loop: asyncio.AbstractEventLoop | None = None
        self._releases: set[asyncio.Task] = set()
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
        """A slot for `owner` in this process's count, then a row of the count every API process shares."""
        slot = self.acquire(owner, limit, key)
        try:
            slot_id, in_flight = await run_in_threadpool(self._take, owner, limit, lease_seconds)
        except BaseException:
            slot.release()
            raise
        if slot_id is None:
            slot.release()
            raise self._refuse(owner, limit, in_flight)
        slot.id = slot_id
        self._held.add(slot_id)
        self._keep_renewing(lease_seconds)
        return slot

    def _take(self, owner: str, limit: int, lease_seconds: float) -> tuple[str | None, int]:
        with session_scope() as session:
            return repository.take(session, owner=owner, holder=self.holder, limit=limit, lease_seconds=lease_seconds)

    def _count_down(self, owner: str) -> None:
        self._in_flight[owner] -= 1
        if self._in_flight[owner] <= 0:
            del self._in_flight[owner]

    def _release(self, owner: str, slot_id: str | None) -> None:
        self._count_down(owner)
        if slot_id is None:
            return
        self._held.discard(slot_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): delete the row here
            self._delete(slot_id)
            return
        # Released from synchronous code (a `with` block, a response's `finally`): the row is deleted on a
        # thread, so the event loop never waits for the database's lock.
        task = loop.create_task(run_in_threadpool(self._delete, slot_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    @staticmethod
    def _delete(slot_id: str) -> None:
        try:
            with session_scope() as session:
                repository.release(session, slot_id=slot_id)
        except Exception:  # the row expires by itself after its lease: the slot is freed either way
            log.warning("could not release generation slot %s; it expires with its lease", slot_id, exc_info=True)

    def _keep_renewing(self, lease_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._renewer is None or self._renewer.done() or self._renewer_loop is not loop:
            self._renewer, self._renewer_loop = loop.create_task(self._renew_forever(lease_seconds)), loop

    async def _renew_forever(self, lease_seconds: float) -> None:
        # Three renewals per lease: a slot in flight survives two failed ones (a busy database) in a row.
        while True:
            await asyncio.sleep(lease_seconds / 3)
            if not self._held:
                continue
            try:
                await run_in_threadpool(self._renew, list(self._held), lease_seconds)
            except Exception:
                log.warning("could not renew this process's generation slots", exc_info=True)

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


class ReleasingEventSourceResponse(EventSourceResponse):
    """An event stream that releases `slot` when it is done, however it ends: the stream finished, the
    client went away, or the send failed. (The relay generator's `finally` is not enough: a stream the
    client leaves before its first event may never be started, and then its `finally` never runs.)"""

    def __init__(self, content, *, slot: Slot, **kwargs):
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
