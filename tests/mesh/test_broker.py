"""The broker and its store without sockets: cursors, trimming, redelivery order, fan-out, reload, bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.mesh.broker import Broker, Consumer, Delivery, Fanout, Refusal
from runtime.mesh.store import MeshStore
from runtime.protocol.frames import SubscriptionMode

CLUSTERING = SubscriptionMode.CLUSTERING
BROADCASTING = SubscriptionMode.BROADCASTING


@dataclass(eq=False)
class FakeSession:
    room: int = 100
    listening: bool = True
    got: list[Delivery] = field(default_factory=list)

    def has_room(self, size: int) -> bool:
        return len(self.got) < self.room

    def push(self, consumer: Consumer, offset: int, body: bytes, fanout: Fanout | None) -> None:
        self.got.append(Delivery(consumer, offset, len(body), 0.0, fanout))

    def offsets(self) -> list[int]:
        return [delivery.offset for delivery in self.got]


def test_out_of_order_acks_move_the_cursor_once_the_gap_closes_and_trim_the_log() -> None:
    broker = Broker(max_topic_events=10, durable=False)
    consumer = broker.consumer("g", "t", CLUSTERING)
    for n in range(5):
        broker.append("t", b"%d" % n)
    for offset in (1, 2, 4):
        consumer.ack(offset)
    broker.settle()
    assert (consumer.acked_upto, consumer.unacked, broker.topics["t"].first_offset) == (0, 2, 0)
    consumer.ack(0)
    broker.settle()
    assert (consumer.acked_upto, consumer.acked_above, consumer.unacked) == (3, {4}, 1)
    assert sorted(broker.topics["t"].events) == [3, 4]


def test_log_is_trimmed_to_the_slowest_group_and_refuses_appends_when_full() -> None:
    broker = Broker(max_topic_events=3, durable=False)
    fast, slow = broker.consumer("fast", "t", CLUSTERING), broker.consumer("slow", "t", CLUSTERING)
    assert [broker.append("t", b"x") for _ in range(4)] == [0, 1, 2, Refusal.TOPIC_FULL]
    for offset in range(3):
        fast.ack(offset)
    broker.settle()
    assert broker.append("t", b"x") is Refusal.TOPIC_FULL
    slow.ack(0)
    broker.settle()
    assert broker.append("t", b"x") == 3


def test_requeued_offsets_are_redelivered_lowest_first_before_new_ones() -> None:
    broker = Broker(max_topic_events=10, durable=False)
    consumer = broker.consumer("g", "t", CLUSTERING)
    session = FakeSession(room=3)
    broker.attach(session, consumer)
    for n in range(5):
        broker.append("t", b"%d" % n)
    broker.settle()
    assert session.offsets() == [0, 1, 2]
    taken = session.got
    session.got = []
    for delivery in reversed(taken):
        broker.abandoned(session, delivery)
    broker.settle()
    assert session.offsets() == [0, 1, 2]


def test_clustering_alternates_between_sessions_with_room() -> None:
    broker = Broker(max_topic_events=10, durable=False)
    consumer = broker.consumer("g", "t", CLUSTERING)
    first, second, deaf = FakeSession(), FakeSession(room=1), FakeSession(listening=False)
    for session in (first, second, deaf):
        broker.attach(session, consumer)
    for n in range(4):
        broker.append("t", b"%d" % n)
    broker.settle()
    assert (first.offsets(), second.offsets(), deaf.offsets()) == ([0, 2, 3], [1], [])


def test_broadcast_is_acked_for_the_group_once_every_target_acked_or_left() -> None:
    broker = Broker(max_topic_events=10, durable=False)
    consumer = broker.consumer("g", "t", BROADCASTING)
    one, two = FakeSession(), FakeSession()
    broker.attach(one, consumer)
    broker.attach(two, consumer)
    broker.append("t", b"e")
    broker.settle()
    broker.acked(one, one.got[0])
    assert consumer.unacked == 1
    broker.detach(two, consumer)
    broker.abandoned(two, two.got[0])
    assert consumer.unacked == 0


def commit(store: MeshStore, broker: Broker) -> None:
    changes = broker.take_changes()
    assert changes is not None
    store.commit(changes)


def test_store_reloads_cursors_acks_and_only_the_events_someone_still_needs(tmp_path: Path) -> None:
    broker = Broker(max_topic_events=100, durable=True)
    store = MeshStore(tmp_path)
    store.load(broker)
    ahead, behind = broker.consumer("ahead", "t", CLUSTERING), broker.consumer("behind", "t", CLUSTERING)
    for n in range(10):
        broker.append("t", b"%d" % n)
        broker.append("unread", b"u%d" % n)
    commit(store, broker)
    for offset in [*range(8), 9]:
        ahead.ack(offset)
    for offset in (0, 1, 2, 5):
        behind.ack(offset)
    broker.settle()
    commit(store, broker)
    store.close()

    reloaded = Broker(max_topic_events=100, durable=True)
    store = MeshStore(tmp_path)
    assert store.load(reloaded) == 7 + 10
    ahead, behind = reloaded.consumers[("ahead", "t", CLUSTERING)], reloaded.consumers[("behind", "t", CLUSTERING)]
    assert (ahead.acked_upto, ahead.acked_above, behind.acked_upto, behind.acked_above) == (8, {9}, 3, {5})
    assert sorted(reloaded.topics["t"].events) == list(range(3, 10))
    assert reloaded.topics["unread"].events[9] == b"u9"
    assert reloaded.append("t", b"next") == 10
    store.close()


def test_a_group_idle_for_the_expiry_is_dropped_and_no_longer_holds_the_log(tmp_path: Path) -> None:
    broker = Broker(max_topic_events=3, durable=True)
    store = MeshStore(tmp_path)
    store.load(broker)
    live, retired = broker.consumer("live", "t", CLUSTERING), broker.consumer("retired", "t", CLUSTERING)
    session = FakeSession()
    broker.attach(session, live)
    assert [broker.append("t", b"x") for _ in range(4)] == [0, 1, 2, Refusal.TOPIC_FULL]
    for offset in range(3):
        live.ack(offset)
    broker.settle()
    commit(store, broker)
    assert broker.append("t", b"x") is Refusal.TOPIC_FULL  # the retired group's cursor holds the full log
    assert broker.expire_idle(100.0, 60.0) == []  # first seen idle now
    assert broker.expire_idle(159.0, 60.0) == []
    broker.detach(session, live)  # the live group goes idle later: its clock starts at the next call
    assert broker.expire_idle(160.0, 60.0) == [retired]
    broker.settle()
    commit(store, broker)
    assert broker.append("t", b"x") == 3  # trimmed to the live group's cursor
    commit(store, broker)
    assert list(broker.consumers) == [("live", "t", CLUSTERING)]
    broker.attach(session, live)
    assert broker.expire_idle(1000.0, 60.0) == []  # a group with a session never expires
    store.close()

    reloaded = Broker(max_topic_events=3, durable=True)
    store = MeshStore(tmp_path)
    store.load(reloaded)
    assert list(reloaded.consumers) == [("live", "t", CLUSTERING)]
    assert sorted(reloaded.topics["t"].events) == [3]
    back = reloaded.consumer("retired", "t", CLUSTERING)  # a returning group starts at the earliest retained event
    assert back.acked_upto == 3
    store.close()


def test_a_broadcast_group_whose_sessions_left_keeps_no_cursor_even_without_group_expiry() -> None:
    """A ``meshconnect tail`` that ended must not hold the topic's events for the connectors' groups."""
    broker = Broker(max_topic_events=3, durable=False)
    sinks, tail = broker.consumer("sinks", "t", CLUSTERING), broker.consumer("tail", "t", BROADCASTING)
    sink_session, tail_session = FakeSession(), FakeSession()
    broker.attach(sink_session, sinks)
    broker.attach(tail_session, tail)
    assert broker.expire_idle(0.0, None) == []  # listening: kept
    broker.detach(tail_session, tail)
    assert broker.expire_idle(0.0, None) == [tail]
    for offset in range(3):
        assert broker.append("t", b"x") == offset
        sinks.ack(offset)
    broker.settle()
    assert broker.append("t", b"x") == 3, "the sinks' acks free the log: no cursor of the tail holds it"


def test_topics_and_retained_bytes_are_bounded_and_acked_events_free_their_room() -> None:
    broker = Broker(max_topic_events=10, durable=False, max_topics=2, max_retained_bytes=10)
    assert broker.append("t", b"1234") == 0
    assert broker.append("u", b"1234") == 0
    assert broker.append("v", b"1") is Refusal.TOO_MANY_TOPICS
    assert "v" not in broker.topics
    assert broker.append("t", b"1234") is Refusal.RETAINED_BYTES_FULL
    assert broker.append("t", b"12") == 1
    consumer = broker.consumer("g", "t", CLUSTERING)
    consumer.ack(0)
    broker.settle()
    assert broker.retained_bytes == 6
    assert broker.append("t", b"1234") == 2
    assert not broker.has_room_for_topics(["v"])
    assert broker.has_room_for_topics(["t", "u"])


def test_a_topic_left_without_events_and_groups_is_dropped_and_may_come_back_in_the_same_commit(tmp_path: Path) -> None:
    broker = Broker(max_topic_events=10, durable=True)
    store = MeshStore(tmp_path)
    store.load(broker)
    consumer = broker.consumer("g", "t", CLUSTERING)
    broker.append("t", b"old-0")
    broker.append("t", b"old-1")
    commit(store, broker)
    broker.append("t", b"old-2")  # not committed yet when the topic goes
    for offset in range(3):
        consumer.ack(offset)
    broker.settle()
    assert broker.expire_idle(0.0, 1.0) == []
    assert broker.expire_idle(2.0, 1.0) == [consumer]
    assert "t" not in broker.topics
    assert broker.retained_bytes == 0
    assert broker.append("t", b"new-0") == 0  # the same name again, offsets from 0
    commit(store, broker)
    store.close()

    reloaded = Broker(max_topic_events=10, durable=True)
    store = MeshStore(tmp_path)
    assert store.load(reloaded) == 1
    assert reloaded.topics["t"].events == {0: b"new-0"}
    assert reloaded.retained_bytes == len(b"new-0")
    assert reloaded.consumers == {}
    store.close()
