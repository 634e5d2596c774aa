"""The target tables as the server has them now, read once and kept until they change; auto_create and auto_evolve.

The sink checks values against the live schema (:class:`~services.mysql.sink.changes.Shape`), so
the schema is cached per table and read again after a schema change, a refused batch, or a
verdict that may rest on a table changed since it was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog

from runtime import ConnectorRecord, DataError, RetriableError
from services.mysql.sink.changes import Change, Shape
from services.mysql.sink.config import MysqlSinkConfig
from services.mysql.sink.schema import SchemaCatalog, sql_type_from_json_schema, sql_type_from_value
from services.mysql.sql import TableSchema, check_identifier, load_table, quote

__all__ = ["TableCache"]


class TableCache:
    """Live schemas and the shapes worked out from them, for the tables of ``config.database``.

    ``field_names`` (mapped: column -> the event field(s) read into it) checks each value against its
    column's type; None (cdc: rows of a source table) binds values as they come.
    """

    def __init__(self, config: MysqlSinkConfig, field_names: Mapping[str, str] | None) -> None:
        self.config = config
        self.log: Any = structlog.get_logger()
        self._field_names = field_names
        self._tables: dict[str, TableSchema | None] = {}
        # (table, key columns, field names) -> shape; valid while the table's schema is the one in _tables.
        self._shapes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Shape] = {}
        self._read_in_put: set[str] = set()  # tables whose schema was read from the server during this put
        self._catalog = SchemaCatalog(config.schemas)
        self._paths = {path: tuple(path.split(".")) for path in config.fields}

    def begin_put(self) -> None:
        self._read_in_put.clear()

    def read_in_put(self, table: str) -> bool:
        """Was ``table``'s schema read from the server during this put (so a verdict on it is current)?"""
        return table in self._read_in_put

    def forget(self, table: str | None = None) -> None:
        """After DDL or a refused batch: read the live schema (of ``table``, or of every table) again."""
        if table is not None:
            self._tables.pop(table, None)
            return
        self._tables.clear()
        self._shapes.clear()

    def cached_shape(self, table: str, key_columns: tuple[str, ...], names: tuple[str, ...]) -> Shape | None:
        """The shape of ``names`` in ``table`` if its schema is cached (``key_columns`` empty: its primary key)."""
        schema = self._tables.get(table)
        return None if schema is None else self._shapes.get((table, key_columns or schema.primary_key, names))

    def change(
        self,
        schema: TableSchema,
        key_columns: tuple[str, ...],
        op: Literal["upsert", "delete"],
        values: dict[str, Any],
        version: str | None = None,
    ) -> Change:
        return self.shape(schema, key_columns, tuple(values)).change(op, list(values.values()), version)

    def shape(self, schema: TableSchema, key_columns: tuple[str, ...], names: tuple[str, ...]) -> Shape:
        shape = self._shapes.get((schema.table, key_columns, names))
        if shape is None:
            shape = self._shapes[(schema.table, key_columns, names)] = Shape.resolve(
                schema, key_columns, names, self._field_names
            )
        return shape

    async def table(
        self, conn: Any, table: str, record: ConnectorRecord, values: Mapping[str, Any], key_columns: tuple[str, ...]
    ) -> TableSchema:
        schema = await self._load(conn, table)
        if schema is None:
            if not self.config.auto_create and self.config.mode == "mapped" and table == self.config.table:
                # It was there at start: dropped since, or hidden by a revoked grant. The operator's to mend, not the event's.
                raise RetriableError(
                    f"table {self.config.database}.{table} is gone or no longer visible to {self.config.user!r} (dropped, or"
                    " its grant revoked); retrying until it is back"
                )
            if not self.config.auto_create:
                raise DataError(f"table {self.config.database}.{table} does not exist (create it or set auto_create)")
            if not key_columns:
                raise DataError(f"cannot create table {table}: the event names no key columns and key_columns is empty")
            await self._create_table(conn, table, record, values, key_columns)
            schema = await self._load(conn, table, fresh=True)
            assert schema is not None
        missing = [name for name in values if schema.column(name) is None] if self.config.auto_evolve else []
        if missing:
            await self._add_columns(conn, table, record, {name: values[name] for name in missing})
            schema = await self._load(conn, table, fresh=True)
            assert schema is not None
        return schema

    async def _load(self, conn: Any, table: str, *, fresh: bool = False) -> TableSchema | None:
        schema = self._tables.get(table)
        if fresh or schema is None:
            check_identifier(table, "table")
            async with conn.cursor() as cursor:
                schema = self._tables[table] = await load_table(cursor, self.config.database, table)
            self._shapes.clear()
            self._read_in_put.add(table)
        return schema

    def _column_type(self, record: ConnectorRecord, column: str, value: Any, *, key: bool) -> str:
        schema = self._catalog.get(record.dataschema)
        if schema is not None:
            path = next((self._paths[p] for p, c in self.config.fields.items() if c == column), (column,))
            node = SchemaCatalog.property_at(schema, path)
            declared = sql_type_from_json_schema(node, key=key) if node is not None else None
            if declared is not None:
                return declared
        return sql_type_from_value(value, key=key)

    async def _create_table(
        self, conn: Any, table: str, record: ConnectorRecord, values: Mapping[str, Any], key_columns: tuple[str, ...]
    ) -> None:
        definitions = []
        for name in dict.fromkeys([*key_columns, *values]):
            key = name in key_columns
            sql_type = self._column_type(record, name, values.get(name), key=key)
            definitions.append(f"{quote(name)} {sql_type} {'NOT NULL' if key else 'NULL'}")
        primary = ",".join(quote(c) for c in key_columns)
        statement = (
            f"CREATE TABLE IF NOT EXISTS {quote(self.config.database, table)} ({', '.join(definitions)}, PRIMARY KEY ({primary}))"
        )
        self.log.info("creating table", table=table, columns=len(definitions))
        async with conn.cursor() as cursor:
            await cursor.execute(statement + " DEFAULT CHARSET=utf8mb4")
        await conn.commit()

    async def _add_columns(self, conn: Any, table: str, record: ConnectorRecord, values: Mapping[str, Any]) -> None:
        async with conn.cursor() as cursor:
            for name, value in values.items():
                sql_type = self._column_type(record, name, value, key=False)
                self.log.info("adding column", table=table, column=name, type=sql_type)
                try:
                    await cursor.execute(
                        f"ALTER TABLE {quote(self.config.database, table)} ADD COLUMN {quote(name)} {sql_type} NULL"
                    )
                except Exception as exc:
                    if getattr(exc, "args", (None,))[0] != 1060:  # added meanwhile by another writer
                        raise
        await conn.commit()
