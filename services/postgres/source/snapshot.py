"""The initial snapshot: the publication's tables read in primary-key chunks inside one repeatable-read transaction.

A fresh snapshot is the slot's own: the slot is created on a replication connection inside a
``REPEATABLE READ`` transaction with ``USE_SNAPSHOT``, so that transaction sees exactly what the
slot's consistent point has, and every later commit arrives through the slot. The snapshot lives only
as long as that transaction (as an exported one lives only while its creating connection is open):
a restarted or reconnected snapshot reads the tables and chunks not yet handed over in a *new*
``REPEATABLE READ`` transaction, which may already hold changes that the slot replays afterwards. The
replayed changes are applied over those rows in commit order, so the target converges.

Rows are read with ``COPY (SELECT ...) TO STDOUT`` (the only way to read on a replication
connection, whose SQL is the simple query protocol alone): each value as its type's text, the text
pgoutput sends too, converted alike (:func:`~.pgoutput.column_value`). The next chunk starts after
the last key handed over, written as quoted literals cast to the key's type (the simple protocol
binds nothing); a table without a primary key is read in ``ctid`` order and, after a restart in its
middle, again from its start.

A table dropped before the snapshot reads it (or, half read, before a new transaction reads on) has no
rows left to read: it is skipped with a warning, as Debezium does, and the snapshot goes on with the
others. The first read of a table in a transaction runs under a savepoint, so that its failure leaves
the transaction, and its snapshot, usable; from then on the transaction's lock keeps the table there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from runtime import DataError, SourceContext
from services.postgres.client import pg_call, quote_identifier
from services.postgres.source.pgoutput import column_value

__all__ = ["SnapshotChunk", "SnapshotReader", "Table", "read_tables"]

log = structlog.get_logger()

_PROGRESS_EVERY = 5.0
_TABLES = "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2"
_COLUMNS = """
SELECT a.attname, a.atttypid::int AS type_oid, format_type(a.atttypid, a.atttypmod) AS sql_type,
       coalesce(array_position(string_to_array(i.indkey::text, ' ')::int2[], a.attnum), 0) AS key_position
FROM pg_attribute a
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
_ESTIMATE = "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::text::regclass"
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: tuple[tuple[str, int, str], ...]
    """(name, type oid, type as SQL) in table order"""
    key: tuple[str, ...]
    """the primary key's columns in key order; empty without one"""

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    table: Table
    rows: list[tuple[dict[str, Any], list[str]]]
    """each row with the text of its key (its ``ctid`` without a key): where a chunk after it begins"""


async def read_tables(connection: asyncpg.Connection, publication: str, seconds: float) -> list[Table]:
    """The publication's tables, sorted, with their columns and primary keys (read from the catalog)."""
    tables: list[Table] = []
    for schema, name in await pg_call("list tables", connection.fetch(_TABLES, publication), seconds):
        try:
            rows = await pg_call("read columns", connection.fetch(_COLUMNS, quote_identifier(schema, name)), seconds)
        except asyncpg.UndefinedTableError:
            log.warning("table dropped before the snapshot read it: skipped", table=f"{schema}.{name}")
            continue
        columns = tuple((row["attname"], int(row["type_oid"]), str(row["sql_type"])) for row in rows)
        keyed = sorted((row["key_position"], row["attname"]) for row in rows if row["key_position"])
        tables.append(Table(schema, name, columns, tuple(column for _, column in keyed)))
    return tables


