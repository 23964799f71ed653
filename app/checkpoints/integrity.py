"""Is a checkpoint's file still the one that was written? Its size and sha256 say (torch-free).

The worker records both when it writes the file (worker.engine.records.CheckpointRecord); the download
route checks them here before sending a byte, and serves the digest so that clients can check too.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mismatch(path: Path, *, sha256: str | None, size_bytes: int | None) -> tuple[str, str | None]:
    """(the file's sha256, what is wrong with it or None). A checkpoint of an older version has no
    recorded sha256: only its size is checked."""
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        return "", f"the file has {size} bytes, not the {size_bytes} it was written with"
    actual = file_sha256(path)
    if sha256 is not None and actual != sha256:
        return actual, "the file's sha256 differs from the one recorded when it was written"
    return actual, None


def corrupt_message(checkpoint_id: str, problem: str) -> str:
    return (
        f"checkpoint {checkpoint_id} is corrupt: {problem}. It cannot be downloaded or loaded; "
        "use an earlier checkpoint of its job (GET /jobs/{id}/checkpoints), or train again"
    )


def digest_headers(sha256_hex: str) -> dict[str, str]:
    """RFC 3230 `Digest` (base64 of the raw digest) and the plain hex form most tools print."""
    raw = bytes.fromhex(sha256_hex)
    return {"Digest": "sha-256=" + base64.b64encode(raw).decode(), "X-Checksum-Sha256": sha256_hex}
