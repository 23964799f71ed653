"""What `charrnn serve` knows about its embedded worker, for /readyz (None under `charrnn api`)."""

from __future__ import annotations

import threading

_lock = threading.Lock()
STATE: dict = {"status": None, "restarts": 0}


def set_state(status: str, **fields) -> None:
    with _lock:
        STATE.clear()
        STATE.update({"status": status, "restarts": 0, **fields})


def snapshot() -> dict | None:
    """The embedded worker's state, or None when this API process runs none."""
    with _lock:
        return dict(STATE) if STATE["status"] else None
