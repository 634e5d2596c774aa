"""The listening side of the HTTP sources: a limit on open connections and a deadline for each request's head.

aiohttp reads a request's line and headers as slowly as the peer sends them, so a peer that
trickles a byte now and then (slow-loris) holds a connection, and a few hundred such peers hold
the endpoint. :class:`ConnectionGuard` wraps aiohttp's protocol for each accepted connection:

* at most ``max_connections`` are open at once; one more is answered ``503`` with
  ``Retry-After`` and closed at once, without being read;
* a connection has ``header_timeout`` seconds to deliver a whole request head (line and headers),
  counted from its opening or from the first byte of its next request; else it is closed;
* between requests a kept-alive connection may stay idle ``keepalive_timeout`` seconds (longer than
  the head deadline and than HTTP clients keep idle connections: a client should never reuse a
  connection the server has just closed).

A connection's clock is in one of three phases: ``HEAD`` (from opening, and from the first byte
after a response: ``header_timeout``), ``HANDLING`` (a request is being handled: no clock here,
the body has its own deadline, kept by the request handler) and ``IDLE`` (after a response:
``keepalive_timeout``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

__all__ = ["ConnectionGuard", "GuardedSite"]

log = structlog.get_logger()

_BUSY_LINGER = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Counts and times the connections of one endpoint (see the module docstring)."""

    def __init__(
        self,
        inner: Callable[[], asyncio.BaseProtocol],
        *,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        retry_after: int,
        on_refused: Callable[[str], None],
    ) -> None:
        self._inner = inner
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self._retry_after = retry_after
        self._on_refused = on_refused
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        self._accepted = 0  # protocols made whose connection_lost has not come yet (connection_made may be pending)

    def protocol(self) -> asyncio.BaseProtocol:
        """The protocol factory for ``loop.create_server``."""
        if self._accepted >= self.max_connections:
            self._on_refused("busy")
            return _Busy(self._retry_after, self.max_connections)
        self._accepted += 1
        return _Guarded(self, self._inner())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Tells the request's connection when a request is handled (no head clock) and when it is done (idle)."""
        guarded = self._open.get(request.transport) if request.transport is not None else None
        if guarded is not None:
            guarded.enter(_Phase.HANDLING)
        try:
            return await handler(request)
        finally:
            if guarded is not None:
                guarded.enter(_Phase.IDLE)

    def _made(self, transport: asyncio.BaseTransport, guarded: _Guarded) -> None:
        self._open[transport] = guarded

    def _lost(self, transport: asyncio.BaseTransport | None) -> None:
        self._accepted -= 1
        if transport is not None:
            self._open.pop(transport, None)

    def _expired(self) -> None:
        self._on_refused("header_timeout")


class _Phase(enum.Enum):
    HEAD = "head"  # a request head is expected: header_timeout
    HANDLING = "handling"  # a request is handled: no clock
    IDLE = "idle"  # between requests: keepalive_timeout


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with its clock (see the module docstring)."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self._guard = guard
        self._inner: Any = inner  # aiohttp's RequestHandler: an asyncio.Protocol
        self._transport: asyncio.Transport | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._phase = _Phase.HEAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._guard._made(transport, self)
        self.enter(_Phase.HEAD)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._guard._lost(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.IDLE:  # the first byte of the next request
            self.enter(_Phase.HEAD)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def enter(self, phase: _Phase) -> None:
        self._stop_clock()
        self._phase = phase
        seconds = {_Phase.HEAD: self._guard.header_timeout, _Phase.IDLE: self._guard.keepalive_timeout}.get(phase)
        if seconds is not None:
            self._clock = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _expire(self) -> None:
        self._clock = None
        if self._transport is None or self._transport.is_closing():
            return
        if self._phase is _Phase.HEAD:
            peer = self._transport.get_extra_info("peername")
            log.info("http connection closed: no whole request head in time", timeout=self._guard.header_timeout, remote=peer)
            self._guard._expired()
        self._transport.close()


class _Busy(asyncio.Protocol):
    """A connection over the limit: answered 503 at once, its request not read.

    The answer is followed by our end of the stream; what the peer sends is discarded until it
    closes, for at most a second (closing with its request unread would reset the connection,
    and the peer could lose the answer)."""

    def __init__(self, retry_after: int, limit: int) -> None:
        body = b'{"error": "too many open connections (max_connections %d); retry later"}' % limit
        self._response = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: %d\r\nContent-Length: %d\r\n\r\n%s" % (retry_after, len(body), body)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._response)
        transport.write_eof()
        asyncio.get_running_loop().call_later(_BUSY_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a connection over the limit is not read

    def eof_received(self) -> bool:
        return False  # the peer is done: close


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol, self._host, self._port, reuse_address=True
        )
