"""A checkpoint's metadata without torch: the API reads it too (app/ never imports torch).

A .safetensors file starts with 8 bytes of little-endian header length, then that much JSON; the
metadata is the header's "__metadata__" object (strings only).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger length means a foreign file


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a .safetensors file; OSError if unreadable, ValueError if not safetensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file")
    return header.get("__metadata__") or {}
