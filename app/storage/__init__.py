"""Where the bytes live: one Store (the data directory, or an S3 bucket) for corpora and training runs,
chosen by CHARRNN_STORAGE_URL; see base.py for the interface and its rules."""

from __future__ import annotations

import os

from app.settings import Settings, get_settings
from app.storage.base import CorruptObject, ObjectInfo, ObjectMissing, Store, StoreError, StoreFull
from app.storage.cache import ObjectCache
from app.storage.local import LocalStore

__all__ = [
    "CorruptObject", "ObjectCache", "ObjectInfo", "ObjectMissing", "Store", "StoreError", "StoreFull",
    "cache_of", "get_store", "open_store", "run_prefix",
]


def open_store(settings: Settings) -> Store:
    url = settings.storage_url
    if not url:
        return LocalStore(settings.data_dir)
    from app.storage.s3 import S3Store  # boto3 is imported only by those who use S3

    return S3Store(url)


_stores: dict[tuple[str, str | None, int], Store] = {}


def get_store(settings: Settings | None = None) -> Store:
    """This process's store for `settings` (one client per process and store: boto3 pools connections)."""
    settings = settings or get_settings()
    key = (str(settings.data_dir), settings.storage_url, os.getpid())  # a forked child makes its own client
    if key not in _stores:
        _stores[key] = open_store(settings)
    return _stores[key]


def cache_of(settings: Settings) -> ObjectCache:
    return ObjectCache(settings.data_dir / "cache", settings.cache_bytes)


def run_prefix(job_id: str) -> str:
    """Every object of one training run lives under this prefix: deleting a job deletes the prefix."""
    return f"runs/{job_id}/"


def local_file(settings: Settings, key: str, *, sha256: str | None, size: int | None = None):
    """A file on this machine with the object's bytes, for readers that need a path (the trainer, a model
    loader, a download): the data directory's own file, or a copy in the cache checked against `sha256`.
    An object recorded without a sha256 (rows of old versions) exists only in the data directory."""
    store = get_store(settings)
    if store.local_root is not None or sha256 is None:
        return store.local_root / key if store.local_root is not None else settings.data_dir / key
    return cache_of(settings).path(store, key, sha256=sha256, size=size)
