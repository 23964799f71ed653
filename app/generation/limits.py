"""Concurrent generations per owner, counted in this API process around the call to the worker.

Without it one key's flood of /generate filled every worker's queue and everyone else waited behind it.
The count is per API process (each process holds its own): with N API processes an owner may have up to
N x the limit in flight, which still bounds a flood; a shared counter would cost a database write per call.
"""

from __future__ import annotations

from collections import Counter

from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.errors import ApiError

RETRY_AFTER = "1"  # a generation takes seconds at most: the next slot frees soon


class OwnerSlots:
    """How many generations each owner has in flight; `acquire` refuses past the limit with a 429."""

    def __init__(self) -> None:
        self._in_flight: Counter[str] = Counter()

    def in_flight(self, owner: str) -> int:
        return self._in_flight[owner]

    def acquire(self, owner: str, limit: int) -> Slot:
        # No await between the check and the increment: on the one event loop, this is atomic.
        if self._in_flight[owner] >= limit:
            raise ApiError(
                429,
                f"you already have {self._in_flight[owner]} generations in flight, the limit per owner "
                f"(CHARRNN_MAX_CONCURRENT_GENERATIONS_PER_OWNER = {limit}); wait for one to finish, then retry",
                headers={"Retry-After": RETRY_AFTER},
            )
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
