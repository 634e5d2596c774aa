"""mode ``cdc``: mysql-source change envelopes applied to the same tables in ``database``, in source order.

A row change (c/u/d/r with before/after images) becomes a delete and/or an upsert at its version
(:func:`~.versions.change_version`), written only when newer than its row's stored version; a schema
change is rebuilt (:func:`~.ddl.rebuild_ddl`) and applied between the row changes before and after
it (:class:`~.marks.SchemaChanges`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from runtime import ConnectorRecord, DataError, Rejection, SinkContext
from services.mysql.envelope import OPS, decode_row
from services.mysql.sink.cdc.ddl import rebuild_ddl
from services.mysql.sink.cdc.marks import Ddl, SchemaChanges
from services.mysql.sink.cdc.purge import TombstonePurger
from services.mysql.sink.cdc.versions import (
    VERSIONS_TABLE,
    change_version,
    newer_changes,
    prepare_versions_table,
    record_versions,
)
from services.mysql.sink.changes import Change
from services.mysql.sink.config import MysqlSinkConfig
from services.mysql.sink.mode import Planned, SinkMode
from services.mysql.sink.tables import TableCache

__all__ = ["CdcMode"]


class CdcMode(SinkMode):
    """Applies change envelopes; tombstones are purged in the background while it runs."""

    def __init__(self, config: MysqlSinkConfig, connection: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._tables = TableCache(config, None)
        super().__init__(config, connection, self._tables)
        self._schema_changes = SchemaChanges(config.database, config.write_timeout)
        self._purger = TombstonePurger(config.database, config.tombstone_retention, config.write_timeout, connection)
        self._purging: asyncio.Task[None] | None = None
        self._ddl_skipped: Callable[[], None] = lambda: None

    async def prepare(self, cursor: Any) -> None:
        await prepare_versions_table(cursor, self.config.database)

    async def start(self, context: SinkContext, log: Any) -> None:
        await super().start(context, log)
        self._schema_changes.log = self._purger.log = log
        self._schema_changes.late_resets = context.counter("meshconnect_cdc_late_resets_total")
        self._ddl_skipped = context.counter("meshconnect_cdc_ddl_skipped_total").inc
        if self.config.tombstone_retention > 0:
            self._purging = asyncio.create_task(self._purger.run_forever(context.counter("meshconnect_tombstones_purged_total")))

    async def stop(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
            await asyncio.wait([self._purging])
            self._purging = None

    async def purge_tombstones(self, cutoff: dt.datetime) -> int:
        return await self._purger.purge(cutoff)

    async def write_records(self, conn: Any, records: Sequence[ConnectorRecord]) -> list[Rejection]:
        """Row changes a segment per transaction; a schema change ends the segment before it and runs on its own."""
        rejections: list[Rejection] = []
        segment: list[Planned] = []
        for record in records:
            try:
                schema_change = await self._schema_change(record)
                planned = Planned(record, [] if schema_change is not None else await self.changes(conn, record))
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            if schema_change:
                rejections += await self.write_segment(conn, segment)
                segment = []
                await self._schema_changes.apply(conn, schema_change)
                self._tables.forget()
            else:
                segment.append(planned)
        rejections += await self.write_segment(conn, segment)
        return rejections

    async def write_changes(self, cursor: Any, changes: list[Change]) -> None:
        """Write the changes newer than their rows' versions, recording the new versions; unversioned ones as they come."""
        versioned = [change for change in changes if change.version is not None]
        if not versioned:
            await self.execute_net(cursor, changes)
            return
        newer = await newer_changes(cursor, self.config.database, versioned)
        await self.execute_net(cursor, [change for change in changes if change.version is None] + [c for _, c in newer])
        if newer:
            await record_versions(cursor, self.config.database, newer)

    async def _schema_change(self, record: ConnectorRecord) -> list[Ddl] | None:
        """The steps of a schema-change envelope (none when apply_ddl is off); None for any other record."""
        data = _envelope(record)
        if data is None or "ddl" not in data:
            return None
        source = data["source"]
        if not self.config.apply_ddl:  # the schema is managed by hand: nothing runs, no mark is set
            self._ddl_skipped()
            at = {key: source.get(key) for key in ("db", "file", "pos")}  # not the text: it may carry a password
            self.log.info("schema change skipped (apply_ddl is false)", **at)
            return []
        statement = data["ddl"]
        if not isinstance(statement, str):
            raise DataError(f"change envelope's ddl is {type(statement).__name__}, not the text of a statement")
        # Never run as it came: parsed, allow-listed, rebuilt with every table in the target database.
        # In a thread: a long statement takes a while to parse, and the loop keeps the mesh connection alive.
        steps = await asyncio.to_thread(
            functools.partial(
                rebuild_ddl,
                statement,
                source_db=str(source.get("db") or ""),
                target_db=self.config.database,
                table_map=self.config.table_map,
                reserved=VERSIONS_TABLE,
            )
        )
        version = change_version(source, ddl=True)
        return [Ddl(step.statement, step.table, version, step.resets, step.removes_rows) for step in steps]

    async def changes(self, conn: Any, record: ConnectorRecord) -> list[Change]:
        data = _envelope(record)
        if data is None:
            return []
        tables = self._tables
        source = data["source"]
        op = data.get("op")
        if op not in OPS:
            raise DataError(f"change envelope has op {op!r}; expected one of c, u, d, r")
        version = change_version(source, ddl=False)
        db, table = str(source.get("db")), str(source.get("table"))
        target = self.config.table_map.get(f"{db}.{table}", table)
        binary = data.get("binary") or []
        before = decode_row(data["before"], binary) if isinstance(data.get("before"), dict) else None
        after = decode_row(data["after"], binary) if isinstance(data.get("after"), dict) else None
        image = after if after is not None else before
        if image is None:
            raise DataError(f"change envelope with op {op!r} has neither before nor after image")
        declared_key = tuple(str(c) for c in data.get("key") or ())
        schema = await tables.table(conn, target, record, image, declared_key)
        key_columns = schema.primary_key or declared_key
        if op == "d":
            return [tables.change(schema, key_columns, "delete", before or image, version)]
        assert after is not None
        steps: list[Change] = []
        if op == "u" and before is not None and any(before.get(c) != after.get(c) for c in key_columns):
            steps.append(tables.change(schema, key_columns, "delete", before, version))
        steps.append(tables.change(schema, key_columns, "upsert", after, version))
        return steps


def _envelope(record: ConnectorRecord) -> Mapping[str, Any] | None:
    """The change envelope ``record`` carries; None for a heartbeat; DataError for anything else."""
    data = record.data
    if record.type is not None and record.type.endswith(".heartbeat"):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
        raise DataError("cdc mode needs a mysql-source change envelope (an object with 'source')")
    return data
