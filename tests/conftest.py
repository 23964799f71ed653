"""Shared fixtures. Service tests run the real thing (tests/harness.py): a SQLite file in a temp dir, the API
under uvicorn on a free port, and real worker processes training tiny models."""

from __future__ import annotations

import os

# One torch (OpenMP) thread per test process, set before any test module imports torch, and inherited by
# the processes the tests start. `make check`/`make test` run two test processes on 2 cores: with a thread
# per core each, torch's threads spin-wait for one another and the in-process engine tests cost about twice
# the CPU time (measured: 227 s -> 113 s for `-m "not slow and not browser"` on a loaded 2-core machine).
# The models here are far too small to gain from a second thread. An OMP_NUM_THREADS already set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.harness import ROOT, MotoS3, Service, require_postgres, small_corpus, throwaway_database

SERVICE_TESTS = ROOT / "tests" / "service"


# The longest files, longest first, started before all others: `make test` hands whole files to its
# workers in collection order (with --no-loadscope-reorder: by default pytest-xdist sorts files by their
# number of tests, which put one-test files that run a minute last, to run alone at the end). The order is
# a full run's per-file times (`make test`'s junit report, 2026-12-06).
LONGEST_FILES = (
    "service/test_database.py", "service/test_object_store.py", "service/test_stops.py", "service/test_recovery.py",
    "service/test_worker_faults.py", "service/test_uploads.py", "service/test_readme.py", "service/test_streams.py",
    "service/test_followers.py", "service/test_scaleout.py", "service/test_resume_record.py",
    "browser/test_dashboard.py", "service/test_limits.py", "engine/test_distributed.py", "browser/test_pictures.py",
    "service/test_limits_across_apis.py", "service/test_security.py", "service/test_inspect.py",
    "service/test_disk_full.py", "openai/test_generation_rules.py", "engine/test_gpu_check.py",
    "service/test_complete_curves.py", "service/test_retries.py", "service/test_retention.py",
    "service/test_e2e.py", "service/test_api.py", "browser/test_inspect.py",
)


def pytest_collection_modifyitems(items):
    # Every test under tests/service/ runs the service as real processes: `make check` leaves them out.
    for item in items:
        if SERVICE_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    tests = ROOT / "tests"
    # Stable: the order within a file is kept. (By path under tests/: two files may share a name.)
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(rank)))


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
