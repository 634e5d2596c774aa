"""The asyncio shell of the embedded mesh: one :class:`_Session` per TCP connection, one tick per loop turn.

Frames go through the sans-IO codec (:mod:`runtime.protocol.frames`). Each session buffers what it
has to say; at the end of every loop turn that did something, :meth:`EmbeddedMesh._tick` lets the
broker push what it can, then writes every session's buffer with one transport write. With a store,
the turn's changes are first committed on the store's thread and the buffers taken at that moment
are written when the commit returns; turns that end while a commit runs wait for the next one
(group commit). A timer does the rest: redelivery of pushes not acked in time, expiry of sessions
that stopped heartbeating or never said HELLO, expiry of unanswered requests.

Floods are refused at every bound (connections, bytes before HELLO, bytes of incomplete frames,
topics, retained bytes, events per topic), each with an answer the peer can read (a code 1 ack or
response with the reason, or a SERVER_GOODBYE) or, before HELLO, a close; and with a ``mesh.refused``
log line, at most one per bound and second (with the count of the refusals in between) so that a
flood of refusals is not a flood of log lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import itertools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
import structlog

from runtime.errors import ConfigError, RemoteProtocolError
from runtime.mesh.broker import Broker, Consumer, Delivery, Fanout, Refusal
from runtime.mesh.store import MeshStore
from runtime.protocol.events import CORRELATION_EXTENSION, correlation_of
from runtime.protocol.frames import (
    MAX_FRAME,
    Command,
    FrameDecoder,
    Header,
    HeaderlessFrame,
    Package,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    UserAgent,
    constant_properties,
    encode,
    encode_fields,
)
from runtime.record import EXTENSION_NAME

__all__ = ["EmbeddedMesh"]

log = structlog.get_logger("meshconnect.mesh")

SUCCESS = "success"
NO_SESSION = "no session is found"
GRACEFUL_QUIT = "graceful normal quit from eventmesh"
STOP_GRACE_SECONDS = 5.0  # how long stop() lets sessions read their goodbye before cutting them off
DEFAULT_REQUEST_TTL_MS = 3000  # as the Java runtime, when the request carries no 'ttl' extension
REFUSAL_LOG_INTERVAL = 1.0  # seconds between two 'mesh.refused' lines of the same bound
MIN_BYTES_BEFORE_HELLO = 1024  # a HELLO frame is a few hundred bytes
MAX_TOPIC_LENGTH = 1024  # characters: names are held apart from the retained bytes (RocketMQ allows 127)
# Request-reply correlation as the Java runtime does it (facts from its TCP path and storage plugins):
# the runtime answers the requester with the seq of its REQUEST_TO_SERVER, which the storage's request
# callback keeps; it never reads the seq of a RESPONSE_TO_SERVER (the Java SDK sends each one with a new
# random seq). The storage pairs reply and request: RocketMQ's request() gives the request a unique
# CORRELATION_ID property (with REPLY_TO_CLIENT and TTL); the runtime pushes such properties to the
# responder as CloudEvent extensions, lower case with '_' written '99' ("correlation99id"); a Java
# responder answers with the event it got (the SDK's example) or one built from it, so the extension
# comes back, and the runtime turns it back into the CORRELATION_ID by which RocketMQ finds the waiting
# request. The standalone storage has no request-reply at all. So here each REQUEST_TO_CLIENT carries a
# correlation99id of ours (replacing one the requester set, as RocketMQ does); a RESPONSE_TO_SERVER is
# matched by that extension when it has one, else by its seq being the REQUEST_TO_CLIENT's (the
# meshconnect client answers with that seq and carries the extension back).
PUSH_PROPERTIES: Mapping[str, Any] = constant_properties({"protocoltype": "cloudevents"})
PUBLISH_PROPERTIES = ("protocoltype", "protocolversion", "protocoldesc")
CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"}
)

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


# The same tables by command ordinal: an int hashes in C, an Enum member in Python (the mesh looks them up per frame).
_REPLY_BY_ORDINAL = {request.value: answer for request, answer in REPLY_COMMAND.items()}
_NO_PROPERTIES: Mapping[str, Any] = constant_properties({})
_KNOWN_NAMES: set[str] = set()  # extension and property names already found valid, a bounded few
_KNOWN_NAMES_LIMIT = 4096


def _valid_name(name: str) -> bool:
    """``EXTENSION_NAME`` matches ``name``; the answer for a name seen before is a set lookup."""
    if name in _KNOWN_NAMES:
        return True
    if EXTENSION_NAME.fullmatch(name) is None:
        return False
    if len(_KNOWN_NAMES) < _KNOWN_NAMES_LIMIT:
        _KNOWN_NAMES.add(name)
    return True


class _Refused(Exception):
    """A request the mesh answers with code 1 and this reason."""


@dataclass(slots=True, eq=False)
class _RequestPush:
    """A REQUEST_TO_CLIENT from request-reply, in the responder's in-flight map until acked."""

    correlation_id: str
    size: int
    deadline: float


