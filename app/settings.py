"""One settings object for the API and the worker, read from CHARRNN_* environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARRNN_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="SQLite file, corpora and training runs live here")
    database_url: str | None = Field(None, description="any SQLAlchemy URL; default: SQLite in data_dir")
    # Where corpora and checkpoints live. The data directory by default; `s3://bucket/prefix` for workers on
    # machines that share no disk (app/storage/s3.py: endpoint, region and credentials from AWS_* as the
    # AWS tools read them). The data directory then holds only the database, temporary files and the cache.
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix for an S3-compatible store; default: the data directory"
    )
    cache_bytes: int = Field(
        2 * 1024**3, ge=0, description="local copies of remote corpora and checkpoints a machine keeps (LRU)"
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_url_is_s3(cls, url: str | None) -> str | None:
        if url and not url.startswith("s3://"):
            raise ValueError("only s3://bucket/prefix is understood; leave it unset for the data directory")
        return url or None

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_folder(cls, path: Path) -> Path:
        if path.exists() and not path.is_dir():
            raise ValueError("a file, not a folder: point it at a folder (one is made if missing)")
        return path
    bootstrap_key: str | None = Field(None, description="an API key the server makes sure exists")
    max_corpus_bytes: int = Field(200 * 1024 * 1024, ge=1, description="largest accepted upload")
    # The output layer (and the embedding) grow with the vocabulary: a corpus of a million distinct code
    # points makes a model of gigabytes whatever hidden_size says. Real text in a few scripts stays far below.
    max_vocab_size: int = Field(10_000, ge=2, description="most distinct characters a corpus may have")
    sqlite_busy_timeout_seconds: float = Field(
        30.0, gt=0, description="how long a SQLite write waits for another process's lock before answering 503"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N, for training and generation")
    job_lease_seconds: float = Field(30.0, gt=0, description="a silent worker loses its job after this long")
    max_attempts: int = Field(3, ge=1, description="a job whose worker dies this many times fails")
    worker_host: str = Field("127.0.0.1", description="where the worker's generation server listens")
    worker_port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    worker_url: str | None = Field(None, description="how the API reaches this worker; default from host/port")
    model_cache_size: int = Field(4, ge=1, description="models a worker keeps loaded for generation")
    # CPU threads. An oversubscribed CPU is catastrophic for torch (its OpenMP threads spin-wait for
    # each other: a tiny model trained 200x slower in our tests with several 2-thread processes on 2
    # cores). Training takes every core, as `charrnn train` does, so a job trains at the engine's speed;
    # generation takes a quarter, and only while it runs. Set both when several workers share a host.
    generation_threads: int = Field(0, ge=0, description="threads for generation in a worker; 0 = CPUs / 4")
    train_threads: int = Field(0, ge=0, description="threads for training; 0 = all CPUs")
    # The API sends it with every call to a worker's generation server, which refuses calls without it.
    worker_secret: SecretStr | None = Field(
        None, description="shared by the API and its workers; default: generated once into <data_dir>/worker-secret"
    )
    generate_timeout_seconds: float = Field(120.0, gt=0, description="API -> worker request timeout")
    log_level: str = Field("INFO")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: readable lines at a terminal, JSON lines otherwise; json or text forces one"
    )
    # Per-owner limits: one key's load must not starve the others. Over a limit the API answers 429 with
    # Retry-After and names the setting, instead of letting the queue, the disk or the workers absorb it.
    max_active_jobs_per_owner: int = Field(
        10, ge=1, description="queued + running jobs one owner may have; more answers 429"
    )
    max_corpus_bytes_per_owner: int = Field(
        1024**3,
        ge=1,
        description="total bytes one owner may store, corpora and checkpoints together; an upload past it, "
        "or a new job while at it, answers 429",
    )
    max_concurrent_generations_per_owner: int = Field(
        8,
        ge=1,
        description="/generate, /score and /v1/completions requests (streams included) one owner may have in "
        "flight, counted across every API process on the database; more answers 429",
    )
    generation_slot_lease_seconds: float = Field(
        30.0, gt=0, description="a generation slot of an API process that stopped renewing it is freed after this long"
    )
    # Retention: each job keeps its best checkpoint and its last N (applied by the worker as the job runs);
    # resume after a restart uses the last, so exact resume survives the pruning.
    keep_checkpoints: int = Field(
        3, ge=1, description="checkpoints each job keeps besides its best (the last N); older ones are deleted"
    )
    # Room held back in <data_dir>/.disk-reserve: on a full disk, a DELETE gets it so that space can be freed.
    disk_reserve_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="room kept free for deletes on a full disk (given back to a DELETE, made again once there is "
        "twice as much free); 0 = none",
    )
    # Checked before a job queues (worker/engine/config.py estimate_training_bytes), so that a job too big
    # for the machine is refused with the numbers rather than killed by the OOM killer hours later.
    worker_memory_bytes: int | None = Field(
        None, ge=1, description="memory a training job may need; default: 80% of this machine's RAM"
    )

    @property
    def generation_thread_count(self) -> int:
        return self.generation_threads or max(1, (os.cpu_count() or 1) // 4)

    @property
    def train_thread_count(self) -> int:
        return self.train_threads or (os.cpu_count() or 1)

    @property
    def worker_memory_limit(self) -> int:
        if self.worker_memory_bytes:
            return self.worker_memory_bytes
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
            total = 8 * 1024**3
        return int(total * 0.8)  # the rest is the OS's, the API's and the worker's own

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'charrnn.db').resolve()}"

    @property
    def corpora_dir(self) -> Path:
        return self.data_dir / "corpora"

    @property
    def worker_secret_file(self) -> Path:
        return self.data_dir / "worker-secret"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
