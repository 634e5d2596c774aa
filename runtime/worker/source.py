"""The source worker: poll -> convert -> publish (bounded window) -> acks -> checkpoint -> ``Source.commit``.

The order is the promise of at-least-once, stated once here:

1. ``poll()`` fills a bounded queue (``source.poll_queue`` records); when it is full, polling
   waits. A slow mesh therefore slows polling down instead of growing memory.
2. The ``transforms:`` steps run on each record (:mod:`runtime.transforms`): one a filter drops
   counts as done at once, in its place among its partition's records (its offset commits); one a
   step fails on goes to the dead-letter topic with the step and the reason.
   Each record becomes its CloudEvent's message body (:func:`~runtime.cloudevents.record_to_body`) and is published
   through the client's window (``mesh.max_in_flight`` unacknowledged events at most). A record that
   cannot become an event (:class:`~runtime.errors.DataError`, or a ``refusal`` the source set on
   it) goes to the dead-letter topic instead, and counts as done once that publish is acknowledged.
   So does an event the mesh refuses for what it is (too large, invalid), at once and with its data
   cut if that is what it takes (:mod:`runtime.worker.refusals`); a record whose smallest dead letter is refused too is logged,
   counted (``meshconnect_dead_letters_dropped_total``) and counts as done, so no record can hold
   its partition's offsets back for good.
3. Acks come back in any order; an offset becomes committable only when every earlier record of
   its partition was acknowledged (:class:`~runtime.worker.offsets.OffsetTracker`).
4. Every ``checkpoint_every`` acknowledged records or ``checkpoint_interval`` seconds, the
   committable offsets are written to the registry under the lease of their partition group, and
   only then is ``Source.commit(records)`` called (the place to ack upstream).

Partition groups: a record belongs to the group named by its partition's ``"group"`` key, or to
``"default"``; a source with a single group puts every record in it, and a source may override
:meth:`Source.group_of <runtime.connector.Source.group_of>` to decide itself.

Leases: an exclusive source (the default) runs only while its replica holds at least one group's
lease. On a lease lost (renewal refused, local deadline passed, or a fenced commit) polling and
publishing stop at once, uncommitted state is dropped, the source is stopped and the replica
stands by; when it owns groups again it starts a fresh source instance from the committed
offsets. Any other change of the groups assigned here (one gained, or one the coordinator hands
over to balance the load) drains the session as a stop does, and only then are the groups handed
over released (:meth:`~runtime.registry.coordinator.Coordinator.hand_over`): the new owner
resumes from that last checkpoint, so a hand-over publishes nothing twice. A non-exclusive
source (``exclusive = False``: pushed-to sources such as an HTTP endpoint) runs on every replica
and writes no offsets; ``commit`` still follows the acks.

Stop (SIGTERM): polling stops, what was polled is published, acks are awaited (bounded by
``drain_timeout``), a last checkpoint is written, the source stops, the session says goodbye.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient
from runtime.config import WorkerConfig
from runtime.connector import Source, SourceContext
from runtime.errors import DataError, FencedError, FrameTooLargeError, RegistryUnavailableError, RetriableError
from runtime.observability import ConnectorMetrics, StatusBoard
from runtime.protocol.events import EncodedEvent, event_to_body
from runtime.publishing import PublishRules
from runtime.record import ConnectorRecord, JsonValue, derive_event_id
from runtime.registry import Registry
from runtime.registry.coordinator import Coordinator
from runtime.transforms import TransformChain
from runtime.worker.deadletter import record_dead_letter_event
from runtime.worker.offsets import OffsetTracker, Submitted
from runtime.worker.refusals import RefusedPublishes
from runtime.worker.retry import Backoff, Stopped, retry_retriable
from runtime.worker.session import mesh_session
from runtime.worker.transforming import transforms_for

__all__ = ["SourceWorker", "group_of"]


def group_of(source: Source[Any], groups: tuple[str, ...], partition: Mapping[str, JsonValue]) -> str:
    """The partition group of ``partition`` (see the module docstring)."""
    if len(groups) == 1:
        return groups[0]
    return source.group_of(partition)


class _LeaseLost(Exception):
    """Ownership changed under an active session: drop uncommitted state."""


class SourceWorker:
    """Runs one :class:`Source` until ``stop`` is set. See the module docstring."""

    def __init__(
        self,
        source: Source[Any],
        config: WorkerConfig,
        *,
        registry: Registry,
        board: StatusBoard,
        metrics: ConnectorMetrics,
        holder: str | None = None,
        drain_timeout: float = 10.0,
    ) -> None:
        self.source = source
        self.config = config
        self.registry = registry
        self.board = board
        self.metrics = metrics
        self.holder = holder or f"{config.name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.drain_timeout = drain_timeout
        self.log = structlog.get_logger().bind(connector=config.connector, name=config.name)
        self.rules = PublishRules.from_config(config)
        self.transforms = transforms_for(config, type(source), metrics)
        self.dead_letter_topic = config.sink.dead_letter_topic or f"{config.name}-dlq"
        self.coordinator: Coordinator | None = None
        self.ownership_changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, then drain and return."""
        backoff = Backoff(0.2, 5.0)
        try:
            groups = tuple(
                await retry_retriable(self.source.partition_groups, what="partition groups", backoff=backoff, stop=stop)
            )
            self.board.groups = frozenset(groups)
            self.board.exclusive = self.source.exclusive
            async with mesh_session(self.config, "pub", self.board, stop) as client:
                if self.source.exclusive:
                    self.coordinator = Coordinator(
                        self.registry,
                        self.config.name,
                        self.holder,
                        groups,
                        self.config.registry.lease_ttl,
                        on_change=lambda _owned: self.ownership_changed.set(),
                        info={"connector": self.config.connector, "host": socket.gethostname(), "pid": os.getpid()},
                        # A session drains (acks, then the last checkpoint) and stops its source,
                        # each bounded by drain_timeout, before _serve hands its groups over.
                        handover_timeout=2 * self.drain_timeout + self.config.registry.lease_ttl,
                    )
                    await retry_retriable(self.coordinator.start, what="registry", backoff=backoff, stop=stop)
                try:
                    await self._serve(client, groups, stop)
                finally:
                    if self.coordinator is not None:
                        await self.coordinator.stop()
                        self.board.set_owned(frozenset())
        except Stopped:
            self.log.info("stopped while waiting for a dependency")
        self.board.set_state("stopped")

    def owned_groups(self, groups: tuple[str, ...]) -> frozenset[str]:
        """The groups this replica works on now: those it holds the lease of and is not handing over
        (all, for a non-exclusive source)."""
        return self.coordinator.assigned if self.coordinator is not None else frozenset(groups)

    def still_holds(self, groups: frozenset[str]) -> bool:
        """Whether every one of ``groups`` is still leased here (being handed over counts: its last commit is allowed)."""
        return self.coordinator is None or groups <= self.coordinator.owned

    async def _serve(self, client: MeshClient, groups: tuple[str, ...], stop: asyncio.Event) -> None:
        takeovers = 0
        while not stop.is_set():
            if self.coordinator is not None:
                # No session runs here, so nothing is in flight: a drained session committed what was
                # acknowledged; after a loss, the uncommitted rest is the new owner's to publish again.
                await self.coordinator.hand_over()
            owned = self.owned_groups(groups)
            self.board.set_owned(owned)
            if self.coordinator is not None and self.coordinator.takeovers > takeovers:
                self.metrics.takeovers.inc(self.coordinator.takeovers - takeovers)
                takeovers = self.coordinator.takeovers
            if not owned:
                self.board.set_state("standby")
                self.ownership_changed.clear()
                await _first_of(stop.wait(), self.ownership_changed.wait(), seconds=0.2)
                continue
            session = _ActiveSession(self, client, groups, owned, stop)
            try:
                await session.run()
            except _LeaseLost as exc:
                self.metrics.error("fenced")
                self.log.warning("lease lost: dropped uncommitted state, standing by", reason=str(exc))
            if not stop.is_set():  # the next session starts a fresh instance from the committed offsets
                self.source = type(self.source)(self.source.config)


