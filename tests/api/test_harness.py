"""The in-process client keeps the service harness's rule: a 500 or 502 fails the test, whatever it checked."""

from __future__ import annotations

import pytest
from fastapi.responses import JSONResponse

from app.main import create_app
from tests.api.conftest import InProcessApi


@pytest.mark.parametrize("status", [500, 502])
def test_a_server_error_fails_the_test(api, status):
    app = create_app()
    app.add_api_route("/broken", lambda: JSONResponse({"detail": "boom"}, status_code=status))
    with InProcessApi(api.data_dir, app).client() as c, pytest.raises(AssertionError, match=f"server error {status}"):
        c.get("/broken")
