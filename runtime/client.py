"""The async EventMesh TCP client: a thin shell of IO, timeouts and reconnect around ClientSession.

::

    async with MeshClient("127.0.0.1:10000", user_agent_for("orders", "pub")) as client:
        await client.publish(event)                        # returns once the mesh acked it
        ack = await client.start_publish(event)            # pipelined: waits for window room only
        await ack

    async with MeshClient(address, user_agent_for("orders", "sub")) as client:
        await client.subscribe("orders")
        await client.listen()
        async for pushed in client.pushed():
            handle(pushed.event)
            await pushed.ack()                             # only once the event is safe

Protocol rules live in :mod:`runtime.protocol.session`; this module owns the socket, the clock and
the tasks: one supervisor (reconnect with exponential backoff and jitter, new HELLO, re-subscribe,
re-listen, then the session re-sends every publish still waiting for its ack) and one ticker
(request deadlines, heartbeats). Little is made per event: a publish's answer goes to a waiter
keyed by ``seq`` inside the session (a future, or with ``publish_nowait`` a lighter object of the
caller's), a pushed body is decoded only when read, a receiver takes and acks pushes a batch at a
time (``take_pushes``, ``ack_all``), and bytes queued during one loop iteration go out in one write.

Bounds: at most ``max_in_flight`` messages await an ack (``start_publish`` waits for room); at
most ``push_buffer`` pushed events wait for the receiver, after which the client stops reading the
socket (TCP backpressure; one read chunk may overshoot the bound); every request has a deadline.
A heartbeat that gets no answer within ``request_timeout`` marks the connection dead, except while
reading is paused for backpressure (the answer is then waiting in the socket, not lost).

Errors: :class:`~runtime.errors.MeshRejectedError` (the mesh said no, with its reason),
:class:`~runtime.errors.HelloRefusedError` (handshake refused, authentication included) and
:class:`~runtime.errors.MeshUnavailableError` (no connection, or no answer in time). A publish that
timed out may still have reached the mesh: retrying it is at-least-once, never at-most-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from enum import Enum
from functools import partial
from ssl import SSLContext
from typing import Any, Literal, Protocol

import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.config import MeshSettings
from runtime.errors import (
    ConfigError,
    DataError,
    HelloRefusedError,
    MeshConnectError,
    MeshRejectedError,
    MeshUnavailableError,
    ProtocolError,
    RemoteProtocolError,
)
from runtime.protocol.events import Publishable, body_to_event
from runtime.protocol.frames import Command, Package, SubscriptionItem, SubscriptionMode, SubscriptionType, UserAgent
from runtime.protocol.session import (
    ClientSession,
    Completed,
    Expired,
    Failed,
    Pushed,
    Redirected,
    RequestKind,
    ServerGoodbye,
    SessionEvent,
    SessionState,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Address",
    "ClientState",
    "MeshClient",
    "PushedEvent",
    "AckWaiter",
    "Publishable",
    "event_of_body",
    "parse_addresses",
    "user_agent_for",
]

log = structlog.get_logger()

Address = tuple[str, int]
PROTOCOL_VERSION = "2.0"
"""The client version sent in the HELLO (the Java runtime requires one; it is informational)."""


class AckWaiter(Protocol):
    """What the answer to a publish is handed to: an ``asyncio.Future``, or a lighter object of the caller's with
    these three methods, which the client calls from its read callback (no loop turn per event)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


_Waiter = asyncio.Future[Any]
_Token = AckWaiter | None  # None: nobody waits for the answer (heartbeats)
_REQUEST = RequestKind.REQUEST  # a module constant: identity checks on the hot path, no enum hashing
_GOODBYE_TIMEOUT = 2.0
_TICK = 0.1


class ClientState(Enum):
    IDLE = "idle"  # not started yet
    CONNECTING = "connecting"  # first connection and HELLO under way
    CONNECTED = "connected"  # HELLO accepted, subscriptions restored: requests flow
    RECONNECTING = "reconnecting"  # the connection was lost: backing off and trying again
    CLOSED = "closed"  # closed for good


