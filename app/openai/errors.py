"""OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, for everything under /v1.

The /v1 sub-application installs app/errors.py's handlers with `render` below, so an error is read once
(app.errors.classify) and only its shape differs from the native `{"detail": ...}`. A 422 (a value the
service refused) becomes OpenAI's 400, so the client raises BadRequestError as it would against OpenAI.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from app.errors import ApiError, Problem
from app.openai.schemas import openai_param

# Our status -> (the status OpenAI would answer, its error type).
STATUS = {
    400: (400, "invalid_request_error"),
    401: (401, "invalid_request_error"),
    403: (403, "invalid_request_error"),
    404: (404, "invalid_request_error"),
    405: (405, "invalid_request_error"),
    409: (409, "invalid_request_error"),
    410: (404, "invalid_request_error"),  # a stored file gone: for the client, the thing is not there
    413: (413, "invalid_request_error"),
    415: (400, "invalid_request_error"),
    422: (400, "invalid_request_error"),
    429: (429, "rate_limit_error"),
    502: (502, "server_error"),
    503: (503, "server_error"),
}
CODES = {401: "invalid_api_key", 404: "not_found", 409: "conflict", 410: "file_gone", 503: "service_unavailable"}


class OpenAIError(ApiError):
    """An expected failure raised by /v1's own mapping, with the parameter it is about (OpenAI's order)."""

    def __init__(self, status_code: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code, message, headers, param=param, code=code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    answered, type_ = STATUS.get(status, (status, "server_error" if status >= 500 else "invalid_request_error"))
    headers = dict(headers or {})
    if answered < 500 and answered not in (408, 429):
        # The client retries a 409 by default (OpenAI's are lock timeouts); ours are states that a retry
        # will not change (a finished job, a file in use), so say so (the client honours this header).
        headers.setdefault("x-should-retry", "false")
    return JSONResponse(
        error_body(message, type_, param, code if code is not None else CODES.get(status)),
        status_code=answered,
        headers=headers,
    )


def render(_request: Request, problem: Problem) -> JSONResponse:
    """A Problem (app/errors.py) in OpenAI's shape; a native field is named as /v1 names it (OPENAI_PARAMS)."""
    param = openai_param(problem.param) if problem.param else None
    return error_response(problem.status, problem.message, param, problem.code, problem.headers)
