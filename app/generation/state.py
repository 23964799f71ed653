"""What a running app keeps for generation, shared by the native routes and /v1: one Generation per app."""

from __future__ import annotations

from collections import OrderedDict
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


@dataclass
class Generation:
    """What every face (the native routes, /v1) runs a generation with: one per app, on app.state.generation.

    `client` is made in the app's lifespan (it needs the running event loop) and closed there."""

    affinity: Affinity = field(default_factory=Affinity)  # which worker served each checkpoint last
    slots: OwnerSlots = field(default_factory=OwnerSlots)  # per-owner generations in flight, in every API process
    client: WorkerClient | None = None
