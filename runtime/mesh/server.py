"""The embedded mesh server: its lifecycle, one tick per loop turn, and the timers.

One :class:`~runtime.mesh.session.Session` per TCP connection decodes frames with the sans-IO codec
(:mod:`runtime.protocol.frames`); :mod:`runtime.mesh.handlers` answers each command,
:mod:`runtime.mesh.requests` pairs requests with replies, :mod:`runtime.mesh.limits` checks the bounds
and logs refusals. Each session buffers what it
has to say; at the end of every loop turn that did something, :meth:`EmbeddedMesh._tick` lets the
broker push what it can, then writes every session's buffer with one transport write. With a store,
the turn's changes are first committed on the store's thread and the buffers taken at that moment
are written when the commit returns; turns that end while a commit runs wait for the next one
(group commit). A timer does the rest: redelivery of pushes not acked in time, expiry of sessions
that stopped heartbeating or never said HELLO, expiry of unanswered requests.

Floods are refused at every bound (connections, bytes before HELLO, bytes of incomplete frames,
topics, retained bytes, events per topic): see :mod:`runtime.mesh.limits`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from runtime.mesh import handlers
from runtime.mesh.broker import Broker, Delivery
from runtime.mesh.limits import RefusalLog, check_limits
from runtime.mesh.requests import RequestReply
from runtime.mesh.session import Session
from runtime.mesh.store import MeshStore
from runtime.protocol.frames import Command, Header, Package

__all__ = ["EmbeddedMesh"]

log = structlog.get_logger("meshconnect.mesh")

GRACEFUL_QUIT = "graceful normal quit from eventmesh"
STOP_GRACE_SECONDS = 5.0  # how long stop() lets sessions read their goodbye before cutting them off


class EmbeddedMesh:
    """An EventMesh TCP server for tests and single-machine runs; see :mod:`runtime.mesh`.

    ``users`` (user -> password) turns on the HELLO password check. ``data_dir`` makes events,
    cursors and acks survive a crash. ``redelivery_timeout`` (s): a push not acked in time is pushed
    again. ``session_timeout`` (s): a session that sent no HEARTBEAT_REQUEST for that long is closed.
    ``max_topic_events``: retained events per topic before publishes are refused.
    ``max_unacked_per_session`` and ``max_unacked_bytes_per_session``: pushes, and bytes of pushes, in
    flight per session at most (one push always may be, whatever its size); a session's push window is
    what its HELLO asks (``unack``) within ``max_unacked_per_session``, or ``DEFAULT_PUSH_WINDOW`` when it
    asks none; the byte bound is per ``DEFAULT_PUSH_WINDOW`` pushes (a session asking 5000 gets five times it).
    ``max_event_size``: data bytes per event.
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
        max_unacked_per_session: int = 10_000,
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
        check_limits(
            timeouts={
                "redelivery_timeout": redelivery_timeout,
                "session_timeout": session_timeout,
                "hello_timeout": hello_timeout,
                "group_expiry": group_expiry,
            },
            counts={
                "max_topic_events": max_topic_events,
                "max_unacked_per_session": max_unacked_per_session,
                "max_unacked_bytes_per_session": max_unacked_bytes_per_session,
                "max_connections": max_connections,
                "max_topics": max_topics,
                "max_retained_bytes": max_retained_bytes,
            },
            max_bytes_before_hello=max_bytes_before_hello,
            max_incomplete_frame_bytes=max_incomplete_frame_bytes,
            max_event_size=max_event_size,
        )
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
        self.refusals = RefusalLog()
        self._store: MeshStore | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._commit: asyncio.Future[None] | None = None
        self._failed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._sessions: set[Session] = set()
        self._to_flush: dict[Session, None] = {}
        self._tick_scheduled = False
        self._seq = itertools.count(1)
        self.requests = RequestReply(self)
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
        self._server = await self._loop.create_server(lambda: Session(self), self.host, self._requested_port)
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

    def handle(self, session: Session, package: Package) -> None:
        """Answer one package of ``session`` (see :mod:`runtime.mesh.handlers`)."""
        handlers.handle(self, session, package)

    def next_seq(self) -> str:
        return str(next(self._seq))

    def session_opened(self, session: Session) -> bool:
        """Admit a new connection; False when ``max_connections`` are open (the caller closes it)."""
        if len(self._sessions) >= self.max_connections:
            self.refusals.refused(self.now(), "max_connections", session.peer, f"{len(self._sessions)} connections are open")
            return False
        self._sessions.add(session)
        log.debug("mesh.session.opened", peer=session.peer)
        return True

    def session_closed(self, session: Session) -> None:
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
                self.requests.answer(entry.correlation_id, None, "the responder left before answering")
        session.inflight.clear()
        session.inflight_bytes = 0
        self.requests.forget_requester(session)
        if session.user_agent is not None:
            log.info("mesh.session.closed", peer=session.peer, group=session.user_agent.group)
        else:  # a connection that never said HELLO: one line each would let a connection flood flood the log
            log.debug("mesh.session.closed", peer=session.peer, group=None)
        if not self._sessions:
            self._all_closed.set()
        self.schedule_tick()

    def output_pending(self, session: Session) -> None:
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

    def _committed(self, batch: list[tuple[Session, bytes, bool]], commit: asyncio.Future[None]) -> None:
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
    def _write(batch: list[tuple[Session, bytes, bool]]) -> None:
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
            self.requests.expire(now)
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
