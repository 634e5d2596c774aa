"""mysql-sink: CloudEvents into MySQL/MariaDB, one transaction per batch, idempotent on replay.

Three modes (``mode``), each its own module; :class:`MysqlSink` holds the connection pool and hands
every batch to its mode:

* ``events`` (:mod:`.events`): one row per event in ``table``, primary key (source, id).
* ``mapped`` (:mod:`.mapped`): fields of the JSON data upserted into ``table`` on its key, or deleted.
* ``cdc`` (:mod:`.cdc`): mysql-source change envelopes applied to the same tables in ``database``,
  in source order, so source -> mesh -> sink replicates tables.

How a batch is written (net changes, one transaction, bad rows isolated) is :mod:`.mode`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog

from runtime import ConfigError, ConnectorConfig, ConnectorRecord, Rejection, Sink, SinkContext
from services.mysql.client import Pooled, create_pool, translate_mysql_errors
from services.mysql.literals import check_session
from services.mysql.sink.cdc import CdcMode
from services.mysql.sink.config import MysqlSinkConfig
from services.mysql.sink.events import EventsMode
from services.mysql.sink.mapped import MappedMode
from services.mysql.sink.mode import SinkMode
from services.mysql.sql import quote

__all__ = ["MysqlSink", "MysqlSinkConfig"]

log = structlog.get_logger()

_SESSION = "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone='+00:00'"


class MysqlSink(Sink[MysqlSinkConfig]):
    name: ClassVar[str] = "mysql-sink"
    description: ClassVar[str] = (
        "Writes events to MySQL/MariaDB: events table, mapped columns or CDC apply; upserts, one transaction per batch."
    )
    config_model: ClassVar[type[ConnectorConfig]] = MysqlSinkConfig
    routed_target: ClassVar[str | None] = "table"

    def __init__(self, config: MysqlSinkConfig) -> None:
        super().__init__(config)
        self._pool: Any = None
        self._mode: SinkMode
        if config.mode == "cdc":
            self._mode = CdcMode(config, self._connection)
        elif config.mode == "mapped":
            self._mode = MappedMode(config, self._connection)
        else:
            self._mode = EventsMode(config, self._connection)

    async def start(self, context: SinkContext) -> None:
        config = self.config
        self._pool = await create_pool(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            connect_timeout=config.connect_timeout,
            size=config.pool_size,
            init_command=_SESSION,
        )
        try:
            with translate_mysql_errors(f"preparing {config.database} on {config.host}:{config.port}"):
                await self._prepare_target()
        except BaseException:
            await self.stop()
            raise
        await self._mode.start(context, context.log.bind(connector=self.name, name=context.connector_name))

    async def _prepare_target(self) -> None:
        config = self.config
        async with self._connection() as conn, conn.cursor() as cursor:
            # Values are escaped by services.mysql.literals: the session must speak a character set it escapes safely.
            sql_mode = await check_session(cursor, "config.host")
            log.info("mysql session", sql_mode=sql_mode, charset=conn.charset)
            await cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (config.database,))
            if await cursor.fetchone() is None:
                if not (config.auto_create or config.mode == "events"):
                    raise ConfigError(
                        "config.database", f"database {config.database!r} does not exist", "create it or set auto_create: true"
                    )
                await cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote(config.database)} DEFAULT CHARSET utf8mb4")
            await self._mode.prepare(cursor)
            await conn.commit()

    async def stop(self) -> None:
        await self._mode.stop()
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        if self.config.mode != "mapped" and any(record.target is not None for record in records):
            return [
                Rejection(record, f"a route step chose table {record.target!r}, but only mode 'mapped' writes a routed table")
                for record in records
                if record.target is not None
            ] + await self.put([record for record in records if record.target is None])
        with translate_mysql_errors(f"writing {len(records)} records to {self.config.database}", running=True):
            async with asyncio.timeout(self.config.write_timeout):
                async with self._connection() as conn:
                    return await self._mode.put(conn, records)

    async def purge_tombstones(self, cutoff: dt.datetime) -> int:
        """cdc: remove the versions of rows deleted before ``cutoff`` (tombstones) now; returns how many went."""
        if not isinstance(self._mode, CdcMode):
            raise ConfigError("config.mode", "tombstones are kept in cdc mode only", "set mode: cdc")
        return await self._mode.purge_tombstones(cutoff)

    def _connection(self) -> Pooled:
        return Pooled(self._pool, self.config.connect_timeout, self.name)
