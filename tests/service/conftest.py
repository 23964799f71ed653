"""Fixtures of the service tests."""

import pytest

from tests.harness import Service


@pytest.fixture
def svc(tmp_path):
    """The API alone on a fresh SQLite file: a test starts the workers it needs."""
    s = Service(tmp_path)
    s.start_api()
    yield s
    s.stop()
