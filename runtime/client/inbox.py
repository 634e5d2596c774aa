"""The push inbox: events the mesh pushed, waiting for the receiver, bounded by pausing the socket."""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import TYPE_CHECKING

import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import DataError, ProtocolError
from runtime.protocol.events import body_to_event
from runtime.protocol.frames import Command
from runtime.protocol.session import Pushed

from .state import ClientState, ClientStates

if TYPE_CHECKING:
    from .mesh_client import MeshClient

__all__ = ["PushInbox", "PushedEvent", "event_of_body"]

log = structlog.get_logger()


class PushedEvent:
    """An event the mesh pushed to us; call :meth:`ack` once it is handled (never before).

    The body is decoded when ``event`` or ``decode_error`` is first read (a sink worker reads the
    record straight from ``body`` instead). A push whose body is not an event still arrives, so
    that nothing is lost unseen: ``decode_error`` says why, and ``event`` is a stand-in holding
    the raw body (type ``meshconnect.undecodable``, an id derived from the bytes) for the receiver
    to dead-letter.
    """

    __slots__ = ("_client", "_decode_error", "_event", "_push")

    def __init__(self, client: MeshClient, push: Pushed) -> None:
        self._client = client
        self._push = push
        self._event: CloudEvent | None = None
        self._decode_error: str | None = None

    def __repr__(self) -> str:
        return f"PushedEvent(seq={self.seq!r}, command={self.command.name})"

    @property
    def seq(self) -> str:
        return self._push.package.header.seq or ""

    @property
    def command(self) -> Command:
        return self._push.package.header.command

    @property
    def body(self) -> bytes:
        """The message body as the mesh sent it (the wire mapping of the event)."""
        return self._push.package.body or b""

    @property
    def event(self) -> CloudEvent:
        if self._event is None:
            self._decode()
        assert self._event is not None
        return self._event

    @property
    def decode_error(self) -> str | None:
        if self._event is None:
            self._decode()
        return self._decode_error

    def _decode(self) -> None:
        package = self._push.package
        if package.body is None:
            self._event, self._decode_error = _undecodable_event(b""), "pushed frame has no body"
        else:
            self._event, self._decode_error = event_of_body(package.body)
        if self._decode_error is not None:
            log.error("mesh pushed an undecodable event", seq=package.header.seq, reason=self._decode_error)

    async def ack(self) -> None:
        """Acknowledge the event; if its connection is gone since, the mesh redelivers it instead."""
        self._client.ack_all((self,))

    async def reply(self, event: CloudEvent) -> None:
        """Answer a request-reply push (``REQUEST_TO_CLIENT``) with ``event``; then :meth:`ack`."""
        self._client._reply(self._push, event)


def event_of_body(body: bytes) -> tuple[CloudEvent, str | None]:
    """The event a pushed ``body`` holds, or else a stand-in holding its bytes and why it is not one."""
    try:
        return body_to_event(body), None
    except (DataError, ProtocolError) as exc:
        return _undecodable_event(body), str(exc)


def _undecodable_event(body: bytes) -> CloudEvent:
    """The stand-in for a pushed body that is not an event: its bytes, under an id derived from them."""
    attributes = {
        "specversion": "1.0",
        "id": f"undecodable-{hashlib.sha256(body).hexdigest()[:32]}",
        "source": "/meshconnect/mesh",
        "type": "meshconnect.undecodable",
        "datacontenttype": "application/octet-stream",
    }
    return CloudEvent(attributes, body)


class PushInbox:
    """Pushed events in arrival order until the receiver takes them; at most ``limit`` wait before
    reading of the connection's transport pauses (TCP backpressure; one read chunk may overshoot),
    and reading resumes once half of them are taken."""

    __slots__ = ("_client", "_limit", "_pushes", "_states", "_transport", "_waiter", "reading_paused")

    def __init__(self, client: MeshClient, limit: int, states: ClientStates) -> None:
        self._client = client
        self._limit = limit
        self._states = states
        self._pushes: deque[PushedEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self.reading_paused = False

    def __len__(self) -> int:
        return len(self._pushes)

    def attach(self, transport: asyncio.Transport | None) -> None:
        """Pushes now arrive over ``transport``, which reads until the inbox fills."""
        self._transport = transport
        self.reading_paused = False

    def detach(self) -> None:
        """The connection is gone: nothing to pause or resume until the next :meth:`attach`."""
        self._transport = None

    def put(self, push: Pushed) -> None:
        pushes = self._pushes
        pushes.append(PushedEvent(self._client, push))
        self.wake()
        if not self.reading_paused and len(pushes) >= self._limit and self._transport is not None:
            self.reading_paused = True
            self._transport.pause_reading()

    def take(self, limit: int) -> list[PushedEvent]:
        pushes = self._pushes
        taken = [pushes.popleft() for _ in range(min(limit, len(pushes)))]
        if self.reading_paused and len(pushes) <= self._limit // 2 and self._transport is not None:
            self.reading_paused = False
            self._transport.resume_reading()
        return taken

    async def wait(self) -> bool:
        """Wait until a pushed event waits to be taken (True), or the client closed (False)."""
        while not self._pushes:
            if self._states.current is ClientState.CLOSED:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return True

    def wake(self) -> None:
        """Wake the receiver waiting in :meth:`wait` (an event arrived, or the client closed)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
