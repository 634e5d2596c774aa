"""The mesh's durable state in one SQLite file (WAL): retained events, consumer cursors, acks.

The server commits the broker's :class:`~runtime.mesh.broker.Changes` in one transaction on a
worker thread, and writes the answers of those changes only once the commit returned: a publish is
acked only once its event is in the file, and an ack a consumer sent is on disk before the consumer
hears anything else from us. While one commit runs, the next turns' changes pile up into the next
(group commit), so the batch grows with the load.

``synchronous=NORMAL`` in WAL mode survives a crash of the process (kill -9): a commit is in the
operating system's page cache before ``commit()`` returns. It does not survive a power cut of the
machine, which a development stand-in does not need to.

Tables::

    topics(id, name)                            a number for each topic
    batches(id, last_offset, data)              the events one commit appended to one topic
    consumers(id, grp, topic, mode, acked_upto) one row per consumer group, topic and mode
    acks(consumer, offset)                      acks above a consumer's acked_upto (out of order)

A batch's id is its topic's id times 2**40 plus its first offset, so the batches of a topic are one
range of the table's B-tree; ``data`` is the big-endian uint32 length of each event, then the
events. One row per commit and topic (not per event) keeps the commit to a few calls into SQLite,
which matters because the worker thread must win the GIL back from the event loop for each call.
A batch is deleted once every event in it was acked by every consumer of the topic; loading skips
the events of a batch that every consumer acked already.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable
from pathlib import Path

from runtime.errors import ConfigError
from runtime.mesh.broker import Broker, Changes
from runtime.protocol.frames import SubscriptionMode

__all__ = ["MeshStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS batches(id INTEGER PRIMARY KEY, last_offset INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS consumers(id INTEGER PRIMARY KEY, grp TEXT NOT NULL, topic TEXT NOT NULL,
    mode TEXT NOT NULL, acked_upto INTEGER NOT NULL, UNIQUE (grp, topic, mode));
CREATE TABLE IF NOT EXISTS acks(consumer INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (consumer, offset)) WITHOUT ROWID;
"""
_OFFSET_BITS = 40


def pack_batch(bodies: list[bytes]) -> bytes:
    return struct.pack(f">{len(bodies)}I", *map(len, bodies)) + b"".join(bodies)


def unpack_batch(data: bytes, count: int) -> Iterable[bytes]:
    position = 4 * count
    for length in struct.unpack_from(f">{count}I", data):
        yield data[position : position + length]
        position += length


