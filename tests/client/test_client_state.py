"""The client's lifecycle table and its publish window, without a socket."""

from __future__ import annotations

import asyncio

import pytest

from runtime.client.state import TRANSITIONS, ClientState, ClientStates, ClientTrigger
from runtime.client.window import PublishWindow
from runtime.errors import LocalProtocolError, MeshUnavailableError


def test_every_state_but_closed_closes_and_closed_is_final() -> None:
    for state in ClientState:
        if state is ClientState.CLOSED:
            assert not [key for key in TRANSITIONS if key[0] is state]
        else:
            assert TRANSITIONS[(state, ClientTrigger.CLOSE)] is ClientState.CLOSED


async def test_a_move_tells_listeners_and_waiters_once_and_an_illegal_trigger_raises() -> None:
    states = ClientStates(lambda: "127.0.0.1:1")
    heard: list[ClientState] = []
    states.add_listener(heard.append)
    waiter = asyncio.ensure_future(states.changed(timeout=5))
    await asyncio.sleep(0)  # let the waiter register
    states.move(ClientTrigger.START)
    states.move(ClientTrigger.CONNECTION_LOST)  # lost while connecting: start() reports it, the state stays
    states.move(ClientTrigger.ESTABLISHED)
    states.move(ClientTrigger.RECONNECT)
    assert await waiter is ClientState.CONNECTING
    assert heard == [ClientState.CONNECTING, ClientState.CONNECTED, ClientState.RECONNECTING]
    with pytest.raises(LocalProtocolError, match="cannot handle 'start' while reconnecting"):
        states.move(ClientTrigger.START)
    states.move(ClientTrigger.CLOSE)
    with pytest.raises(LocalProtocolError):
        states.move(ClientTrigger.ESTABLISHED)
    assert states.current is ClientState.CLOSED


async def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    window = PublishWindow(1)
    assert window.try_take()
    first = asyncio.ensure_future(window.take(5))
    await asyncio.sleep(0)
    assert not window.try_take()  # full
    window.release()
    assert not window.try_take()  # the freed slot is the waiter's, not the newcomer's
    await first
    assert window.in_flight == 1
    with pytest.raises(MeshUnavailableError, match="publish window of 1 stayed full"):
        await window.take(0.05)
    window.release()
    assert window.in_flight == 0
