"""One client connection of the embedded mesh: its decoder, HELLO, subscriptions, pushes in flight and output.

A session turns the bytes it reads into packages for the mesh's protocol handling (``EmbeddedMesh.handle``,
see :mod:`runtime.mesh.handlers`), buffers what the mesh has to say to its peer until the end of the loop
turn, and keeps the pushes its peer has not acked yet, within the mesh's per-session windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from runtime.errors import HeaderlessFrameError, RemoteProtocolError
from runtime.mesh.broker import Consumer, Delivery, Fanout
from runtime.protocol.events import PUSH_PROPERTIES
from runtime.protocol.frames import (
    Command,
    FrameDecoder,
    Header,
    Package,
    SubscriptionItem,
    UserAgent,
    constant_properties,
    encode,
    encode_fields,
)

if TYPE_CHECKING:
    from runtime.mesh.server import EmbeddedMesh

__all__ = ["DEFAULT_PUSH_WINDOW", "REPLY_COMMAND", "SUCCESS", "RequestPush", "Session"]

log = structlog.get_logger("meshconnect.mesh")

SUCCESS = "success"
DEFAULT_PUSH_WINDOW = 1000
"""Pushes in flight to a session whose HELLO asks no window (``unack`` 0, as the Java SDK sends)."""

# The answer to each request command (and to a command sent before HELLO), as the Java runtime's table.
REPLY_COMMAND = {
    Command.HELLO_REQUEST: Command.HELLO_RESPONSE,
    Command.RECOMMEND_REQUEST: Command.RECOMMEND_RESPONSE,
    Command.HEARTBEAT_REQUEST: Command.HEARTBEAT_RESPONSE,
    Command.SUBSCRIBE_REQUEST: Command.SUBSCRIBE_RESPONSE,
    Command.UNSUBSCRIBE_REQUEST: Command.UNSUBSCRIBE_RESPONSE,
    Command.LISTEN_REQUEST: Command.LISTEN_RESPONSE,
    Command.REQUEST_TO_SERVER: Command.RESPONSE_TO_CLIENT,
    Command.ASYNC_MESSAGE_TO_SERVER: Command.ASYNC_MESSAGE_TO_SERVER_ACK,
    Command.BROADCAST_MESSAGE_TO_SERVER: Command.BROADCAST_MESSAGE_TO_SERVER_ACK,
    Command.CLIENT_GOODBYE_REQUEST: Command.CLIENT_GOODBYE_RESPONSE,
}
# The same table by command ordinal: an int hashes in C, an Enum member in Python (the mesh looks it up per frame).
_REPLY_BY_ORDINAL = {request.value: answer for request, answer in REPLY_COMMAND.items()}
_NO_PROPERTIES: Mapping[str, Any] = constant_properties({})


@dataclass(slots=True, eq=False)
class RequestPush:
    """A REQUEST_TO_CLIENT from request-reply, in the responder's in-flight map until acked."""

    correlation_id: str
    size: int
    deadline: float


