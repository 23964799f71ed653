"""Every error answers JSON `{"detail": ...}`; a 500 only for a real bug, logged with its trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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
    503: "no live worker; retry later",
}


def responses(*codes: int) -> dict:
    """OpenAPI entries for the error answers a route can give (422 FastAPI documents itself)."""
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, f"no {kind} with id {id_!r} (it does not exist, or belongs to another API key's owner)")


def _describe(error: dict) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc) or "the request body"
    return f"{where}: {error.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

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
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        # `message` is the one line a person reads; `detail` keeps FastAPI's structured list for programs.
        for error in errors:
            error.pop("url", None)
            if isinstance(error.get("input"), bytes):
                error["input"] = error["input"][:100].decode("utf-8", "replace")
            ctx = error.get("ctx")
            if ctx:
                error["ctx"] = {k: str(v) for k, v in ctx.items()}
        message = "; ".join(_describe(e) for e in errors[:5])
        return JSONResponse(
            {
                "detail": jsonable_encoder(errors, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}),
                "message": message,
            },
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)
