"""Topics as bounded logs, consumer groups with cursors, and the deliveries in flight between them.

No IO and no clock: the server hands in sessions (anything that is a :class:`Subscriber`) and the
store reads the :class:`Changes` the broker collected since the last commit.

* A :class:`TopicLog` holds the retained events of one topic, each under a monotonically increasing
  offset. It refuses an append once it holds ``max_events`` (the publisher gets backpressure).
* A :class:`Consumer` is one consumer group reading one topic in one mode. Its cursor is
  ``acked_upto`` (every offset below is acked) plus the offsets acked above it, ``next_offset``
  (the first offset never dispatched) and a heap of offsets to dispatch again (redeliveries).
  A consumer created now starts at the earliest retained event of its topic.
* An event leaves its log once every consumer of the topic has acked it; a topic nobody ever
  subscribed keeps its events until the log is full.
* Memory has three bounds, each a refusal the publisher hears (:class:`Refusal`): events per topic,
  the number of topics, and the bytes of every retained event together. A topic left with no
  event and no consumer (its last group expired) is dropped, so that its memory returns.
* A consumer with no session for a given time (a group renamed or retired) can be dropped
  (:meth:`Broker.expire_idle`), so that its cursor no longer holds the log; the group starts anew at
  the earliest retained event if it comes back.
* CLUSTERING: each event goes to one listening session of the group (round robin among those with
  room). BROADCASTING: each event goes to every listening session of the group, and counts as
  acked for the group once every session it went to has acked it or left (at least one acked).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from runtime.protocol.frames import SubscriptionMode

__all__ = ["Broker", "Changes", "Consumer", "Delivery", "Fanout", "Refusal", "Subscriber", "TopicLog"]


class Refusal(enum.Enum):
    """Why :meth:`Broker.append` refused an event: the bound it reached (its value names the setting)."""

    TOPIC_FULL = "max_topic_events"
    TOO_MANY_TOPICS = "max_topics"
    RETAINED_BYTES_FULL = "max_retained_bytes"


class Subscriber(Protocol):
    """A session as the broker sees it: it receives pushes while it listens and has room for one of ``size`` bytes."""

    @property
    def listening(self) -> bool: ...

    def has_room(self, size: int) -> bool: ...

    def push(self, consumer: Consumer, offset: int, body: bytes, fanout: Fanout | None) -> None: ...


@dataclass(slots=True, eq=False)
class Fanout:
    """One BROADCASTING event pushed to several sessions: done when none is still pending."""

    pending: set[Subscriber]
    acked: bool = False


@dataclass(slots=True, eq=False)
class Delivery:
    """One push waiting for its ack: what a session keeps under the push's seq (``size``: its body's bytes)."""

    consumer: Consumer
    offset: int
    size: int
    deadline: float
    fanout: Fanout | None = None


@dataclass(slots=True)
class Changes:
    """What happened since the last commit, for the durable store (nothing is kept without one).

    Values are copied when they change, so the store may write them from another thread while the
    broker goes on: ``cursors`` maps a consumer to its ``acked_upto``, ``trims`` a topic to its
    first retained offset. ``dropped_topics`` are gone with every row of theirs: the store deletes
    them before it writes ``events``, which may hold a new topic of the same name starting at 0.
    """

    events: list[tuple[str, int, bytes]] = field(default_factory=list)
    new_consumers: list[tuple[Consumer, int]] = field(default_factory=list)
    cursors: dict[Consumer, int] = field(default_factory=dict)
    acks_above: list[tuple[Consumer, int]] = field(default_factory=list)
    trims: dict[str, int] = field(default_factory=dict)
    dropped_consumers: list[Consumer] = field(default_factory=list)
    dropped_topics: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.events
            or self.new_consumers
            or self.cursors
            or self.acks_above
            or self.trims
            or self.dropped_consumers
            or self.dropped_topics
        )


class TopicLog:
    """The retained events of one topic, by offset; ``size`` is the sum of their lengths."""

    __slots__ = ("consumers", "events", "first_offset", "name", "next_offset", "size")

    def __init__(self, name: str, first_offset: int = 0) -> None:
        self.name = name
        self.events: dict[int, bytes] = {}
        self.first_offset = first_offset
        self.next_offset = first_offset
        self.consumers: list[Consumer] = []
        self.size = 0

    def __repr__(self) -> str:
        return f"TopicLog({self.name!r}, first={self.first_offset}, next={self.next_offset})"

    def trim_point(self) -> int:
        """The offset below which every consumer acked everything (no consumer: nothing is trimmed)."""
        if not self.consumers:
            return self.first_offset
        return min(consumer.acked_upto for consumer in self.consumers)

    def trim(self) -> bool:
        """Drop the events every consumer acked; True when something was dropped."""
        low = min(self.trim_point(), self.next_offset)
        if low <= self.first_offset:
            return False
        events = self.events
        for offset in range(self.first_offset, low):
            body = events.pop(offset, None)
            if body is not None:
                self.size -= len(body)
        self.first_offset = low
        return True

    def keep(self, offset: int, body: bytes) -> None:
        """Hold ``body`` under ``offset`` (appended now, or loaded from the store)."""
        self.events[offset] = body
        self.size += len(body)


class Consumer:
    """One consumer group reading one topic in one mode; see the module docstring."""

    __slots__ = (
        "_broker",
        "_turn",
        "acked_above",
        "acked_upto",
        "group",
        "id",
        "mode",
        "next_offset",
        "retry",
        "sessions",
        "topic",
    )

    def __init__(self, broker: Broker, group: str, topic: TopicLog, mode: SubscriptionMode, acked_upto: int) -> None:
        self._broker = broker
        self.id: int | None = None  # the store's key, once stored
        self.group = group
        self.topic = topic
        self.mode = mode
        self.acked_upto = acked_upto
        self.acked_above: set[int] = set()
        self.next_offset = acked_upto
        self.retry: list[int] = []  # heap: lowest offset is redelivered first
        self.sessions: list[Subscriber] = []
        self._turn = 0

    def __repr__(self) -> str:
        return f"Consumer({self.group!r}, {self.topic.name!r}, {self.mode.name})"

    @property
    def unacked(self) -> int:
        """Events of the topic this group has not acked yet (dispatched or not)."""
        return self.topic.next_offset - self.acked_upto - len(self.acked_above)

    def is_acked(self, offset: int) -> bool:
        return offset < self.acked_upto or offset in self.acked_above

    def ack(self, offset: int) -> None:
        if self.is_acked(offset):
            return
        changes = self._broker.changes
        if offset != self.acked_upto:
            self.acked_above.add(offset)
            if changes is not None:
                changes.acks_above.append((self, offset))
            return
        upto = offset + 1
        above = self.acked_above
        while upto in above:
            above.remove(upto)
            upto += 1
        self.acked_upto = upto
        self._broker.trim_later(self.topic)
        if changes is not None:
            changes.cursors[self] = upto

    def requeue(self, offset: int) -> None:
        """Dispatch ``offset`` again (its push timed out or its session left)."""
        if not self.is_acked(offset):
            heapq.heappush(self.retry, offset)
            self._broker.pump_later(self)

    def pump(self) -> None:
        """Push as many events as the listening sessions have room for."""
        events = self.topic.events
        retry = self.retry
        broadcasting = self.mode is SubscriptionMode.BROADCASTING
        while True:
            if retry:
                offset = retry[0]
            elif self.next_offset < self.topic.next_offset:
                offset = self.next_offset
            else:
                return
            if self.is_acked(offset):
                self._advance(offset)
                continue
            body = events[offset]
            if broadcasting:
                targets = [session for session in self.sessions if session.listening]
                if not targets or not all(session.has_room(len(body)) for session in targets):
                    return
                self._advance(offset)
                fanout = Fanout(set(targets))
                for session in targets:
                    session.push(self, offset, body, fanout)
            else:
                target = self._next_session(len(body))
                if target is None:
                    return
                self._advance(offset)
                target.push(self, offset, body, None)

    def _advance(self, offset: int) -> None:
        if self.retry and self.retry[0] == offset:
            heapq.heappop(self.retry)
        else:
            self.next_offset = offset + 1

    def _next_session(self, size: int) -> Subscriber | None:
        sessions = self.sessions
        count = len(sessions)
        for step in range(count):
            index = (self._turn + step) % count
            session = sessions[index]
            if session.listening and session.has_room(size):
                self._turn = index + 1
                return session
        return None


class Broker:
    """Every topic log and consumer of one mesh; the server calls it, the store reads its changes."""

    def __init__(
        self,
        *,
        max_topic_events: int,
        durable: bool,
        max_topics: int | None = None,
        max_retained_bytes: int | None = None,
    ) -> None:
        self.max_topic_events = max_topic_events
        self.max_topics = max_topics
        self.max_retained_bytes = max_retained_bytes
        self.retained_bytes = 0  # the sum of every topic's size
        self.topics: dict[str, TopicLog] = {}
        self.consumers: dict[tuple[str, str, SubscriptionMode], Consumer] = {}
        self.changes: Changes | None = Changes() if durable else None
        self._to_pump: dict[Consumer, None] = {}  # insertion-ordered set
        self._to_trim: set[TopicLog] = set()
        self._idle_since: dict[Consumer, float] = {}  # consumers without a session, as expire_idle last saw them

    # -- set-up (also used by the store when it loads) ------------------------------------------

    def topic(self, name: str) -> TopicLog:
        log = self.topics.get(name)
        if log is None:
            log = self.topics[name] = TopicLog(name)
        return log

    def consumer(self, group: str, topic: str, mode: SubscriptionMode) -> Consumer:
        """The consumer of ``group`` for ``topic`` in ``mode``; a new one starts at the earliest retained event."""
        key = (group, topic, mode)
        consumer = self.consumers.get(key)
        if consumer is None:
            log = self.topic(topic)
            consumer = self.consumers[key] = Consumer(self, group, log, mode, log.first_offset)
            log.consumers.append(consumer)
            if self.changes is not None:
                self.changes.new_consumers.append((consumer, consumer.acked_upto))
        return consumer

    def count_retained(self) -> None:
        """Sum the topics' sizes into ``retained_bytes`` (after the store loaded events)."""
        self.retained_bytes = sum(log.size for log in self.topics.values())

    def has_room_for_topics(self, names: Iterable[str]) -> bool:
        """Whether the topics among ``names`` that do not exist yet may be created (``max_topics``)."""
        if self.max_topics is None:
            return True
        missing = {name for name in names if name not in self.topics}
        return len(self.topics) + len(missing) <= self.max_topics

    # -- the flows -----------------------------------------------------------------------------

    def append(self, topic: str, body: bytes) -> int | Refusal:
        """Append an event; its offset, or the bound that refuses it."""
        log = self.topics.get(topic)
        if log is None:
            if self.max_topics is not None and len(self.topics) >= self.max_topics:
                return Refusal.TOO_MANY_TOPICS
        elif len(log.events) >= self.max_topic_events:
            return Refusal.TOPIC_FULL
        if self.max_retained_bytes is not None and self.retained_bytes + len(body) > self.max_retained_bytes:
            return Refusal.RETAINED_BYTES_FULL
        if log is None:
            log = self.topics[topic] = TopicLog(topic)
        offset = log.next_offset
        log.keep(offset, body)
        log.next_offset = offset + 1
        self.retained_bytes += len(body)
        if self.changes is not None:
            self.changes.events.append((topic, offset, body))
        for consumer in log.consumers:
            if consumer.sessions:
                self._to_pump[consumer] = None
        return offset

    def attach(self, session: Subscriber, consumer: Consumer) -> None:
        if session not in consumer.sessions:
            consumer.sessions.append(session)
        self._to_pump[consumer] = None

    def detach(self, session: Subscriber, consumer: Consumer) -> None:
        if session in consumer.sessions:
            consumer.sessions.remove(session)

    def acked(self, session: Subscriber, delivery: Delivery) -> None:
        fanout = delivery.fanout
        if fanout is None:
            delivery.consumer.ack(delivery.offset)
            return
        fanout.acked = True
        fanout.pending.discard(session)
        if not fanout.pending:
            delivery.consumer.ack(delivery.offset)

    def abandoned(self, session: Subscriber, delivery: Delivery) -> None:
        """The session left without acking: another session (or a later one) gets the event."""
        fanout = delivery.fanout
        if fanout is None:
            delivery.consumer.requeue(delivery.offset)
            return
        fanout.pending.discard(session)
        if fanout.pending:
            return
        if fanout.acked:
            delivery.consumer.ack(delivery.offset)
        else:
            delivery.consumer.requeue(delivery.offset)

    def pump_later(self, consumer: Consumer) -> None:
        self._to_pump[consumer] = None

    def pump_all_of(self, consumers: Iterable[Consumer]) -> None:
        for consumer in consumers:
            self._to_pump[consumer] = None

    def trim_later(self, topic: TopicLog) -> None:
        self._to_trim.add(topic)

    def settle(self) -> None:
        """End of a loop tick: push what can be pushed, then drop what everyone acked."""
        while self._to_pump:
            batch, self._to_pump = self._to_pump, {}
            for consumer in batch:
                consumer.pump()
        for topic in self._to_trim:
            size = topic.size
            if topic.trim():
                self.retained_bytes -= size - topic.size
                if self.changes is not None:
                    self.changes.trims[topic.name] = topic.first_offset
        self._to_trim.clear()

    def expire_idle(self, now: float, idle_for: float | None) -> list[Consumer]:
        """Drop the consumers that have had no session for ``idle_for`` (None: never) by the clock of ``now``,
        and every BROADCASTING consumer left without a session; returns them.

        A broadcast reaches the sessions listening when it is published, as on the Java runtime: a
        broadcast group whose sessions all left (a ``meshconnect tail`` that ended) keeps no cursor, or it
        would hold its topics' events until it expired. Idleness is what successive calls observed, so the
        caller calls this now and then (its period is the precision); a consumer loaded from the store
        starts idle at the first call. A topic left with no consumer and no event is dropped too.
        """
        expired: list[Consumer] = []
        for consumer in self.consumers.values():
            if consumer.sessions:
                self._idle_since.pop(consumer, None)
            elif consumer.mode is SubscriptionMode.BROADCASTING or self._idle_for_long(consumer, now, idle_for):
                expired.append(consumer)
        for consumer in expired:
            self._idle_since.pop(consumer, None)
            del self.consumers[(consumer.group, consumer.topic.name, consumer.mode)]
            consumer.topic.consumers.remove(consumer)
            self._to_pump.pop(consumer, None)
            self.trim_later(consumer.topic)
            if self.changes is not None:
                self.changes.cursors.pop(consumer, None)
                self.changes.dropped_consumers.append(consumer)
        self._drop_empty({consumer.topic for consumer in expired})
        return expired

    def _idle_for_long(self, consumer: Consumer, now: float, idle_for: float | None) -> bool:
        return idle_for is not None and now - self._idle_since.setdefault(consumer, now) >= idle_for

    def _drop_empty(self, candidates: Iterable[TopicLog]) -> None:
        """Forget the topics among ``candidates`` that have no consumer and no event left."""
        dropped = {log.name for log in candidates if not log.consumers and not log.events}
        if not dropped:
            return
        for name in dropped:
            self._to_trim.discard(self.topics.pop(name))
        changes = self.changes
        if changes is not None:
            # Rows of these topics still unwritten are moot (every event of theirs was acked): a topic of the
            # same name created later starts at offset 0 again, so nothing of the old one may reach the store.
            changes.events = [event for event in changes.events if event[0] not in dropped]
            for name in dropped:
                changes.trims.pop(name, None)
            changes.dropped_topics.extend(dropped)

    def take_changes(self) -> Changes | None:
        changes = self.changes
        if changes is None or not changes:
            return None
        self.changes = Changes()
        # An ack above the cursor that the cursor has passed since needs no row of its own.
        changes.acks_above = [(consumer, offset) for consumer, offset in changes.acks_above if offset >= consumer.acked_upto]
        return changes

    def iter_consumers(self, topic: str) -> Iterator[Consumer]:
        log = self.topics.get(topic)
        return iter(log.consumers if log is not None else ())
