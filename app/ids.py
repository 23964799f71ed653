"""Opaque IDs with a type prefix. They sort by creation time, which is what list pagination orders by."""

from __future__ import annotations

import secrets
import time

PREFIXES = ("corpus", "job", "ckpt", "key", "evt", "wrk", "gen", "api")


def new_id(prefix: str) -> str:
    assert prefix in PREFIXES
    return f"{prefix}_{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"
