"""The binlog reader: python-mysql-replication's blocking stream, run in a thread, handing batches over a bounded queue.

Positions. The binlog can only be resumed at a transaction boundary (a rows event needs the table
map written before it in the same transaction), so an offset names the boundary where the
transaction of a record starts and how many of its row changes came before::

    {"file": "mysql-bin.000003", "pos": 1234, "row": 17, "gtid": "0-1-42"}

Every row of a transaction is counted (filtered tables included), so a resumed stream skips the
first ``row`` changes of that transaction and continues with the next one: no gap, no duplicate.
``row`` 0 is a plain boundary (heartbeats). The server sends a heartbeat every second when idle,
so the blocking read returns at least that often and the thread notices ``stop()``.

Which events open, continue and end a transaction is one table, ``PHASES``; a :class:`Transaction`
holds the phase, the GTID and the row counts of the one being read.
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
from enum import Enum
from typing import Any

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from runtime import ConnectorRecord

__all__ = ["PHASES", "BinlogReader", "Failure", "Mark", "Phase", "Position", "Step", "Transaction", "ddl_target"]

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


class Phase(Enum):
    """Where the reader is relative to the transactions of the binlog."""

    BETWEEN = "between"  # no transaction open: a boundary, where a stream can resume
    STATEMENT = "statement"  # a GTID opened a transaction of one statement, which ends it
    GROUP = "group"  # a BEGIN opened a transaction that ends at COMMIT or XID


class Mark(Enum):
    """The binlog events that open, continue or end a transaction."""

    GTID_STATEMENT = "gtid of a single statement"  # MySQL sends no BEGIN for one; MariaDB flags it standalone
    GTID_GROUP = "gtid of a group"
    BEGIN = "begin"
    COMMIT = "commit"
    XID = "xid"
    DDL = "ddl"  # table DDL commits implicitly, whatever was open
    STATEMENT = "other statement"


class Step(Enum):
    START = "start"  # a new transaction: its rows count from 0
    CONTINUE = "continue"
    END = "end"  # the position after this event is the next boundary


_P = Phase
_M = Mark
# The whole machine: a GTID always starts a transaction, a BEGIN only when none is open; COMMIT, XID
# and DDL end any; another statement ends a single-statement transaction (or stands alone outside one).
PHASES: Mapping[tuple[Phase, Mark], tuple[Phase, Step]] = {
    **{(phase, _M.GTID_STATEMENT): (_P.STATEMENT, Step.START) for phase in Phase},
    **{(phase, _M.GTID_GROUP): (_P.GROUP, Step.START) for phase in Phase},
    (_P.BETWEEN, _M.BEGIN): (_P.GROUP, Step.START),
    (_P.STATEMENT, _M.BEGIN): (_P.GROUP, Step.CONTINUE),
    (_P.GROUP, _M.BEGIN): (_P.GROUP, Step.CONTINUE),
    **{(phase, mark): (_P.BETWEEN, Step.END) for phase in Phase for mark in (_M.COMMIT, _M.XID, _M.DDL)},
    (_P.BETWEEN, _M.STATEMENT): (_P.BETWEEN, Step.END),
    (_P.STATEMENT, _M.STATEMENT): (_P.BETWEEN, Step.END),
    (_P.GROUP, _M.STATEMENT): (_P.GROUP, Step.CONTINUE),
}


@dataclass(slots=True)
class Transaction:
    """The transaction being read: its phase (moved by :data:`PHASES`), its GTID and its row counts."""

    phase: Phase = Phase.BETWEEN
    gtid: str | None = None
    rows: int = 0  # row changes seen, filtered tables and DDL included: the index of the last one
    delivered: int = 0  # of those, the ones handed over as records

    @property
    def open(self) -> bool:
        return self.phase is not Phase.BETWEEN

    def mark(self, mark: Mark, gtid: str | None = None) -> Step:
        """Move on ``mark`` (``gtid``: the GTID event's); a transaction that starts counts from 0."""
        self.phase, step = PHASES[(self.phase, mark)]
        if step is Step.START:
            self.gtid, self.rows, self.delivered = gtid, 0, 0
        return step


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
        transaction = Transaction()
        marker_due = time.monotonic() + _MARKER_EVERY
        marker_pending = False  # a boundary passed with nothing handed over since: report it (heartbeat)

        while not self._stopping.is_set():
            event = stream.fetchone()
            if event is None:
                return
            step = Step.CONTINUE
            if isinstance(event, RotateEvent):
                if not transaction.open:
                    self._boundary = Position(event.next_binlog, event.position)
            elif isinstance(event, GtidEvent | MariadbGtidEvent):
                alone = bool(event.flags & _FL_STANDALONE) if isinstance(event, MariadbGtidEvent) else True
                step = transaction.mark(Mark.GTID_STATEMENT if alone else Mark.GTID_GROUP, str(event.gtid))
            elif isinstance(event, QueryEvent):
                statement = event.query if isinstance(event.query, str) else event.query.decode("utf-8", "replace")
                upper = statement.strip().upper()
                if upper == "BEGIN":
                    step = transaction.mark(Mark.BEGIN)
                elif upper == "COMMIT":
                    step = transaction.mark(Mark.COMMIT)
                else:
                    schema = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
                    target = ddl_target(statement, schema)
                    if target is not None:
                        transaction.rows += 1
                        row = transaction.rows
                        if self._fresh(row) and self._accept(*target):
                            batch.append(
                                self._build(
                                    op="ddl",
                                    db=target[0],
                                    table=target[1],
                                    ddl=statement,
                                    position=self._position(row),
                                    gtid=transaction.gtid,
                                    timestamp=_moment(event),
                                )
                            )
                            transaction.delivered += 1
                    step = transaction.mark(Mark.STATEMENT if target is None else Mark.DDL)
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
                moment = _moment(event) if accepted else None  # one per event, shared by its rows (immutable)
                for change in event.rows:
                    transaction.rows += 1
                    if not accepted or not self._fresh(transaction.rows):
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
                            position=self._position(transaction.rows),
                            gtid=transaction.gtid,
                            timestamp=moment,
                        )
                    )
                    transaction.delivered += 1
                    if len(batch) >= self._max_batch:
                        self._flush(batch)
                        batch = []
            elif isinstance(event, XidEvent):
                step = transaction.mark(Mark.XID)
            if step is Step.END:
                self._boundary = Position(stream.log_file, stream.log_pos)
                marker_pending = marker_pending or not transaction.delivered
            if not transaction.open:
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

    def _position(self, row: int) -> Position:
        """Where row ``row`` of the transaction at the current boundary is."""
        return Position(self._boundary.file, self._boundary.pos, row)

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


def _moment(event: Any) -> datetime:
    """When the server wrote ``event`` (now, for an event without a timestamp)."""
    return datetime.fromtimestamp(event.timestamp, UTC) if event.timestamp else datetime.now(UTC)


def _image(change: Mapping[str, Any]) -> Mapping[str, Any]:
    return change.get("values") or change.get("after_values") or {}


def _key_columns(primary_key: Any) -> list[str]:
    if not primary_key:
        return []
    if isinstance(primary_key, str):
        return [primary_key]
    return [str(column) for column in primary_key]
