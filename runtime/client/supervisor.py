"""Reconnect supervision: which mesh address to dial next, how long to back off first, and the loop that does it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from runtime.errors import HelloRefusedError, MeshConnectError

from .identity import Address
from .state import ClientState, ClientStates, ClientTrigger

__all__ = ["ReconnectSupervisor"]

log = structlog.get_logger()

_MAX_ATTEMPT = 30  # caps the backoff exponent; the delay is capped by backoff_max long before


class ReconnectSupervisor:
    """Reconnects whenever the connection is lost, until the client closes.

    Addresses are dialled in turn: a failed attempt or a server goodbye moves on to the next; a
    redirect is dialled once, at once. Before any other attempt it waits a random time between half
    and all of an exponential backoff (``backoff_initial`` doubling up to ``backoff_max``), reset by
    a connection that succeeds.
    """

    def __init__(self, addresses: tuple[Address, ...], *, backoff_initial: float, backoff_max: float) -> None:
        self.addresses = addresses
        self._index = 0
        self._redirect: Address | None = None
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._disconnected = asyncio.Event()

    def describe(self) -> str:
        """The address in use (or about to be), as ``host:port``."""
        host, port = self._redirect or self.addresses[self._index]
        return f"{host}:{port}"

    def connection_up(self) -> None:
        self._disconnected.clear()

    def connection_down(self) -> None:
        """The connection is gone: :meth:`run` starts the next attempt."""
        self._disconnected.set()

    def goodbye(self) -> None:
        """The mesh said goodbye: the next attempt goes to the next address, if there are several."""
        if len(self.addresses) > 1:
            self._index = (self._index + 1) % len(self.addresses)

    def redirect(self, address: Address) -> None:
        """The mesh sent us elsewhere: the next attempt goes there, without backing off."""
        self._redirect = address

    async def run(self, states: ClientStates, establish: Callable[[Address], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            await self._disconnected.wait()
            if states.current is ClientState.CLOSED:
                return
            states.move(ClientTrigger.RECONNECT)
            if self._redirect is None:
                ceiling = min(self._backoff_max, self._backoff_initial * 2**attempt)
                await asyncio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
            address = self._redirect or self.addresses[self._index]
            self._redirect = None
            try:
                await establish(address)
            except MeshConnectError as exc:  # ours, all of them: refused, unavailable, protocol broken
                attempt = min(attempt + 1, _MAX_ATTEMPT)
                self._index = (self._index + 1) % len(self.addresses)
                level = log.error if isinstance(exc, HelloRefusedError) else log.warning
                level("mesh reconnect failed", address=f"{address[0]}:{address[1]}", attempt=attempt, reason=str(exc))
                self._disconnected.set()
            else:
                attempt = 0
