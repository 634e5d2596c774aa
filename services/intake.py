"""The intake shared by the sources that are HTTP servers, of any system: a guarded listener, and records held
until the mesh stored them.

A sender's response waits until its events are durably in the mesh, so 200 means "stored":

* :class:`HeldRecords` numbers each queued record (``offset={"seq": n}``), hands them to the
  worker in :meth:`~HeldRecords.poll`, and resolves the waiting senders, oldest first, when
  :meth:`~HeldRecords.commit` reports them stored; :meth:`~HeldRecords.release` (at stop) tells the
  waiting senders "not stored" (they answer 503 and are sent again) and empties the queue;
* :class:`Listener` serves an aiohttp application on host and port through a
  :class:`~services.connections.ConnectionGuard` (a cap on open connections, a deadline for
  each request head); a port already in use is a :class:`ConfigError`;
* :class:`IntakeSource` puts the two together: a source whose author writes ``_handle`` (the
  answer to a ``POST <path>``; ``_routes`` adds other methods), configured by a subclass of :class:`IntakeConfig`.
  It also holds what every handler does alike: ``_check_token`` (the bearer token, 401), ``_read_body``
  (413 over ``max_body_bytes``, 408 after ``body_timeout``; ``_read_json_body`` also 415 for a body that is no JSON) and
  ``_refuse``.

A request refused before anything of it was queued raises :class:`Refused`; ``_refuse`` logs, counts
(:data:`REFUSAL_KINDS` names its reason in ``meshconnect_refused_total``) and answers it with
:func:`error_response`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import structlog
from aiohttp import web
from pydantic import Field

from runtime import ConfigError, ConnectorConfig, ConnectorRecord, RetriableError, Secret, Source, SourceContext
from services.connections import ConnectionGuard, GuardedSite

__all__ = [
    "REFUSAL_KINDS",
    "HeldRecords",
    "IntakeConfig",
    "IntakeSource",
    "Listener",
    "Refused",
    "error_response",
    "secret_matches",
]

log = structlog.get_logger()

_POLL_WAIT = 1.0  # seconds poll waits for a first record before it returns none


# The reason label of meshconnect_refused_total for each refusal status.
REFUSAL_KINDS = {
    400: "malformed",
    401: "auth",
    403: "topic",
    408: "body_timeout",
    413: "size",
    415: "content_type",
    503: "busy",
}


class Refused(Exception):
    """A request answered with an HTTP error before anything of it was queued."""

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None, bearer: bool = False) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.bearer = bearer
        """A 401 for the bearer token: the answer names the scheme (``WWW-Authenticate: Bearer``)."""
        super().__init__(reason)


def secret_matches(given: str, expected: str) -> bool:
    """Whether a header value equals a secret, compared in constant time. aiohttp keeps bytes that are not UTF-8
    as lone surrogates: surrogateescape gives back the bytes sent."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def error_response(status: int, reason: str, *, retry_after: int | None = None) -> web.Response:
    """The JSON answer ``{"error": reason}`` with ``status``, and ``Retry-After`` when given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": reason}, status=status, headers=headers)


class IntakeConfig(ConnectorConfig):
    """Where an HTTP source listens and what it holds; a subclass gives path, max_body_bytes, queue_size and
    retry_after the default and description that fit its requests."""

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    path: str = Field(pattern=r"^/", description="URL path that accepts POSTed requests.")
    max_body_bytes: int = Field(ge=1, description="Largest request body accepted (413 above).")
    queue_size: int = Field(ge=1, description="Records not yet in the mesh, at most (503 above).")
    batch_size: int = Field(100, ge=1, description="Events handed to the worker per poll, at most.")
    retry_after: int = Field(ge=0, description="Seconds sent in Retry-After with a 503.")
    max_connections: int = Field(512, ge=1, description="Open connections at most; one more is answered 503 and closed.")
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a whole request head (line and headers), from its opening or from"
        " the first byte of a request; then closed.",
    )
    keepalive_timeout: float = Field(
        75.0, gt=0, description="Seconds a kept-alive connection may stay idle between requests; then closed."
    )
    body_timeout: float = Field(30.0, gt=0, description="Seconds a request has to send its whole body; 408 after.")
    token: Secret | None = Field(None, description="Require 'Authorization: Bearer <token>' from senders with this token.")


@dataclasses.dataclass(slots=True)
class _Waiting:
    """One request whose records are in flight; answered when the last one is committed."""

    last_seq: int
    stored: asyncio.Future[bool]
    """True once every record is in the mesh; False when the source stops first."""


class HeldRecords:
    """At most ``queue_size`` records on their way to the mesh, each with a sender waiting for it to be stored."""

    def __init__(self, *, queue_size: int, partition: dict[str, str]) -> None:
        self._queue: asyncio.Queue[ConnectorRecord] = asyncio.Queue(maxsize=queue_size)
        self._waiting: deque[_Waiting] = deque()
        self._partition = partition
        self._next_seq = 0
        self._committed_seq = -1

    @property
    def pending(self) -> int:
        """Records queued or handed to the worker, not yet committed."""
        return self._next_seq - 1 - self._committed_seq

    def hold(self, records: Sequence[ConnectorRecord]) -> asyncio.Future[bool]:
        """Queue ``records`` (the caller checked :attr:`pending` leaves room for them); the future becomes True once
        all are stored, False when the source stops first."""
        for record in records:
            self._queue.put_nowait(record.replace(partition=self._partition, offset={"seq": self._next_seq}))
            self._next_seq += 1
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(last_seq=self._next_seq - 1, stored=stored))
        return stored

    async def poll(self, batch_size: int) -> list[ConnectorRecord]:
        """The next records, up to ``batch_size``; none after a second without any."""
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=_POLL_WAIT)
        except TimeoutError:
            return []
        records = [first]
        while len(records) < batch_size and not self._queue.empty():
            records.append(self._queue.get_nowait())
        return records

    def commit(self, records: Sequence[ConnectorRecord]) -> None:
        """``records`` are in the mesh: answer the senders whose records all are."""
        seqs = [int(record.offset["seq"]) for record in records if "seq" in record.offset]
        if seqs:
            self._committed_seq = max(self._committed_seq, *seqs)
        while self._waiting and self._waiting[0].last_seq <= self._committed_seq:
            waiting = self._waiting.popleft()
            if not waiting.stored.done():
                waiting.stored.set_result(True)

    def release(self) -> None:
        """The source stops: every waiting sender hears "not stored" and the queue is emptied."""
        for waiting in self._waiting:
            if not waiting.stored.done():
                waiting.stored.set_result(False)
        self._waiting.clear()
        while not self._queue.empty():  # their senders got a 503 and will send them again
            self._queue.get_nowait()
        self._committed_seq = self._next_seq - 1


class Listener:
    """Serves ``app`` where ``config`` says, its connections bounded by a :class:`ConnectionGuard`; a connection
    over the limit is answered 503 with ``retry_after``, and each refusal reported to ``on_refused``."""

    def __init__(
        self, app: web.Application, config: IntakeConfig, *, retry_after: int, on_refused: Callable[[str], None]
    ) -> None:
        self._guard = ConnectionGuard(
            self._connection,
            max_connections=config.max_connections,
            header_timeout=config.header_timeout,
            keepalive_timeout=config.keepalive_timeout,
            retry_after=retry_after,
            on_refused=on_refused,
        )
        app.middlewares.append(self._guard.middleware)
        self._app = app
        self._host = config.host
        self.port = config.port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; :attr:`port` is then the bound one (the OS's choice when it was 0)."""
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await GuardedSite(self._runner, self._host, self.port, self._guard).start()
        except OSError as exc:
            await self.stop()
            if exc.errno == 98:  # EADDRINUSE: a config problem, not a passing one
                raise ConfigError("config.port", f"port {self.port} is already in use", "choose a free port") from exc
            raise RetriableError(f"cannot listen on {self._host}:{self.port}: {exc}") from exc
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=5.0)
            self._runner = None

    def _connection(self) -> asyncio.BaseProtocol:
        """aiohttp's protocol for a new connection (the guard wraps it)."""
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()


