"""The API's calls to workers' generation servers: one aiohttp session per app, its connections kept alive.

aiohttp rather than httpx here: every /generate makes one such call, and aiohttp's C parser costs a third
of httpx's CPU per call (0.5 ms against 1.5 ms for a 1-character /generate on 2 cores; the service's own
cost is benchmarks/bench_generation_load.py's "1-char overhead"). Callers see only `WorkerClient` and
`Upstream`, and one exception for a worker that cannot be reached or whose answer was cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp


class UpstreamError(Exception):
    """The worker could not be reached, went away mid-answer, or was silent past the timeout."""


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class Upstream:
    """A worker's answer whose status line and headers have arrived; its body is read by one of the
    methods below, then `aclose()` (which, on an answer not read to its end, closes the connection: that is
    how the worker learns its caller went away and stops generating)."""

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        try:
            return await self._response.read()
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines, however long (a `done` line carries every sample: aiohttp's own readline
        refuses lines past its buffer size)."""
        buffer = bytearray()
        async for chunk in self.aiter_raw():
            searched = len(buffer)
            buffer += chunk
            end = buffer.rfind(b"\n", searched)
            if end < 0:
                continue
            complete, buffer = bytes(buffer[:end]), buffer[end + 1 :]
            for line in complete.split(b"\n"):
                yield line.decode()
        if buffer:
            yield buffer.decode()

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()


class WorkerClient:
    """POSTs to workers, each carrying the deployment's worker secret. Make it on the running event loop
    (the app's lifespan) and close it there."""

    def __init__(self, *, headers: Mapping[str, str], timeout_seconds: float, connections: int):
        self._session = aiohttp.ClientSession(
            headers=dict(headers),
            # A worker that accepts no connection within 5 s is gone (try the next one); one that is slower
            # than the generation timeout between two pieces of its answer is stuck. Waiting for a free
            # connection of the pool counts against the generation timeout too.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=timeout_seconds, sock_connect=5.0, sock_read=timeout_seconds
            ),
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
            # Workers' answers are ours: no cookies to keep, no decompression to offer.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def post(self, url: str, content: str) -> Upstream:
        """The answer's status and headers, its body unread; UpstreamError if the worker cannot be reached."""
        try:
            response = await self._session.post(
                url, data=content.encode(), headers={"Content-Type": "application/json"}
            )
        except TRANSPORT_ERRORS as exc:
            raise UpstreamError(type(exc).__name__) from exc
        return Upstream(response)

    async def aclose(self) -> None:
        await self._session.close()