def parse_addresses(address: str | Address | Sequence[str | Address]) -> tuple[Address, ...]:
    """``"host:port"``, ``"h1:p1,h2:p2"``, ``("host", port)`` or a list of those."""
    if isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int):
        return ((str(address[0]), address[1]),)
    items: Sequence[str | Address] = address.split(",") if isinstance(address, str) else address
    parsed: list[Address] = []
    for item in items:
        if isinstance(item, tuple):
            parsed.append((str(item[0]), int(item[1])))
            continue
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                "mesh.address", f"{item!r} is not host:port", 'write e.g. "127.0.0.1:10000" (comma-separate several)'
            )
        parsed.append((host.strip("[]"), int(port)))
    if not parsed:
        raise ConfigError("mesh.address", "no address given", 'write e.g. "127.0.0.1:10000"')
    return tuple(parsed)


def user_agent_for(
    group: str,
    purpose: Literal["pub", "sub"],
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    idc: str = "DEFAULT",
    env: str = "PRD",
    subsystem: str = "5023",
) -> UserAgent:
    """A complete HELLO identity: pid, host and version filled in from this process."""
    return UserAgent(
        env=env,
        subsystem=subsystem,
        path=os.getcwd(),
        pid=os.getpid(),
        host=socket.gethostname(),
        port=0,
        version=PROTOCOL_VERSION,
        username=username,
        password=password,
        token=token,
        idc=idc,
        group=group,
        purpose=purpose,
        unack=0,
    )


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