IntakeConfigT = TypeVar("IntakeConfigT", bound=IntakeConfig)


class IntakeSource(Source[IntakeConfigT]):
    """An HTTP source whose senders are answered once their records are stored.

    :meth:`start` listens (a :class:`Listener`) and routes ``POST <path>`` to :meth:`_handle`, which
    queues records with ``self._held.hold`` and awaits the future it returns; :meth:`poll`,
    :meth:`commit` and :meth:`stop` run :class:`HeldRecords`. ``self._context`` is the worker's
    once started.
    """

    exclusive: ClassVar[bool] = False

    def __init__(self, config: IntakeConfigT) -> None:
        super().__init__(config)
        self.port = config.port
        self._held = HeldRecords(queue_size=config.queue_size, partition={"path": config.path})
        self._listener: Listener | None = None
        self._context = SourceContext(connector_name=self.name, committed_offsets={})

    async def start(self, context: SourceContext) -> None:
        self._context = context
        app = web.Application(client_max_size=self.config.max_body_bytes)
        self._routes(app)
        self._listener = Listener(app, self.config, retry_after=self.config.retry_after, on_refused=context.count_refused)
        await self._listener.start()
        self.port = self._listener.port

    def _routes(self, app: web.Application) -> None:
        """Route the requests this source answers: ``POST <path>`` to :meth:`_handle`."""
        app.router.add_post(self.config.path, self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        """The answer to one ``POST <path>``."""
        raise NotImplementedError

    def _check_token(self, request: web.Request) -> None:
        """With a ``token`` configured, :class:`Refused` (401) unless the request carries ``Authorization: Bearer
        <token>``, compared in constant time."""
        if self.config.token is None:
            return
        if not secret_matches(request.headers.get("Authorization", ""), f"Bearer {self.config.token.get_secret_value()}"):
            raise Refused(401, "missing or wrong bearer token", bearer=True)

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body; :class:`Refused` when it is larger than ``max_body_bytes`` (413) or not all received
        within ``body_timeout`` (408)."""
        try:
            async with asyncio.timeout(self.config.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise Refused(413, f"body larger than max_body_bytes ({self.config.max_body_bytes} bytes)") from exc
        except TimeoutError as exc:
            raise Refused(408, f"body not received within body_timeout ({self.config.body_timeout:g} s)") from exc

    async def _read_json_body(self, request: web.Request) -> bytes:
        """The whole body of a request that must be JSON: :class:`Refused` 415 for another content type, else
        as :meth:`_read_body`."""
        if request.content_type != "application/json":
            raise Refused(415, f"unsupported content type {request.content_type[:100]}; send application/json")
        return await self._read_body(request)

    def _refuse(self, request: web.Request, rejected: Refused) -> web.Response:
        """The answer to a refused request, logged (with its status and reason) and counted first."""
        log.info("http request rejected", status=rejected.status, reason=rejected.reason, remote=request.remote)
        self._context.count_refused(REFUSAL_KINDS.get(rejected.status, str(rejected.status)))
        response = error_response(rejected.status, rejected.reason, retry_after=rejected.retry_after)
        if rejected.bearer:
            response.headers["WWW-Authenticate"] = "Bearer"
        if not request.content.is_eof():
            # The rest of the body is not read (408, 413, or refused before reading it): the connection cannot
            # carry another request, and aiohttp would otherwise go on reading what is left to throw it away.
            response.force_close()
        return response

    async def poll(self) -> Sequence[ConnectorRecord]:
        return await self._held.poll(self.config.batch_size)

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        self._held.commit(records)

    async def stop(self) -> None:
        self._held.release()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
