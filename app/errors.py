"""Every error answers JSON `{"detail": ...}`; a 500 only for a real bug, logged with its trace."""

from __future__ import annotations

import json
import logging
import math
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.ops.disk import disk_full_answer, is_disk_full
from app.ops.middleware import SECURITY_HEADERS
from app.settings import get_settings

log = logging.getLogger("charrnn.api")


class ApiError(Exception):
    """An expected failure: a status code and a message that says what to change."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers


class ErrorOut(BaseModel):
    detail: str


DESCRIPTIONS = {
    400: "the body could not be parsed (e.g. it is not valid JSON)",
    401: "missing, invalid or revoked API key",
    404: "no such resource for this key's owner",
    409: "conflicts with the resource's state",
    410: "the resource's file is gone",
    413: "the upload is over the size limit",
    415: "unsupported Content-Type",
    429: "over a per-owner limit (active jobs, stored corpus bytes, concurrent generations); see `Retry-After`",
    502: "the worker failed to run the model",
    507: "the server's disk is full; nothing of the upload was kept",
    503: "no live worker, or the database is busy; retry after `Retry-After` seconds",
}

# An error echoes at most this much of what it was sent: a 10 MB prompt must not come back whole.
ECHO_CHARS = 100
DB_RETRY_AFTER_SECONDS = "5"


def responses(*codes: int) -> dict:
    """OpenAPI entries for the error answers a route can give (422 FastAPI documents itself)."""
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, f"no {kind} with id {id_!r} (it does not exist, or belongs to another API key's owner)")


def clip_text(text: str) -> str:
    """At most ECHO_CHARS characters, and encodable: lone surrogates (\\ud800) come back escaped."""
    clipped = text[:ECHO_CHARS] + ("…" if len(text) > ECHO_CHARS else "")
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_safe(value, depth: int = 0):
    """Any parsed input made JSON-encodable: NaN/Infinity as strings, bytes decoded, strings clipped."""
    if isinstance(value, str):
        return clip_text(value)
    if isinstance(value, bytes):
        return clip_text(value[: ECHO_CHARS * 4].decode("utf-8", "replace"))
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return value if abs(value) < 2**63 else clip_text(str(value))
    if depth >= 3:
        return "…"
    if isinstance(value, dict):
        return {clip_text(str(k)): _json_safe(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list | tuple | set):
        return [_json_safe(v, depth + 1) for v in list(value)[:20]]
    return clip_text(str(value))


def _echo(value):
    """The input as the 422 shows it: small values as they are, anything longer as a clipped JSON prefix."""
    safe = _json_safe(value)
    text = json.dumps(safe, ensure_ascii=False)
    return safe if len(text) <= 2 * ECHO_CHARS else clip_text(text)


_data_dir_pattern: tuple[object, re.Pattern] | None = None


def scrub_paths(detail):
    """Replace server paths under the data directory (e.g. a checkpoint file a worker names) by the file's name.

    A client never needs to know where the server keeps its files, and a path tells an attacker the layout.
    """
    global _data_dir_pattern
    if not isinstance(detail, str) or "/" not in detail:
        return detail
    settings = get_settings()
    if _data_dir_pattern is None or _data_dir_pattern[0] is not settings:
        roots = sorted({str(settings.data_dir.resolve()), str(settings.data_dir.absolute())}, key=len, reverse=True)
        pattern = re.compile("(?:" + "|".join(map(re.escape, roots)) + r")(/[^\s'\"]*)?")
        _data_dir_pattern = (settings, pattern)
    return _data_dir_pattern[1].sub(lambda m: (m.group(1) or "/").rsplit("/", 1)[-1] or "the data directory", detail)


def _describe(error: dict) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc) or "the request body"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse({"detail": scrub_paths(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette lists only the methods of the one route it matched; a path served by several
            # routes (GET and DELETE /corpora/{id}) must list them all.
            methods = set()
            for route in request.app.router.routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE and getattr(route, "methods", None):
                    methods |= route.methods
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": scrub_paths(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        # `message` is the one line a person reads; `detail` keeps FastAPI's structured list for programs.
        # Everything echoed is made JSON-safe and short: the input may hold NaN, Infinity, lone surrogates
        # or megabytes, and the answer to a bad request must never be a 500 or a copy of the request.
        errors = []
        for error in exc.errors()[:20]:
            out = {
                "type": clip_text(str(error.get("type", ""))),
                "loc": [p if isinstance(p, int) else clip_text(str(p)) for p in error.get("loc", ())][:10],
                "msg": clip_text(str(error.get("msg", "invalid"))),
            }
            if "input" in error:
                out["input"] = _echo(error["input"])
            if error.get("ctx"):
                out["ctx"] = {clip_text(str(k)): clip_text(str(v)) for k, v in error["ctx"].items()}
            errors.append(out)
        message = "; ".join(_describe(e) for e in errors[:5])
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _exc: ClientDisconnect):
        # Not an error of ours: the client closed the connection before its body was in (an upload
        # cancelled halfway). One line, no traceback; whatever it had sent is already removed.
        log.info("client disconnected before its request body was complete: %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "the client disconnected before the request body was complete"}, 400)

    @app.exception_handler(UnicodeEncodeError)
    async def _unencodable(_request: Request, exc: UnicodeEncodeError):
        # JSON allows "\ud800" (a lone surrogate), but it is not text: it cannot be stored or sent on.
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        return JSONResponse(
            {
                "detail": f"the request holds characters that are not valid Unicode text "
                f"({bad.encode('utf-8', 'backslashreplace').decode()}: a lone surrogate); send real characters"
            },
            status_code=422,
        )

    async def _database_unavailable(request: Request, exc: Exception):
        if is_disk_full(exc):  # not busy but full: no retry helps until someone deletes something (app/ops/disk.py)
            return disk_full_answer()
        # A locked SQLite file (another process holds the write lock past the busy timeout) or a
        # PostgreSQL that is restarting: nothing is wrong with the request, so say when to come back.
        first_line = (str(exc).splitlines() or [""])[0]
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, first_line)
        return JSONResponse(
            {"detail": "the database is busy or unreachable; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": DB_RETRY_AFTER_SECONDS},
        )

    for exc_class in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(exc_class, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Starlette answers this one outside every middleware, so the security headers come along here.
        headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500, headers=headers)
