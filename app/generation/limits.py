"""Concurrent generations per owner, counted in this API process around the calls to the worker.

One count for every face: /generate, /score and /v1/completions take their slot through
app.generation.service.admit(), one slot per request (a /v1 request's prompts and logprobs calls run
under it, as a /generate's samples do).

Without it one key's flood of /generate filled every worker's queue and everyone else waited behind it.
The count is per API process (each process holds its own): with N API processes an owner may have up to
N x the limit in flight, which still bounds a flood; a shared counter would cost a database write per call.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.errors import ApiError
from app.keys.service import hash_key
from app.keys.streams import KEY_RECHECK_SECONDS

RETRY_AFTER = "1"  # a generation takes seconds at most: the next slot frees soon
# Keys whose owner was looked up recently: enough for every key in use on one API process.
KNOWN_KEYS = 10_000


class OwnerSlots:
    """How many generations each owner has in flight; `acquire` refuses past the limit with a 429."""

    def __init__(self) -> None:
        self._in_flight: Counter[str] = Counter()
        # hash of a key -> (its owner, when that was read): lets a flood past the limit be refused before
        # its database lookup. Measured (benchmarks/bench_fairness.py): without it, the flooder's 429s
        # filled the API's thread pool with lookups and another key's /generate queued behind them.
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def in_flight(self, owner: str) -> int:
        return self._in_flight[owner]

    def _refuse(self, owner: str, limit: int) -> ApiError:
        return ApiError(
            429,
            f"you already have {self._in_flight[owner]} generations in flight, the limit per owner "
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

    def acquire(self, owner: str, limit: int, key: str | None = None) -> Slot:
        if key is not None:
            digest = hash_key(key)
            self._owners[digest] = (owner, time.monotonic())
            self._owners.move_to_end(digest)
            while len(self._owners) > KNOWN_KEYS:
                self._owners.popitem(last=False)
        # No await between the check and the increment: on the one event loop, this is atomic.
        if self._in_flight[owner] >= limit:
            raise self._refuse(owner, limit)
        self._in_flight[owner] += 1
        return Slot(self, owner)

    def _release(self, owner: str) -> None:
        self._in_flight[owner] -= 1
        if self._in_flight[owner] <= 0:
            del self._in_flight[owner]


class Slot:
    """One generation's place; released once, however many paths call `release`."""

    def __init__(self, slots: OwnerSlots, owner: str):
        self._slots, self._owner, self._held = slots, owner, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._release(self._owner)

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
