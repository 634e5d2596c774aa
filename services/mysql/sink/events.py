"""mode ``events``: one row per event in ``table`` (created if missing), primary key (source, id)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson

from runtime import ConnectorRecord, DataError, is_json_content_type
from services.mysql.sink.changes import Change
from services.mysql.sink.mode import SinkMode
from services.mysql.sql import quote

__all__ = ["EventsMode"]

_EVENTS_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  `source` VARCHAR(255) NOT NULL,
  `id` VARCHAR(255) NOT NULL,
  `type` VARCHAR(255) NOT NULL,
  `subject` VARCHAR(255) NULL,
  `time` DATETIME(6) NULL,
  `datacontenttype` VARCHAR(255) NULL,
  `dataschema` VARCHAR(1024) NULL,
  `data` JSON NULL,
  `extensions` JSON NULL,
  PRIMARY KEY (`source`, `id`)
) DEFAULT CHARSET=utf8mb4"""
_EVENT_COLUMNS = ("source", "id", "type", "subject", "time", "datacontenttype", "dataschema", "data", "extensions")
_EVENT_KEY = ("source", "id")


class EventsMode(SinkMode):
    """Each event as it came: its attributes in columns, its data as JSON; a replay rewrites the same row."""

    async def prepare(self, cursor: Any) -> None:
        await cursor.execute(_EVENTS_DDL.format(table=quote(self.config.database, self.config.events_table)))

    async def changes(self, conn: Any, record: ConnectorRecord) -> list[Change]:
        return [self._event_row(record)]

    def _event_row(self, record: ConnectorRecord) -> Change:
        if not record.id or not record.source:
            raise DataError("event has no id or source")
        data: Any = record.data
        if isinstance(data, bytes) and is_json_content_type(record.datacontenttype):
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"data is declared JSON but does not parse: {exc}") from exc
        elif isinstance(data, bytes):
            data = base64.b64encode(data).decode("ascii")
        time = record.timestamp.astimezone(dt.UTC).replace(tzinfo=None)
        row = (
            record.source,
            record.id,
            record.type or "",
            record.subject,
            time,
            record.datacontenttype,
            record.dataschema,
            None if data is None else orjson.dumps(data).decode(),
            orjson.dumps(dict(record.extensions)).decode() if record.extensions else None,
        )
        key = (record.source, record.id)
        return Change(self.config.events_table, "upsert", _EVENT_KEY, key, _EVENT_COLUMNS, row)
