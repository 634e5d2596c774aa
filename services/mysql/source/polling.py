"""mysql-source's ``mode: polling``: tables read by an incrementing and/or timestamp column.

For servers whose binlog is off limits. Each table is its own partition (``{"server", "table"}``);
its offset is the last row's column values, so a restart continues after the last row the mesh
acknowledged. Rows stamped in the current instant wait for it to pass (others may still join
them); a timestamp-only table is ordered by its primary key within one stamp, so a batch limit
cannot skip any row. Deletes are not seen: every record is a read (``op: r``) of a row as it is.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pymysql
import structlog

from runtime import ConfigError, ConnectorRecord, SourceContext
from services.mysql.client import translate_mysql_errors
from services.mysql.envelope import encode_row, json_value
from services.mysql.source.config import MysqlSourceConfig, PolledTable
from services.mysql.sql import load_table, quote

__all__ = ["TablePoller"]


class TablePoller:
    """Polls ``config.poll_tables`` in turn over a connection of its own (``connect`` opens one)."""

    def __init__(self, config: MysqlSourceConfig, connect: Callable[..., Awaitable[Any]]) -> None:
        """``connect(running=...)`` opens a connection (see ``MysqlSource._connect``)."""
        self.config = config
        self._connect = connect
        self._conn: Any = None
        self._offsets: dict[str, dict[str, Any]] = {}
        # Timestamp-only tables: the primary key orders rows sharing a stamp, so a batch limit cannot skip any.
        self._keys: dict[str, tuple[str, ...]] = {}
        self._next = 0
        self._due = 0.0
        self._log: Any = structlog.get_logger()

    async def start(self, context: SourceContext, log: Any) -> None:
        """Connect, and take each table's committed offset (and tie-break key)."""
        self._log = log
        self._conn = await self._connect()
        try:
            for table in self.config.poll_tables:
                self._offsets[table.table] = dict(context.offset(self._partition(table)) or {})
                if table.timestamp_column and not table.incrementing_column:
                    self._keys[table.table] = await self._tiebreak_key(table)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def poll(self) -> list[ConnectorRecord]:
        wait = self._due - time.monotonic()
        if wait > 0:  # poll() returns within a second even when poll_interval is longer
            await asyncio.sleep(min(wait, 1.0))
            return []
        tables = self.config.poll_tables
        for _ in range(len(tables)):
            table = tables[self._next % len(tables)]
            self._next += 1
            records = await self._poll_table(table)
            if records:
                return records
        self._due = time.monotonic() + self.config.poll_interval
        return []

    def _partition(self, table: PolledTable) -> dict[str, Any]:
        return {"server": self.config.server_name, "table": table.table}

    async def _tiebreak_key(self, table: PolledTable) -> tuple[str, ...]:
        """The primary key of a table polled by timestamp alone: it orders the rows sharing one stamp."""
        db, name = table.table.split(".")
        with translate_mysql_errors(f"reading the schema of {table.table}"):
            async with asyncio.timeout(self.config.query_timeout), self._conn.cursor() as cursor:
                schema = await load_table(cursor, db, name)
        if schema is None:
            raise ConfigError(
                "config.poll_tables", f"table {table.table} does not exist", "create it or remove it from poll_tables"
            )
        if not schema.primary_key:
            self._log.warning(
                "polled table has no primary key: rows sharing one timestamp may be missed when max_batch splits them",
                table=table.table,
                fix="add an incrementing_column to its poll_tables entry, or a primary key to the table",
            )
        return schema.primary_key

    async def _poll_table(self, table: PolledTable) -> list[ConnectorRecord]:
        db, name = table.table.split(".")
        inc, ts = table.incrementing_column, table.timestamp_column
        key = self._keys.get(table.table, ())
        last = self._offsets[table.table]
        conditions: list[str] = []
        params: list[Any] = []
        if ts:
            # Rows stamped in the current instant may still be joined by others with the same stamp: wait for it to pass.
            conditions.append(f"{quote(ts)} < CURRENT_TIMESTAMP(6)")
            if "ts" in last and inc:
                conditions.append(f"(({quote(ts)} = %s AND {quote(inc)} > %s) OR {quote(ts)} > %s)")
                params += [last["ts"], last.get("inc"), last["ts"]]
            elif "ts" in last and key and "key" in last:
                after_key = f"({','.join(quote(c) for c in key)}) > ({','.join(['%s'] * len(key))})"
                conditions.append(f"(({quote(ts)} = %s AND {after_key}) OR {quote(ts)} > %s)")
                params += [last["ts"], *(_bound_key_value(value) for value in last["key"]), last["ts"]]
            elif "ts" in last:
                conditions.append(f"{quote(ts)} > %s")
                params.append(last["ts"])
        elif inc and "inc" in last:
            conditions.append(f"{quote(inc)} > %s")
            params.append(last["inc"])
        order = ",".join(quote(c) for c in (ts, *((inc,) if inc else key)) if c)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        statement = f"SELECT * FROM {quote(db, name)}{where} ORDER BY {order} LIMIT {self.config.max_batch}"
        with translate_mysql_errors(f"polling {table.table}", running=True):
            if self._conn is None:
                self._conn = await self._connect(running=True)
            try:
                async with asyncio.timeout(self.config.query_timeout), self._conn.cursor() as cursor:
                    await cursor.execute(statement, params)
                    columns = [d[0] for d in cursor.description]
                    fetched = await cursor.fetchall()
            except (pymysql.OperationalError, pymysql.InterfaceError, OSError, TimeoutError):
                self._conn.close()  # reconnect on the next poll
                self._conn = None
                raise
        records = []
        now = dt.datetime.now(dt.UTC)
        for values in fetched:
            row = dict(zip(columns, values, strict=True))
            offset: dict[str, Any] = {}
            if inc:
                offset["inc"] = json_value(row[inc])[0]
            if ts:
                offset["ts"] = json_value(row[ts])[0]
                if key and not inc:
                    offset["key"] = [_key_offset_value(row[column]) for column in key]
                elif not inc:
                    offset["n"] = (
                        last.get("n", 0) + 1 if last.get("ts") == offset["ts"] else 1
                    )  # distinct offsets for equal stamps
            last = offset
            binary: set[str] = set()
            source = {
                "server_id": None,
                "db": db,
                "table": name,
                "snapshot": False,
                "mode": "polling",
                "ts_ms": int(now.timestamp() * 1000),
            }
            data: dict[str, Any] = {"op": "r", "before": None, "after": encode_row(row, binary), "key": [], "source": source}
            if binary:
                data["binary"] = sorted(binary)
            records.append(
                ConnectorRecord(
                    data=data,
                    partition=self._partition(table),
                    offset=offset,
                    timestamp=now,
                    type=f"{self.config.type_prefix}.r",
                    subject=self.config.topic_template.format(db=db, table=name),
                    datacontenttype="application/json",
                )
            )
        self._offsets[table.table] = last
        return records


def _key_offset_value(value: Any) -> Any:
    """A key column's value as stored in an offset: JSON, bytes that are not UTF-8 as ``{"base64": ...}``."""
    stored, is_base64 = json_value(value)
    return {"base64": stored} if is_base64 else stored


def _bound_key_value(stored: Any) -> Any:
    """The value to bind for a key column's value stored by ``_key_offset_value``."""
    return base64.b64decode(stored["base64"]) if isinstance(stored, dict) else stored
