"""mode ``mapped``: fields of the JSON data upserted into ``table`` on its primary key (or ``key_columns``).

A ``route`` transform step may choose another table of ``database`` per event (``record.target``):
it must exist (or ``auto_create`` makes it), and a name that is no valid identifier, or a table that
does not exist, makes the event a data error.

``fields`` maps a data field path (dots for nesting) to a column; without it the data's top-level
keys are the columns. An event whose ``delete_field`` holds one of ``delete_values``, or whose type
is in ``delete_types``, deletes the row instead. Each value is checked against its column's type
(:mod:`runtime.columns`) before it is bound: one that does not fit makes the event a data error,
never a silent conversion (``true`` into an INT key is not row 1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from runtime import ConfigError, ConnectorRecord, DataError
from services.mysql.sink.changes import Change
from services.mysql.sink.config import MysqlSinkConfig
from services.mysql.sink.mode import SinkMode
from services.mysql.sink.tables import TableCache
from services.mysql.sql import check_identifier, load_table

__all__ = ["MappedMode"]

_ABSENT: Any = object()  # what _lookup finds at a path the data does not have


class MappedMode(SinkMode):
    """Data fields into the columns of one table, created or widened when configured."""

    def __init__(self, config: MysqlSinkConfig, connection: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        # mapped: column -> the field(s) read into it, named when a value does not fit the column (unlisted: the same name).
        paths_of: dict[str, list[str]] = {}
        for path, column in config.fields.items():
            paths_of.setdefault(column, []).append(path)
        self._tables = TableCache(config, {column: " or ".join(paths) for column, paths in paths_of.items()})
        super().__init__(config, connection, self._tables)
        assert config.table is not None  # the config's check
        self._table = config.table
        # (column, the data key when the path is one key, the path): a one-key path is read with one get().
        self._fields = [(column, None if "." in path else path, tuple(path.split("."))) for path, column in config.fields.items()]
        self._key_columns = tuple(config.key_columns)
        self._delete_path = tuple(config.delete_field.split(".")) if config.delete_field else None
        self._delete_types = frozenset(config.delete_types)
        # Without a field map the data's top-level keys are the columns, less a top-level delete marker.
        self._marker_key = None if config.fields or not config.delete_field or "." in config.delete_field else config.delete_field

    async def prepare(self, cursor: Any) -> None:
        config = self.config
        schema = await load_table(cursor, config.database, self._table)
        if schema is None and not (config.auto_create and config.key_columns):
            raise ConfigError(
                "config.table",
                f"table {config.database}.{self._table} does not exist",
                "create it, or set auto_create: true with key_columns",
            )
        if schema is not None and not (config.key_columns or schema.primary_key):
            raise ConfigError(
                "config.key_columns", f"table {self._table} has no primary key", "list the upsert key in key_columns"
            )
        if schema is not None:
            for column in config.key_columns:
                if schema.column(column) is None:
                    raise ConfigError(
                        "config.key_columns", f"column {column!r} is not in table {self._table}", "name existing columns"
                    )

    async def changes(self, conn: Any, record: ConnectorRecord) -> list[Change]:
        data = record.data
        if not isinstance(data, dict):
            raise DataError(f"mapped mode needs a JSON object as data, got {type(data).__name__}")
        return [await self._change(conn, record, data)]

    async def _change(self, conn: Any, record: ConnectorRecord, data: dict[str, Any]) -> Change:
        tables = self._tables
        table = record.target or self._table  # a route step's table is checked as an identifier when it is first read
        values: dict[str, Any]
        if self._fields:
            values = {}
            for column, key, path in self._fields:
                value = data.get(key, _ABSENT) if key is not None else _lookup(data, path)
                if value is not _ABSENT:
                    values[column] = value
        elif self._marker_key is not None and self._marker_key in data:
            values = {name: value for name, value in data.items() if name != self._marker_key}
        else:
            values = data
        is_delete = record.type in self._delete_types
        if self._delete_path is not None and not is_delete:
            marker = _lookup(data, self._delete_path)
            is_delete = marker is not _ABSENT and marker in self.config.delete_values
        op: Literal["upsert", "delete"] = "delete" if is_delete else "upsert"
        names = tuple(values)
        while True:
            shape = tables.cached_shape(table, self._key_columns, names)
            if shape is None:  # a new column set: check it, and create or widen the table if configured
                if not self._fields:
                    for name in names:
                        check_identifier(name, "column")
                schema = await tables.table(conn, table, record, values, self._key_columns)
                shape = tables.shape(schema, self._key_columns or schema.primary_key, names)
            try:
                return shape.change(op, list(values.values()))
            except DataError:
                if tables.read_in_put(table):
                    raise
                # The verdict may rest on a table changed since it was read (a column widened): read it again, once per put.
                tables.forget(table)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    """Follow a dotted path through objects (and list indexes): the value there, or ``_ABSENT``."""
    node = data
    for part in path:
        if isinstance(node, dict):
            node = node.get(part, _ABSENT)
            if node is _ABSENT:
                return _ABSENT
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node
