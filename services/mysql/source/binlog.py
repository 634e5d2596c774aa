"""The binlog reader: python-mysql-replication's blocking stream, run in a thread, handing batches over a bounded queue.

Positions. The binlog can only be resumed at a transaction boundary (a rows event needs the table
map written before it in the same transaction), so an offset names the boundary where the
transaction of a record starts and how many of its row changes came before::

    {"file": "mysql-bin.000003", "pos": 1234, "row": 17, "gtid": "0-1-42"}

Every row of a transaction is counted (filtered tables included), so a resumed stream skips the
first ``row`` changes of that transaction and continues with the next one: no gap, no duplicate.
``row`` 0 is a plain boundary (heartbeats). The server sends a heartbeat every second when idle,
so the blocking read returns at least that often and the thread notices ``stop()``.
"""

from __future__ import annotations

import queue
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from runtime.record import ConnectorRecord

__all__ = ["BinlogReader", "Failure", "Position", "ddl_target"]

_NAME = r"(?:`?(?P<db>[\w$]+)`?\s*\.\s*)?`?(?P<table>[\w$]+)`?"
# Table-level DDL only: database, view, routine and trigger statements are not row data.
_DDL = (
    re.compile(
        r"^\s*(?:/\*.*?\*/\s*)*(?:CREATE|ALTER|DROP)\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE\s+"
        r"(?:IF\s+(?:NOT\s+)?EXISTS\s+)?" + _NAME,
        re.IGNORECASE | re.DOTALL,
    ),
    re.compile(r"^\s*(?:/\*.*?\*/\s*)*(?:TRUNCATE(?:\s+TABLE)?|RENAME\s+TABLE)\s+" + _NAME, re.IGNORECASE | re.DOTALL),
    re.compile(
        r"^\s*(?:/\*.*?\*/\s*)*(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+)?INDEX|DROP\s+INDEX)\s+"
        r"(?:IF\s+(?:NOT\s+)?EXISTS\s+)?`?[\w$]+`?\s+ON\s+" + _NAME,
        re.IGNORECASE | re.DOTALL,
    ),
)
_SYSTEM_SCHEMAS = ["mysql", "information_schema", "performance_schema", "sys"]
_MARKER_EVERY = 1.0
_FL_STANDALONE = 0x01  # MariaDB GTID event flag: the transaction is a single statement


@dataclass(frozen=True, slots=True)
class Position:
    """A transaction boundary and how many row changes of the transaction starting there are done."""

    file: str
    pos: int
    row: int = 0

    def offset(self, gtid: str | None = None) -> dict[str, Any]:
        offset: dict[str, Any] = {"file": self.file, "pos": self.pos, "row": self.row}
        if gtid:
            offset["gtid"] = gtid
        return offset


@dataclass(frozen=True, slots=True)
class Failure:
    """The stream broke; the reader reconnects by itself from where it was."""

    message: str


def ddl_target(statement: str, default_db: str) -> tuple[str, str] | None:
    """(db, table) a DDL statement acts on, or ``None`` when it is not DDL."""
    for pattern in _DDL:
        match = pattern.match(statement)
        if match is not None:
            return match.group("db") or default_db, match.group("table")
    return None


