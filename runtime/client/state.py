"""The client's lifecycle as a table, and who hears of its changes.

Table rules (``TRANSITIONS`` below is the whole machine):

* ``IDLE`` -> ``CONNECTING`` on start.
* ``CONNECTING`` -> ``CONNECTED`` once the HELLO is accepted and subscriptions are restored. A
  connection lost while connecting leaves the state as it is: ``start()`` raises and closes.
* ``CONNECTED`` -> ``RECONNECTING`` when the connection is lost, or when the supervisor finds it
  lost (its callback may run before the connecting coroutine resumes); ``RECONNECTING`` ->
  ``CONNECTED`` once a new connection is established, and stays ``RECONNECTING`` while attempts fail.
* Every state but ``CLOSED`` -> ``CLOSED`` on close, which is final.
* A trigger missing from the table for the current state is a bug of the client: it raises
  :class:`~runtime.errors.LocalProtocolError`.

A move that changes the state is logged, then handed to the waiters of :meth:`ClientStates.changed`
and to every listener; a move that keeps it is silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from enum import Enum

import structlog

from runtime.errors import LocalProtocolError

__all__ = ["TRANSITIONS", "ClientState", "ClientStates", "ClientTrigger"]

log = structlog.get_logger()


class ClientState(Enum):
    IDLE = "idle"  # not started yet
    CONNECTING = "connecting"  # first connection and HELLO under way
    CONNECTED = "connected"  # HELLO accepted, subscriptions restored: requests flow
    RECONNECTING = "reconnecting"  # the connection was lost: backing off and trying again
    CLOSED = "closed"  # closed for good


class ClientTrigger(Enum):
    START = "start"
    ESTABLISHED = "established"
    CONNECTION_LOST = "connection lost"
    RECONNECT = "reconnect"
    CLOSE = "close"


_S = ClientState
_T = ClientTrigger
TRANSITIONS: Mapping[tuple[ClientState, ClientTrigger], ClientState] = {
    (_S.IDLE, _T.START): _S.CONNECTING,
    (_S.IDLE, _T.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _T.ESTABLISHED): _S.CONNECTED,
    (_S.CONNECTING, _T.CONNECTION_LOST): _S.CONNECTING,
    (_S.CONNECTING, _T.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _T.CONNECTION_LOST): _S.RECONNECTING,
    (_S.CONNECTED, _T.RECONNECT): _S.RECONNECTING,
    (_S.CONNECTED, _T.CLOSE): _S.CLOSED,
    (_S.RECONNECTING, _T.CONNECTION_LOST): _S.RECONNECTING,
    (_S.RECONNECTING, _T.RECONNECT): _S.RECONNECTING,
    (_S.RECONNECTING, _T.ESTABLISHED): _S.CONNECTED,
    (_S.RECONNECTING, _T.CLOSE): _S.CLOSED,
}


class ClientStates:
    """The current :class:`ClientState`, moved by triggers, with its listeners and waiters."""

    __slots__ = ("_describe_address", "_listeners", "_waiters", "current")

    def __init__(self, describe_address: Callable[[], str]) -> None:
        self.current = ClientState.IDLE
        self._describe_address = describe_address
        self._listeners: list[Callable[[ClientState], None]] = []
        self._waiters: list[asyncio.Future[ClientState]] = []

    def move(self, trigger: ClientTrigger) -> None:
        try:
            state = TRANSITIONS[(self.current, trigger)]
        except KeyError:
            raise LocalProtocolError(f"mesh client cannot handle '{trigger.value}' while {self.current.value}") from None
        if state is self.current:
            return
        log.info("mesh client state", state=state.value, address=self._describe_address())
        self.current = state
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(state)
        for callback in list(self._listeners):
            try:
                callback(state)
            except Exception:
                log.exception("mesh client state listener failed", state=state.value)

    def add_listener(self, callback: Callable[[ClientState], None]) -> None:
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[ClientState], None]) -> None:
        self._listeners.remove(callback)

    async def changed(self, timeout: float | None = None) -> ClientState:  # noqa: ASYNC109 - a deadline tracked per request
        """Wait for the next change and return the new state (``timeout``: TimeoutError)."""
        waiter: asyncio.Future[ClientState] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
