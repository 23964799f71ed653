"""Reading a .safetensors header without torch: 8 bytes of little-endian length, then JSON."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file")
        header = json.loads(f.read(length))
    return header.get("__metadata__") or {}
