"""The initial snapshot: every selected table read in primary-key chunks inside one consistent transaction.

The binlog position that matches the snapshot is taken with the transaction (MariaDB reports it as
``binlog_snapshot_file/position`` without any lock; MySQL needs a brief global read lock). Every
snapshot record's offset carries that position and the key of its row, so a restarted snapshot
continues after the last row the mesh acknowledged (in a new transaction) and streaming then starts
from the original position: changes made meanwhile are replayed over the rows, which converges.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from runtime import SourceContext
from services.mysql.envelope import json_value
from services.mysql.source.binlog import Position
from services.mysql.sql import quote

__all__ = ["SnapshotPlan", "SnapshotReader"]

_PROGRESS_EVERY = 5.0

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    """Where a snapshot stands: its binlog position, and the table/key it resumes after."""

    position: Position
    table: str | None = None
    after: tuple[Any, ...] | None = None

    def offset(self, table: str, after: Sequence[Any] | None) -> dict[str, Any]:
        return {**self.position.offset(), "snapshot": {"table": table, "after": None if after is None else list(after)}}


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    table: str
    db: str
    name: str
    key_columns: tuple[str, ...]
    row: dict[str, Any] | None  # None: the table's schema (SHOW CREATE TABLE)
    offset: dict[str, Any]
    ddl: str | None = None


class SnapshotReader:
    """Reads ``tables`` (``db.table`` names, sorted) chunk by chunk over one connection."""

    def __init__(self, conn: Any, tables: Sequence[str], plan: SnapshotPlan, chunk_size: int, context: SourceContext) -> None:
        self._conn = conn
        self._tables = [t for t in sorted(tables) if plan.table is None or t >= plan.table]
        self._plan = plan
        self._chunk = chunk_size
        self._context = context  # its gauges: meshconnect_snapshot_rows_done and _total, per table
        self._current: str | None = None
        self._after: tuple[Any, ...] | None = plan.after
        self._key: tuple[str, ...] = ()
        self._done = 0
        self._total = 0
        self._started = 0.0
        self._logged = 0.0
        self._log: Any = log.bind(name=context.connector_name)

    @staticmethod
    async def begin(conn: Any) -> Position:
        """Open the consistent-snapshot transaction on ``conn``; the binlog position it matches."""
        async with conn.cursor() as cursor:
            await cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            await cursor.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = dict(await cursor.fetchall())
            if status.get("Binlog_snapshot_file"):
                return Position(str(status["Binlog_snapshot_file"]), int(status["Binlog_snapshot_position"]))
            # MySQL: hold a global read lock just long enough to pair the transaction with a position.
            await cursor.execute("ROLLBACK")
            await cursor.execute("FLUSH TABLES WITH READ LOCK")
            try:
                await cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                await cursor.execute("SHOW MASTER STATUS")
                file, pos = (await cursor.fetchone())[:2]
            finally:
                await cursor.execute("UNLOCK TABLES")
            return Position(str(file), int(pos))

    def reconnect(self, conn: Any) -> None:
        """Go on over ``conn`` (a new consistent view) after the last row handed over."""
        self._conn = conn

    @property
    def exhausted(self) -> bool:
        """Every table read: the transaction can end (it holds metadata locks that block DDL)."""
        return self._current is None and not self._tables

    async def next_rows(self) -> list[SnapshotRow] | None:
        """The next chunk (a table's schema first), or ``None`` when every table is done."""
        while True:
            if self._current is None:
                if not self._tables:
                    return None
                opened = await self._open_table(self._tables[0])
                self._tables.pop(0)  # only once opened: a failed open is tried again
                return [opened]
            rows = await self._read_chunk()
            if len(rows) < self._chunk:
                self._progress(final=True)
                self._current, self._after = None, None
            if rows:
                return rows

    async def _open_table(self, table: str) -> SnapshotRow:
        db, name = table.split(".", 1)
        async with self._conn.cursor() as cursor:
            await cursor.execute(f"SHOW CREATE TABLE {quote(db, name)}")
            create = str((await cursor.fetchone())[1])
            await cursor.execute(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
                " AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            self._key = tuple(row[0] for row in await cursor.fetchall())
            await cursor.execute(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (db, name)
            )
            estimate = await cursor.fetchone()
        self._current = table
        resuming = self._plan.table == table and self._plan.after is not None
        self._after = self._plan.after if resuming else None
        self._total = int(estimate[0] or 0) if estimate else 0
        self._done = 0
        self._started = self._logged = time.monotonic()
        self._context.gauge("meshconnect_snapshot_rows_total", table=table).set(self._total)
        self._context.gauge("meshconnect_snapshot_rows_done", table=table).set(0)
        self._log.info("snapshot of table started", table=table, rows_estimate=self._total, resuming=resuming)
        ddl = create.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
        return SnapshotRow(table, db, name, self._key, None, self._plan.offset(table, None), ddl)

    async def _read_chunk(self) -> list[SnapshotRow]:
        assert self._current is not None
        db, name = self._current.split(".", 1)
        key = self._key
        params: list[Any] = []
        where = ""
        if key and self._after is not None:
            where = f" WHERE ({','.join(quote(c) for c in key)}) > ({','.join(['%s'] * len(key))})"
            params = list(self._after)
        order = f" ORDER BY {','.join(quote(c) for c in key)}" if key else ""
        # Without a primary key the chunk position is a row count (the table is read in one order).
        limit = f" LIMIT {self._chunk}" if key else f" LIMIT {int(self._after[0]) if self._after else 0}, {self._chunk}"
        async with self._conn.cursor() as cursor:
            await cursor.execute(f"SELECT * FROM {quote(db, name)}{where}{order}{limit}", params)
            columns = [d[0] for d in cursor.description]
            fetched = await cursor.fetchall()
        rows: list[SnapshotRow] = []
        skipped = int(self._after[0]) if (not key and self._after) else 0
        for index, values in enumerate(fetched):
            row = dict(zip(columns, values, strict=True))
            after = tuple(json_value(row[c])[0] for c in key) if key else (skipped + index + 1,)
            rows.append(SnapshotRow(self._current, db, name, key, row, self._plan.offset(self._current, after)))
            self._after = after
        self._done += len(rows)
        self._context.gauge("meshconnect_snapshot_rows_done", table=self._current).set(self._done)
        if self._done > self._total:
            self._total = self._done
            self._context.gauge("meshconnect_snapshot_rows_total", table=self._current).set(self._total)
        self._progress()
        return rows

    def _progress(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._logged < _PROGRESS_EVERY:
            return
        self._logged = now
        rate = self._done / max(now - self._started, 1e-6)
        left = max(self._total - self._done, 0)
        self._log.info(
            "snapshot finished table" if final else "snapshot progress",
            table=self._current,
            rows_done=self._done,
            rows_total=self._total,
            rows_per_second=round(rate, 1),
            seconds_left=0 if final else round(left / rate, 1) if rate else None,
        )

    async def close(self) -> None:
        async with self._conn.cursor() as cursor:
            await cursor.execute("COMMIT")
