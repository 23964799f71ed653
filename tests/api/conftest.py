"""The API in-process: the app under Starlette's TestClient against a real SQLite file, migrated as
`charrnn api` migrates it. No uvicorn and no worker: for the checks that need neither (auth,
ownership, pagination, uploads, validation, 404s); the end-to-end suites are in tests/service/.

The settings come from CHARRNN_* variables, set for this package only and restored after it, with
the cached settings and engine (app/settings.py, app/db.py) cleared on the way in and out, so the
service tests that run after these see neither this database nor these settings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import typer
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning
from typer.testing import CliRunner

from app.deps import current_settings
from app.settings import Settings, get_settings
from tests.harness import KEY, fail_on_server_error, small_corpus

with warnings.catch_warnings():
    # Starlette asks for its httpx fork (httpx2) over httpx; the client behaves the same with either.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

# As the service tests run the API (tests/conftest.py): a 1 MB upload limit, so the upload checks read the same.
SETTINGS = {"max_corpus_bytes": 1_000_000, "job_lease_seconds": 3, "device": "cpu"}


def reset_caches() -> None:
    from app import db, settings

    settings.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()


@dataclass
class CliResult:
    """What a `charrnn` command printed and returned, read as from subprocess.run."""

    returncode: int
    stdout: str
    stderr: str


class InProcessApi:
    """A data directory, its migrated database and the app, with the service harness's helpers."""

    def __init__(self, data_dir: Path, app: FastAPI):
        self.data_dir = data_dir
        self.app = app
        self._cli = typer.Typer()
        from app.cli import register_api_commands

        register_api_commands(self._cli)

    def owner_client(self, owner: str) -> TestClient:
        """A client with a fresh key of `owner`, made with the CLI as an operator would."""
        made = self.cli("keys", "create", owner)
        assert made.returncode == 0, made.stderr
        return self.client(key=made.stdout.strip().splitlines()[-1])

    def client(self, key: str | None = KEY) -> TestClient:
        """A client with `key` as its Bearer key (none: no header). Use it in a `with` block, which runs the
        app's lifespan. A 500 or 502 fails the test as it does against the real server."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = TestClient(self.app, headers=headers)
        client.event_hooks = {"response": [fail_on_server_error]}
        return client

    def cli(self, *args: str) -> CliResult:
        """The API's `charrnn` commands (db, keys), run in this process against this database."""
        result = CliRunner().invoke(self._cli, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def upload(self, client: httpx.Client, text: str, name: str = "corpus") -> dict:
        r = client.post(
            "/corpora", params={"name": name}, content=text.encode(), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture(scope="package")
def api(tmp_path_factory) -> Iterator[InProcessApi]:
    data_dir = tmp_path_factory.mktemp("api") / "data"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CHARRNN_"):
                mp.delenv(name)
        mp.setenv("CHARRNN_DATA_DIR", str(data_dir))
        mp.setenv("CHARRNN_BOOTSTRAP_KEY", KEY)
        for name, value in SETTINGS.items():
            mp.setenv(f"CHARRNN_{name.upper()}", str(value))
        reset_caches()
        try:
            from app.cli import ensure_key, upgrade_database
            from app.main import create_app

            upgrade_database()  # as `charrnn api` starts: migrate, then make sure the bootstrap key works
            ensure_key()
            yield InProcessApi(data_dir, create_app())
        finally:
            from app.db import get_engine

            get_engine().dispose()
            reset_caches()


@pytest.fixture
def client(api) -> Iterator[TestClient]:
    with api.client() as c:
        yield c


@pytest.fixture(scope="package")
def corpus(api) -> dict:
    with api.client() as c:
        return api.upload(c, small_corpus(), name="shakespeare-20k")


@pytest.fixture
def limited(api):
    """Override the settings the routes see (SettingsDep) for one test."""
    base = get_settings()

    def apply(**changes) -> Settings:
        settings = base.model_copy(update=changes)
        api.app.dependency_overrides[current_settings] = lambda: settings
        return settings

    yield apply
    api.app.dependency_overrides.pop(current_settings, None)