@dataclass(slots=True, eq=False)
class _PendingRequest:
    """A REQUEST_TO_SERVER waiting for its RESPONSE_TO_SERVER."""

    requester: _Session
    seq: str | None
    deadline: float


def _parse_event(package: Package, max_event_size: int | None) -> dict[str, Any]:
    """The published CloudEvent as JSON, validated the way the Java runtime validates a publish."""
    properties = package.header.properties
    for key in PUBLISH_PROPERTIES:
        if not properties.get(key):
            raise _Refused(f"header property '{key}' is missing: publish with protocoltype, protocolversion and protocoldesc")
    if properties["protocoltype"] != "cloudevents":
        raise _Refused(f"protocoltype {properties['protocoltype']!r} is not supported by the embedded mesh: publish CloudEvents")
    for key in properties:
        if not _valid_name(key):
            raise _Refused(f"header property name {key!r} is invalid: extension names are [a-z0-9]+")
    if not package.body:
        raise _Refused("the publish has no body: send the CloudEvent in structured JSON")
    try:
        event = orjson.loads(package.body)
    except orjson.JSONDecodeError as exc:
        raise _Refused(f"the body is not CloudEvents JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise _Refused("the body is not a CloudEvents JSON object")
    for attribute in ("specversion", "id", "source", "type"):
        if not isinstance(event.get(attribute), str) or not event[attribute]:
            raise _Refused(f"the event has no '{attribute}' attribute")
    subject = event.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise _Refused("the event has no subject: the subject is the topic to publish to")
    for name in event:
        if name not in CONTEXT_ATTRIBUTES and not _valid_name(name):
            raise _Refused(f"extension name {name!r} is invalid: extension names are [a-z0-9]+")
    data = event.get("data")
    if data is None and event.get("data_base64") is None:
        raise _Refused("the event data is null: the mesh needs data (send an empty string for none)")
    if max_event_size is not None:
        size = len(event["data_base64"]) * 3 // 4 if data is None else len(orjson.dumps(data))
        if size > max_event_size:
            raise _Refused(f"the event data is {size} bytes, above the mesh's max_event_size of {max_event_size}")
    return event


def _topic_too_long(topic: str) -> str:
    return f"the topic name has {len(topic)} characters, more than {MAX_TOPIC_LENGTH}: use a shorter subject"


class _RefusalLog:
    """At most one ``mesh.refused`` line per bound and ``REFUSAL_LOG_INTERVAL``, counting the refusals in between."""

    def __init__(self) -> None:
        self._quiet_until: dict[str, float] = {}  # keyed by bound: a handful of keys
        self._unlogged: dict[str, int] = {}

    def refused(self, now: float, limit: str, peer: str, reason: str) -> None:
        if now < self._quiet_until.get(limit, 0.0):
            self._unlogged[limit] = self._unlogged.get(limit, 0) + 1
            return
        self._quiet_until[limit] = now + REFUSAL_LOG_INTERVAL
        log.warning("mesh.refused", limit=limit, peer=peer, reason=reason, unlogged_before=self._unlogged.pop(limit, 0))


class _Session(asyncio.Protocol):
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
        self.inflight: dict[str, Delivery | _RequestPush] = {}
        self.inflight_bytes = 0  # the bodies' sizes of ``inflight``
        self.waiting_requests = 0  # this session's REQUEST_TO_SERVERs not answered yet
        # Pushes taken back after redelivery_timeout, by seq: an ack arriving late still counts (bounded, oldest out).
        self.expired: dict[str, Delivery] = {}
        self.listening = False
        self.opened_at = 0.0
        self.last_heartbeat = 0.0
        self.closed = False

    def __repr__(self) -> str:
        return f"_Session({self.peer})"

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
        frames, error = decoder.feed_java(data)
        mesh.incomplete_frame_bytes += decoder.buffered - buffered
        for frame in frames:
            if isinstance(frame, HeaderlessFrame):
                # As the Java runtime: a frame without a command ends the session with a goodbye.
                log.warning("mesh.session.headerless_frame", peer=self.peer)
                self.send(Package(Header(Command.SERVER_GOODBYE_REQUEST, code=1, desc="a frame had no header or no cmd"), None))
                self.close_after_flush()
                break
            mesh.handle(self, frame)
            if self._close_after_flush:
                break
        else:
            if error is not None:
                # As the Java runtime: bytes that do not decode close the connection without an answer.
                log.warning("mesh.session.undecodable", peer=self.peer, error=str(error))
                self.abort()
                return
            if not self._incomplete_frame_fits():
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
        mesh = self._mesh
        return len(inflight) < mesh.max_unacked_per_session and self.inflight_bytes + size <= mesh.max_unacked_bytes_per_session

    def push(self, consumer: Consumer, offset: int, body: bytes, fanout: Fanout | None) -> None:
        mesh = self._mesh
        seq = mesh.next_seq()
        self.add_inflight(seq, Delivery(consumer, offset, len(body), mesh.now() + mesh.redelivery_timeout, fanout))
        command = self.push_commands.get(consumer.topic.name, Command.ASYNC_MESSAGE_TO_CLIENT)
        self.send_frame(encode_fields(command, seq, PUSH_PROPERTIES, body))

    def add_inflight(self, seq: str, entry: Delivery | _RequestPush) -> None:
        self.inflight[seq] = entry
        self.inflight_bytes += entry.size

    def take_inflight(self, seq: str) -> Delivery | _RequestPush | None:
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


class EmbeddedMesh:
    """An EventMesh TCP server for tests and single-machine runs; see :mod:`runtime.mesh`.

    ``users`` (user -> password) turns on the HELLO password check. ``data_dir`` makes events,
    cursors and acks survive a crash. ``redelivery_timeout`` (s): a push not acked in time is pushed
    again. ``session_timeout`` (s): a session that sent no HEARTBEAT_REQUEST for that long is closed.
    ``max_topic_events``: retained events per topic before publishes are refused.
    ``max_unacked_per_session`` and ``max_unacked_bytes_per_session``: pushes, and bytes of pushes, in
    flight per session (one push always may be, whatever its size). ``max_event_size``: data bytes per event.
    ``group_expiry`` (s): a consumer group with no session for that long is dropped, so that a group
    renamed or retired no longer holds its topics' logs (None: kept forever).

    Against floods: ``max_connections`` open at once (more are closed at once); ``hello_timeout`` (s)
    and ``max_bytes_before_hello``: a connection that has not said HELLO in time, or has buffered more
    of a frame before it, is closed; ``max_incomplete_frame_bytes``: the frames begun and not complete,
    over all connections (the connection whose bytes pass it gets a SERVER_GOODBYE and is closed);
    ``max_topics`` and ``max_retained_bytes`` (all retained events together) refuse publishes and
    subscriptions beyond them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        users: Mapping[str, str] | None = None,
        data_dir: Path | None = None,
        redelivery_timeout: float = 30.0,
        session_timeout: float = 60.0,
        max_topic_events: int = 100_000,
        max_unacked_per_session: int = 1000,
        max_unacked_bytes_per_session: int = 2 * 1024 * 1024,
        max_event_size: int | None = None,
        group_expiry: float | None = 7 * 24 * 3600.0,
        max_connections: int = 1000,
        hello_timeout: float = 10.0,
        max_bytes_before_hello: int = 16 * 1024,
        max_topics: int = 10_000,
        max_retained_bytes: int = 256 * 1024 * 1024,
        max_incomplete_frame_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        timeouts = [
            ("redelivery_timeout", redelivery_timeout),
            ("session_timeout", session_timeout),
            ("hello_timeout", hello_timeout),
        ]
        for key, value in timeouts if group_expiry is None else [*timeouts, ("group_expiry", group_expiry)]:
            if value <= 0:
                raise ConfigError(key, f"{value} is not a positive number of seconds", "give a number of seconds above 0")
        counts = {
            "max_topic_events": max_topic_events,
            "max_unacked_per_session": max_unacked_per_session,
            "max_unacked_bytes_per_session": max_unacked_bytes_per_session,
            "max_connections": max_connections,
            "max_topics": max_topics,
            "max_retained_bytes": max_retained_bytes,
        }
        for key, count in counts.items():
            if count < 1:
                raise ConfigError(key, f"{count} is below 1", "give a count of at least 1")
        if max_bytes_before_hello < MIN_BYTES_BEFORE_HELLO:
            raise ConfigError(
                "max_bytes_before_hello",
                f"{max_bytes_before_hello} is below {MIN_BYTES_BEFORE_HELLO}",
                f"give at least {MIN_BYTES_BEFORE_HELLO} bytes: a HELLO frame takes a few hundred",
            )
        if max_incomplete_frame_bytes < MAX_FRAME:
            raise ConfigError(
                "max_incomplete_frame_bytes",
                f"{max_incomplete_frame_bytes} is below the protocol's frame limit of {MAX_FRAME}",
                f"give at least {MAX_FRAME} bytes, so that one frame of the largest size can arrive",
            )
        if max_event_size is not None and max_event_size < 1:
            raise ConfigError("max_event_size", f"{max_event_size} is below 1", "give a size in bytes, or none for no limit")
        self.host = host
        self._requested_port = port
        self.users = dict(users) if users is not None else None
        self.data_dir = data_dir
        self.redelivery_timeout = redelivery_timeout
        self.session_timeout = session_timeout
        self.max_unacked_per_session = max_unacked_per_session
        self.max_unacked_bytes_per_session = max_unacked_bytes_per_session
        self.max_event_size = max_event_size
        self.group_expiry = group_expiry
        self.max_connections = max_connections
        self.hello_timeout = hello_timeout
        self.max_bytes_before_hello = max_bytes_before_hello
        self.max_incomplete_frame_bytes = max_incomplete_frame_bytes
        self.incomplete_frame_bytes = 0  # the sum of every session's ``buffered``
        self.broker = Broker(
            max_topic_events=max_topic_events,
            durable=data_dir is not None,
            max_topics=max_topics,
            max_retained_bytes=max_retained_bytes,
        )
        self.refusals = _RefusalLog()
        self._store: MeshStore | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._commit: asyncio.Future[None] | None = None
        self._failed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._sessions: set[_Session] = set()
        self._to_flush: dict[_Session, None] = {}
        self._tick_scheduled = False
        self._seq = itertools.count(1)
        self._correlation_prefix = uuid.uuid4().hex  # correlation ids unique across restarts too
        self._requests: dict[str, _PendingRequest] = {}  # by correlation id
        self._request_turn = 0
        self._all_closed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the mesh is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.data_dir is not None:
            self._store = MeshStore(self.data_dir)
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mesh-store")
            loaded = self._store.load(self.broker)
            log.info("mesh.store.loaded", path=str(self._store.path), events=loaded, consumers=len(self.broker.consumers))
        self._server = await self._loop.create_server(lambda: _Session(self), self.host, self._requested_port)
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="mesh-housekeeping")
        log.info("mesh.started", host=self.host, port=self.port, durable=self._store is not None)

    async def stop(self) -> None:
        """Say SERVER_GOODBYE to every session, close them, stop listening and close the store."""
        if self._server is None:
            return
        self._server.close()
        for session in list(self._sessions):
            session.send(Package(Header(Command.SERVER_GOODBYE_REQUEST, desc=GRACEFUL_QUIT), None))
            session.close_after_flush()
        await self._drain_commits()
        if self._sessions:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), STOP_GRACE_SECONDS)
        for session in list(self._sessions):
            session.abort()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        await self._server.wait_closed()
        self._server = None
        await self._drain_commits()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        log.info("mesh.stopped")

    @property
    def failed(self) -> bool:
        """True once the store failed; the mesh then serves nobody until restarted."""
        return self._failed.is_set()

    async def wait_failed(self) -> None:
        """Return when the store failed and the mesh cut every session off (it must be restarted)."""
        await self._failed.wait()

    async def _drain_commits(self) -> None:
        """Commit everything that happened and write every answer that waited for it."""
        self._tick()
        while self._commit is not None:
            await asyncio.wait({self._commit})
            self._tick()

    async def __aenter__(self) -> EmbeddedMesh:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- introspection --------------------------------------------------------------------------------

    def topic_depth(self, topic: str) -> int:
        """Events retained in ``topic``'s log (not yet acked by every group that subscribed it)."""
        found = self.broker.topics.get(topic)
        return len(found.events) if found is not None else 0

    def unacked(self, group: str, topic: str) -> int:
        """Events of ``topic`` that ``group`` has not acked yet."""
        return sum(consumer.unacked for consumer in self.broker.iter_consumers(topic) if consumer.group == group)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def status(self) -> dict[str, Any]:
        return {
            "address": self.address if self._server is not None else None,
            "durable": self.data_dir is not None,
            "sessions": len(self._sessions),
            "topics": {
                name: {
                    "depth": len(topic.events),
                    "groups": {f"{c.group}/{c.mode.name}": {"unacked": c.unacked} for c in topic.consumers},
                }
                for name, topic in self.broker.topics.items()
            },
        }

    # -- plumbing used by sessions ---------------------------------------------------------------------------

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def next_seq(self) -> str:
        return str(next(self._seq))

    def session_opened(self, session: _Session) -> bool:
        """Admit a new connection; False when ``max_connections`` are open (the caller closes it)."""
        if len(self._sessions) >= self.max_connections:
            self.refusals.refused(self.now(), "max_connections", session.peer, f"{len(self._sessions)} connections are open")
            return False
        self._sessions.add(session)
        log.debug("mesh.session.opened", peer=session.peer)
        return True

    def session_closed(self, session: _Session) -> None:
        if session not in self._sessions:
            return  # refused at connection_made
        self._sessions.discard(session)
        self._to_flush.pop(session, None)
        self.incomplete_frame_bytes -= session.buffered
        broker = self.broker
        for consumer in session.consumers.values():
            broker.detach(session, consumer)
        for entry in session.inflight.values():
            if isinstance(entry, Delivery):
                broker.abandoned(session, entry)
            else:
                self._answer_request(entry.correlation_id, None, "the responder left before answering")
        session.inflight.clear()
        session.inflight_bytes = 0
        for seq, pending in list(self._requests.items()):
            if pending.requester is session:
                del self._requests[seq]
        if session.user_agent is not None:
            log.info("mesh.session.closed", peer=session.peer, group=session.user_agent.group)
        else:  # a connection that never said HELLO: one line each would let a connection flood flood the log
            log.debug("mesh.session.closed", peer=session.peer, group=None)
        if not self._sessions:
            self._all_closed.set()
        self.schedule_tick()

    def output_pending(self, session: _Session) -> None:
        self._to_flush[session] = None
        self.schedule_tick()

    def schedule_tick(self) -> None:
        if not self._tick_scheduled and self._loop is not None:
            self._tick_scheduled = True
            self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """End of a loop turn: push what can be pushed, make it durable, then say what we have to say."""
        try:
            self.broker.settle()
            if self._commit is not None or self._failed.is_set():
                return  # the output waits for the next commit, which starts when the running one returns
            changes = self.broker.take_changes() if self._store is not None else None
            to_flush, self._to_flush = self._to_flush, {}
            batch = [(session, *session.take_output()) for session in to_flush]
            if changes is None:
                self._write(batch)
                return
            assert self._loop is not None and self._store is not None
            self._commit = self._loop.run_in_executor(self._executor, self._store.commit, changes)
            self._commit.add_done_callback(functools.partial(self._committed, batch))
        finally:
            self._tick_scheduled = False

    def _committed(self, batch: list[tuple[_Session, bytes, bool]], commit: asyncio.Future[None]) -> None:
        self._commit = None
        error = commit.exception()
        if error is not None:
            # Nothing of this batch may be acked: the mesh cannot keep its promises any more.
            log.error("mesh.store.failed", error=str(error), action="every session is cut off; restart the mesh")
            self._failed.set()
            if self._server is not None:
                self._server.close()
            for session in list(self._sessions):
                session.abort()
            return
        self._write(batch)
        self.schedule_tick()

    @staticmethod
    def _write(batch: list[tuple[_Session, bytes, bool]]) -> None:
        for session, data, close in batch:
            session.write(data, close)

    async def _housekeeping(self) -> None:
        interval = min(1.0, max(0.01, min(self.redelivery_timeout, self.session_timeout, self.hello_timeout) / 5))
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            for session in list(self._sessions):
                if session.closing:
                    continue
                if session.user_agent is None and now - session.opened_at > self.hello_timeout:
                    # Aborted, not closed: a peer that does not read could hold a graceful close open for ever.
                    self.refusals.refused(now, "hello_timeout", session.peer, f"no HELLO within {self.hello_timeout:g} s")
                    session.abort()
                    continue
                if now - session.last_heartbeat > self.session_timeout:
                    log.warning("mesh.session.expired", peer=session.peer)
                    session.send(
                        Package(
                            Header(Command.SERVER_GOODBYE_REQUEST, code=1, desc=f"no heartbeat for {self.session_timeout:g} s"),
                            None,
                        )
                    )
                    session.close_after_flush()
                    continue
                session.expire_pushes(now)
            for correlation_id, pending in list(self._requests.items()):
                if pending.deadline <= now:
                    del self._requests[correlation_id]
                    pending.requester.waiting_requests -= 1
            for consumer in self.broker.expire_idle(now, self.group_expiry):
                log.info(
                    "mesh.group.expired",
                    group=consumer.group,
                    topic=consumer.topic.name,
                    mode=consumer.mode.name,
                    unacked=consumer.unacked,
                    idle_s=self.group_expiry,
                )
            self.schedule_tick()

    # -- the protocol -----------------------------------------------------------------------------------------

    def handle(self, session: _Session, package: Package) -> None:
        command = package.header.command
        if command is Command.HELLO_REQUEST:
            self._hello(session, package)
            return
        if session.user_agent is None:
            if command is Command.RECOMMEND_REQUEST:
                self._recommend(session, package)
            else:
                session.reply(package, code=1, desc=NO_SESSION)
            return
        handler = _HANDLER_BY_ORDINAL.get(command._value_)
        if handler is None:
            session.reply(package, code=1, desc=f"{command.name} is not a command a client sends", command=command)
            return
        handler(self, session, package)

    def _hello(self, session: _Session, package: Package) -> None:
        try:
            agent = package.user_agent()
        except RemoteProtocolError:
            agent = None
        reason = self._refusal(agent)
        if reason is not None:
            log.warning("mesh.hello.refused", peer=session.peer, reason=reason)
            session.reply(package, code=1, desc=reason)
            session.close_after_flush()
            return
        assert agent is not None
        if session.user_agent is None:
            session.user_agent = agent
            log.info("mesh.session.hello", peer=session.peer, group=agent.group, purpose=agent.purpose, user=agent.username)
        session.reply(package)

    def _refusal(self, agent: UserAgent | None) -> str | None:
        if agent is None:
            return "HELLO_REQUEST needs a UserAgent body"
        if agent.version is None:
            return "user agent version is null"
        if agent.purpose not in ("pub", "sub"):
            return f"user agent purpose {agent.purpose!r} is invalid: use 'pub' or 'sub'"
        if agent.group is None or not agent.group.strip():
            return "user agent group is blank: name the producer or consumer group"
        if self.users is not None:
            expected = self.users.get(agent.username or "")
            given = agent.password or ""
            if expected is None or not hmac.compare_digest(expected.encode(), given.encode()):
                return f"authentication failed for user {agent.username!r}: unknown user or wrong password"
        return None

    def _recommend(self, session: _Session, package: Package) -> None:
        header = Header(Command.RECOMMEND_RESPONSE, desc=SUCCESS, seq=package.header.seq)
        session.send(Package.with_json(header, self.address))

    def _heartbeat(self, session: _Session, package: Package) -> None:
        session.last_heartbeat = self.now()
        session.reply(package)

    def _goodbye(self, session: _Session, package: Package) -> None:
        session.reply(package)
        session.close_after_flush()

    def _server_goodbye_response(self, session: _Session, package: Package) -> None:
        log.debug("mesh.session.goodbye_answered", peer=session.peer)

    def _subscribe(self, session: _Session, package: Package) -> None:
        assert session.user_agent is not None
        try:
            subscription = package.subscription()
        except RemoteProtocolError:
            subscription = None
        items = subscription.topic_list if subscription is not None else ()
        if not items:
            session.reply(package, code=1, desc="the subscription names no topic")
            return
        for item in items:
            if not item.topic or not item.topic.strip():
                session.reply(package, code=1, desc="a subscription item has a blank topic")
                return
        for item in items:
            if len(item.topic) > MAX_TOPIC_LENGTH:
                session.reply(package, code=1, desc=_topic_too_long(item.topic))
                return
        if not self.broker.has_room_for_topics(item.topic for item in items if item.topic not in session.subscriptions):
            reason = (
                f"the mesh holds {len(self.broker.topics)} topics, its max_topics is {self.broker.max_topics}:"
                " subscribe to existing topics, or retry once idle topics are dropped"
            )
            self.refusals.refused(self.now(), "max_topics", session.peer, reason)
            session.reply(package, code=1, desc=reason)
            return
        for item in items:
            if item.topic in session.subscriptions:
                continue  # as the Java runtime: the first subscription of a topic wins
            consumer = self.broker.consumer(session.user_agent.group or "", item.topic, item.mode)
            session.subscriptions[item.topic] = item
            session.consumers[item.topic] = consumer
            if item.mode is SubscriptionMode.BROADCASTING:
                session.push_commands[item.topic] = Command.BROADCAST_MESSAGE_TO_CLIENT
            elif item.type is SubscriptionType.SYNC:
                session.push_commands[item.topic] = Command.REQUEST_TO_CLIENT
            else:
                session.push_commands[item.topic] = Command.ASYNC_MESSAGE_TO_CLIENT
            self.broker.attach(session, consumer)
        log.info(
            "mesh.session.subscribed",
            peer=session.peer,
            group=session.user_agent.group,
            topics=[item.topic for item in items[:10]],
            count=len(items),
        )
        session.reply(package)

    def _unsubscribe(self, session: _Session, package: Package) -> None:
        # As the Java runtime: the body is ignored and every topic of the session is dropped.
        for consumer in session.consumers.values():
            self.broker.detach(session, consumer)
        session.subscriptions.clear()
        session.consumers.clear()
        session.push_commands.clear()
        session.reply(package)

    def _listen(self, session: _Session, package: Package) -> None:
        assert session.user_agent is not None
        if session.user_agent.purpose != "sub":
            session.reply(package, code=1, desc="client purpose config is not sub")
            return
        session.reply(package)
        session.listening = True
        self.broker.pump_all_of(session.consumers.values())

    def _publish(self, session: _Session, package: Package) -> None:
        try:
            event = _parse_event(package, self.max_event_size)
        except _Refused as refused:
            session.reply(package, code=1, desc=str(refused))
            return
        assert package.body is not None
        topic: str = event["subject"]
        if len(topic) > MAX_TOPIC_LENGTH:
            session.reply(package, code=1, desc=_topic_too_long(topic))
            return
        appended = self.broker.append(topic, package.body)
        if isinstance(appended, Refusal):
            reason = self._append_refusal(appended, topic, len(package.body))
            self.refusals.refused(self.now(), appended.value, session.peer, reason)
            session.reply(package, code=1, desc=reason)
            return
        session.reply(package)

    def _append_refusal(self, refusal: Refusal, topic: str, size: int) -> str:
        """What the publisher of ``size`` bytes to ``topic`` refused by ``refusal`` is told."""
        broker = self.broker
        if refusal is Refusal.TOPIC_FULL:
            groups = sorted({consumer.group for consumer in broker.iter_consumers(topic)})
            return f"topic {topic!r} is full ({broker.max_topic_events} events wait for groups {groups[:10]}): retry later"
        if refusal is Refusal.TOO_MANY_TOPICS:
            return (
                f"topic {topic!r} would be new, and the mesh holds {len(broker.topics)} topics, its max_topics:"
                " publish to existing topics, or retry once idle topics are dropped"
            )
        return (
            f"the mesh retains {broker.retained_bytes} bytes of events, and {size} more would pass its"
            f" max_retained_bytes of {broker.max_retained_bytes}: retry once subscribers acked events"
        )

    def _push_ack(self, session: _Session, package: Package) -> None:
        seq = package.header.seq
        entry = session.take_inflight(seq) if seq is not None else None
        if entry is None:
            late = session.expired.pop(seq, None) if seq is not None else None
            if late is not None:
                # Acked after it was taken back: the event is done, wherever it was pushed again (at most once more).
                late.consumer.ack(late.offset)
                self.broker.pump_later(late.consumer)
            return
        if isinstance(entry, Delivery):
            self.broker.acked(session, entry)
        self.broker.pump_all_of(session.consumers.values())

    def _request(self, session: _Session, package: Package) -> None:
        try:
            event = _parse_event(package, self.max_event_size)
        except _Refused as refused:
            session.reply(package, code=1, desc=str(refused))
            return
        if session.waiting_requests >= self.max_unacked_per_session:
            # The requester sets each request's ttl: without this bound, requests acked but never answered pile up.
            reason = (
                f"{session.waiting_requests} requests of this session wait for replies, its max_unacked_per_session:"
                " send more once replies came or their ttl passed"
            )
            self.refusals.refused(self.now(), "max_unacked_per_session", session.peer, reason)
            session.reply(package, code=1, desc=reason)
            return
        topic: str = event["subject"]
        if len(topic) > MAX_TOPIC_LENGTH:
            session.reply(package, code=1, desc=_topic_too_long(topic))
            return
        seq = self.next_seq()
        correlation_id = self._correlation_id(seq)
        body = orjson.dumps({**event, CORRELATION_EXTENSION: correlation_id})
        responder = self._pick_responder(topic, len(body))
        if responder is None:
            session.reply(package, code=1, desc=f"no session listens to topic {topic!r} with a SYNC subscription")
            return
        try:
            ttl = int(event.get("ttl", DEFAULT_REQUEST_TTL_MS)) / 1000
        except (TypeError, ValueError):
            ttl = DEFAULT_REQUEST_TTL_MS / 1000
        now = self.now()
        self._requests[correlation_id] = _PendingRequest(session, package.header.seq, now + ttl)
        session.waiting_requests += 1
        responder.add_inflight(seq, _RequestPush(correlation_id, len(body), now + self.redelivery_timeout))
        responder.send(Package(Header(Command.REQUEST_TO_CLIENT, seq=seq, properties=PUSH_PROPERTIES), body))

    def _correlation_id(self, seq: str) -> str:
        """The correlation id of the REQUEST_TO_CLIENT with ``seq``, so that a reply by seq finds it as well."""
        return f"{self._correlation_prefix}-{seq}"

    def _pick_responder(self, topic: str, size: int) -> _Session | None:
        candidates = [
            session
            for consumer in self.broker.iter_consumers(topic)
            for session in consumer.sessions
            if isinstance(session, _Session)
            and session.listening
            and session.has_room(size)
            and session.push_commands.get(topic) is Command.REQUEST_TO_CLIENT
        ]
        if not candidates:
            return None
        self._request_turn += 1
        return candidates[self._request_turn % len(candidates)]

    def _response(self, session: _Session, package: Package) -> None:
        # Matched by correlation extension, else by seq: see CORRELATION_EXTENSION.
        seq = package.header.seq
        correlation_id = correlation_of(package.body)
        if correlation_id is None and seq is not None:
            correlation_id = self._correlation_id(seq)
        if correlation_id is None or not self._answer_request(correlation_id, package.body, None):
            log.info("mesh.response.unmatched", peer=session.peer, seq=seq, correlation_id=correlation_id)

    def _answer_request(self, correlation_id: str, body: bytes | None, failure: str | None) -> bool:
        pending = self._requests.pop(correlation_id, None)
        if pending is None:
            return False
        pending.requester.waiting_requests -= 1
        if pending.requester.closed:
            return False
        if failure is None:
            header = Header(Command.RESPONSE_TO_CLIENT, seq=pending.seq, properties=PUSH_PROPERTIES)
        else:
            header = Header(Command.RESPONSE_TO_CLIENT, code=1, desc=failure, seq=pending.seq)
        pending.requester.send(Package(header, body if failure is None else None))
        return True

    def _response_ack(self, session: _Session, package: Package) -> None:
        """RESPONSE_TO_CLIENT_ACK: the requester got its answer; nothing is kept for it."""

    _HANDLERS: ClassVar[Mapping[Command, Callable[[EmbeddedMesh, _Session, Package], None]]] = {
        Command.HEARTBEAT_REQUEST: _heartbeat,
        Command.CLIENT_GOODBYE_REQUEST: _goodbye,
        Command.SERVER_GOODBYE_RESPONSE: _server_goodbye_response,
        Command.RECOMMEND_REQUEST: _recommend,
        Command.SUBSCRIBE_REQUEST: _subscribe,
        Command.UNSUBSCRIBE_REQUEST: _unsubscribe,
        Command.LISTEN_REQUEST: _listen,
        Command.ASYNC_MESSAGE_TO_SERVER: _publish,
        Command.BROADCAST_MESSAGE_TO_SERVER: _publish,
        Command.REQUEST_TO_SERVER: _request,
        Command.RESPONSE_TO_SERVER: _response,
        Command.ASYNC_MESSAGE_TO_CLIENT_ACK: _push_ack,
        Command.BROADCAST_MESSAGE_TO_CLIENT_ACK: _push_ack,
        Command.REQUEST_TO_CLIENT_ACK: _push_ack,
        Command.RESPONSE_TO_CLIENT_ACK: _response_ack,
    }


_HANDLER_BY_ORDINAL = {command.value: handler for command, handler in EmbeddedMesh._HANDLERS.items()}