class SnapshotReader:
    """Hands the tables over chunk by chunk, resuming after ``(table, after)`` of a committed offset."""

    def __init__(
        self,
        tables: Sequence[Table],
        chunk_size: int,
        context: SourceContext,
        resume: tuple[str, list[str] | None] | None,
        seconds: float,
    ) -> None:
        self._seconds = seconds  # the bound of each query
        resume_table = resume[0] if resume else None
        self._tables = [table for table in tables if resume_table is None or table.qualified >= resume_table]
        self._after: list[str] | None = None
        if resume is not None and self._tables and self._tables[0].qualified == resume_table and self._tables[0].key:
            self._after = resume[1]  # a keyless table is read again from its start: its ctids are not stable
        self._chunk = chunk_size
        self._context = context  # its gauges: meshconnect_snapshot_rows_done and _total, per table
        self._done = 0
        self._total = 0
        self._started = self._logged = 0.0
        self._opened: str | None = None
        # The snapshot transaction (its connection) that has read the current table: it holds the table's lock.
        self._locked_by: asyncpg.Connection | None = None

    @property
    def exhausted(self) -> bool:
        return not self._tables

    async def next_chunk(self, reading: asyncpg.Connection, catalog: asyncpg.Connection) -> SnapshotChunk | None:
        """The next rows over ``reading`` (the snapshot transaction), or None once every table is read."""
        while self._tables:
            table = self._tables[0]
            try:
                if self._opened != table.qualified:
                    await self._open(table, catalog)
                rows = await self._read(reading, table)
            except asyncpg.UndefinedTableError:
                log.warning("table dropped during the snapshot: skipped", table=table.qualified, rows_read=self._done)
                self._next_table()
                continue
            self._done += len(rows)
            self._gauges(table)
            if len(rows) < self._chunk:
                self._progress(table, final=True)
                self._next_table()
            else:
                self._after = rows[-1][1]
                self._progress(table)
            if rows:
                return SnapshotChunk(table, rows)
        return None

    def _next_table(self) -> None:
        self._tables.pop(0)
        self._after = None
        self._locked_by = None

    async def _open(self, table: Table, catalog: asyncpg.Connection) -> None:
        estimate = await pg_call(
            "estimate rows", catalog.fetchval(_ESTIMATE, quote_identifier(table.schema, table.name)), self._seconds, running=True
        )
        self._opened = table.qualified
        self._total, self._done = int(estimate or 0), 0
        self._started = self._logged = time.monotonic()
        self._gauges(table)
        log.info("snapshot of table started", table=table.qualified, rows_estimate=self._total, resuming=self._after is not None)

    async def _read(self, reading: asyncpg.Connection, table: Table) -> list[tuple[dict[str, Any], list[str]]]:
        types = {name: sql_type for name, _, sql_type in table.columns}
        order = [quote_identifier(column) for column in table.key] or ["ctid"]
        after_types = [types[column] for column in table.key] or ["tid"]
        where = ""
        if self._after is not None:
            literals = ", ".join(f"{_literal(text)}::{sql_type}" for text, sql_type in zip(self._after, after_types, strict=True))
            where = f" WHERE ({', '.join(order)}) > ({literals})"
        selected = ", ".join([*(quote_identifier(name) for name, _, _ in table.columns), *(["ctid"] if not table.key else [])])
        relation = quote_identifier(table.schema, table.name)
        query = f"SELECT {selected} FROM {relation}{where} ORDER BY {', '.join(order)} LIMIT {self._chunk}"
        received: list[bytes] = []

        async def keep(data: bytes) -> None:
            received.append(bytes(data))

        copy = f"snapshot of {table.qualified}"
        locked = self._locked_by is reading  # (a separate name: "is" would narrow reading to the Optional)
        if locked:
            await pg_call(copy, reading.copy_from_query(query, output=keep), self._seconds, running=True)
        else:  # the table may be gone: a failure must not abort the transaction (see the module docstring)
            await pg_call(copy, reading.execute("SAVEPOINT snapshot_table"), self._seconds, running=True)
            try:
                await pg_call(copy, reading.copy_from_query(query, output=keep), self._seconds, running=True)
            except asyncpg.UndefinedTableError:
                await pg_call(copy, reading.execute("ROLLBACK TO SAVEPOINT snapshot_table"), self._seconds, running=True)
                raise
            await pg_call(copy, reading.execute("RELEASE SAVEPOINT snapshot_table"), self._seconds, running=True)
            self._locked_by = reading
        rows: list[tuple[dict[str, Any], list[str]]] = []
        for line in b"".join(received).decode().splitlines():
            fields = [_unescape(field) for field in line.split("\t")]
            texts = dict(zip([name for name, _, _ in table.columns], fields, strict=False))
            row = {name: None if texts[name] is None else column_value(str(texts[name]), oid) for name, oid, _ in table.columns}
            rows.append((row, [str(texts[column]) for column in table.key] if table.key else [str(fields[-1])]))
        return rows

    def _gauges(self, table: Table) -> None:
        self._total = max(self._total, self._done)
        self._context.gauge("meshconnect_snapshot_rows_total", table=table.qualified).set(self._total)
        self._context.gauge("meshconnect_snapshot_rows_done", table=table.qualified).set(self._done)

    def _progress(self, table: Table, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._logged < _PROGRESS_EVERY:
            return
        self._logged = now
        rate = self._done / max(now - self._started, 1e-6)
        left = max(self._total - self._done, 0)
        log.info(
            "snapshot finished table" if final else "snapshot progress",
            table=table.qualified,
            rows_done=self._done,
            rows_total=self._total,
            rows_per_second=round(rate, 1),
            seconds_left=0 if final else round(left / rate, 1) if rate else None,
        )


def _unescape(field: str) -> str | None:
    """A field of COPY's text format: ``\\N`` is NULL, backslash escapes stand for their characters."""
    if field == "\\N":
        return None
    return _ESCAPE.sub(lambda match: _ESCAPES.get(match[1], match[1]), field) if "\\" in field else field


def _literal(text: str) -> str:
    """``text`` as a standard SQL string literal (standard_conforming_strings is on: backslashes are plain)."""
    if "\x00" in text:
        raise DataError("a snapshot key in the committed offset holds a NUL character; reset the offsets to snapshot again")
    return "'" + text.replace("'", "''") + "'"
