"""The sink worker: subscribe -> batch (size, linger) -> ``Sink.put`` -> ack, dead letters on the side.

The order is the promise of at-least-once, stated once here:

1. The session says HELLO as ``sub`` in the group ``mesh.group`` (default: the instance name),
   subscribes every ``sink.topics`` (CLUSTERING, ASYNC) and listens. Pushed events queue in a
   bounded buffer; when it is full the worker stops reading (TCP backpressure up to the mesh).
2. A batch closes at ``sink.batch_size`` events or ``sink.linger_ms`` after its first event. Its
   events are decoded into records while ``put`` still writes the batch before (one batch ahead).
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

Duplicates (a redelivery after a crash, the same source+id twice in a batch) reach ``put``
unchanged: sinks are idempotent. Stop (SIGTERM): reading stops, the batch in hand is finished
(bounded by ``drain_timeout``), events buffered or decoded but not written stay unacknowledged for
the mesh to deliver again, the session says goodbye. With a ``registry`` (given when the config names one),
the sink also heartbeats its membership there, for status; it holds no lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, PushedEvent
from runtime.config import WorkerConfig
from runtime.connector import Rejection, Sink, SinkContext
from runtime.errors import DataError, FrameTooLargeError, MeshRejectedError, RetriableError
from runtime.observability import ConnectorMetrics, StatusBoard
from runtime.protocol.events import body_to_record
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import ConnectorRecord
from runtime.registry import Registry
from runtime.registry.coordinator import Coordinator
from runtime.worker.deadletter import DeadLetterForms, dead_letter_event, refusal_of
from runtime.worker.retry import Backoff, Stopped, retry_retriable
from runtime.worker.session import mesh_session

__all__ = ["SinkWorker"]


class _Item:
    """A pushed event and what became of it."""

    __slots__ = ("attempts", "pushed", "reason", "record")

    def __init__(self, pushed: PushedEvent, record: ConnectorRecord | None, reason: str | None) -> None:
        self.pushed = pushed
        self.record = record
        self.reason = reason
        self.attempts = 0


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
        self.handling = False
        self.log = structlog.get_logger().bind(connector=config.connector, name=config.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Write until ``stop`` is set, then finish the batch in hand and return."""
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
                lambda: self.sink.start(SinkContext(self.config.name, log=self.log)),
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
                    await self._serve(client, publisher, stop)
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

    async def _serve(self, client: MeshClient, publisher: MeshClient, stop: asyncio.Event) -> None:
        # Two stages: the next batch is taken and decoded while ``put`` awaits its target with this one.
        batches: asyncio.Queue[list[_Item] | None] = asyncio.Queue(1)
        preparing = asyncio.create_task(self._prepare(client, batches, stop), name="prepare batches")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            while not stop.is_set():
                upcoming = asyncio.ensure_future(batches.get())
                done, _ = await asyncio.wait([upcoming, stopping, preparing], return_when=asyncio.FIRST_COMPLETED)
                if upcoming not in done:
                    upcoming.cancel()
                    if preparing in done:
                        preparing.result()  # raise its error, if any
                        return
                    break
                items = upcoming.result()
                if items is None:
                    return  # the client closed: the push stream ended
                self.board.set_state("draining" if stop.is_set() else "running")
                await self._handle(items, client, publisher, stop)
        finally:
            preparing.cancel()
            stopping.cancel()
            await asyncio.gather(preparing, stopping, return_exceptions=True)
        self.board.set_state("draining")

    async def _prepare(self, client: MeshClient, batches: asyncio.Queue[list[_Item] | None], stop: asyncio.Event) -> None:
        """Batches of pushed events, taken straight from the client's bounded push buffer and decoded; None at the end."""
        while await client.wait_for_pushes():
            batch = client.take_pushes(self.settings.batch_size)
            await self._fill(batch, client, stop)
            await batches.put([self._item(pushed) for pushed in batch])
        await batches.put(None)

    async def _fill(self, batch: list[PushedEvent], client: MeshClient, stop: asyncio.Event) -> None:
        """Add to ``batch`` until it is full or the linger time since its first event passed."""
        size = self.settings.batch_size
        deadline = time.monotonic() + self.settings.linger_ms / 1000
        while True:
            batch.extend(client.take_pushes(size - len(batch)))
            left = deadline - time.monotonic()
            if len(batch) >= size or left <= 0 or stop.is_set():
                return
            try:
                async with asyncio.timeout(left):
                    if not await client.wait_for_pushes():
                        return
            except TimeoutError:
                return

    async def _handle(self, items: list[_Item], client: MeshClient, publisher: MeshClient, stop: asyncio.Event) -> None:
        self.board.progressed()  # the stall clock starts with the batch: an idle sink was not stalled
        self.handling = True
        try:
            await self._write_and_ack(items, client, publisher, stop)
        finally:
            self.handling = False
        self.board.progressed()

    async def _write_and_ack(self, items: list[_Item], client: MeshClient, publisher: MeshClient, stop: asyncio.Event) -> None:
        started = time.monotonic()
        self.metrics.records_in.inc(len(items))
        self.metrics.in_flight.set(len(items))
        good = [item for item in items if item.record is not None]
        if good:
            await self._write(good, stop)
        for item in items:
            if item.reason is not None:
                await self._dead_letter(item, publisher, stop)
        client.ack_all([item.pushed for item in items])
        written = sum(1 for item in items if item.reason is None)
        self.metrics.records_out.inc(written)
        self.metrics.in_flight.set(0)
        self.metrics.batch_latency.observe(time.monotonic() - started)

    def _item(self, pushed: PushedEvent) -> _Item:
        try:
            return _Item(pushed, body_to_record(pushed.body), None)
        except DataError as exc:
            if pushed.decode_error is not None:
                return _Item(pushed, None, f"the mesh pushed a body that is not an event: {pushed.decode_error}")
            return _Item(pushed, None, f"event cannot become a record: {exc.reason}")

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
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        rejections = await retry_retriable(
            lambda: self.sink.put(records), what="sink put", backoff=backoff, stop=stop, on_failure=self._unhealthy
        )
        if self.board.dependency_error is not None:
            self.board.set_dependency(None)
            self.board.set_state("running")
        return rejections

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
                item.pushed.event,
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
