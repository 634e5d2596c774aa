"""A real HTTP server (aiohttp) standing in for a vendor's API in connector tests, with scripted faults.

Each request first takes the next scripted fault, if any: a canned answer (a status, headers and a
JSON body), :data:`DROP`, which closes the connection without answering, or :data:`PASS`, which lets
that request through. Without a fault the route's handler answers as the vendor documents.
``stop()`` and ``start()`` take the server away and bring it back on the same port (an outage of
the external system).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers import free_port

__all__ = ["DROP", "PASS", "Canned", "FakeHttpServer", "Handler"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Canned:
    """A scripted answer."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        if self.body is None:
            return web.Response(status=self.status, headers=self.headers, text="unavailable")
        return web.json_response(self.body, status=self.status, headers=self.headers)


DROP = "drop"
PASS = None


class FakeHttpServer:
    def __init__(self, routes: list[tuple[str, str, Handler]]) -> None:
        self.routes = routes
        self.port = free_port()
        self.faults: list[Canned | str | None] = []
        self.calls = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._faults])
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.calls += 1
        if not self.faults:
            return await handler(request)
        fault = self.faults.pop(0)
        if fault is PASS:
            return await handler(request)
        if isinstance(fault, Canned):
            return fault.response()
        assert request.transport is not None
        request.transport.abort()
        raise web.HTTPServiceUnavailable  # never sent: the connection is gone
