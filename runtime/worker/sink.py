"""The sink worker: subscribe -> batch (size, linger) -> ``Sink.put`` -> ack, dead letters on the side.

The order is the promise of at-least-once, stated once here:

1. The session says HELLO as ``sub`` in the group ``mesh.group`` (default: the instance name),
   subscribes every ``sink.topics`` (CLUSTERING, ASYNC) and listens. Pushed events queue in a
   bounded buffer; when it is full the worker stops reading (TCP backpressure up to the mesh).
2. A batch closes at ``sink.batch_size`` events, ``sink.linger_ms`` after its first event if ``put``
   is free by then (else when it is: closing it earlier would only split it), or as soon as the sink
   holds ``sink.push_window`` un-acked pushes (the window it asked of the mesh: none can come before
   an ack, so waiting would only stall). Its events are decoded into records as they join it, while
   ``put`` still writes the batch before (one batch ahead); the window, two batches by default, lets
   the next batch fill meanwhile.
   The ``transforms:`` steps run on each record then (:mod:`runtime.transforms`): one a filter
   drops is acknowledged with the batch and not written; one a step fails on is dead-lettered as
   it arrived, with the step and the reason.
3. ``put(records)`` runs. Only when it returned are the events acknowledged to the mesh: an
   event is never acked before its write is durable.
4. :class:`~runtime.errors.RetriableError` (the target is down): the same batch is retried with
   exponential backoff and jitter (``retry_after`` honoured), for as long as it takes, with
   ``/readyz`` not ready meanwhile; nothing is acked, nothing is dead-lettered.
5. :class:`~runtime.errors.DataError` for the batch: it is retried record by record to single out
   the poison; a record that fails as data ``sink.max_attempts`` times, and every
   :class:`~runtime.connector.Rejection`, is published to the dead-letter topic
   (``sink.dead_letter_topic`` or ``<name>-dlq``, see :mod:`runtime.worker.deadletter`) and then
   acknowledged. A dead letter the mesh refuses for what it is (too large) is sent again with its
   data cut; if even that is refused, the event is logged, counted and acknowledged all the same.

With ``sink.spool`` (see :mod:`runtime.worker.spool`), for a mesh that does not redeliver (a real
EventMesh runtime forgets a push un-acked for ~3 s), step 3 splits in two: each batch of pushed
events is appended to the spool and fsynced, and only then acknowledged; ``put`` takes its batches
from the spool, and once it returned (and the dead letters of the batch are published) the spool
marks them done. At start the worker first writes what the spool still holds (the replay), then
subscribes. When the spool holds ``sink.spool.max_bytes`` the worker takes no more pushes (the
mesh holds them back) and ``/readyz`` says not ready. Both ways share steps 2 to 5.

Duplicates (a redelivery after a crash, the same source+id twice in a batch) reach ``put``
unchanged: sinks are idempotent. Stop (SIGTERM): reading stops, the batch in hand is finished
(bounded by ``drain_timeout``), events buffered or decoded but not written stay unacknowledged for
the mesh to deliver again (with a spool: spooled ones stay there for the next start), the session
says goodbye. With a ``registry`` (given when the config names one), the sink also heartbeats its
membership there, for status; it holds no lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, PushedEvent, event_of_body
from runtime.cloudevents import body_to_record
from runtime.config import WorkerConfig
from runtime.connector import Rejection, Sink, SinkContext
from runtime.errors import DataError, FrameTooLargeError, MeshRejectedError, RetriableError
from runtime.observability import ConnectorMetrics, StatusBoard, seconds_behind
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import ConnectorRecord
from runtime.registry import Registry
from runtime.registry.coordinator import Coordinator
from runtime.worker.deadletter import DeadLetterForms, dead_letter_event, refusal_of
from runtime.worker.retry import Backoff, Stopped, retry_retriable
from runtime.worker.session import mesh_session
from runtime.worker.spool import RECORD_OVERHEAD, Spool, SpoolPosition
from runtime.worker.transforming import transforms_for

__all__ = ["SinkWorker"]

T = TypeVar("T")


def _utc_now() -> datetime:
    """The time of an event pushed without one (the codec reads no clock)."""
    return datetime.now(UTC)


def _random_event_id() -> str:
    """The id of an event pushed without one, as the CloudEvents SDK would make it up."""
    return str(uuid.uuid4())


class _Item(msgspec.Struct, gc=False):
    """A pushed event (straight from the mesh, or from the spool at ``spooled``) and what became of it.

    Untracked by the garbage collector: it is in no garbage cycle (what it refers to is plain data, or the
    long-lived client of its push), and two batches of these are alive at a time, which every full
    collection would walk, making large batches cost more per event."""

    body: bytes
    record: ConnectorRecord | None
    reason: str | None
    pushed: PushedEvent | None = None
    spooled: SpoolPosition | None = None
    attempts: int = 0
    dropped: bool = False
    """A transform step's filter dropped it: acknowledged, neither written nor dead-lettered."""

    @property
    def event(self) -> CloudEvent:
        """The event, or the stand-in holding the body's bytes when it is none (for its dead letter)."""
        return self.pushed.event if self.pushed is not None else event_of_body(self.body)[0]


