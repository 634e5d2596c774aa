"""mysql-source: row changes of MySQL/MariaDB tables as CloudEvents.

``mode: binlog`` (change data capture) takes a consistent snapshot of the selected tables
(``snapshot_mode``), then streams inserts, updates, deletes and DDL from the binlog (ROW format,
full row images, ``binlog_row_metadata=FULL`` for column names). ``mode: polling`` reads tables by
an incrementing and/or timestamp column, for servers whose binlog is off limits
(:mod:`services.mysql.source.polling`).

Every change is one record: type ``<type_prefix>.<op>`` (c, u, d, r, ddl), subject from
``topic_template`` (``{db}.{table}``), data the envelope of :mod:`services.mysql.envelope`.
Event ids come from the partition (``{"server": server_name}``) and the offset (binlog file,
transaction start, row index; see :mod:`services.mysql.source.binlog`). Heartbeat records
(``<type_prefix>.heartbeat`` on ``heartbeat_topic``) move the offset on when the selected tables are
quiet but the binlog is not.

A committed offset whose binlog file the server has purged stops the source with the way out:
``meshconnect offsets reset <name> --config <file>`` and restart, which re-snapshots (``snapshot_mode: when_needed``
does that by itself).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import queue
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog

from runtime import ConfigError, ConnectorConfig, ConnectorRecord, RetriableError, Source, SourceContext
from services.mysql.client import connect, translate_mysql_errors
from services.mysql.envelope import encode_row
from services.mysql.source.binlog import BinlogReader, Failure, Position
from services.mysql.source.config import MysqlSourceConfig, PolledTable
from services.mysql.source.polling import TablePoller
from services.mysql.source.snapshot import SnapshotPlan, SnapshotReader, SnapshotRow

__all__ = ["MysqlSource", "MysqlSourceConfig", "PolledTable"]

log = structlog.get_logger()

_SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


class MysqlSource(Source[MysqlSourceConfig]):
    name: ClassVar[str] = "mysql-source"
    description: ClassVar[str] = (
        "Captures MySQL/MariaDB row changes from the binlog (snapshot + stream, DDL, heartbeats) or by polling."
    )
    config_model: ClassVar[type[ConnectorConfig]] = MysqlSourceConfig
    names_own_topics: ClassVar[bool] = True  # topic_template and heartbeat_topic, from the config

    def __init__(self, config: MysqlSourceConfig) -> None:
        super().__init__(config)
        self._partition = {"server": config.server_name}
        self._conn: Any = None
        self._server_id = 0
        self._snapshot: SnapshotReader | None = None
        self._snapshot_conn: Any = None
        self._stream_from: Position | None = None
        self._reader: BinlogReader | None = None
        self._queue: queue.Queue[list[ConnectorRecord] | Position | Failure] = queue.Queue(config.queue_batches)
        self._last_offset: dict[str, Any] | None = None
        self._last_emit = time.monotonic()
        self._boundary: Position | None = None
        self._poller = TablePoller(config, self._connect) if config.mode == "polling" else None
        self._log: Any = log
        self._context = SourceContext(self.name, {})

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, context: SourceContext) -> None:
        self._context = context
        self._log = context.log.bind(connector=self.name, name=context.connector_name)
        if self._poller is not None:
            await self._poller.start(context, self._log)
            return
        self._conn = await self._connect()
        try:
            await self._check_server()
            await self._choose_start(context.offset(self._partition))
        except BaseException:
            await self.stop()
            raise

    async def _connect(self, *, running: bool = False) -> Any:
        """A connection; ``running`` (polls, after a good start): a refused login is waited out, not fatal."""
        config = self.config
        return await connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            connect_timeout=config.connect_timeout,
            running=running,
        )

    async def _query(self, statement: str, params: Sequence[Any] = (), conn: Any = None) -> list[tuple[Any, ...]]:
        with translate_mysql_errors(statement.split(" ", 2)[0].lower()):
            async with asyncio.timeout(self.config.query_timeout), (conn or self._conn).cursor() as cursor:
                await cursor.execute(statement, params)
                return list(await cursor.fetchall())

    async def _check_server(self) -> None:
        variables = dict(
            await self._query(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN"
                " ('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'server_id')"
            )
        )
        wanted = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
        for variable, value in wanted.items():
            if variable in variables and str(variables[variable]).upper() != value:
                raise ConfigError(
                    f"server {variable}",
                    f"the server runs with {variable}={variables[variable]}; change data capture needs {value}",
                    f"set {variable}={value} in the server config (SET GLOBAL {variable}='{value}' for a running server)"
                    ", or use mode: polling",
                )
        self._server_id = int(variables.get("server_id", 0))

    async def _choose_start(self, offset: Any) -> None:
        config = self.config
        if offset is not None and offset.get("snapshot") is not None:
            snap = offset["snapshot"]
            plan = SnapshotPlan(Position(str(offset["file"]), int(offset["pos"])), str(snap["table"]), _after(snap.get("after")))
            await self._begin_snapshot(plan)
            return
        if offset is not None:
            start = Position(str(offset["file"]), int(offset["pos"]), int(offset.get("row", 0)))
            available = {row[0] for row in await self._query("SHOW BINARY LOGS")}
            if start.file in available:
                self._start_stream(start)
                return
            if config.snapshot_mode != "when_needed":
                raise ConfigError(
                    "offset",
                    f"binlog file {start.file} of the committed offset was purged from the server: changes since then are gone",
                    f"re-snapshot: stop every replica, run 'meshconnect offsets reset {self._context.connector_name}"
                    " --config <this worker config>', then start again (or set snapshot_mode: when_needed to do it itself)",
                )
            self._log.warning("committed binlog position was purged; taking a new snapshot", file=start.file)
        if config.snapshot_mode == "never" and offset is None:
            rows = await self._query("SHOW MASTER STATUS")
            if not rows:
                raise ConfigError("server log_bin", "the binlog is off", "start the server with log-bin, or use mode: polling")
            self._start_stream(Position(str(rows[0][0]), int(rows[0][1])))
            return
        self._snapshot_conn = await self._connect()
        with translate_mysql_errors("starting the snapshot"):
            position = await SnapshotReader.begin(self._snapshot_conn)
        await self._begin_snapshot(SnapshotPlan(position), fresh=False)

    async def _begin_snapshot(self, plan: SnapshotPlan, *, fresh: bool = True) -> None:
        if fresh:
            self._snapshot_conn = await self._connect()
            with translate_mysql_errors("starting the snapshot"):
                await SnapshotReader.begin(self._snapshot_conn)  # a new consistent view; streaming still starts at plan.position
        tables = await self._selected_tables()
        self._log.info(
            "snapshot starting", tables=len(tables), file=plan.position.file, pos=plan.position.pos, resume_table=plan.table
        )
        self._snapshot = SnapshotReader(self._snapshot_conn, tables, plan, self.config.snapshot_chunk_size, self._context)
        self._stream_from = plan.position

    async def _selected_tables(self) -> list[str]:
        rows = await self._query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE'")
        return sorted(f"{db}.{table}" for db, table in rows if self._accept(str(db), str(table)))

    def _accept(self, db: str, table: str) -> bool:
        config = self.config
        if db in _SYSTEM_SCHEMAS:
            return False
        if config.include_databases and not any(fnmatch.fnmatchcase(db, p) for p in config.include_databases):
            return False
        if any(fnmatch.fnmatchcase(db, p) for p in config.exclude_databases):
            return False
        name = f"{db}.{table}"
        if config.include_tables and not any(fnmatch.fnmatchcase(name, p) for p in config.include_tables):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in config.exclude_tables)

    def _start_stream(self, start: Position) -> None:
        config = self.config
        self._boundary = None if start.row else Position(start.file, start.pos)
        self._reader = BinlogReader(
            connection={
                "host": config.host,
                "port": config.port,
                "user": config.user,
                "passwd": config.password.get_secret_value() if config.password else "",
            },
            replica_id=config.replica_id,
            start=start,
            build=self._change_record,
            accept=self._accept,
            out=self._queue,
            max_batch=config.max_batch,
        )
        self._reader.start()
        self._log.info("streaming the binlog", file=start.file, pos=start.pos, row=start.row)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.close()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.stop)
            self._reader = None
        for conn in (self._snapshot_conn, self._conn):
            if conn is not None:
                conn.close()
        self._snapshot_conn = self._conn = None

    # -- poll --------------------------------------------------------------------------------------

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self._poller is not None:
            return await self._poller.poll()
        if self._snapshot is not None:
            return await self._poll_snapshot()
        return await self._poll_stream()

    async def _poll_snapshot(self) -> list[ConnectorRecord]:
        assert self._snapshot is not None and self._stream_from is not None
        if self._snapshot_conn is None:
            # The server went away mid-snapshot: a new consistent view, continuing after the last row handed over.
            conn = await self._connect(running=True)
            try:
                with translate_mysql_errors("restarting the snapshot", running=True):
                    await SnapshotReader.begin(conn)
            except BaseException:
                conn.close()
                raise
            self._snapshot_conn = conn
            self._snapshot.reconnect(conn)
        try:
            with translate_mysql_errors("reading the snapshot", running=True):
                async with asyncio.timeout(self.config.query_timeout):
                    rows = await self._snapshot.next_rows()
        except RetriableError:
            self._snapshot_conn.close()
            self._snapshot_conn = None
            raise
        records = [self._snapshot_record(row) for row in rows or ()]
        if self._snapshot.exhausted:
            with translate_mysql_errors("ending the snapshot", running=True):
                await self._snapshot.close()
            self._snapshot = None
            self._log.info("snapshot complete")
            self._start_stream(self._stream_from)
        return records

    async def _poll_stream(self) -> list[ConnectorRecord]:
        records: list[ConnectorRecord] = []
        failure: Failure | None = None
        waited = False
        while len(records) < self.config.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if records or failure or waited:
                    break
                waited = True
                try:
                    item = await asyncio.to_thread(self._queue.get, True, 1.0)
                except queue.Empty:
                    break
            if isinstance(item, list):
                records.extend(item)
                self._boundary = None  # an older boundary must never follow these records
            elif isinstance(item, Position):
                self._boundary = item
            else:
                failure = item
        if records:
            self._last_offset = dict(records[-1].offset)
            self._last_emit = time.monotonic()
            self._context.report_lag(records[-1].timestamp)
            return records
        if failure is not None:
            raise RetriableError(failure.message)
        self._context.report_lag(None)  # read all the server had logged
        return self._heartbeat()

    def _heartbeat(self) -> list[ConnectorRecord]:
        interval = self.config.heartbeat_interval
        if not interval or self._boundary is None or time.monotonic() - self._last_emit < interval:
            return []
        offset = self._boundary.offset()
        if offset == self._last_offset:
            return []
        self._last_offset, self._last_emit = offset, time.monotonic()
        now = dt.datetime.now(dt.UTC)
        return [
            ConnectorRecord(
                data={"ts_ms": int(now.timestamp() * 1000), "server": self.config.server_name, **offset},
                partition=self._partition,
                offset=offset,
                timestamp=now,
                type=f"{self.config.type_prefix}.heartbeat",
                subject=self.config.heartbeat_topic,
                datacontenttype="application/json",
            )
        ]

    # -- records -----------------------------------------------------------------------------------

    def _source_block(
        self, db: str, table: str, position: Position, gtid: str | None, ts: dt.datetime, *, snapshot: bool
    ) -> dict[str, Any]:
        return {
            "server_id": self._server_id,
            "file": position.file,
            "pos": position.pos,
            "row": position.row,
            "gtid": gtid,
            "ts_ms": int(ts.timestamp() * 1000),
            "db": db,
            "table": table,
            "snapshot": snapshot,
        }

    def _change_record(
        self,
        *,
        op: str,
        db: str,
        table: str,
        position: Position,
        gtid: str | None,
        timestamp: dt.datetime,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        key: list[str] | None = None,
        ddl: str | None = None,
    ) -> ConnectorRecord:
        """One binlog change as a record (called on the reader thread)."""
        source = self._source_block(db, table, position, gtid, timestamp, snapshot=False)
        if ddl is not None:
            data: dict[str, Any] = {"ddl": ddl, "source": source}
        else:
            binary: set[str] = set()
            data = {
                "op": op,
                "before": encode_row(before, binary),
                "after": encode_row(after, binary),
                "key": key or [],
                "source": source,
            }
            if binary:
                data["binary"] = sorted(binary)
        return ConnectorRecord(
            data=data,
            partition=self._partition,
            offset=position.offset(gtid),
            timestamp=timestamp,
            type=f"{self.config.type_prefix}.{op}",
            subject=self.config.topic_template.format(db=db, table=table),
            datacontenttype="application/json",
        )

    def _snapshot_record(self, row: SnapshotRow) -> ConnectorRecord:
        now = dt.datetime.now(dt.UTC)
        assert self._stream_from is not None
        source = self._source_block(row.db, row.name, self._stream_from, None, now, snapshot=True)
        if row.row is None:
            data: dict[str, Any] = {"ddl": row.ddl, "source": source}
            op = "ddl"
        else:
            binary: set[str] = set()
            data = {
                "op": "r",
                "before": None,
                "after": encode_row(row.row, binary),
                "key": list(row.key_columns),
                "source": source,
            }
            if binary:
                data["binary"] = sorted(binary)
            op = "r"
        return ConnectorRecord(
            data=data,
            partition=self._partition,
            offset=row.offset,
            timestamp=now,
            type=f"{self.config.type_prefix}.{op}",
            subject=self.config.topic_template.format(db=row.db, table=row.name),
            datacontenttype="application/json",
        )


def _after(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)
