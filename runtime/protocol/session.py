"""The client side of an EventMesh TCP session, sans IO: bytes in, events out, bytes to send.

One :class:`ClientSession` lives as long as the client and spans its connections. The caller (the
async shell in ``runtime/client/``) tells it what happened on the wire and at what time; it answers
with :class:`SessionEvent` values and queues the bytes to write, fetched with :meth:`data_to_send`.
It never reads a clock, opens a socket or logs.

State table rules (``TRANSITIONS`` below is the whole machine):

* ``DISCONNECTED`` -> ``GREETING`` when a connection is made: the HELLO is queued at once.
* ``GREETING`` -> ``READY`` when the HELLO is accepted; refused HELLO, server goodbye and redirect
  go to ``LEAVING`` (the connection is about to close).
* ``READY`` -> ``LEAVING`` on our goodbye, the server's goodbye or a redirect. While ``LEAVING``
  the peer may still repeat itself or answer the HELLO: the state stays ``LEAVING``.
* Every connected state -> ``DISCONNECTED`` when the connection is lost; every state -> ``CLOSED``
  on close, which is final.
* A trigger missing from the table for the current state is a bug of the caller: it raises
  :class:`~runtime.errors.LocalProtocolError`.

Correlation: every request carries a ``seq`` of 10 digits from a counter that never repeats during
the session's life (wrapping after 10**10), so a publish keeps its ``seq`` when it is re-sent on a
new connection and a late answer cannot complete the wrong request. Each pending request holds an
opaque ``token`` from the caller (a future, say) and a deadline; :meth:`ClientSession.expire`
reports the ones whose deadline passed.

Publishes (async, broadcast, request-reply) survive connection loss: they stay pending and are
queued again, with their original bytes, as soon as the next HELLO is accepted (at-least-once).
Control requests (hello, heartbeat, subscribe, listen, ...) belong to one connection and fail with
it; the caller restores subscriptions itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

import msgspec
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import HelloRefusedError, LocalProtocolError, MeshRejectedError, RemoteProtocolError
from runtime.protocol.events import CORRELATION_EXTENSION, Publishable, ack_frame, correlation_of, publish_frame
from runtime.protocol.frames import (
    Command,
    FrameDecoder,
    Header,
    Package,
    Subscription,
    SubscriptionItem,
    UserAgent,
    encode,
)

__all__ = [
    "TRANSITIONS",
    "ClientSession",
    "Completed",
    "Expired",
    "Failed",
    "Pushed",
    "Redirected",
    "RequestKind",
    "ServerGoodbye",
    "SessionEvent",
    "SessionState",
    "Trigger",
]

Token = TypeVar("Token")

_SEQ_MODULUS = 10**10


class SessionState(Enum):
    DISCONNECTED = "disconnected"
    GREETING = "greeting"
    READY = "ready"
    LEAVING = "leaving"
    CLOSED = "closed"


class Trigger(Enum):
    CONNECTION_MADE = "connection made"
    HELLO_ACCEPTED = "hello accepted"
    HELLO_REFUSED = "hello refused"
    SERVER_GOODBYE = "server goodbye"
    REDIRECTED = "redirected"
    CLIENT_GOODBYE = "client goodbye"
    CONNECTION_LOST = "connection lost"
    CLOSE = "close"


_S = SessionState
_T = Trigger
TRANSITIONS: Mapping[tuple[SessionState, Trigger], SessionState] = {
    (_S.DISCONNECTED, _T.CONNECTION_MADE): _S.GREETING,
    (_S.GREETING, _T.HELLO_ACCEPTED): _S.READY,
    (_S.GREETING, _T.HELLO_REFUSED): _S.LEAVING,
    (_S.GREETING, _T.SERVER_GOODBYE): _S.LEAVING,
    (_S.GREETING, _T.REDIRECTED): _S.LEAVING,
    (_S.GREETING, _T.CLIENT_GOODBYE): _S.LEAVING,
    (_S.READY, _T.SERVER_GOODBYE): _S.LEAVING,
    (_S.READY, _T.REDIRECTED): _S.LEAVING,
    (_S.READY, _T.CLIENT_GOODBYE): _S.LEAVING,
    # The peer may repeat itself while we are already on our way out.
    (_S.LEAVING, _T.SERVER_GOODBYE): _S.LEAVING,
    (_S.LEAVING, _T.REDIRECTED): _S.LEAVING,
    (_S.LEAVING, _T.HELLO_ACCEPTED): _S.LEAVING,
    (_S.LEAVING, _T.HELLO_REFUSED): _S.LEAVING,
    (_S.GREETING, _T.CONNECTION_LOST): _S.DISCONNECTED,
    (_S.READY, _T.CONNECTION_LOST): _S.DISCONNECTED,
    (_S.LEAVING, _T.CONNECTION_LOST): _S.DISCONNECTED,
    (_S.DISCONNECTED, _T.CLOSE): _S.CLOSED,
    (_S.GREETING, _T.CLOSE): _S.CLOSED,
    (_S.READY, _T.CLOSE): _S.CLOSED,
    (_S.LEAVING, _T.CLOSE): _S.CLOSED,
    (_S.CLOSED, _T.CLOSE): _S.CLOSED,
}


_MESSAGE_COMMANDS = (Command.ASYNC_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER, Command.REQUEST_TO_SERVER)


class RequestKind(Enum):
    """What a pending request is: the command that asks and the command that answers.

    Plain attributes rather than properties: they are read for every message on the hot path.
    """

    HELLO = (Command.HELLO_REQUEST, Command.HELLO_RESPONSE)
    HEARTBEAT = (Command.HEARTBEAT_REQUEST, Command.HEARTBEAT_RESPONSE)
    SUBSCRIBE = (Command.SUBSCRIBE_REQUEST, Command.SUBSCRIBE_RESPONSE)
    UNSUBSCRIBE = (Command.UNSUBSCRIBE_REQUEST, Command.UNSUBSCRIBE_RESPONSE)
    LISTEN = (Command.LISTEN_REQUEST, Command.LISTEN_RESPONSE)
    GOODBYE = (Command.CLIENT_GOODBYE_REQUEST, Command.CLIENT_GOODBYE_RESPONSE)
    PUBLISH = (Command.ASYNC_MESSAGE_TO_SERVER, Command.ASYNC_MESSAGE_TO_SERVER_ACK)
    BROADCAST = (Command.BROADCAST_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER_ACK)
    REQUEST = (Command.REQUEST_TO_SERVER, Command.RESPONSE_TO_CLIENT)

    def __init__(self, command: Command, answer: Command) -> None:
        self.command = command
        self.answer = answer
        # Messages outlive their connection and are re-sent; control requests die with it.
        self.is_message = command in _MESSAGE_COMMANDS


# Module constants: comparing by identity with these is cheaper than hashing an enum member.
_HELLO = RequestKind.HELLO
_REQUEST = RequestKind.REQUEST
_ASYNC_PUSH, _BROADCAST_PUSH, _REQUEST_PUSH = (
    Command.ASYNC_MESSAGE_TO_CLIENT,
    Command.BROADCAST_MESSAGE_TO_CLIENT,
    Command.REQUEST_TO_CLIENT,
)


class _Pending(msgspec.Struct, Generic[Token], gc=False):
    """A request awaiting its answer (one per published event in flight, most of them): untracked by the garbage
    collector, as the cycles its token may be in (a waiting task, a publication) end with the answer, its
    expiry or the session's close."""

    kind: RequestKind
    token: Token
    deadline: float
    frame: bytes