class BinlogReader:
    """Reads the binlog from ``start`` in a thread; puts lists of records, positions and failures on ``out``."""

    def __init__(
        self,
        *,
        connection: Mapping[str, Any],
        replica_id: int,
        start: Position,
        build: Callable[..., ConnectorRecord],
        accept: Callable[[str, str], bool],
        out: queue.Queue[list[ConnectorRecord] | Position | Failure],
        max_batch: int,
    ) -> None:
        self._connection = dict(connection)
        self._replica_id = replica_id
        self._boundary = start  # where the next (or current) transaction starts
        self._skip = start  # rows of the transaction at this boundary already delivered
        self._build = build
        self._accept = accept
        self._out = out
        self._max_batch = max_batch
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)
        self._stream: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._read()
                delay = 0.5
            except Exception as exc:  # the thread's seam: whatever broke the stream, report it and reconnect
                self._put(Failure(f"binlog stream from {self._boundary.file}:{self._boundary.pos} failed: {exc}"))
                self._stopping.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 30.0)
            finally:
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None

    def _read(self) -> None:
        boundary = self._boundary
        self._stream = stream = BinLogStreamReader(
            connection_settings={**self._connection, "read_timeout": 30, "connect_timeout": 5},
            server_id=self._replica_id,
            resume_stream=True,
            blocking=True,
            log_file=boundary.file,
            log_pos=boundary.pos,
            only_events=[
                RotateEvent,
                GtidEvent,
                MariadbGtidEvent,
                QueryEvent,
                XidEvent,
                HeartbeatLogEvent,
                WriteRowsEvent,
                UpdateRowsEvent,
                DeleteRowsEvent,
            ],
            ignored_schemas=_SYSTEM_SCHEMAS,
            slave_heartbeat=1,
            enable_logging=False,
        )
        batch: list[ConnectorRecord] = []
        in_transaction = False
        standalone = True
        row = 0
        gtid: str | None = None
        delivered = 0
        marker_due = time.monotonic() + _MARKER_EVERY
        marker_pending = False

        def end_transaction() -> None:
            nonlocal in_transaction, marker_pending
            in_transaction = False
            self._boundary = Position(stream.log_file, stream.log_pos)
            marker_pending = marker_pending or not delivered

        while not self._stopping.is_set():
            event = stream.fetchone()
            if event is None:
                return
            if isinstance(event, RotateEvent):
                if not in_transaction:
                    self._boundary = Position(event.next_binlog, event.position)
            elif isinstance(event, GtidEvent | MariadbGtidEvent):
                in_transaction, row, delivered, gtid = True, 0, 0, str(event.gtid)
                # A statement on its own (DDL) ends with itself; MariaDB flags it, MySQL sends no BEGIN for it.
                standalone = bool(event.flags & _FL_STANDALONE) if isinstance(event, MariadbGtidEvent) else True
            elif isinstance(event, QueryEvent):
                statement = event.query if isinstance(event.query, str) else event.query.decode("utf-8", "replace")
                upper = statement.strip().upper()
                if upper == "BEGIN":
                    standalone = False
                    if not in_transaction:
                        in_transaction, row, delivered, gtid = True, 0, 0, None
                elif upper == "COMMIT":
                    end_transaction()
                else:
                    schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
                    target = ddl_target(statement, schema)
                    if target is not None:
                        row += 1
                        if self._fresh(row) and self._accept(*target):
                            batch.append(
                                self._build(op="ddl", db=target[0], table=target[1], ddl=statement, **self._at(row, gtid, event))
                            )
                            delivered += 1
                    if target is not None or standalone or not in_transaction:
                        end_transaction()
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                accepted = self._accept(event.schema, event.table)
                if accepted and event.rows and any(name.startswith("UNKNOWN_COL") for name in _image(event.rows[0])):
                    # Written while binlog_row_metadata was not FULL: the names are gone; never guess them.
                    raise BinlogMetadataMissing(
                        f"rows of {event.schema}.{event.table} at {self._boundary.file}:{self._boundary.pos}"
                        " carry no column names:"
                        " set binlog_row_metadata=FULL on the server; for changes already written without it, re-snapshot"
                        " (meshconnect offsets reset, then restart)"
                    )
                key = _key_columns(event.primary_key)
                for change in event.rows:
                    row += 1
                    if not accepted or not self._fresh(row):
                        continue
                    if isinstance(event, WriteRowsEvent):
                        before, after, op = None, change["values"], "c"
                    elif isinstance(event, UpdateRowsEvent):
                        before, after, op = change["before_values"], change["after_values"], "u"
                    else:
                        before, after, op = change["values"], None, "d"
                    batch.append(
                        self._build(
                            op=op,
                            db=event.schema,
                            table=event.table,
                            before=before,
                            after=after,
                            key=key,
                            **self._at(row, gtid, event),
                        )
                    )
                    delivered += 1
                    if len(batch) >= self._max_batch:
                        self._flush(batch)
                        batch = []
            elif isinstance(event, XidEvent):
                end_transaction()
            if not in_transaction:
                if batch:
                    self._flush(batch)
                    batch = []
                    marker_pending = False
                    self._skip = self._boundary
                elif marker_pending and time.monotonic() >= marker_due:
                    self._skip = self._boundary
                    self._put(self._boundary)
                    marker_pending = False
                    marker_due = time.monotonic() + _MARKER_EVERY

    def _fresh(self, row: int) -> bool:
        """False for the rows a resumed transaction already delivered."""
        skip = self._skip
        return not (skip.file == self._boundary.file and skip.pos == self._boundary.pos and row <= skip.row)

    def _at(self, row: int, gtid: str | None, event: Any) -> dict[str, Any]:
        return {
            "position": Position(self._boundary.file, self._boundary.pos, row),
            "gtid": gtid,
            "timestamp": datetime.fromtimestamp(event.timestamp, UTC) if event.timestamp else datetime.now(UTC),
        }

    def _flush(self, batch: list[ConnectorRecord]) -> None:
        self._put(batch)
        last = batch[-1].offset
        # A broken stream resumes here: the same transaction, after the rows handed over.
        self._skip = Position(str(last["file"]), int(last["pos"]), int(last["row"]))

    def _put(self, item: list[ConnectorRecord] | Position | Failure) -> None:
        while not self._stopping.is_set():
            try:
                self._out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


class BinlogMetadataMissing(Exception):
    """Row events without column names (the server wrote them with binlog_row_metadata below FULL)."""


def _image(change: Mapping[str, Any]) -> Mapping[str, Any]:
    return change.get("values") or change.get("after_values") or {}


def _key_columns(primary_key: Any) -> list[str]:
    if not primary_key:
        return []
    if isinstance(primary_key, str):
        return [primary_key]
    return [str(column) for column in primary_key]
