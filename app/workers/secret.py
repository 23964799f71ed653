"""The secret the API and its workers share: the API sends it on every call to a worker's generation
server, which refuses any call without it (the server's port is reachable by whoever shares its network).

CHARRNN_WORKER_SECRET sets it. When it is not set, the first process that needs it generates one and
stores it in <data_dir>/worker-secret (mode 0600); every API and worker process of the deployment
reads the same file, since they already share the data dir.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from app.settings import Settings

HEADER = "X-Charrnn-Worker-Secret"


def worker_secret(settings: Settings) -> str:
    if settings.worker_secret is not None and settings.worker_secret.get_secret_value():
        return settings.worker_secret.get_secret_value()
    return _read_or_create(settings.worker_secret_file)


def _read_or_create(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole to a private temporary file, then linked into place: link fails if another process
    # got there first, so nobody ever reads a half-written secret and all end up with the same one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process's secret is as good
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def is_valid(given: str | None, secret: str) -> bool:
    """In constant time: how much of the secret a guess matched must not show in the response time."""
    return given is not None and hmac.compare_digest(given.encode(), secret.encode())
