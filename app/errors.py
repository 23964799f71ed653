"""One classification of every error, rendered in each face's shape; a 500 only for a real bug, logged.

`classify()` turns whatever a request raised (ApiError from a service, FastAPI's validation error, an
unknown URL, a busy database, a bug) into a Problem: status, one-line message, headers, and the field it
is about. `install_error_handlers(app, render)` installs the handlers once per app with that app's
renderer: the native routes answer `{"detail": ...}` (render_native, below), /v1 answers OpenAI's
`{"error": {...}}` (app/openai/errors.py). So a rule about errors (paths scrubbed, input echoed short and
JSON-safe, Retry-After on a busy database, the security headers on a 500) is written once, here.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import secrets
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from app.ops.disk import FULL_DETAIL, RETRY_AFTER_SECONDS, is_disk_full
from app.ops.middleware import SECURITY_HEADERS
from app.settings import get_settings
from app.storage.base import StoreError

log = logging.getLogger("charrnn.api")


class ApiError(Exception):
    """An expected failure: a status code and a message that says what to change; `param` (the request
    field it is about) and `code` (a stable word for programs) when known: /v1 shows them."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None, *,
                 param: str | None = None, code: str | None = None):
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers
        self.param, self.code = param, code


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
    507: "the server's disk (or object store) is full; nothing of the upload was kept",
    503: "no live worker, or the database or object store is busy or unreachable; retry after `Retry-After` "
    "seconds",
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


def _where(error: dict) -> str:
    return ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))


def _describe(error: dict) -> str:
    return f"{_where(error) or 'the request body'}: {error.get('msg', 'invalid')}"


@dataclass
class Problem:
    """What went wrong, whichever face answers it."""

    status: int
    message: str  # one line a person reads, naming the field and the fix
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None  # the request field it is about
    code: str | None = None  # a stable word for programs, where one is defined
    errors: list[dict] | None = None  # a validation error's field list (native 422s show it as `detail`)