class Completed(msgspec.Struct, Generic[Token], frozen=True, gc=False):
    """The mesh answered ``kind`` with code 0; ``package`` is its answer (one per acknowledged publish: a msgspec
    Struct, cheaper to build than a frozen dataclass)."""

    kind: RequestKind
    token: Token
    package: Package


@dataclass(frozen=True, slots=True)
class Failed(Generic[Token]):
    """The mesh answered with a failure code (``error`` carries its reason verbatim)."""

    kind: RequestKind
    token: Token
    error: MeshRejectedError


@dataclass(frozen=True, slots=True)
class Expired(Generic[Token]):
    """No answer came before the deadline, or the connection carrying the request was lost."""

    kind: RequestKind
    token: Token
    seq: str
    connection_lost: bool


class Pushed(msgspec.Struct, frozen=True, gc=False):
    """The mesh pushed an event; acknowledge it with :meth:`ClientSession.ack` once handled (one per push: a
    msgspec Struct, cheaper to build than a frozen dataclass)."""

    package: Package
    connection: int


@dataclass(frozen=True, slots=True)
class ServerGoodbye:
    """The mesh asked us to leave (shutdown or error); the caller reconnects, elsewhere if it can."""

    code: int
    desc: str | None


@dataclass(frozen=True, slots=True)
class Redirected:
    """The mesh asked us to reconnect to ``host``:``port``."""

    host: str
    port: int


SessionEvent = Completed[Token] | Failed[Token] | Expired[Token] | Pushed | ServerGoodbye | Redirected


