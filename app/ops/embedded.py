"""What `charrnn serve` knows about its embedded worker, for /readyz (nothing under `charrnn api`)."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_state: dict = {}


def publish(**state) -> None:
    """Replace the state: status (running | restarting | stopped), restarts, pid, last_exit."""
    with _lock:
        _state.clear()
        _state.update(state)


def snapshot() -> dict | None:
    """The embedded worker's state, or None when this API process runs none."""
    with _lock:
        return dict(_state) or None