Render = Callable[[Request, Problem], Response]


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (`Spec`, `Spec | None`, `list[Spec]`, `Annotated[Spec, ...]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def fields_at(model: type[BaseModel] | None, loc: tuple | list) -> list[str]:
    """The field names (as sent: aliases) that `model` accepts at `loc`, the parent of a field."""
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # an item of a list: the list's model
        fields = {**model.model_fields, **{f.alias: f for f in model.model_fields.values() if f.alias}}
        model = _model_in(fields[part].annotation) if part in fields else None
    if model is None:
        return []
    return sorted({f.alias or name for name, f in model.model_fields.items()})


def unknown_field(model: type[BaseModel] | None, loc: tuple | list) -> str:
    """pydantic's "Extra inputs are not permitted" made actionable: the field, and the closest known one."""
    name = str(loc[-1]) if loc else ""
    known = fields_at(model, tuple(loc[:-1]))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field `{clip_text(name)}`; did you mean `{close[0]}`?"
    if known:
        return f"unknown field `{clip_text(name)}`; the fields here are {', '.join(f'`{k}`' for k in known)}"
    return f"unknown field `{clip_text(name)}`; leave it out"


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model of the matched route's JSON body, if it has one."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    return _model_in(getattr(getattr(body_field, "field_info", None), "annotation", None))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _body_not_json(request: Request, errors: list[dict]) -> Problem | None:
    """A JSON route's body sent with another Content-Type (curl -d sends x-www-form-urlencoded) is not read
    as JSON, and pydantic's answer ("a valid dictionary") does not say why: say what to send."""
    content_type = request.headers.get("content-type", "")
    whole_body = any(tuple(e.get("loc", ())) == ("body",) for e in errors)
    if not whole_body or not content_type or _is_json(content_type):
        return None
    media = clip_text(content_type.split(";")[0].strip())
    return Problem(
        415,
        f"the body was sent as `Content-Type: {media}`, so it was not read as JSON; send it with "
        "`Content-Type: application/json` (curl: `--json '{...}'`, or `-H 'Content-Type: application/json'`)",
        code="unsupported_media_type",
    )


def _validation(request: Request, exc: RequestValidationError) -> Problem:
    # `message` is the one line a person reads; `errors` keeps FastAPI's structured list for programs.
    # Everything echoed is made JSON-safe and short: the input may hold NaN, Infinity, lone surrogates
    # or megabytes, and the answer to a bad request must never be a 500 or a copy of the request.
    raw = exc.errors()
    not_json = _body_not_json(request, raw)
    if not_json is not None:
        return not_json
    errors = []
    for error in raw[:20]:
        out = {
            "type": clip_text(str(error.get("type", ""))),
            "loc": [p if isinstance(p, int) else clip_text(str(p)) for p in error.get("loc", ())][:10],
            "msg": clip_text(str(error.get("msg", "invalid"))),
        }
        if error.get("type") == "extra_forbidden":
            out["msg"] = unknown_field(_body_model(request), [p for p in error.get("loc", ()) if p != "body"])
        if "input" in error:
            out["input"] = _echo(error["input"])
        if error.get("ctx"):
            out["ctx"] = {clip_text(str(k)): clip_text(str(v)) for k, v in error["ctx"].items()}
        errors.append(out)
    message = "; ".join(_describe(e) for e in errors[:5])
    param = (_where(errors[0]) or None) if errors else None
    return Problem(422, message, param=param, errors=errors)


def _routes(routes: list) -> Iterator:
    """Every route, those of included routers too (FastAPI wraps each included router in one route; ours
    are included without a prefix, their routes carry their own)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def _http(request: Request, exc: StarletteHTTPException) -> Problem:
    headers = dict(exc.headers or {})
    message = scrub_paths(exc.detail if isinstance(exc.detail, str) else str(exc.detail))
    docs = request.scope.get("root_path", "") + "/docs"  # this face's: /docs, or /v1/docs under /v1
    if exc.status_code == 404 and message == "Not Found":
        message = f"unknown URL {request.method} {clip_text(request.url.path)}: see {docs} for the routes"
    elif exc.status_code == 405:
        # Starlette lists only the methods of the one route it matched; a path served by several
        # routes (GET and DELETE /corpora/{id}) must list them all. Only those of the first template that
        # matches: /jobs/defaults is not /jobs/{job_id}, though the latter's pattern matches it too.
        methods = set(filter(None, (m.strip() for m in headers.get("Allow", "").split(","))))
        template = None
        for route in _routes(request.app.router.routes):
            match, _ = route.matches(request.scope)
            if match == Match.NONE or not getattr(route, "methods", None):
                continue
            template = template or route.path
            if route.path == template:
                methods |= route.methods
        headers["Allow"] = ", ".join(sorted(methods))
        message = f"{request.method} is not allowed on {clip_text(request.url.path)}; it takes {headers['Allow']}"
    return Problem(exc.status_code, message, headers)


def classify(request: Request, exc: Exception) -> Problem:
    """The one reading of every error, whichever face renders it."""
    if isinstance(exc, ApiError):
        return Problem(exc.status_code, scrub_paths(exc.detail), dict(exc.headers or {}), exc.param, exc.code)
    if isinstance(exc, StarletteHTTPException):
        return _http(request, exc)
    if isinstance(exc, RequestValidationError):
        return _validation(request, exc)
    if isinstance(exc, ClientDisconnect):
        # Not an error of ours: the client closed the connection before its body was in (an upload
        # cancelled halfway). One line, no traceback; whatever it had sent is already removed.
        log.info("client disconnected before its request body was complete: %s %s", request.method, request.url.path)
        return Problem(400, "the client disconnected before the request body was complete")
    if isinstance(exc, UnicodeEncodeError):
        # JSON allows "\ud800" (a lone surrogate), but it is not text: it cannot be stored or sent on.
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        return Problem(
            422,
            f"the request holds characters that are not valid Unicode text "
            f"({bad.encode('utf-8', 'backslashreplace').decode()}: a lone surrogate); send real characters",
        )
    if isinstance(exc, StoreError):
        # The store (the data directory, or an S3 bucket) refused or did not answer: the message names it
        # and what to check; whatever the request was writing was not kept (its row never committed).
        log.warning("store error on %s %s: %s", request.method, request.url.path, exc.message)
        code = "insufficient_storage" if exc.status == 507 else "service_unavailable"
        return Problem(exc.status, exc.message, {"Retry-After": "30"}, code=code)
    if isinstance(exc, DATABASE_UNAVAILABLE) and is_disk_full(exc):
        # Not busy but full: no retry helps until someone deletes something (app/ops/disk.py).
        log.warning("the disk is full: %s %s answered 507", request.method, request.url.path)
        return Problem(507, FULL_DETAIL, {"Retry-After": RETRY_AFTER_SECONDS}, code="insufficient_storage")
    if isinstance(exc, DATABASE_UNAVAILABLE):
        # A locked SQLite file (another process holds the write lock past the busy timeout) or a
        # PostgreSQL that is restarting: nothing is wrong with the request, so say when to come back.
        first_line = (str(exc).splitlines() or [""])[0]
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, first_line)
        return Problem(
            503,
            "the database is busy or unreachable; retry in a few seconds",
            {"Retry-After": DB_RETRY_AFTER_SECONDS},
            code="service_unavailable",
        )
    # A bug: the user gets an id, never the exception's words (they would read as their mistake); the
    # operator finds the traceback in the API's log under the same id (the worker's bugs: worker/service/bugs.py).
    error_id = "err_" + secrets.token_hex(6)
    log.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc,
              extra={"fields": {"error_id": error_id}})
    # Starlette answers this one outside every middleware, so the security headers come along here.
    headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
    return Problem(500, f"internal error {error_id}: a bug in charrnn, not a problem with what you sent; the API's "
                   "log has its traceback under this id", headers, code="internal_error")


DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
HANDLED = (ApiError, StarletteHTTPException, RequestValidationError, ClientDisconnect, UnicodeEncodeError,
           StoreError, *DATABASE_UNAVAILABLE, Exception)


def render_native(_request: Request, problem: Problem) -> JSONResponse:
    if problem.errors is not None:
        return JSONResponse({"detail": problem.errors, "message": problem.message}, problem.status, problem.headers)
    return JSONResponse({"detail": problem.message}, problem.status, problem.headers or None)


def install_error_handlers(app: FastAPI, render: Render = render_native) -> None:
    """Answer every error `app` raises by classify() and `render` (the app's face)."""

    async def handle(request: Request, exc: Exception) -> Response:
        return render(request, classify(request, exc))

    for exc_class in HANDLED:
        app.add_exception_handler(exc_class, handle)