class Session(asyncio.Protocol):
    """One client connection: its HELLO, subscriptions, pushes in flight and output buffer."""

    def __init__(self, mesh: EmbeddedMesh) -> None:
        self._mesh = mesh
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._close_after_flush = False
        self._close_pending = False
        self.peer = "?"
        self.user_agent: UserAgent | None = None
        self.subscriptions: dict[str, SubscriptionItem] = {}
        self.consumers: dict[str, Consumer] = {}
        self.push_commands: dict[str, Command] = {}
        self.inflight: dict[str, Delivery | RequestPush] = {}
        self.inflight_bytes = 0  # the bodies' sizes of ``inflight``
        # Pushes in flight at most: what the HELLO asks (a sink sizes it to its batches), within the mesh's bound.
        self.push_window = min(DEFAULT_PUSH_WINDOW, mesh.max_unacked_per_session)
        self.push_window_bytes = mesh.max_unacked_bytes_per_session
        self.waiting_requests = 0  # this session's REQUEST_TO_SERVERs not answered yet
        # Pushes taken back after redelivery_timeout, by seq: an ack arriving late still counts (bounded, oldest out).
        self.expired: dict[str, Delivery] = {}
        self.listening = False
        self.opened_at = 0.0
        self.last_heartbeat = 0.0
        self.closed = False

    def __repr__(self) -> str:
        return f"Session({self.peer})"

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.opened_at = self.last_heartbeat = self._mesh.now()
        if not self._mesh.session_opened(self):
            self.closed = True
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        mesh = self._mesh
        decoder = self._decoder
        buffered = decoder.buffered
        headerless: HeaderlessFrameError | None = None
        error: RemoteProtocolError | None = None
        try:
            packages = decoder.feed(data)
        except HeaderlessFrameError as exc:
            packages, headerless = list(exc.packages), exc
        except RemoteProtocolError as exc:
            packages, error = list(exc.packages), exc
        mesh.incomplete_frame_bytes += decoder.buffered - buffered
        for package in packages:
            mesh.handle(self, package)
            if self._close_after_flush:
                break
        else:
            if headerless is not None:
                # As the Java runtime: a frame without a command ends the session with a goodbye.
                log.warning("mesh.session.headerless_frame", peer=self.peer)
                self.send(Package(Header(Command.SERVER_GOODBYE_REQUEST, code=1, desc="a frame had no header or no cmd"), None))
                self.close_after_flush()
            elif error is not None:
                # As the Java runtime: bytes that do not decode close the connection without an answer.
                log.warning("mesh.session.undecodable", peer=self.peer, error=str(error))
                self.abort()
                return
            elif not self._incomplete_frame_fits():
                return
        mesh.schedule_tick()

    @property
    def buffered(self) -> int:
        """Bytes of the frame this session has begun to send (counted in the mesh's ``incomplete_frame_bytes``)."""
        return self._decoder.buffered

    def _incomplete_frame_fits(self) -> bool:
        """Whether the frame this session has begun fits the mesh's bounds; if not, the session is cut off."""
        mesh = self._mesh
        buffered = self._decoder.buffered
        if self.user_agent is None and buffered > mesh.max_bytes_before_hello:
            # A handshake is a few hundred bytes: a big frame before it is a flood, not a client.
            reason = f"{buffered} bytes of a frame before HELLO, above {mesh.max_bytes_before_hello}"
            mesh.refusals.refused(mesh.now(), "max_bytes_before_hello", self.peer, reason)
            self.abort()
            return False
        if buffered and mesh.incomplete_frame_bytes > mesh.max_incomplete_frame_bytes:
            reason = (
                f"frames not yet complete hold {mesh.incomplete_frame_bytes} bytes over all connections, above the"
                f" mesh's max_incomplete_frame_bytes of {mesh.max_incomplete_frame_bytes}: connect again and resend"
            )
            mesh.refusals.refused(mesh.now(), "max_incomplete_frame_bytes", self.peer, reason)
            mesh.incomplete_frame_bytes -= buffered
            self._decoder = FrameDecoder()  # its bytes go now, not when the peer has read the goodbye
            self.send(Package(Header(Command.SERVER_GOODBYE_REQUEST, code=1, desc=reason), None))
            self.close_after_flush()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._mesh.session_closed(self)

    def pause_writing(self) -> None:
        # The peer does not read what we write: stop reading what it sends until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- output --------------------------------------------------------------------------------

    def send(self, package: Package) -> None:
        self.send_frame(encode(package))

    def send_frame(self, frame: bytes) -> None:
        if not self.closed:
            self._out.append(frame)
            self._mesh.output_pending(self)

    def reply(self, request: Package, code: int = 0, desc: str | None = SUCCESS, command: Command | None = None) -> None:
        reply_command = command or _REPLY_BY_ORDINAL.get(request.header.command._value_, request.header.command)
        self.send_frame(encode_fields(reply_command, request.header.seq, _NO_PROPERTIES, None, code=code, desc=desc))

    @property
    def closing(self) -> bool:
        return self.closed or self._close_after_flush

    def close_after_flush(self) -> None:
        self._close_after_flush = self._close_pending = True
        self._mesh.output_pending(self)

    def take_output(self) -> tuple[bytes, bool]:
        """What to write next and whether to close the connection after it; the buffer starts afresh."""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        close, self._close_pending = self._close_pending, False
        return data, close

    def write(self, data: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if close:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- broker.Subscriber ----------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        """Room for a push of ``size`` bytes: under both windows, or nothing in flight (a big event still goes)."""
        if self.closing:
            return False
        inflight = self.inflight
        if not inflight:
            return True
        return len(inflight) < self.push_window and self.inflight_bytes + size <= self.push_window_bytes

    def push(self, consumer: Consumer, offset: int, body: bytes, fanout: Fanout | None) -> None:
        mesh = self._mesh
        seq = mesh.next_seq()
        self.add_inflight(seq, Delivery(consumer, offset, len(body), mesh.now() + mesh.redelivery_timeout, fanout))
        command = self.push_commands.get(consumer.topic.name, Command.ASYNC_MESSAGE_TO_CLIENT)
        self.send_frame(encode_fields(command, seq, PUSH_PROPERTIES, body))

    def add_inflight(self, seq: str, entry: Delivery | RequestPush) -> None:
        self.inflight[seq] = entry
        self.inflight_bytes += entry.size

    def take_inflight(self, seq: str) -> Delivery | RequestPush | None:
        entry = self.inflight.pop(seq, None)
        if entry is not None:
            self.inflight_bytes -= entry.size
        return entry

    # -- timers -----------------------------------------------------------------------------------

    def expire_pushes(self, now: float) -> None:
        """Take back the pushes not acked in time; CLUSTERING ones go to the group again."""
        inflight = self.inflight
        while inflight:
            seq, entry = next(iter(inflight.items()))
            if entry.deadline > now:
                return
            self.take_inflight(seq)
            if not isinstance(entry, Delivery):
                continue  # a request push: its requester has its own deadline
            log.info("mesh.push.expired", peer=self.peer, topic=entry.consumer.topic.name, offset=entry.offset)
            if entry.fanout is not None and self.listening and entry.consumer in self.consumers.values():
                self.push(entry.consumer, entry.offset, entry.consumer.topic.events[entry.offset], entry.fanout)
                continue
            if entry.fanout is None:
                if len(self.expired) >= self._mesh.max_unacked_per_session:
                    del self.expired[next(iter(self.expired))]
                self.expired[seq] = entry
            self._mesh.broker.abandoned(self, entry)
