"""OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, for everything under /v1.

The handlers are installed on the /v1 sub-application only, so the native routes keep `{"detail": ...}`.
Errors raised by the native services (ApiError) are translated here: their 422 (a value the service
refused) becomes OpenAI's 400, so the client raises BadRequestError as it would against OpenAI. The native
handlers' guarantees hold here too (app/errors.py): messages are short and JSON-safe and name no server
path, a busy database is a 503 with Retry-After, and the security headers come on every answer (the main
app's ObserveRequests wraps /v1; the 500 handler adds them itself too, as the native one does).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import DB_RETRY_AFTER_SECONDS, ApiError, clip_text, scrub_paths
from app.ops.middleware import SECURITY_HEADERS

log = logging.getLogger("charrnn.api")

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


class OpenAIError(Exception):
    """An expected failure on /v1, with the parameter it is about."""

    def __init__(self, status_code: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.message, self.param, self.code, self.headers = status_code, message, param, code, headers


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


def guess_param(message: str) -> str | None:
    """The request field a native message is about, when it names one (for `param`)."""
    for field in ("prompt", "temperature", "top_p", "max_tokens", "stop", "seed", "model", "training_file"):
        if message.startswith(field) or f"the {field}" in message:
            return field
    return None


def _location(error: dict) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return ".".join(loc)


def install(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError):
        return error_response(exc.status_code, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        detail = scrub_paths(exc.detail)
        return error_response(exc.status_code, detail, guess_param(detail), headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = scrub_paths(exc.detail if isinstance(exc.detail, str) else str(exc.detail))
        if exc.status_code == 404 and message == "Not Found":
            message = f"unknown URL {request.method} {clip_text(request.url.path)}: see /v1/docs for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {clip_text(request.url.path)}"
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        # Only field names and pydantic's messages, clipped: never the input, which may be megabytes,
        # NaN or a lone surrogate.
        errors = exc.errors()
        message = "; ".join(
            f"{clip_text(_location(e)) or 'the request body'}: {clip_text(str(e.get('msg', 'invalid')))}"
            for e in errors[:5]
        )
        param = (clip_text(_location(errors[0])) or None) if errors else None
        return error_response(400, message, param)

    @app.exception_handler(UnicodeEncodeError)
    async def _unencodable(_request: Request, exc: UnicodeEncodeError):
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        return error_response(
            400,
            f"the request holds characters that are not valid Unicode text "
            f"({bad.encode('utf-8', 'backslashreplace').decode()}: a lone surrogate); send real characters",
        )

    async def _database_unavailable(request: Request, exc: Exception):
        first_line = (str(exc).splitlines() or [""])[0]
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, first_line)
        return error_response(
            503,
            "the database is busy or unreachable; retry in a few seconds",
            code="service_unavailable",
            headers={"Retry-After": DB_RETRY_AFTER_SECONDS},
        )

    for exc_class in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(exc_class, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
        return error_response(500, "internal error; it has been logged", code="internal_error", headers=headers)
