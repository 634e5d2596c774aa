"""The mesh's durable state in one SQLite file (WAL): retained events, consumer cursors, acks.

The server commits the broker's :class:`~runtime.mesh.broker.Changes` once per loop tick, in one
transaction, *before* it writes that tick's answers: a publish is acked only once its event is in
the file, and an ack a consumer sent is on disk before the consumer hears anything else from us.
``synchronous=NORMAL`` in WAL mode survives a crash of the process (kill -9): a commit is in the
operating system's page cache before ``commit()`` returns. It does not survive a power cut of the
machine, which a development stand-in does not need to.

Tables::

    events(topic, offset, body)                 the retained events
    consumers(id, grp, topic, mode, acked_upto) one row per consumer group, topic and mode
    acks(consumer, offset)                      acks above a consumer's acked_upto (out of order)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from runtime.errors import ConfigError
from runtime.mesh.broker import Broker, Changes
from runtime.protocol.frames import SubscriptionMode

__all__ = ["MeshStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events(topic TEXT NOT NULL, offset INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (topic, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers(id INTEGER PRIMARY KEY, grp TEXT NOT NULL, topic TEXT NOT NULL,
    mode TEXT NOT NULL, acked_upto INTEGER NOT NULL, UNIQUE (grp, topic, mode));
CREATE TABLE IF NOT EXISTS acks(consumer INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (consumer, offset)) WITHOUT ROWID;
"""


class MeshStore:
    """One SQLite database under ``data_dir``; all calls are quick and made from the event loop."""

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

    def load(self, broker: Broker) -> int:
        """Fill ``broker`` with the stored events and cursors; returns the number of events loaded."""
        db = self._db
        loaded = 0
        for topic, offset, body in db.execute("SELECT topic, offset, body FROM events ORDER BY topic, offset"):
            log = broker.topic(topic)
            if not log.events:
                log.first_offset = offset
            log.events[offset] = bytes(body)
            log.next_offset = offset + 1
            loaded += 1
        changes, broker.changes = broker.changes, None  # loading is not a change
        try:
            for consumer_id, group, topic, mode, acked_upto in db.execute(
                "SELECT id, grp, topic, mode, acked_upto FROM consumers ORDER BY id"
            ):
                log = broker.topic(topic)
                if not log.events:
                    # Everything was acked and trimmed: new events continue after the cursor.
                    log.first_offset = log.next_offset = max(log.next_offset, acked_upto)
                consumer = broker.consumer(group, topic, SubscriptionMode[mode])
                consumer.id = consumer_id
                consumer.acked_upto = consumer.next_offset = acked_upto
            by_id = {consumer.id: consumer for consumer in broker.consumers.values()}
            for consumer_id, offset in db.execute("SELECT consumer, offset FROM acks"):
                found = by_id.get(consumer_id)
                if found is not None and offset >= found.acked_upto:
                    found.acked_above.add(offset)
        finally:
            broker.changes = changes
        return loaded

    def commit(self, changes: Changes) -> None:
        """Write one tick's changes in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            if changes.events:
                db.executemany("INSERT OR REPLACE INTO events(topic, offset, body) VALUES (?, ?, ?)", changes.events)
            for consumer in changes.new_consumers:
                cursor = db.execute(
                    "INSERT INTO consumers(grp, topic, mode, acked_upto) VALUES (?, ?, ?, ?)",
                    (consumer.group, consumer.topic.name, consumer.mode.name, consumer.acked_upto),
                )
                consumer.id = cursor.lastrowid
            if changes.acks_above:
                db.executemany(
                    "INSERT OR IGNORE INTO acks(consumer, offset) VALUES (?, ?)",
                    [(consumer.id, offset) for consumer, offset in changes.acks_above if offset >= consumer.acked_upto],
                )
            for consumer in changes.moved_consumers:
                db.execute("UPDATE consumers SET acked_upto = ? WHERE id = ?", (consumer.acked_upto, consumer.id))
                db.execute("DELETE FROM acks WHERE consumer = ? AND offset < ?", (consumer.id, consumer.acked_upto))
            for topic in changes.trimmed_topics:
                db.execute("DELETE FROM events WHERE topic = ? AND offset < ?", (topic.name, topic.first_offset))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
