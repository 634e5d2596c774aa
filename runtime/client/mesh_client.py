"""MeshClient: the socket, the clock and the tasks around a ClientSession (see the package docstring).

It composes one :class:`~runtime.client.state.ClientStates` (lifecycle table and listeners), one
:class:`~runtime.client.supervisor.ReconnectSupervisor` (addresses, backoff, the reconnect loop),
one :class:`~runtime.client.window.PublishWindow` and one :class:`~runtime.client.inbox.PushInbox`,
and keeps for itself the connection, the ticker (request deadlines, heartbeats), the subscriptions
it restores on every connection, and the write of everything queued in one loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from functools import partial
from ssl import SSLContext
from typing import Any, Literal, Protocol

import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.config import MeshSettings
from runtime.errors import (
    ConfigError,
    MeshConnectError,
    MeshRejectedError,
    MeshUnavailableError,
    RemoteProtocolError,
)
from runtime.protocol.events import Publishable, body_to_event
from runtime.protocol.frames import Package, SubscriptionItem, SubscriptionMode, SubscriptionType, UserAgent
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

from .identity import Address, parse_addresses, user_agent_for
from .inbox import PushedEvent, PushInbox
from .state import ClientState, ClientStates, ClientTrigger
from .supervisor import ReconnectSupervisor
from .window import PublishWindow

__all__ = ["AckWaiter", "MeshClient"]

log = structlog.get_logger()


class AckWaiter(Protocol):
    """What the answer to a publish is handed to: an ``asyncio.Future``, or a lighter object of the caller's with
    these three methods, which the client calls from its read callback (no loop turn per event)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


