"""Per-request metrics and logs, security headers, and the one check every route shares (no repeated
query parameters).

Plain ASGI rather than Starlette's `@app.middleware("http")`: that one runs every request in an extra
task with its own body stream, which cost about a millisecond per request on a 2-core machine, and
/generate pays it on every call.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops.metrics import REQUEST_SECONDS, REQUESTS

log = logging.getLogger("charrnn.api")

# On every response: no MIME sniffing, never framed (clickjacking), no Referer leaking ids in URLs.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]


def with_security_headers(scope: Scope, message: Message) -> Message:
    headers = list(message.get("headers", []))
    present = {name.lower() for name, _ in headers}
    headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    # An answer to a request that carried a key is that owner's data: no shared or browser cache may keep it.
    if b"cache-control" not in present and any(name == b"authorization" for name, _ in scope.get("headers", ())):
        headers.append((b"cache-control", b"no-store"))
    return {**message, "headers": headers}


# The one label of every request that no route matched: metric labels must never carry what a client typed.
UNMATCHED = "unmatched"


def route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template (`/jobs/{job_id}`, `/v1/models/{model:path}`), or UNMATCHED.

    A route inside a mounted app (/v1) knows only its path under the mount; the mount's own prefix is what
    the router added to `root_path` on the way in. Mounts here have no parameters, so that prefix is literal.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):  # a mount that answered itself (static files): the file name stays out
        return path + "/{path:path}"
    return scope.get("root_path", "")[len(root_path) :] + path


def repeated_parameter(scope: Scope) -> str | None:
    if not scope.get("query_string"):
        return None
    params = QueryParams(scope["query_string"])
    return next((k for k in sorted(params) if len(params.getlist(k)) > 1), None)


class ObserveRequests:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        observed = False
        root_path = scope.get("root_path", "")

        def observe(status: int) -> None:
            # At the start of the response, as the time to the first byte: an event stream may go on for hours.
            nonlocal observed
            observed = True
            route = route_template(scope, root_path)
            seconds = time.perf_counter() - t0
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(seconds)
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1000, 1),
                    }
                },
            )

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(message["status"])
                message = with_security_headers(scope, message)
            await send(message)

        try:
            repeated = repeated_parameter(scope)
            if repeated:  # every parameter is single-valued; silently taking the last one hides mistakes
                response = JSONResponse(
                    {"detail": f"query parameter {repeated!r} is given more than once; give it once"}, status_code=422
                )
                await response(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        finally:
            if not observed:  # it raised before answering; the server's error handler answers 500
                observe(500)