class _Connection(asyncio.Protocol):
    def __init__(self, client: MeshClient) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._client._data_received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._client._connection_lost(self, exc)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class MeshClient:
    """One EventMesh TCP connection (reconnected as needed) with one identity (see the module doc)."""

    def __init__(
        self,
        address: str | Address | Sequence[str | Address],
        user_agent: UserAgent,
        *,
        ssl: SSLContext | None = None,
        connect_timeout: float = 5,
        request_timeout: float = 10,
        heartbeat_interval: float = 30,
        max_in_flight: int = 1000,
        push_buffer: int = 1000,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
    ) -> None:
        if max_in_flight < 1 or push_buffer < 1:
            raise ConfigError("mesh.max_in_flight", "window and push buffer must hold at least 1", "use a positive number")
        self._addresses = parse_addresses(address)
        self._address_index = 0
        self._redirect: Address | None = None
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._heartbeat_interval = heartbeat_interval
        self._max_in_flight = max_in_flight
        self._push_buffer = push_buffer
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._session: ClientSession[_Token] = ClientSession(user_agent)
        self._state = ClientState.IDLE
        self._state_listeners: list[Callable[[ClientState], None]] = []
        self._state_waiters: list[asyncio.Future[ClientState]] = []
        self._conn: _Connection | None = None
        self._disconnected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_scheduled = False
        self._next_heartbeat = float("inf")
        # Publish window: a counter plus the waiters for room, handed a slot one by one.
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        # Subscriptions and listen survive reconnects: the supervisor restores them.
        self._subscriptions: dict[str, SubscriptionItem] = {}
        self._listening = False
        self._pushes: deque[PushedEvent] = deque()
        self._push_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._closing = False

    @classmethod
    def from_settings(cls, settings: MeshSettings, *, group: str, purpose: Literal["pub", "sub"]) -> MeshClient:
        """A client configured from a worker's ``mesh:`` section (``group`` when it names none)."""
        identity = user_agent_for(
            settings.group or group,
            purpose,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            token=settings.token.get_secret_value() if settings.token else None,
            idc=settings.idc,
            env=settings.env,
            subsystem=settings.subsystem,
        )
        return cls(
            settings.address,
            identity,
            ssl=_default_tls_context() if settings.tls else None,
            connect_timeout=settings.connect_timeout,
            request_timeout=settings.request_timeout,
            heartbeat_interval=settings.heartbeat_interval,
            max_in_flight=settings.max_in_flight,
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is ClientState.CONNECTED

    @property
    def in_flight(self) -> int:
        """Messages sent (or queued for the next connection) and not yet answered."""
        return self._in_flight

    @property
    def pushes_waiting(self) -> int:
        """Pushed events received and not yet taken by the receiver."""
        return len(self._pushes)

    def add_state_listener(self, callback: Callable[[ClientState], None]) -> None:
        """Call ``callback(new_state)`` on every state change (from the event loop; keep it quick)."""
        self._state_listeners.append(callback)

    def remove_state_listener(self, callback: Callable[[ClientState], None]) -> None:
        self._state_listeners.remove(callback)

    async def state_changed(self, timeout: float | None = None) -> ClientState:  # noqa: ASYNC109 - a deadline tracked per request
        """Wait for the next state change and return the new state (``timeout``: TimeoutError)."""
        waiter: asyncio.Future[ClientState] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            if waiter in self._state_waiters:
                self._state_waiters.remove(waiter)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline tracked per request
        """Return once connected; MeshUnavailableError after ``timeout`` seconds or on close."""
        timeout = self._request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                while self._state is not ClientState.CONNECTED:
                    if self._state in (ClientState.CLOSED, ClientState.IDLE):
                        raise MeshUnavailableError(f"mesh client is {self._state.value}")
                    await self.state_changed()
        except TimeoutError as exc:
            raise MeshUnavailableError(f"not connected to the mesh at {self._describe_address()} after {timeout}s") from exc

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        log.info("mesh client state", state=state.value, address=self._describe_address())
        self._state = state
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(state)
        for callback in list(self._state_listeners):
            try:
                callback(state)
            except Exception:
                log.exception("mesh client state listener failed", state=state.value)

    def _describe_address(self) -> str:
        host, port = self._redirect or self._addresses[self._address_index]
        return f"{host}:{port}"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> MeshClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and say HELLO; raises HelloRefusedError or MeshUnavailableError. Then self-healing."""
        if self._state is not ClientState.IDLE:
            raise MeshUnavailableError(f"mesh client cannot start: it is {self._state.value}")
        self._set_state(ClientState.CONNECTING)
        self._tasks.append(asyncio.create_task(self._tick(), name="mesh-client-ticker"))
        try:
            await self._establish(self._addresses[0])
        except BaseException:
            await self.aclose()
            raise
        self._tasks.append(asyncio.create_task(self._supervise(), name="mesh-client-supervisor"))

    async def aclose(self) -> None:
        """Say goodbye, close the connection and fail whatever still waits (MeshUnavailableError)."""
        if self._state is ClientState.CLOSED or self._closing:
            return
        self._closing = True
        supervisor = [task for task in self._tasks if task.get_name() == "mesh-client-supervisor"]
        await _cancel(supervisor)
        conn = self._conn
        if conn is not None and self._session.state in (SessionState.GREETING, SessionState.READY):
            goodbye: _Waiter = asyncio.get_running_loop().create_future()
            self._session.goodbye(goodbye, asyncio.get_running_loop().time(), min(self._request_timeout, _GOODBYE_TIMEOUT))
            self._flush()
            try:
                await goodbye
            except MeshConnectError as exc:
                log.info("mesh goodbye unanswered", reason=str(exc))
        await _cancel(self._tasks)
        self._tasks.clear()
        self._conn = None
        self._resolve(self._session.close())
        self._set_state(ClientState.CLOSED)
        self._wake_push_reader()
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            try:
                async with asyncio.timeout(_GOODBYE_TIMEOUT):
                    await conn.closed
            except TimeoutError:
                conn.abort()

    async def _establish(self, address: Address) -> None:
        """Connect, HELLO, restore subscriptions and listen; the session then re-sends messages."""
        loop = asyncio.get_running_loop()
        host, port = address
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
                )
        except (OSError, TimeoutError) as exc:
            raise MeshUnavailableError(f"cannot connect to the mesh at {host}:{port}: {exc or 'timed out'}") from exc
        self._conn = conn
        self._disconnected.clear()
        self._reading_paused = False
        try:
            hello: _Waiter = loop.create_future()
            self._session.connection_made(hello, loop.time(), self._connect_timeout)
            self._flush()
            await hello
            for item in list(self._subscriptions.values()):
                await self._control(partial(self._session.subscribe, [item]))
            if self._listening:
                await self._control(self._session.listen)
        except BaseException:
            # Forget this connection now, not when its close callback runs, so the next attempt starts clean.
            conn.abort()
            self._connection_lost(conn, None)
            raise
        self._next_heartbeat = loop.time() + self._heartbeat_interval
        log.info("mesh connected", address=f"{host}:{port}", subscriptions=len(self._subscriptions), in_flight=self._in_flight)
        self._set_state(ClientState.CONNECTED)

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            await self._disconnected.wait()
            if self._state is ClientState.CLOSED:
                return
            self._set_state(ClientState.RECONNECTING)
            if self._redirect is None:
                ceiling = min(self._backoff_max, self._backoff_initial * 2**attempt)
                await asyncio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
            address = self._redirect or self._addresses[self._address_index]
            self._redirect = None
            try:
                await self._establish(address)
            except MeshConnectError as exc:  # ours, all of them: refused, unavailable, protocol broken
                attempt = min(attempt + 1, 30)
                self._address_index = (self._address_index + 1) % len(self._addresses)
                level = log.error if isinstance(exc, HelloRefusedError) else log.warning
                level("mesh reconnect failed", address=f"{address[0]}:{address[1]}", attempt=attempt, reason=str(exc))
                self._disconnected.set()
            else:
                attempt = 0

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(_TICK, self._heartbeat_interval / 4, self._request_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                now = loop.time()
                self._resolve(self._session.expire(now))
                if self._session.state is SessionState.READY and self.connected and now >= self._next_heartbeat:
                    self._next_heartbeat = now + self._heartbeat_interval
                    self._session.heartbeat(None, now, min(self._request_timeout, self._heartbeat_interval))
                    self._schedule_flush()
            except Exception:
                # Every deadline of the client hangs on this loop: a bug in one turn must not stop it.
                log.exception("mesh client ticker failed")

    # -- requests ------------------------------------------------------------------------------

    async def _control(self, start: Callable[[_Token, float, float], str]) -> Package:
        loop = asyncio.get_running_loop()
        waiter: _Waiter = loop.create_future()
        start(waiter, loop.time(), self._request_timeout)
        self._schedule_flush()
        result: Package = await waiter  # the ticker fails it at its deadline
        return result

    async def subscribe(
        self,
        topic: str,
        mode: SubscriptionMode = SubscriptionMode.CLUSTERING,
        type: SubscriptionType = SubscriptionType.ASYNC,
    ) -> None:
        """Subscribe ``topic``; remembered and restored after every reconnect until unsubscribe()."""
        item = SubscriptionItem(topic, mode, type)
        self._subscriptions.setdefault(topic, item)
        await self.wait_connected()
        try:
            await self._control(partial(self._session.subscribe, [item]))
        except MeshRejectedError:
            if self._subscriptions.get(topic) == item:
                del self._subscriptions[topic]
            raise

    async def unsubscribe(self) -> None:
        """Drop every subscription of this session (the protocol has no per-topic unsubscribe)."""
        self._subscriptions.clear()
        await self.wait_connected()
        await self._control(self._session.unsubscribe)

    async def listen(self) -> None:
        """Start the pushes of the subscribed topics (needs purpose "sub"); restored after reconnects."""
        self._listening = True
        await self.wait_connected()
        try:
            await self._control(self._session.listen)
        except MeshRejectedError:
            self._listening = False
            raise

    async def start_publish(self, event: Publishable, timeout: float | None = None) -> asyncio.Future[None]:  # noqa: ASYNC109 - a deadline tracked per request
        """Send ``event`` once the window has room; the returned future resolves on the mesh's ack.

        The future fails with MeshRejectedError (the mesh's reason) or MeshUnavailableError (no ack
        within ``timeout``, default ``request_timeout``, counted from now). Waiting for room is
        bounded by the same timeout. Across a reconnect the event is re-sent with its seq.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._start_message(RequestKind.PUBLISH, event, timeout, waiter)
        return waiter

    async def publish_when_room(self, event: Publishable, waiter: AckWaiter, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline tracked per request
        """``start_publish`` with the answer handed to ``waiter`` (see :class:`AckWaiter`)."""
        await self._start_message(RequestKind.PUBLISH, event, timeout, waiter)

    def publish_nowait(self, event: Publishable, waiter: AckWaiter, timeout: float | None = None) -> bool:
        """Send ``event`` if the window has room now (True; the answer goes to ``waiter``). False when the window
        is full or the client is not running: then ``await publish_when_room(...)``. For publishing in a loop."""
        state = self._state
        if (
            state is ClientState.IDLE
            or state is ClientState.CLOSED
            or self._in_flight >= self._max_in_flight
            or self._slot_waiters
        ):
            return False
        self._in_flight += 1
        self._send_message(RequestKind.PUBLISH, event, timeout, waiter)
        return True

    async def publish(self, event: Publishable, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline tracked per request
        """Publish ``event`` and return once the mesh acknowledged it (see start_publish)."""
        await (await self.start_publish(event, timeout))

    async def broadcast(self, event: CloudEvent, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline tracked per request
        """Publish ``event`` to every session of every subscribed group; return on the mesh's ack."""
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        await self._start_message(RequestKind.BROADCAST, event, timeout, waiter)
        await waiter

    async def request(self, event: CloudEvent, timeout: float | None = None) -> CloudEvent:  # noqa: ASYNC109 - a deadline tracked per request
        """Request-reply: send ``event`` to a SYNC subscriber and return its response event."""
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        await self._start_message(RequestKind.REQUEST, event, timeout, waiter)
        response: Package = await waiter
        if response.body is None:
            raise RemoteProtocolError("the mesh answered a request with an empty RESPONSE_TO_CLIENT")
        return body_to_event(response.body)

    async def _start_message(self, kind: RequestKind, event: Publishable, within: float | None, waiter: AckWaiter) -> None:
        state = self._state
        if state is ClientState.IDLE or state is ClientState.CLOSED:
            raise MeshUnavailableError(f"cannot send {kind.command.name}: mesh client is {self._state.value}")
        if self._in_flight < self._max_in_flight and not self._slot_waiters:
            self._in_flight += 1  # the common case, without a coroutine
        else:
            await self._acquire_slot(self._request_timeout if within is None else within)
        self._send_message(kind, event, within, waiter)

    def _send_message(self, kind: RequestKind, event: Publishable, within: float | None, waiter: AckWaiter) -> None:
        """Queue ``event`` in the window slot the caller took; its answer goes to ``waiter``."""
        loop = asyncio.get_running_loop()
        try:
            self._session.message(kind, event, waiter, loop.time(), self._request_timeout if within is None else within)
        except BaseException:
            self._release_slot()
            raise
        if self._session.state is SessionState.READY:
            self._schedule_flush()

    async def _acquire_slot(self, within: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we gave up: pass it on
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise MeshUnavailableError(
                    f"publish window of {self._max_in_flight} stayed full for {within}s: the mesh is not acking"
                ) from exc
            raise

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next publisher
                return
        self._in_flight -= 1

    # -- pushes --------------------------------------------------------------------------------

    async def pushed(self) -> AsyncIterator[PushedEvent]:
        """The events pushed to this session, in arrival order; ends when the client closes."""
        while await self.wait_for_pushes():
            yield self.take_pushes(1)[0]

    async def wait_for_pushes(self) -> bool:
        """Wait until a pushed event waits to be taken (True), or the client closed (False)."""
        while not self._pushes:
            if self._state is ClientState.CLOSED:
                return False
            self._push_waiter = asyncio.get_running_loop().create_future()
            await self._push_waiter
        return True

    def take_pushes(self, limit: int) -> list[PushedEvent]:
        """Up to ``limit`` of the pushed events waiting, oldest first, without waiting (a batch at a time)."""
        pushes = self._pushes
        taken = [pushes.popleft() for _ in range(min(limit, len(pushes)))]
        if self._reading_paused and len(pushes) <= self._push_buffer // 2 and self._conn is not None:
            self._reading_paused = False
            assert self._conn.transport is not None
            self._conn.transport.resume_reading()
        return taken

    def _wake_push_reader(self) -> None:
        if self._push_waiter is not None and not self._push_waiter.done():
            self._push_waiter.set_result(None)

    def ack_all(self, pushes: Iterable[PushedEvent]) -> None:
        """Acknowledge pushed events at once (each only once handled); the acks leave in one write. An event
        whose connection is gone since is not acked: the mesh redelivers it instead."""
        session = self._session
        acked = False
        for pushed in pushes:
            if session.ack(pushed._push):
                acked = True
            else:
                log.debug("mesh ack dropped: its connection is gone, the mesh redelivers", seq=pushed.seq)
        if acked:
            self._schedule_flush()

    def _reply(self, push: Pushed, event: CloudEvent) -> None:
        if self._session.reply(push, event):
            self._schedule_flush()
        else:
            raise MeshUnavailableError("cannot reply: the connection the request came on is gone")

    # -- IO callbacks --------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._session.data_to_send()
        conn = self._conn
        if data and conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)

    def _data_received(self, conn: _Connection, data: bytes) -> None:
        if conn is not self._conn:
            return
        try:
            events = self._session.receive_data(data)
        except RemoteProtocolError as exc:
            log.error("mesh sent an invalid frame; reconnecting", reason=str(exc))
            conn.abort()
            return
        self._resolve(events)
        self._schedule_flush()

    def _connection_lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._resolve(self._session.connection_lost())
        if not self._closing:
            log.warning("mesh connection lost", address=self._describe_address(), reason=str(exc) if exc else "closed")
            if self._state is ClientState.CONNECTED:
                self._set_state(ClientState.RECONNECTING)
            self._disconnected.set()

    def _resolve(self, events: Sequence[SessionEvent[_Token]]) -> None:
        for event in events:
            if type(event) is Completed:
                if event.kind.is_message:
                    self._release_slot()
                if event.token is not None and not event.token.done():
                    # Publishes and broadcasts resolve to None; requests and control requests to the answer.
                    event.token.set_result(event.package if event.kind is _REQUEST or not event.kind.is_message else None)
            elif type(event) is Pushed:
                self._push(event)
            elif type(event) is Failed:
                if event.kind.is_message:
                    self._release_slot()
                if event.token is not None and not event.token.done():
                    event.token.set_exception(event.error)
            elif type(event) is Expired:
                self._expired(event)
            elif type(event) is ServerGoodbye:
                log.warning("mesh said goodbye; reconnecting", code=event.code, reason=event.desc)
                if len(self._addresses) > 1:
                    self._address_index = (self._address_index + 1) % len(self._addresses)
                self._close_connection()
            elif type(event) is Redirected:
                log.warning("mesh redirected us", host=event.host, port=event.port)
                self._redirect = (event.host, event.port)
                self._close_connection()

    def _expired(self, event: Expired[_Token]) -> None:
        if event.kind.is_message:
            self._release_slot()
        if event.kind is RequestKind.HEARTBEAT and not event.connection_lost and not self._reading_paused:
            log.warning("mesh did not answer a heartbeat; reconnecting", address=self._describe_address())
            if self._conn is not None:
                self._conn.abort()
        if event.token is None or event.token.done():
            return
        if event.connection_lost:
            reason = "the client closed" if self._closing else "the connection closed"
            error = MeshUnavailableError(f"{event.kind.command.name} (seq {event.seq}) got no answer: {reason}")
        else:
            error = MeshUnavailableError(f"{event.kind.command.name} (seq {event.seq}) got no answer in time from the mesh")
        event.token.set_exception(error)

    def _push(self, event: Pushed) -> None:
        self._pushes.append(PushedEvent(self, event))
        self._wake_push_reader()
        if not self._reading_paused and len(self._pushes) >= self._push_buffer and self._conn is not None:
            self._reading_paused = True
            assert self._conn.transport is not None
            self._conn.transport.pause_reading()

    def _close_connection(self) -> None:
        # Let the goodbye answer go out first, then close; connection_lost starts the reconnect.
        self._flush()
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()


def _default_tls_context() -> SSLContext:
    import ssl

    return ssl.create_default_context()


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    current = asyncio.current_task()
    for task in tasks:
        if task is not current:
            task.cancel()
    for task in tasks:
        if task is not current:
            with contextlib.suppress(asyncio.CancelledError):
                await task