_Waiter = asyncio.Future[Any]
_Token = AckWaiter | None  # None: nobody waits for the answer (heartbeats)
_REQUEST = RequestKind.REQUEST  # a module constant: identity checks on the hot path, no enum hashing
_IDLE = ClientState.IDLE
_CLOSED = ClientState.CLOSED
_GOODBYE_TIMEOUT = 2.0
_TICK = 0.1
_SUPERVISOR = "mesh-client-supervisor"


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
    """One EventMesh TCP connection (reconnected as needed) with one identity (see the package doc)."""

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
        self._supervisor = ReconnectSupervisor(parse_addresses(address), backoff_initial=backoff_initial, backoff_max=backoff_max)
        self._states = ClientStates(self._supervisor.describe)
        self._window = PublishWindow(max_in_flight)
        self._inbox = PushInbox(self, push_buffer, self._states)
        # Bound once: called per event on the publish and push paths.
        self._try_take_slot = self._window.try_take
        self._release_slot = self._window.release
        self._push = self._inbox.put
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._heartbeat_interval = heartbeat_interval
        self._session: ClientSession[_Token] = ClientSession(user_agent)
        self._conn: _Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_scheduled = False
        self._next_heartbeat = float("inf")
        # Subscriptions and listen survive reconnects: every new connection restores them.
        self._subscriptions: dict[str, SubscriptionItem] = {}
        self._listening = False
        self._closing = False

    @classmethod
    def from_settings(
        cls, settings: MeshSettings, *, group: str, purpose: Literal["pub", "sub"], push_window: int | None = None
    ) -> MeshClient:
        """A client configured from a worker's ``mesh:`` section (``group`` when it names none); ``push_window``
        pushes are asked of the mesh and fit the push buffer (None: the mesh's default window, a buffer of 1000)."""
        identity = user_agent_for(
            settings.group or group,
            purpose,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            token=settings.token.get_secret_value() if settings.token else None,
            idc=settings.idc,
            env=settings.env,
            subsystem=settings.subsystem,
            unack=push_window or 0,
        )
        return cls(
            settings.address,
            identity,
            ssl=_default_tls_context() if settings.tls else None,
            connect_timeout=settings.connect_timeout,
            request_timeout=settings.request_timeout,
            heartbeat_interval=settings.heartbeat_interval,
            max_in_flight=settings.max_in_flight,
            push_buffer=push_window or 1000,
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._states.current

    @property
    def connected(self) -> bool:
        return self._states.current is ClientState.CONNECTED

    @property
    def in_flight(self) -> int:
        """Messages sent (or queued for the next connection) and not yet answered."""
        return self._window.in_flight

    @property
    def pushes_waiting(self) -> int:
        """Pushed events received and not yet taken by the receiver."""
        return len(self._inbox)

    def add_state_listener(self, callback: Callable[[ClientState], None]) -> None:
        """Call ``callback(new_state)`` on every state change (from the event loop; keep it quick)."""
        self._states.add_listener(callback)

    def remove_state_listener(self, callback: Callable[[ClientState], None]) -> None:
        self._states.remove_listener(callback)

    async def state_changed(self, timeout: float | None = None) -> ClientState:  # noqa: ASYNC109 - a deadline tracked per request
        """Wait for the next state change and return the new state (``timeout``: TimeoutError)."""
        return await self._states.changed(timeout)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline tracked per request
        """Return once connected; MeshUnavailableError after ``timeout`` seconds or on close."""
        timeout = self._request_timeout if timeout is None else timeout
        states = self._states
        try:
            async with asyncio.timeout(timeout):
                while states.current is not ClientState.CONNECTED:
                    if states.current in (ClientState.CLOSED, ClientState.IDLE):
                        raise MeshUnavailableError(f"mesh client is {states.current.value}")
                    await states.changed()
        except TimeoutError as exc:
            raise MeshUnavailableError(f"not connected to the mesh at {self._supervisor.describe()} after {timeout}s") from exc

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> MeshClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and say HELLO; raises HelloRefusedError or MeshUnavailableError. Then self-healing."""
        if self._states.current is not ClientState.IDLE:
            raise MeshUnavailableError(f"mesh client cannot start: it is {self._states.current.value}")
        self._states.move(ClientTrigger.START)
        self._tasks.append(asyncio.create_task(self._tick(), name="mesh-client-ticker"))
        try:
            await self._establish(self._supervisor.addresses[0])
        except BaseException:
            await self.aclose()
            raise
        supervise = self._supervisor.run(self._states, self._establish)
        self._tasks.append(asyncio.create_task(supervise, name=_SUPERVISOR))

    async def aclose(self) -> None:
        """Say goodbye, close the connection and fail whatever still waits (MeshUnavailableError)."""
        if self._states.current is ClientState.CLOSED or self._closing:
            return
        self._closing = True
        await _cancel([task for task in self._tasks if task.get_name() == _SUPERVISOR])
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
        self._inbox.detach()
        self._resolve(self._session.close())
        self._states.move(ClientTrigger.CLOSE)
        self._inbox.wake()
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
        self._supervisor.connection_up()
        self._inbox.attach(conn.transport)
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
        log.info("mesh connected", address=f"{host}:{port}", subscriptions=len(self._subscriptions), in_flight=self.in_flight)
        self._states.move(ClientTrigger.ESTABLISHED)

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
        state = self._states.current
        if state is _IDLE or state is _CLOSED or not self._try_take_slot():
            return False
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
        state = self._states.current
        if state is _IDLE or state is _CLOSED:
            raise MeshUnavailableError(f"cannot send {kind.command.name}: mesh client is {state.value}")
        if not self._try_take_slot():  # a free slot is the common case, taken without a coroutine
            await self._window.take(self._request_timeout if within is None else within)
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

    # -- pushes --------------------------------------------------------------------------------

    async def pushed(self) -> AsyncIterator[PushedEvent]:
        """The events pushed to this session, in arrival order; ends when the client closes."""
        while await self.wait_for_pushes():
            yield self.take_pushes(1)[0]

    async def wait_for_pushes(self) -> bool:
        """Wait until a pushed event waits to be taken (True), or the client closed (False)."""
        return await self._inbox.wait()

    def take_pushes(self, limit: int) -> list[PushedEvent]:
        """Up to ``limit`` of the pushed events waiting, oldest first, without waiting (a batch at a time)."""
        return self._inbox.take(limit)

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
        self._inbox.detach()
        self._resolve(self._session.connection_lost())
        if not self._closing:
            reason = str(exc) if exc else "closed"
            log.warning("mesh connection lost", address=self._supervisor.describe(), reason=reason)
            self._states.move(ClientTrigger.CONNECTION_LOST)
            self._supervisor.connection_down()

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
                self._supervisor.goodbye()
                self._close_connection()
            elif type(event) is Redirected:
                log.warning("mesh redirected us", host=event.host, port=event.port)
                self._supervisor.redirect((event.host, event.port))
                self._close_connection()

    def _expired(self, event: Expired[_Token]) -> None:
        if event.kind.is_message:
            self._release_slot()
        if event.kind is RequestKind.HEARTBEAT and not event.connection_lost and not self._inbox.reading_paused:
            log.warning("mesh did not answer a heartbeat; reconnecting", address=self._supervisor.describe())
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
