"""What a running app keeps for generation, shared by the native routes and /v1: one Generation per app."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from app.generation.limits import OwnerSlots
from app.generation.upstream import WorkerClient


class Affinity:
    """Checkpoint id -> the worker url it was last served from (the most recent `size` checkpoints)."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self._urls: OrderedDict[str, str] = OrderedDict()

    def order(self, urls: list[str], checkpoint_id: str) -> list[str]:
        """`urls` with the worker that served this checkpoint last (if still live) first."""
        preferred = self._urls.get(checkpoint_id)
        if preferred in urls:
            urls.remove(preferred)
            urls.insert(0, preferred)
        return urls

    def remember(self, checkpoint_id: str, url: str) -> None:
        self._urls[checkpoint_id] = url
        self._urls.move_to_end(checkpoint_id)
        while len(self._urls) > self.size:
            self._urls.popitem(last=False)


class LiveWorkers:
    """The live workers' urls, read from the database at most once per `max_age` seconds: a statement less
    for nearly every generation. A worker that joined meanwhile waits that long for traffic; one that died
    is passed over by the call that finds it gone, and `forget` makes the next read fresh (admit() does so
    when no listed worker answers). An empty list is never kept: the next call looks again."""

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self._read: tuple[float, list[str]] | None = None

    def urls(self, read: Callable[[], list[str]]) -> list[str]:
        now = time.monotonic()
        if self._read is not None and now - self._read[0] < self.max_age:
            return list(self._read[1])
        urls = read()
        self._read = (now, list(urls)) if urls else None
        return urls

    def forget(self) -> None:
        self._read = None


@dataclass
class Generation:
    """What every face (the native routes, /v1) runs a generation with: one per app, on app.state.generation.

    `client` is made in the app's lifespan (it needs the running event loop) and closed there."""

    affinity: Affinity = field(default_factory=Affinity)  # which worker served each checkpoint last
    workers: LiveWorkers = field(default_factory=LiveWorkers)
    slots: OwnerSlots = field(default_factory=OwnerSlots)  # per-owner generations in flight, in every API process
    client: WorkerClient | None = None