class _ActiveSession:
    """One run of a source instance while this replica owns ``owned``."""

    def __init__(
        self, worker: SourceWorker, client: MeshClient, groups: tuple[str, ...], owned: frozenset[str], stop: asyncio.Event
    ) -> None:
        self.worker = worker
        self.client = client
        self.groups = groups
        self.owned = owned
        self.stop = stop
        self.source = worker.source
        self.config = worker.config
        self.metrics = worker.metrics
        self.log = worker.log
        self.tracker = OffsetTracker()
        self.queue: asyncio.Queue[ConnectorRecord] = asyncio.Queue(self.config.source.poll_queue)
        self.checkpoint_due = asyncio.Event()
        self.retries: set[asyncio.Task[None]] = set()
        self.backoff = Backoff(0.2, 5.0)
        self.acked = 0
        self.acked_bytes = 0
        # Each poll's batch, in polling order, until the publisher hands its records out (batch latency).
        self.polled: deque[_PollBatch] = deque()
        self.refusals = RefusedPublishes(
            client,
            metrics=self.metrics,
            log=self.log,
            dead_letter_topic=worker.dead_letter_topic,
            connector=self.config.connector,
            done=self._done,
            settled=self._settled,
        )

    async def run(self) -> None:
        worker = self.worker
        offsets = await retry_retriable(
            lambda: worker.registry.load_offsets(self.config.name), what="registry offsets", backoff=self.backoff, stop=self.stop
        )
        context = SourceContext(
            self.config.name,
            offsets,
            assigned_groups=self.owned,
            log=self.log,
            rules=worker.rules,
            count_refused=self.metrics.refused,
            connector_type=self.config.connector,
        )
        tasks: list[asyncio.Task[Any]] = []
        try:
            await retry_retriable(
                lambda: self.source.start(context),
                what="source start",
                backoff=self.backoff,
                stop=self.stop,
                on_failure=self._unhealthy,
            )
            self.worker.board.set_dependency(None)
            self.worker.board.set_state("running")
            self.worker.board.pending = self._has_pending_work
            self.log.info("source running", groups=sorted(self.owned), partitions=len(offsets))
            poller = asyncio.create_task(self._poll(), name="poll")
            checkpointer = asyncio.create_task(self._checkpoints(), name="checkpoint")
            watch = asyncio.create_task(self._watch_ownership(), name="ownership")
            stopping = asyncio.create_task(self.stop.wait(), name="stop")
            tasks = [poller, asyncio.create_task(self._publish(), name="publish"), checkpointer, watch, stopping]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is stopping or task.cancelled() else task.exception()
                if error is not None:
                    raise error
            if watch in done and not self.worker.still_holds(self.owned):
                raise _LeaseLost("a partition group was lost")
            self.worker.board.set_state("draining")
            await self._drain(poller, checkpointer)
        except FencedError as exc:
            raise _LeaseLost(str(exc)) from exc
        finally:
            await self._close(tasks)

    async def _close(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel whatever still runs (a lost lease stops at once) and stop the source instance."""
        self.worker.board.pending = None
        running = [*tasks, *self.retries]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._flush_metrics()
        self.metrics.in_flight.set(0)
        try:
            await asyncio.wait_for(self.source.stop(), self.worker.drain_timeout)
        except (RetriableError, TimeoutError) as exc:
            self.log.warning("source did not stop cleanly", error=repr(exc))

    def _unhealthy(self, exc: RetriableError) -> None:
        self.metrics.error("retriable")
        self.metrics.retries.inc()
        self.worker.board.set_dependency(str(exc))

    async def _watch_ownership(self) -> None:
        coordinator = self.worker.coordinator
        while self.worker.owned_groups(self.groups) == self.owned:
            self.worker.ownership_changed.clear()
            if coordinator is not None and coordinator.handing_over - self.owned:
                # Given away after this session started without them: no work of theirs is in flight here.
                await coordinator.hand_over(coordinator.handing_over - self.owned)
            await _first_of(self.worker.ownership_changed.wait(), seconds=0.1)

    async def _poll(self) -> None:
        backoff = Backoff(0.2, 30.0)
        while True:
            try:
                records = await self.source.poll()
            except RetriableError as exc:
                self._unhealthy(exc)
                delay = backoff.next_delay(exc.retry_after)
                self.log.warning("poll failed, retrying", error=str(exc), retry_in=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            except DataError as exc:
                self.metrics.error("data")
                self.log.warning("poll could not read a record; going on", reason=exc.reason)
                continue
            if backoff.attempts:
                backoff.reset()
                self.worker.board.set_dependency(None)
            self.metrics.records_in.inc(len(records))
            if records:
                self.polled.append(_PollBatch(len(records)))
            queue = self.queue
            for record in records:
                if queue.full():
                    await queue.put(record)  # a slow mesh slows polling down
                else:
                    queue.put_nowait(record)

    async def _publish(self) -> None:
        # Steady state without an await per record: while the window has room, publishing is synchronous.
        queue = self.queue
        client = self.client
        transforms = self.worker.transforms
        batch = _PollBatch(0)
        while True:
            record = await queue.get()
            while True:
                if not batch.unassigned:
                    batch = self.polled.popleft()
                batch.unassigned -= 1
                event = self._event_for(record) if transforms is None else self._transformed(record, transforms)
                entry = self.tracker.submit(record, group_of(self.source, self.groups, record.partition))
                entry.batch = batch
                if event is None:  # dropped by a filter: done now, its offset committed in its place in the partition
                    self._settled(entry)
                else:
                    publication = _Publication(self, entry, event)
                    try:
                        sent = client.publish_nowait(event, publication)
                    except FrameTooLargeError as exc:
                        publication.set_exception(exc)
                        sent = True
                    if not sent:
                        await self._publish_when_room(publication)
                if queue.empty():
                    break
                record = queue.get_nowait()

    def _transformed(self, record: ConnectorRecord, transforms: TransformChain) -> EncodedEvent | None:
        """The event of ``record`` after the transforms, None when a filter dropped it, its dead letter when a step failed."""
        try:
            transformed = transforms.apply(record)
        except DataError as exc:
            return EncodedEvent(event_to_body(self._dead_letter_for(record, exc.reason)))
        return None if transformed is None else self._event_for(transformed)

    def _event_for(self, record: ConnectorRecord) -> EncodedEvent:
        rules = self.worker.rules
        if record.refusal is not None:
            return EncodedEvent(event_to_body(self._dead_letter_for(record, record.refusal)))
        if not self.source.names_own_topics:
            refusal = rules.refusal(record.subject)
            if refusal is not None:  # a replay goes to the configured topic, never to the one the input asked for
                return EncodedEvent(event_to_body(self._dead_letter_for(record, refusal, original_topic=rules.topic)))
        try:
            return rules.encode(record)
        except DataError as exc:
            return EncodedEvent(event_to_body(self._dead_letter_for(record, exc.reason)))

    def _dead_letter_for(self, record: ConnectorRecord, reason: str, *, original_topic: str | None = None) -> CloudEvent:
        self.metrics.error("data")
        self.metrics.dead_letters.inc()
        self.log.warning("record cannot become an event: dead-lettered", reason=reason, partition=dict(record.partition))
        event_id = record.id or (
            derive_event_id(self.config.name, record.partition, record.offset) if record.offset else str(uuid.uuid4())
        )
        return record_dead_letter_event(
            record,
            event_id=event_id,
            topic=self.worker.dead_letter_topic,
            reason=reason,
            connector=self.config.connector,
            default_source=self.worker.rules.event_source,
            original_topic=original_topic or record.subject or self.config.source.topic or "",
        )

    async def _publish_when_room(self, publication: _Publication) -> None:
        """Wait for window room and send; a window that stayed full or a session that is down fails the
        publication (which then retries on the side)."""
        try:
            await self.client.publish_when_room(publication.event, publication)
        except (RetriableError, FrameTooLargeError) as exc:
            publication.set_exception(exc)

    def _failed(self, entry: Submitted, event: EncodedEvent, error: BaseException) -> None:
        task = asyncio.create_task(self.refusals.republish(entry, event, error))
        self.retries.add(task)
        task.add_done_callback(self.retries.discard)

    def _done(self, entry: Submitted, event: EncodedEvent) -> None:
        self.acked += 1
        self.acked_bytes += len(event.body)
        self._settled(entry)

    def _settled(self, entry: Submitted) -> None:
        """``entry`` needs nothing more from the mesh: its offset may commit once those before it may."""
        batch = entry.batch
        if not entry.acked and batch is not None:
            batch.unsettled -= 1
            if not batch.unsettled:
                self.metrics.batch_latency.observe(time.monotonic() - batch.polled_at)
        self.tracker.ack(entry)
        # Without a lease there is no registry write to amortize: commit upstream as soon as acked
        # (an HTTP source holds its response until then).
        if self.worker.coordinator is None or self.tracker.committable_count >= self.config.source.checkpoint_every:
            self.checkpoint_due.set()

    def _flush_metrics(self) -> None:
        """Counters are summed per record and published here, once per checkpoint tick (the hot path stays cheap)."""
        self.metrics.records_out.inc(self.acked)
        self.metrics.bytes_out.inc(self.acked_bytes)
        self.acked = self.acked_bytes = 0
        self.metrics.in_flight.set(self.tracker.in_flight)
        self.metrics.offset_lag.set(self.tracker.committable_count)
        if self.worker.transforms is not None:
            self.worker.transforms.flush_metrics()

    async def _checkpoints(self) -> None:
        interval = self.config.source.checkpoint_interval
        while True:
            await _first_of(self.checkpoint_due.wait(), seconds=interval)
            self.checkpoint_due.clear()
            self._flush_metrics()
            await self._checkpoint()

    def _has_pending_work(self) -> bool:
        return self.tracker.in_flight > 0 or self.tracker.committable_count > 0 or not self.queue.empty()

    async def _checkpoint(self) -> None:
        checkpoint = self.tracker.checkpoint()
        if checkpoint.empty:
            if not self._has_pending_work():
                self.worker.board.progressed()  # idle is not stalled
            return
        coordinator = self.worker.coordinator
        if coordinator is not None:
            for group, offsets in checkpoint.offsets.items():
                lease = coordinator.lease(group)
                if lease is None:
                    raise FencedError(f"no lease on partition group {group!r} any more: offsets not written")
                # While draining, the last checkpoint is retried until the drain deadline cancels it.
                await retry_retriable(
                    functools.partial(self._commit, offsets, lease),
                    what="registry commit",
                    backoff=self.backoff,
                    stop=asyncio.Event() if self.stop.is_set() else self.stop,
                    on_failure=self._unhealthy,
                )
            self.worker.board.set_dependency(None)
            for offsets in checkpoint.offsets.values():
                self.worker.board.last_offsets.update(offsets)
            self.metrics.last_checkpoint.set(time.time())
        self.tracker.written(checkpoint)
        self.worker.board.progressed()
        try:
            await self.source.commit(checkpoint.records)
        except RetriableError as exc:
            # The offsets are durable; an upstream ack that failed means the upstream redelivers: duplicates, no loss.
            self.metrics.error("retriable")
            self.log.warning("upstream commit failed; the upstream system will deliver these again", error=str(exc))

    async def _commit(self, offsets: Mapping[str, Mapping[str, Any]], lease: Any) -> None:
        ttl = self.config.registry.lease_ttl
        try:
            await asyncio.wait_for(self.worker.registry.commit_offsets(self.config.name, offsets, lease), ttl)
        except TimeoutError as exc:
            # A slow store is a dependency trouble like an unreachable one: retried under the same lease,
            # which the store refuses (fenced) if it was lost meanwhile.
            raise RegistryUnavailableError(f"offset commit got no answer within the lease TTL of {ttl:g} s") from exc

    async def _drain(self, poller: asyncio.Task[None], checkpointer: asyncio.Task[None]) -> None:
        """Stop polling, publish what was polled, await the acks (bounded), write the last checkpoint."""
        poller.cancel()
        checkpointer.cancel()
        deadline = time.monotonic() + self.worker.drain_timeout
        # Acks land from callbacks and the publisher empties the queue: a short poll is the simplest join.
        while (not self.queue.empty() or self.tracker.in_flight) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.tracker.in_flight:
            self.log.warning("drain timed out: unacknowledged events will be published again", in_flight=self.tracker.in_flight)
        await asyncio.wait_for(self._checkpoint(), max(1.0, deadline - time.monotonic()))
        self.log.info("drained", last_offsets=len(self.worker.board.last_offsets))


class _PollBatch:
    """The records one poll returned: how many the publisher has still to take, how many the mesh has still to settle."""

    __slots__ = ("polled_at", "unassigned", "unsettled")

    def __init__(self, size: int) -> None:
        self.polled_at = time.monotonic()
        self.unassigned = self.unsettled = size


class _Publication(msgspec.Struct, eq=False, gc=False):
    """One record's event on its way to the mesh: the client hands it the mesh's answer (an ``AckWaiter``).
    One per event in flight: untracked by the garbage collector (its references form no cycle that outlives the answer)."""

    session: _ActiveSession
    entry: Submitted
    event: EncodedEvent
    answered: bool = False

    def done(self) -> bool:
        return self.answered

    def set_result(self, result: object, /) -> None:
        self.answered = True
        self.session._done(self.entry, self.event)

    def set_exception(self, exception: BaseException, /) -> None:
        self.answered = True
        self.session._failed(self.entry, self.event, exception)


async def _first_of(*waits: Any, seconds: float) -> None:
    """Wait until the first of ``waits`` completes or ``seconds`` pass; cancel the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