_Take = Callable[[], Awaitable[list[_Item] | None]]
"""The next batch, or None at the end of the input."""
_Settle = Callable[[list[_Item]], Awaitable[None]]
"""What a batch written (and dead-lettered) is followed by: acks to the mesh, or done in the spool."""


class SinkWorker:
    """Runs one :class:`Sink` until ``stop`` is set. See the module docstring."""

    def __init__(
        self,
        sink: Sink[Any],
        config: WorkerConfig,
        *,
        board: StatusBoard,
        metrics: ConnectorMetrics,
        registry: Registry | None = None,
        drain_timeout: float = 10.0,
    ) -> None:
        self.sink = sink
        self.registry = registry
        self.config = config
        self.settings = config.sink
        self.board = board
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self.dead_letter_topic = self.settings.dead_letter_topic or f"{config.name}-dlq"
        self.transforms = transforms_for(config, type(sink), metrics)
        self.handling = False
        self._writer_free = asyncio.Event()  # set while the writer waits for its next batch
        self.push_window = self.settings.effective_push_window
        self.held = 0  # pushes taken from the client and not acked yet (spooled or written)
        self.log = structlog.get_logger().bind(connector=config.connector, name=config.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set, then finish the batch in hand and return."""
        if (problem := self.settings.flow_problem()) is not None:
            self.log.warning("sink batches cannot fill", problem=problem)
        spool = None
        if self.settings.spool is not None:
            spool = Spool(Path(self.settings.spool.path), self.settings.spool.max_bytes)
            spool.open()
            self.metrics.spool_bytes.set(spool.pending_bytes)
        try:
            await self._run(stop, spool)
        finally:
            if spool is not None:
                spool.close()

    async def _run(self, stop: asyncio.Event, spool: Spool | None) -> None:
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        membership = None
        if self.registry is not None:
            # A sink holds no lease; it only says it is alive, for `meshconnect leases show` and status.
            holder = f"{self.config.name}@{socket.gethostname()}:{os.getpid()}"
            info = {"connector": self.config.connector, "side": "sink", "host": socket.gethostname(), "pid": os.getpid()}
            membership = Coordinator(self.registry, self.config.name, holder, (), self.config.registry.lease_ttl, info=info)
            await membership.start()
        try:
            await retry_retriable(
                lambda: self.sink.start(SinkContext(self.config.name, log=self.log, connector_type=self.config.connector)),
                what="sink start",
                backoff=backoff,
                stop=stop,
                on_failure=self._unhealthy,
            )
            try:
                async with (
                    mesh_session(self.config, "pub", self.board, stop, watch=False) as publisher,
                    mesh_session(self.config, "sub", self.board, stop) as client,
                ):
                    if spool is not None and spool.has_unread():
                        await self._replay(spool, publisher, stop)
                        if stop.is_set():
                            return

                    async def join() -> None:
                        # A connection lost mid-way fails the call; subscribing again is harmless (the mesh keeps the first).
                        for topic in self.settings.topics:
                            await client.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
                        await client.listen()

                    await retry_retriable(join, what="mesh subscribe", backoff=backoff, stop=stop, on_failure=self._unhealthy)
                    self.board.set_dependency(None)
                    self.board.set_state("running")
                    self.board.pending = lambda: self.handling
                    self.log.info("sink running", topics=self.settings.topics, group=self.config.mesh.group or self.config.name)
                    if spool is None:
                        await self._serve(self._taker(client, stop), self._acker(client), publisher, stop)
                    else:
                        await self._serve_spooled(client, spool, publisher, stop)
            finally:
                with contextlib.suppress(RetriableError):
                    await asyncio.wait_for(self.sink.stop(), self.drain_timeout)
        except Stopped:
            self.log.info("stopped while waiting for a dependency")
        finally:
            if membership is not None:
                await membership.stop()
        self.board.set_state("stopped")

    def _unhealthy(self, exc: RetriableError) -> None:
        self.metrics.error("retriable")
        self.metrics.retries.inc()
        self.board.set_dependency(str(exc))
        self.board.set_state("retrying")

    async def _retry(self, action: Callable[[], Awaitable[T]], *, what: str, stop: asyncio.Event) -> T:
        """``action`` until it does not raise a retriable error, not ready meanwhile; the not-ready it caused
        (and only that: the spool's intake and ``put`` run side by side) is cleared once it succeeded."""
        failed = False

        def unhealthy(exc: RetriableError) -> None:
            nonlocal failed
            failed = True
            self._unhealthy(exc)

        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        answered = False
        try:
            result = await retry_retriable(action, what=what, backoff=backoff, stop=stop, on_failure=unhealthy)
            answered = True
            return result
        except DataError:
            answered = True  # the dependency is back, and objects to the data
            raise
        finally:
            if failed and answered:
                self.board.set_dependency(None)
                self.board.set_state("running")

    def _taker(self, client: MeshClient, stop: asyncio.Event) -> _Take:
        """Batches of pushed events, taken straight from the client's bounded push buffer, each decoded as it
        is taken: a batch that closes the moment the writer is free is ready to write then."""

        async def take() -> list[_Item] | None:
            items: list[_Item] = []

            def decode(pushes: list[PushedEvent]) -> None:
                items.extend(self._item(pushed.body, pushed=pushed) for pushed in pushes)

            return items if await self._take_pushes(client, stop, decode, self._writer_free) else None

        return take

    def _acker(self, client: MeshClient) -> _Settle:
        async def ack(items: list[_Item]) -> None:
            pushes = [item.pushed for item in items if item.pushed is not None]
            client.ack_all(pushes)
            self.held -= len(pushes)

        return ack

    async def _take_pushes(
        self,
        client: MeshClient,
        stop: asyncio.Event,
        taken: Callable[[list[PushedEvent]], object],
        writer_free: asyncio.Event | None = None,
    ) -> bool:
        """Hand the next batch of pushed events to ``taken``, as they arrive (see :meth:`_fill`); False once the
        client closed."""
        if not await client.wait_for_pushes():
            return False
        self.held += await self._fill(client, stop, taken, writer_free)
        return True

    async def _serve_spooled(self, client: MeshClient, spool: Spool, publisher: MeshClient, stop: asyncio.Event) -> None:
        """Pushes go to the spool (then are acked) in one task; the batch pipeline writes from the spool."""
        intake = asyncio.create_task(self._spool_pushes(client, spool, stop), name="spool pushes")

        async def take() -> list[_Item] | None:
            while not (entries := await spool.read(self.settings.batch_size)):
                if intake.done() and not spool.has_unread():
                    intake.result()  # raise its error, if any
                    return None
                arrival = asyncio.ensure_future(spool.wait_for_records())
                await asyncio.wait([arrival, intake], return_when=asyncio.FIRST_COMPLETED)
                arrival.cancel()
            return [self._item(entry.body, spooled=entry.end) for entry in entries]

        try:
            await self._serve(take, self._spool_settler(spool, stop), publisher, stop)
        finally:
            intake.cancel()
            await asyncio.gather(intake, return_exceptions=True)

    def _spool_settler(self, spool: Spool, stop: asyncio.Event) -> _Settle:
        async def settle(items: list[_Item]) -> None:
            end = items[-1].spooled
            assert end is not None
            # Given up on stop, the batch is written again at the next start: a duplicate, never a loss.
            await self._retry(lambda: spool.done(end), what="spool checkpoint", stop=stop)
            self.metrics.spool_bytes.set(spool.pending_bytes)

        return settle

    async def _replay(self, spool: Spool, publisher: MeshClient, stop: asyncio.Event) -> None:
        """Write what the spool holds from an earlier run (acked to the mesh then, perhaps never written)."""
        self.log.info("spool: writing the events an earlier run acked and left", bytes=spool.pending_bytes)
        settle_in_spool = self._spool_settler(spool, stop)

        async def take() -> list[_Item] | None:
            entries = await spool.read(self.settings.batch_size)
            return [self._item(entry.body, spooled=entry.end) for entry in entries] or None

        async def settle(items: list[_Item]) -> None:
            await settle_in_spool(items)
            self.metrics.spool_replayed.inc(len(items))

        await self._serve(take, settle, publisher, stop)
        self.log.info("spool: replay finished", left_bytes=spool.pending_bytes)

    async def _spool_pushes(self, client: MeshClient, spool: Spool, stop: asyncio.Event) -> None:
        """Append each batch of pushes to the spool, then ack it; hold the input back while the spool is full."""
        try:
            while not stop.is_set():
                batch: list[PushedEvent] = []
                if not await self._take_pushes(client, stop, batch.extend):
                    return
                bodies = [pushed.body for pushed in batch]
                need = sum(len(body) for body in bodies) + RECORD_OVERHEAD * len(bodies)
                if not spool.has_room(need):
                    full = (
                        f"the spool is full ({spool.pending_bytes} bytes wait for the target,"
                        f" sink.spool.max_bytes is {spool.max_bytes})"
                    )
                    self.log.warning("spool full: taking no more pushes until the target catches up", bytes=spool.pending_bytes)
                    self.board.set_backpressure(full)
                    try:
                        await self._until_stopped(spool.wait_for_room(need), stop)
                    finally:
                        self.board.set_backpressure(None)
                    if stop.is_set():
                        return  # the batch stays un-acked: the mesh still owns it
                await self._retry(functools.partial(spool.append, bodies), what="spool write", stop=stop)
                client.ack_all(batch)
                self.held -= len(batch)
                self.metrics.spool_bytes.set(spool.pending_bytes)
        except Stopped:
            return

    @staticmethod
    async def _until_stopped(waiting: Awaitable[None], stop: asyncio.Event) -> None:
        """Await ``waiting`` unless ``stop`` is set first."""
        done = asyncio.ensure_future(waiting)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            stopping.cancel()

    async def _serve(self, take: _Take, settle: _Settle, publisher: MeshClient, stop: asyncio.Event) -> None:
        # Two stages: the next batch is taken and decoded while ``put`` awaits its target with this one.
        batches: asyncio.Queue[list[_Item] | None] = asyncio.Queue(1)
        preparing = asyncio.create_task(self._prepare(take, batches), name="prepare batches")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            while not stop.is_set():
                upcoming = asyncio.ensure_future(batches.get())
                if batches.empty():  # the writer waits: a batch filling for longer than the linger time closes now
                    self._writer_free.set()
                done, _ = await asyncio.wait([upcoming, stopping, preparing], return_when=asyncio.FIRST_COMPLETED)
                self._writer_free.clear()
                if upcoming not in done:
                    upcoming.cancel()
                    if preparing in done:
                        preparing.result()  # raise its error, if any
                        return
                    break
                items = upcoming.result()
                batches.task_done()
                if items is None:
                    return  # the input ended: the client closed, or the replay is through
                self.board.set_state("draining" if stop.is_set() else "running")
                await self._handle(items, settle, publisher, stop)
        finally:
            preparing.cancel()
            stopping.cancel()
            await asyncio.gather(preparing, stopping, return_exceptions=True)
        self.board.set_state("draining")

    async def _prepare(self, take: _Take, batches: asyncio.Queue[list[_Item] | None]) -> None:
        """The batches ``take`` hands out, one ahead of ``put``; None at the end."""
        while (items := await take()) is not None:
            await batches.put(items)
            # The next batch starts filling once put took this one: two ahead, a batch would wait here for the
            # push window held by the one before it, closed at a fraction of its size, and fill while nothing
            # is written.
            await batches.join()
        await batches.put(None)

    async def _fill(
        self,
        client: MeshClient,
        stop: asyncio.Event,
        taken: Callable[[list[PushedEvent]], object],
        writer_free: asyncio.Event | None,
    ) -> int:
        """Take pushes into a batch until it is full, the pushes held reach the push window (the mesh sends no
        more before an ack), or the linger time since its first event passed while the writer is free (set
        ``writer_free``; None: always). While the batch before is still written, waiting costs no time: the
        batch goes on filling, where closing it at the linger time would split it in two."""
        size = self.settings.batch_size
        room = self.push_window - self.held  # what the mesh may still push while the batches before wait
        deadline = time.monotonic() + self.settings.linger_ms / 1000
        count = 0
        while True:
            if pushes := client.take_pushes(size - count):
                taken(pushes)
                count += len(pushes)
            if count >= size or count >= room or stop.is_set():
                return count
            left = deadline - time.monotonic()
            if left > 0:
                try:
                    async with asyncio.timeout(left):
                        if not await client.wait_for_pushes():
                            return count  # the client closed
                except TimeoutError:
                    pass
                continue
            if writer_free is None or writer_free.is_set():
                return count
            # Past the linger time while the batch before is still written: fill on until the writer is free.
            arrival = asyncio.ensure_future(client.wait_for_pushes())
            freed = asyncio.ensure_future(writer_free.wait())
            try:
                await asyncio.wait((arrival, freed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
                freed.cancel()
            if arrival.done() and not arrival.cancelled() and not arrival.result():
                return count  # the client closed

    async def _handle(self, items: list[_Item], settle: _Settle, publisher: MeshClient, stop: asyncio.Event) -> None:
        self.board.progressed()  # the stall clock starts with the batch: an idle sink was not stalled
        self.handling = True
        try:
            await self._write_and_settle(items, settle, publisher, stop)
        finally:
            self.handling = False
        self.board.progressed()

    async def _write_and_settle(self, items: list[_Item], settle: _Settle, publisher: MeshClient, stop: asyncio.Event) -> None:
        started = time.monotonic()
        self.metrics.records_in.inc(len(items))
        self.metrics.in_flight.set(len(items))
        good = [item for item in items if item.record is not None]
        if good:
            await self._write(good, stop)
            # Pushed in order, the first event is as a rule the oldest: how stale the batch got on its way here.
            first = next(item.record for item in good if item.record is not None)
            self.metrics.event_age_at_write.observe(seconds_behind(first.timestamp))
        for item in items:
            if item.reason is not None:
                await self._dead_letter(item, publisher, stop)
        await settle(items)
        written = sum(1 for item in items if item.reason is None and not item.dropped)
        if self.transforms is not None:
            self.transforms.flush_metrics()
        self.metrics.records_out.inc(written)
        self.metrics.in_flight.set(0)
        self.metrics.batch_latency.observe(time.monotonic() - started)

    def _item(self, body: bytes, *, pushed: PushedEvent | None = None, spooled: SpoolPosition | None = None) -> _Item:
        try:
            record = body_to_record(body, now=_utc_now, new_id=_random_event_id)
        except DataError as exc:
            decode_error = pushed.decode_error if pushed is not None else event_of_body(body)[1]
            if decode_error is not None:
                reason = f"the mesh pushed a body that is not an event: {decode_error}"
            else:
                reason = f"event cannot become a record: {exc.reason}"
            return _Item(body, None, reason, pushed=pushed, spooled=spooled)
        if self.transforms is None:
            return _Item(body, record, None, pushed=pushed, spooled=spooled)
        try:
            transformed = self.transforms.apply(record)
        except DataError as exc:  # the pushed event as it arrived is dead-lettered, with the step and the reason
            return _Item(body, None, exc.reason, pushed=pushed, spooled=spooled)
        item = _Item(body, transformed, None, pushed=pushed, spooled=spooled)
        item.dropped = transformed is None
        return item

    async def _write(self, items: list[_Item], stop: asyncio.Event) -> None:
        """``put`` the batch; on a data error, isolate the poison record by record."""
        try:
            rejections = await self._put(items, stop)
        except DataError as exc:
            self.log.warning("batch failed as data: retrying record by record", size=len(items), reason=exc.reason)
            for item in items:
                await self._write_alone(item, stop)
            return
        self._apply(items, rejections)

    async def _write_alone(self, item: _Item, stop: asyncio.Event) -> None:
        while True:
            item.attempts += 1
            try:
                rejections = await self._put([item], stop)
            except DataError as exc:
                self.metrics.error("data")
                if item.attempts >= self.settings.max_attempts:
                    item.reason = exc.reason
                    return
                continue
            self._apply([item], rejections)
            return

    async def _put(self, items: list[_Item], stop: asyncio.Event) -> Sequence[Rejection]:
        """``put`` until it does not raise a retriable error; a draining worker gives up (nothing acked)."""
        records = [item.record for item in items if item.record is not None]
        return await self._retry(lambda: self.sink.put(records), what="sink put", stop=stop)

    def _apply(self, items: list[_Item], rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        by_record = {id(item.record): item for item in items}
        for rejection in rejections:
            item = by_record.get(id(rejection.record))
            if item is None:
                self.log.error("sink rejected a record it was not given: ignored", reason=rejection.reason)
                continue
            item.attempts = max(item.attempts, 1)
            item.reason = rejection.reason

    async def _dead_letter(self, item: _Item, publisher: MeshClient, stop: asyncio.Event) -> None:
        """Publish the dead letter of ``item``: in smaller forms while the mesh refuses it for what it is, and
        skipped (logged, counted) when even the smallest is refused; refusals that pass are retried."""
        forms = DeadLetterForms(
            dead_letter_event(
                item.event,
                topic=self.dead_letter_topic,
                reason=item.reason or "unknown",
                connector=self.config.connector,
                attempts=max(item.attempts, 1),
            )
        )
        event: CloudEvent | None = forms.whole
        self.metrics.dead_letters.inc()
        self.metrics.error("data")
        while event is not None:
            refusal = await self._publish_dead_letter(event, publisher, stop)
            if refusal is None:
                self.log.warning("event dead-lettered", id=event.get_id(), topic=self.dead_letter_topic, reason=item.reason)
                return
            self.log.warning("mesh refused a dead letter for what it is: trying a smaller form", refusal=refusal)
            event = forms.smaller(refusal)
        self.metrics.dead_letters_dropped.inc()
        self.log.error(
            "mesh refused even the smallest dead letter: event skipped",
            reason=item.reason,
            attributes={name: value for name, value in forms.whole.get_attributes().items() if name != "dlqreason"},
        )

    async def _publish_dead_letter(self, event: CloudEvent, publisher: MeshClient, stop: asyncio.Event) -> str | None:
        """Publish ``event``, retrying while the mesh is away or busy; the reason when it refuses it for what it is."""

        async def publish() -> str | None:
            try:
                await publisher.publish(event)
            except (MeshRejectedError, FrameTooLargeError) as exc:
                refusal = refusal_of(exc)
                if refusal is None:  # e.g. the dead-letter topic is full: wait for room, never drop it
                    raise RetriableError(f"mesh refused the dead letter for now: {exc}") from exc
                return refusal
            except DataError as exc:  # an attribute of the pushed event that cannot travel again
                return exc.reason
            return None

        return await retry_retriable(
            publish,
            what="dead-letter publish",
            backoff=Backoff(self.settings.retry_initial, self.settings.retry_max),
            stop=stop,
        )
