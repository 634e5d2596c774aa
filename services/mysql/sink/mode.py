"""What each mode of the sink is: records in, row changes out, written a batch per transaction.

:class:`SinkMode` writes; a mode (:mod:`.events`, :mod:`.mapped`, :mod:`.cdc`) says what a record
changes (:meth:`SinkMode.changes`) and what the target needs at start (:meth:`SinkMode.prepare`).
Within a batch, changes to one key collapse to their net effect (deletes run before upserts), so
each batch is a few multi-row statements. When the server refuses a row's values the batch is
rolled back and replayed row by row under savepoints: the bad rows come back as rejections, the
rest commit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pymysql
import structlog

from runtime import ConnectorRecord, DataError, Rejection, SinkContext
from services.mysql.client import is_data_error
from services.mysql.literals import literals_for
from services.mysql.sink.changes import Change
from services.mysql.sink.config import MysqlSinkConfig
from services.mysql.sink.tables import TableCache
from services.mysql.sql import quote

__all__ = ["Planned", "SinkMode"]

_DELETE_CHUNK = 1000

# (table, key) -> (key columns, delete first?, values to upsert after)
_NetChanges = dict[tuple[str, tuple[Any, ...]], tuple[tuple[str, ...], bool, dict[str, Any] | None]]


@dataclass(slots=True)
class Planned:
    """A record and the row changes it makes."""

    record: ConnectorRecord
    changes: list[Change]


class SinkMode:
    """One way of writing records: the base writes :class:`Change` s; a mode plans them from records.

    ``connection`` hands out a pooled connection (for work of the mode's own, outside ``put``);
    ``tables`` is the live schema cache of a mode that writes tables it does not own.
    """

    def __init__(
        self,
        config: MysqlSinkConfig,
        connection: Callable[[], AbstractAsyncContextManager[Any]],
        tables: TableCache | None = None,
    ) -> None:
        self.config = config
        self.connection = connection
        self.tables = tables
        self.log: Any = structlog.get_logger()

    async def prepare(self, cursor: Any) -> None:
        """Make the target ready at start (its tables), or raise ConfigError naming what is missing."""

    async def start(self, context: SinkContext, log: Any) -> None:
        """Begin the mode's own work, after :meth:`prepare`."""
        self.log = log
        if self.tables is not None:
            self.tables.log = log

    async def stop(self) -> None:
        """End the mode's own work."""

    async def changes(self, conn: Any, record: ConnectorRecord) -> list[Change]:
        """The row changes ``record`` makes; DataError when it cannot be written."""
        raise NotImplementedError

    async def put(self, conn: Any, records: Sequence[ConnectorRecord]) -> list[Rejection]:
        """Write ``records`` over ``conn``; the ones that cannot be written come back as rejections."""
        if self.tables is not None:
            self.tables.begin_put()
        return await self.write_records(conn, records)

    async def write_records(self, conn: Any, records: Sequence[ConnectorRecord]) -> list[Rejection]:
        rejections: list[Rejection] = []
        segment: list[Planned] = []
        for record in records:
            try:
                segment.append(Planned(record, await self.changes(conn, record)))
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
        return rejections + await self.write_segment(conn, segment)

    async def write_segment(self, conn: Any, segment: list[Planned]) -> list[Rejection]:
        """Write ``segment`` in one transaction; on a data error, again row by row to isolate it."""
        if not segment:
            return []
        changes = [change for planned in segment for change in planned.changes]
        # autocommit is off: everything since the last commit or rollback is this batch's one transaction.
        try:
            async with conn.cursor() as cursor:
                await self.write_changes(cursor, changes)
            await conn.commit()
            return []
        except (pymysql.MySQLError, DataError) as exc:
            await _rollback(conn)
            if not isinstance(exc, DataError) and not is_data_error(exc):
                raise
            self.log.info("batch refused; isolating the bad rows", reason=str(exc))
            if self.tables is not None:
                self.tables.forget()
        rejections: list[Rejection] = []
        async with conn.cursor() as cursor:
            for planned in segment:
                await cursor.execute("SAVEPOINT row_write")
                try:
                    await self.write_changes(cursor, planned.changes)
                except DataError as exc:  # a value no literal can carry (a NaN): refused before the server saw it
                    await cursor.execute("ROLLBACK TO SAVEPOINT row_write")
                    rejections.append(Rejection(planned.record, exc.reason))
                except pymysql.MySQLError as exc:
                    if not is_data_error(exc):
                        raise
                    await cursor.execute("ROLLBACK TO SAVEPOINT row_write")
                    rejections.append(Rejection(planned.record, f"MySQL refused the row: {exc.args[-1]}"))
        await conn.commit()
        return rejections

    async def write_changes(self, cursor: Any, changes: list[Change]) -> None:
        """Write ``changes`` (cdc: those newer than their rows' versions)."""
        await self.execute_net(cursor, changes)

    async def execute_net(self, cursor: Any, changes: list[Change]) -> None:
        """Collapse changes per key to their net effect, then deletes, then upserts, multi-row."""
        deletes: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        upserts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
        if all(c.op == "upsert" for c in changes) and len({(c.table, c.key) for c in changes}) == len(changes):
            for change in changes:  # nothing to collapse
                upserts.setdefault((change.table, change.columns, change.key_columns), []).append(change.row)
        else:
            for (table, key), (key_columns, deleted, values) in _collapse(changes).items():
                if deleted:
                    deletes.setdefault((table, key_columns), []).append(key)
                if values is not None:
                    upserts.setdefault((table, tuple(values), key_columns), []).append(tuple(values.values()))
        database = self.config.database
        for (table, key_columns), keys in deletes.items():
            for start in range(0, len(keys), _DELETE_CHUNK):
                chunk = keys[start : start + _DELETE_CHUNK]
                tuple_sql = "(" + ",".join(["%s"] * len(key_columns)) + ")"
                target = quote(*key_columns) if len(key_columns) == 1 else "(" + ",".join(quote(c) for c in key_columns) + ")"
                await cursor.execute(
                    f"DELETE FROM {quote(database, table)} WHERE {target} IN ({','.join([tuple_sql] * len(chunk))})",
                    [value for key in chunk for value in key],
                )
        for (table, columns, key_columns), rows in upserts.items():
            await _send_upsert(cursor, database, (table, columns, key_columns), rows)


async def _rollback(conn: Any) -> None:
    try:
        await conn.rollback()
    except Exception:  # the connection is already broken; the pool drops it on release
        conn.close()


def _collapse(changes: list[Change]) -> _NetChanges:
    """(table, key) -> (key columns, delete first?, values to upsert after): the net effect of the changes, in order."""
    net: _NetChanges = {}
    for change in changes:
        slot = (change.table, change.key)
        _, deleted, values = net.get(slot, (change.key_columns, False, None))
        if change.op == "delete":
            net[slot] = (change.key_columns, True, None)
        else:
            merged = dict(values) if values is not None else {}
            merged.update(zip(change.columns, change.row, strict=True))
            net[slot] = (change.key_columns, deleted, merged)
    return net


async def _send_upsert(
    cursor: Any, database: str, target: tuple[str, tuple[str, ...], tuple[str, ...]], rows: list[tuple[Any, ...]]
) -> None:
    """Multi-row upserts of ``rows`` (values of ``target``'s columns), each within the client's statement length.

    Each row's literals are built once (:mod:`services.mysql.literals`, equal to the driver's binding)
    and rows are packed into statements by their encoded size: nothing is escaped twice.
    """
    head, tail = _upsert_sql(database, *target)
    connection = cursor.connection
    literals = literals_for(connection)
    encoding = connection.encoding
    room = cursor.max_stmt_length - len(head) - len(tail)
    values: list[bytes] = []
    size = -1  # the commas between rows: one fewer than the rows
    for row in rows:
        encoded = literals.row(row).encode(encoding, "surrogateescape")
        if values and size + 1 + len(encoded) > room:
            await cursor.execute(head + b",".join(values) + tail)
            values, size = [], -1
        values.append(encoded)
        size += 1 + len(encoded)
    if values:  # a row longer than the limit alone goes alone: the server's max_allowed_packet decides
        await cursor.execute(head + b",".join(values) + tail)


@functools.lru_cache(maxsize=64)
def _upsert_sql(database: str, table: str, columns: tuple[str, ...], key_columns: tuple[str, ...]) -> tuple[bytes, bytes]:
    """The text of an upsert before and after its VALUES rows: built once per table and column set."""
    updates = [f"{quote(c)}=VALUES({quote(c)})" for c in columns if c not in key_columns] or [
        f"{quote(key_columns[0])}={quote(key_columns[0])}"
    ]
    head = f"INSERT INTO {quote(database, table)} ({','.join(quote(c) for c in columns)}) VALUES "
    return head.encode(), f" ON DUPLICATE KEY UPDATE {','.join(updates)}".encode()
