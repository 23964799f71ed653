"""Shared fixtures. Service tests run the real thing (tests/harness.py): a SQLite file in a temp dir, the API
under uvicorn on a free port, and real worker processes training tiny models."""

from __future__ import annotations

import pytest

from tests.harness import ROOT, MotoS3, Service, require_postgres, small_corpus, throwaway_database

SERVICE_TESTS = ROOT / "tests" / "service"


# The longest files, started first: `make test` hands whole files to its two workers in collection
# order, and one of these started last would run alone at the end.
LONGEST_FILES = ("test_stops.py", "test_object_store.py", "test_scaleout.py", "test_database.py", "test_recovery.py")


def pytest_collection_modifyitems(items):
    # Every test under tests/service/ runs the service as real processes: `make check` leaves them out.
    for item in items:
        if SERVICE_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: order within a file kept


@pytest.fixture
def postgres_url():
    """A throwaway database on the local PostgreSQL server, dropped after the test."""
    require_postgres()
    with throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def moto_s3():
    """One moto S3 server for the whole session (each test takes its own bucket from it)."""
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage_backend(request):
    """A backend to run a test on: {} (the data directory) or the settings and environment of a fresh
    bucket on the session's moto server. `svc.env.update(backend["env"])`, then pass backend["settings"]."""
    if request.param == "local":
        return {"name": "local", "settings": {}, "env": {}, "url": None}
    moto = request.getfixturevalue("moto_s3")
    url = moto.bucket()
    return {"name": "s3", "settings": {"storage_url": url}, "env": moto.env, "url": url, "moto": moto}


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The shared service: an API and one worker, a 1 MB upload limit."""
    svc = Service(tmp_path_factory.mktemp("service"), max_corpus_bytes=1_000_000)
    svc.start_api()
    svc.start_worker()
    yield svc
    svc.stop()


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c


@pytest.fixture(scope="session")
def corpus(service):
    with service.client() as c:
        return service.upload(c, small_corpus(), name="shakespeare-20k")


@pytest.fixture(scope="session")
def trained_job(service, corpus):
    """One finished tiny job, shared by the tests that only read from it."""
    with service.client() as c:
        job = service.create_job(c, corpus["id"], name="shared-tiny")
        job = service.wait_job(c, job["id"])
    assert job["status"] == "succeeded", job
    return job