class MeshStore:
    """One SQLite database under ``data_dir``.

    :meth:`load` and :meth:`close` run on the event loop; :meth:`commit` runs on one worker thread,
    one call at a time, while the loop goes on (SQLite releases the GIL while it works).
    """

    FILE_NAME = "mesh.sqlite3"

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / self.FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                "data_dir", f"cannot open the mesh store {self.path}: {exc}", "point it at a writable directory"
            ) from exc
        self._topic_ids: dict[str, int] = {}

    def load(self, broker: Broker) -> int:
        """Fill ``broker`` with the stored cursors and events; returns the number of events loaded."""
        db = self._db
        self._topic_ids = {name: topic_id for topic_id, name in db.execute("SELECT id, name FROM topics")}
        names = {topic_id: name for name, topic_id in self._topic_ids.items()}
        changes, broker.changes = broker.changes, None  # loading is not a change
        try:
            for consumer_id, group, topic, mode, acked_upto in db.execute(
                "SELECT id, grp, topic, mode, acked_upto FROM consumers ORDER BY id"
            ):
                consumer = broker.consumer(group, topic, SubscriptionMode[mode])
                consumer.id = consumer_id
                consumer.acked_upto = consumer.next_offset = acked_upto
                log = consumer.topic
                # New events continue after the cursor even when everything was acked and deleted.
                log.first_offset = log.next_offset = max(log.next_offset, acked_upto)
        finally:
            broker.changes = changes
        by_id = {consumer.id: consumer for consumer in broker.consumers.values()}
        for consumer_id, offset in db.execute("SELECT consumer, offset FROM acks"):
            found = by_id.get(consumer_id)
            if found is not None and offset >= found.acked_upto:
                found.acked_above.add(offset)
        loaded = 0
        lowest = {name: log.trim_point() for name, log in broker.topics.items()}
        for batch_id, last_offset, data in db.execute("SELECT id, last_offset, data FROM batches ORDER BY id"):
            topic_id, first_offset = divmod(batch_id, 1 << _OFFSET_BITS)
            name = names[topic_id]
            log = broker.topic(name)
            low = lowest.get(name, 0)
            if not log.events:
                log.first_offset = max(first_offset, low)
            for offset, body in enumerate(unpack_batch(data, last_offset - first_offset + 1), first_offset):
                if offset >= low:
                    log.keep(offset, body)
                    loaded += 1
            log.next_offset = max(log.next_offset, last_offset + 1)
        broker.count_retained()
        return loaded

    def commit(self, changes: Changes) -> None:
        """Write one tick's changes in one transaction.

        What is gone goes first: a consumer or topic dropped in this batch may come back in it under the
        same name (a group subscribing again, a topic published to again), and its new rows must not meet
        the old ones. A consumer dropped here writes nothing of its own.
        """
        db = self._db
        dropped = set(changes.dropped_consumers)
        db.execute("BEGIN")
        try:
            for consumer in dropped:
                if consumer.id is not None:
                    db.execute("DELETE FROM consumers WHERE id = ?", (consumer.id,))
                    db.execute("DELETE FROM acks WHERE consumer = ?", (consumer.id,))
            for topic in changes.dropped_topics:
                topic_id = self._topic_ids.pop(topic, None)
                if topic_id is not None:
                    db.execute(
                        "DELETE FROM batches WHERE id >= ? AND id < ?", (topic_id << _OFFSET_BITS, (topic_id + 1) << _OFFSET_BITS)
                    )
                    db.execute("DELETE FROM topics WHERE id = ?", (topic_id,))
            if changes.events:
                db.executemany("INSERT INTO batches(id, last_offset, data) VALUES (?, ?, ?)", self._batches(changes.events))
            for consumer, acked_upto in changes.new_consumers:
                if consumer not in dropped:
                    cursor = db.execute(
                        "INSERT INTO consumers(grp, topic, mode, acked_upto) VALUES (?, ?, ?, ?)",
                        (consumer.group, consumer.topic.name, consumer.mode.name, acked_upto),
                    )
                    consumer.id = cursor.lastrowid
            if changes.acks_above:
                db.executemany(
                    "INSERT OR IGNORE INTO acks(consumer, offset) VALUES (?, ?)",
                    [(consumer.id, offset) for consumer, offset in changes.acks_above if consumer not in dropped],
                )
            for consumer, acked_upto in changes.cursors.items():
                db.execute("UPDATE consumers SET acked_upto = ? WHERE id = ?", (acked_upto, consumer.id))
                db.execute("DELETE FROM acks WHERE consumer = ? AND offset < ?", (consumer.id, acked_upto))
            for topic, first_offset in changes.trims.items():
                db.execute(
                    "DELETE FROM batches WHERE id >= ? AND id < ? AND last_offset < ?",
                    (self._row_id(topic, 0), self._row_id(topic, first_offset), first_offset),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _batches(self, events: list[tuple[str, int, bytes]]) -> list[tuple[int, int, bytes]]:
        """One row per run of consecutive offsets of one topic."""
        rows: list[tuple[int, int, bytes]] = []
        bodies: list[bytes] = []
        topic, first, last = "", 0, -2
        for event_topic, offset, body in events:
            if event_topic != topic or offset != last + 1:
                if bodies:
                    rows.append((self._row_id(topic, first), last, pack_batch(bodies)))
                topic, first, bodies = event_topic, offset, []
            bodies.append(body)
            last = offset
        if bodies:
            rows.append((self._row_id(topic, first), last, pack_batch(bodies)))
        return rows

    def _row_id(self, topic: str, offset: int) -> int:
        topic_id = self._topic_ids.get(topic)
        if topic_id is None:
            cursor = self._db.execute("INSERT INTO topics(name) VALUES (?)", (topic,))
            topic_id = self._topic_ids[topic] = int(cursor.lastrowid or 0)
        return (topic_id << _OFFSET_BITS) + offset

    def close(self) -> None:
        self._db.close()