class ClientSession(Generic[Token]):
    """State, correlation and framing of one logical client session (see the module docstring)."""

    def __init__(self, user_agent: UserAgent) -> None:
        self.user_agent = user_agent
        self.state = SessionState.DISCONNECTED
        self.connection = 0
        self._next_seq = 1
        self._pending: dict[str, _Pending[Token]] = {}
        self._earliest_deadline = float("inf")
        self._outbound: list[bytes] = []
        self._decoder = FrameDecoder()

    # -- state ---------------------------------------------------------------------------------

    def _move(self, trigger: Trigger) -> None:
        try:
            self.state = TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(f"session cannot handle '{trigger.value}' while {self.state.value}") from None

    @property
    def in_flight(self) -> int:
        """Pending requests of every kind (messages and control)."""
        return len(self._pending)

    def next_seq(self) -> str:
        seq = self._next_seq
        self._next_seq = (seq + 1) % _SEQ_MODULUS
        return f"{seq:010d}"

    # -- connection lifecycle ------------------------------------------------------------------

    def connection_made(self, token: Token, now: float, timeout: float) -> str:
        """A new connection is up: queue the HELLO. Returns its seq."""
        self._move(Trigger.CONNECTION_MADE)
        self.connection += 1
        self._decoder = FrameDecoder()
        self._outbound.clear()
        package = Package.with_json(Header(Command.HELLO_REQUEST, seq=self.next_seq()), self.user_agent)
        return self._register(RequestKind.HELLO, package, token, now + timeout, send=True)

    def connection_lost(self) -> list[Expired[Token]]:
        """The connection is gone: its control requests fail; messages wait for the next one."""
        self._move(Trigger.CONNECTION_LOST)
        self._outbound.clear()
        lost = [
            Expired(pending.kind, pending.token, seq, connection_lost=True)
            for seq, pending in self._pending.items()
            if not pending.kind.is_message
        ]
        for event in lost:
            del self._pending[event.seq]
        return lost

    def close(self) -> list[Expired[Token]]:
        """Close for good: every pending request, messages included, is returned as expired."""
        self._move(Trigger.CLOSE)
        self._outbound.clear()
        dropped = [Expired(p.kind, p.token, seq, connection_lost=True) for seq, p in self._pending.items()]
        self._pending.clear()
        return dropped

    # -- requests ------------------------------------------------------------------------------

    def _register(self, kind: RequestKind, package: Package, token: Token, deadline: float, *, send: bool) -> str:
        seq = package.header.seq
        assert seq is not None  # every request is built with one
        self._track(seq, kind, encode(package), token, deadline, send=send)
        return seq

    def _track(self, seq: str, kind: RequestKind, frame: bytes, token: Token, deadline: float, *, send: bool) -> None:
        self._pending[seq] = _Pending(kind, token, deadline, frame)
        self._earliest_deadline = min(self._earliest_deadline, deadline)
        if send:
            self._outbound.append(frame)

    def _require(self, *states: SessionState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"session is {self.state.value}; this needs {' or '.join(s.value for s in states)}")

    def heartbeat(self, token: Token, now: float, timeout: float) -> str:
        self._require(SessionState.READY)
        return self._control(RequestKind.HEARTBEAT, None, token, now + timeout)

    def subscribe(self, items: list[SubscriptionItem], token: Token, now: float, timeout: float) -> str:
        self._require(SessionState.READY)
        return self._control(RequestKind.SUBSCRIBE, Subscription(tuple(items)), token, now + timeout)

    def unsubscribe(self, token: Token, now: float, timeout: float) -> str:
        # The server drops every topic of the session whatever the body says; the Java SDK sends none.
        self._require(SessionState.READY)
        return self._control(RequestKind.UNSUBSCRIBE, None, token, now + timeout)

    def listen(self, token: Token, now: float, timeout: float) -> str:
        self._require(SessionState.READY)
        return self._control(RequestKind.LISTEN, None, token, now + timeout)

    def goodbye(self, token: Token, now: float, timeout: float) -> str:
        self._require(SessionState.GREETING, SessionState.READY)
        seq = self._control(RequestKind.GOODBYE, None, token, now + timeout)
        self._move(Trigger.CLIENT_GOODBYE)
        return seq

    def _control(self, kind: RequestKind, body: Subscription | None, token: Token, deadline: float) -> str:
        header = Header(kind.command, seq=self.next_seq())
        package = Package(header, None) if body is None else Package.with_json(header, body)
        return self._register(kind, package, token, deadline, send=True)

    def message(self, kind: RequestKind, event: Publishable, token: Token, now: float, timeout: float) -> str:
        """Queue a publish, broadcast or request; sent now if ready, else on the next accepted HELLO."""
        if not kind.is_message:
            raise LocalProtocolError(f"{kind.name} is not a message")
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("session is closed")
        seq = self.next_seq()
        frame = publish_frame(event, kind.command, seq)
        self._track(seq, kind, frame, token, now + timeout, send=self.state is SessionState.READY)
        return seq

    def ack(self, pushed: Pushed) -> bool:
        """Queue the ack of ``pushed``; False when its connection is gone (the mesh will redeliver)."""
        if pushed.connection != self.connection or self.state not in (SessionState.READY, SessionState.LEAVING):
            return False
        self._outbound.append(ack_frame(pushed.package))
        return True

    def reply(self, pushed: Pushed, event: CloudEvent) -> bool:
        """Answer a REQUEST_TO_CLIENT push with ``event`` (RESPONSE_TO_SERVER, the push's seq), carrying
        the request's correlation extension back unless ``event`` sets one: the real runtime pairs the
        reply with its request by it, never by the seq."""
        if pushed.package.header.command is not Command.REQUEST_TO_CLIENT:
            raise LocalProtocolError(f"only a REQUEST_TO_CLIENT can be replied to, not {pushed.package.header.command.name}")
        if pushed.connection != self.connection or self.state not in (SessionState.READY, SessionState.LEAVING):
            return False
        correlation = correlation_of(pushed.package.body)
        if correlation is not None and CORRELATION_EXTENSION not in event.get_attributes():
            event = CloudEvent(attributes={**event.get_attributes(), CORRELATION_EXTENSION: correlation}, data=event.get_data())
        seq = pushed.package.header.seq or self.next_seq()
        self._outbound.append(publish_frame(event, Command.RESPONSE_TO_SERVER, seq))
        return True

    def forget(self, seq: str) -> None:
        """Stop tracking ``seq`` (its caller gave up); a late answer is then ignored."""
        self._pending.pop(seq, None)

    # -- inbound -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[SessionEvent[Token]]:
        """Feed bytes read from the connection (any chunking). Raises RemoteProtocolError on garbage."""
        events: list[SessionEvent[Token]] = []
        for package in self._decoder.feed(data):
            self._receive_package(package, events)
        return events

    def _receive_package(self, package: Package, events: list[SessionEvent[Token]]) -> None:
        header = package.header
        command = header.command
        seq = header.seq
        # Answers first (the publisher's hot path). A push never matches: no request is answered by a push command.
        pending = self._pending.get(seq) if seq is not None else None
        # A server that cannot dispatch a command answers with the command itself and code 1.
        if pending is not None and (command is pending.kind.answer or command is pending.kind.command):
            del self._pending[seq]  # type: ignore[arg-type]
            self._answered(pending, package, events)
        elif command is _ASYNC_PUSH or command is _BROADCAST_PUSH or command is _REQUEST_PUSH:
            events.append(Pushed(package, self.connection))
        elif command is Command.SERVER_GOODBYE_REQUEST:
            self._move(Trigger.SERVER_GOODBYE)
            self._outbound.append(encode(Package(Header(Command.SERVER_GOODBYE_RESPONSE, seq=seq), None)))
            events.append(ServerGoodbye(header.code, header.desc))
        elif command is Command.REDIRECT_TO_CLIENT:
            target = package.redirect_info()
            if target is None:
                raise RemoteProtocolError("REDIRECT_TO_CLIENT names no address")
            self._move(Trigger.REDIRECTED)
            events.append(Redirected(target.ip, target.port))
        # Anything else answers a request we gave up on, or repeats a LISTEN_RESPONSE: ignored.

    def _answered(self, pending: _Pending[Token], package: Package, events: list[SessionEvent[Token]]) -> None:
        header = package.header
        kind = pending.kind
        if header.code == 0:
            if kind is _HELLO:
                self._move(Trigger.HELLO_ACCEPTED)
                if self.state is SessionState.READY:
                    self._resend_messages()
            elif kind is _REQUEST:
                self._outbound.append(ack_frame(package))
            events.append(Completed(kind, pending.token, package))
        elif kind is _HELLO:
            self._move(Trigger.HELLO_REFUSED)
            events.append(Failed(kind, pending.token, HelloRefusedError(header.command.name, header.code, header.desc)))
        else:
            events.append(Failed(kind, pending.token, MeshRejectedError(kind.command.name, header.code, header.desc)))

    def _resend_messages(self) -> None:
        # Only messages are pending right after a HELLO; all of them were written on an earlier
        # connection or never, so each goes out once on this one, oldest first.
        self._outbound.extend(pending.frame for pending in self._pending.values() if pending.kind.is_message)

    # -- time and output -----------------------------------------------------------------------

    def expire(self, now: float) -> list[Expired[Token]]:
        """Drop and return the requests whose deadline is at or before ``now``."""
        if now < self._earliest_deadline:
            return []
        expired = [Expired(p.kind, p.token, seq, connection_lost=False) for seq, p in self._pending.items() if p.deadline <= now]
        for event in expired:
            del self._pending[event.seq]
        self._earliest_deadline = min((p.deadline for p in self._pending.values()), default=float("inf"))
        return expired

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call, to write as one chunk."""
        if not self._outbound:
            return b""
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data
