"""postgres-sink: upsert events into PostgreSQL, one transaction per batch.

Three modes:

``events`` (default)
    every event is a row of ``table`` (created when missing) keyed by ``(source, id)``:
    ``type, subject, time, datacontenttype, data jsonb`` (JSON data; text as a JSON string),
    ``data_bytes bytea`` (binary data) and ``extensions jsonb``. A redelivered event changes
    nothing (``ON CONFLICT DO NOTHING``): the sink is idempotent.
``mapped``
    the JSON object data of each event is a row of an existing ``table``: its fields fill the
    columns of the same name (``jsonb_populate_recordset``) and ``key`` names the primary or
    unique key to upsert on (``ON CONFLICT (key) DO UPDATE``); the last event of a batch wins for
    a key. Data that is not an object is rejected, and so is a field whose value does not fit its
    column's type (:mod:`runtime.columns`: PostgreSQL itself would read ``"5"`` as the integer 5
    and ``1`` as true); the column types are read at start, and once more per batch before a refusal.
``cdc``
    each event is a change envelope (postgres-source's or mysql-source's: ``op``, ``before``,
    ``after``) of the rows of ``table``, applied in order: ``c``, ``u`` and ``r`` upsert ``after``
    as in ``mapped`` (same checks) but set only the columns the image holds (PostgreSQL leaves an
    unchanged TOASTed value out; Debezium may send a placeholder, which counts as left out), ``d``
    deletes the row keyed by ``before``, and a ``TRUNCATE``
    (``{"ddl": "TRUNCATE ..."}``) empties ``table``. Its text is never run; other DDL is dead-lettered.
    Replayed after a restart, the same changes in the same order end in the same rows.

A value the table refuses (a constraint) makes the batch a ``DataError``; the worker then
writes record by record and dead-letters the one at fault. A lost connection is retriable, and so
is a refused login or privilege after a good start (at start it is a config error).
Identifiers are validated and quoted (:func:`~services.postgres.client.quote_identifier`); a field
that no column can be named like (over 63 bytes, a NUL) is dead-lettered; values are always bound.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg
import orjson
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator

from runtime import (
    ColumnKind,
    ColumnRule,
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    DataError,
    Rejection,
    RetriableError,
    Secret,
    Sink,
    SinkContext,
)
from services.postgres.client import PgConnection, check_identifier, pg_call, quote_identifier, relation_parts

__all__ = ["PostgresSink", "PostgresSinkConfig"]

log = structlog.get_logger()

_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    source text NOT NULL,
    id text NOT NULL,
    type text NOT NULL,
    subject text,
    time timestamptz NOT NULL,
    datacontenttype text,
    data jsonb,
    data_bytes bytea,
    extensions jsonb NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (source, id)
)"""

_INSERT_EVENTS = """
INSERT INTO {table} (source, id, type, subject, time, datacontenttype, data, data_bytes, extensions)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::jsonb[], $8::bytea[], $9::jsonb[]
)
ON CONFLICT (source, id) DO NOTHING"""

# Each column with its type (a domain's base type): name, category (pg_type.typcategory) and the type as written.
_COLUMNS = """
SELECT a.attname, b.typname::text, b.typcategory::text, format_type(a.atttypid, a.atttypmod) AS sql_type
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
_INTEGER_BITS = {"int2": 16, "int4": 32, "int8": 64}


class PostgresSinkConfig(ConnectorConfig):
    dsn: Secret = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), description="postgresql:// DSN (may hold a password)."
    )
    mode: Literal["events", "mapped", "cdc"] = Field(
        "events", description="events: one row per event; mapped: data fields -> columns; cdc: change envelopes applied."
    )
    table: str = Field("meshconnect_events", description="Target table, [schema.]name.")
    create_table: bool = Field(True, description="Create the events table if missing (mode events).")
    key: list[str] = Field(default_factory=list, description="Columns of the unique key to upsert on (modes mapped, cdc).")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for connecting or for a batch to commit.")
    unavailable_value: str | None = Field(
        "__debezium_unavailable_value",
        description="Mode cdc: a column of an after image holding this text was not sent (Debezium's placeholder for an"
        " unchanged TOASTed value) and is left as it is; null: no placeholder.",
    )

    @field_validator("table")
    @classmethod
    def _relation_name(cls, table: str) -> str:
        relation_parts(table)
        return table

    @field_validator("key")
    @classmethod
    def _column_names(cls, key: list[str]) -> list[str]:
        try:
            for column in key:
                check_identifier(column, "key column")
        except DataError as exc:
            raise ValueError(exc.reason) from exc
        return key

    @model_validator(mode="after")
    def _mapped_needs_a_key(self) -> PostgresSinkConfig:
        if self.mode in ("mapped", "cdc") and not self.key:
            raise ValueError(f"mode {self.mode} needs 'key': the columns of the table's primary or unique key")
        return self


class PostgresSink(Sink[PostgresSinkConfig]):
    name = "postgres-sink"
    description = (
        "Upserts events into PostgreSQL: an idempotent events table, data fields mapped to columns, or change events applied."
    )
    config_model = PostgresSinkConfig

    def __init__(self, config: PostgresSinkConfig) -> None:
        super().__init__(config)
        self._table = quote_identifier(*relation_parts(config.table))
        self._connection = PgConnection(config.dsn, config.timeout)
        self._statement = ""
        self._key = frozenset(config.key)
        self._key_columns = tuple(config.key)
        keys = ", ".join(quote_identifier(column) for column in config.key)
        self._delete = (
            f"DELETE FROM {self._table} WHERE ({keys}) IN"
            f" (SELECT {keys} FROM jsonb_populate_recordset(NULL::{self._table}, $1::jsonb))"
        )
        self._rules: tuple[ColumnRule, ...] = ()  # mapped, cdc: what each column of the table takes
        self._columns: tuple[str, ...] = ()  # mapped, cdc: the table's columns in order
        self._column_set: frozenset[str] = frozenset()
        self._fitting: tuple[frozenset[type], ...] = ()  # per column: the value types that fit (see ColumnRule.fitting)
        self._ranged: tuple[ColumnRule, ...] = ()  # integer and real columns: their values' range is seen apart

    async def start(self, context: SinkContext) -> None:
        connection = await self._connection.get()
        try:
            if self.config.mode == "events":
                if self.config.create_table:
                    await pg_call(
                        "create table", connection.execute(_EVENTS_TABLE.format(table=self._table)), self.config.timeout
                    )
                self._statement = _INSERT_EVENTS.format(table=self._table)
            else:
                self._statement = await self._mapped_statement(connection)
        except BaseException:
            await self.stop()
            raise

    async def _read_columns(self, connection: asyncpg.Connection, *, running: bool = False) -> list[asyncpg.Record]:
        columns: list[asyncpg.Record] = await pg_call(
            "read columns", connection.fetch(_COLUMNS, self._table), self.config.timeout, running=running
        )
        if columns:
            self._rules = tuple(_column_rule(row) for row in columns)
            self._columns = tuple(rule.column for rule in self._rules)
            self._column_set = frozenset(self._columns)
            self._fitting = tuple(rule.fitting for rule in self._rules)
            self._ranged = tuple(rule for rule in self._rules if rule.ranged)
        return columns

    async def _mapped_statement(self, connection: asyncpg.Connection) -> str:
        names = [row["attname"] for row in await self._read_columns(connection)]
        if not names:
            raise ConfigError("config.table", f"table {self.config.table} does not exist", "create it, or use mode events")
        missing = [column for column in self.config.key if column not in names]
        if missing:
            raise ConfigError("config.key", f"{missing} are not columns of {self.config.table}", f"choose from {names}")
        return _upsert(self._table, self._key_columns, tuple(names))

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        if self.config.mode == "cdc":
            return await self._apply_changes(records)
        arguments: Sequence[Any] | None
        if self.config.mode == "events":
            rejections, arguments = self._event_rows(records)
        else:
            rejections, arguments, mismatched = self._mapped_rows(records)
            if mismatched:
                # The verdict may rest on types read before the table changed (a column widened): read them again.
                try:
                    await self._read_columns(await self._connection.get(running=True), running=True)
                except RetriableError:
                    self._connection.drop()
                    raise
                rejections, arguments, _ = self._mapped_rows(records)
        if arguments is None:
            return rejections
        connection = await self._connection.get(running=True)
        try:
            await pg_call("upsert", connection.execute(self._statement, *arguments), self.config.timeout, running=True)
        except RetriableError:
            self._connection.drop()  # reconnect for the retry
            raise
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise DataError(f"PostgreSQL refused the batch: {exc.__class__.__name__}: {exc}") from exc
        except asyncpg.UndefinedTableError as exc:
            raise RetriableError(f"table {self.config.table} is missing: {exc}") from exc
        return rejections

    def _event_rows(self, records: Sequence[ConnectorRecord]) -> tuple[list[Rejection], tuple[list[Any], ...] | None]:
        rejections: list[Rejection] = []
        columns: tuple[list[Any], ...] = tuple([] for _ in range(9))
        for record in records:
            if not (record.id and record.source and record.type):
                rejections.append(Rejection(record, "event has no id, source or type"))
                continue
            data, data_bytes = record.data, None
            if isinstance(data, bytes):
                data, data_bytes = None, data
            try:
                data_json = None if data is None else orjson.dumps(data).decode()
            except TypeError as exc:
                rejections.append(Rejection(record, f"data cannot be stored as JSON: {exc}"))
                continue
            values = (
                record.source,
                record.id,
                record.type,
                record.subject,
                record.timestamp,
                record.datacontenttype,
                data_json,
                data_bytes,
                orjson.dumps(dict(record.extensions)).decode(),
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return rejections, (columns if columns[0] else None)

    def _mapped_rows(self, records: Sequence[ConnectorRecord]) -> tuple[list[Rejection], tuple[str] | None, bool]:
        """The rejections, the argument of the upsert (None: nothing to write), and whether a value did not fit."""
        rejections: list[Rejection] = []
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        mismatched = False
        for record in records:
            data = record.data
            if not isinstance(data, dict):
                rejections.append(Rejection(record, f"mode mapped needs JSON object data, got {type(data).__name__}"))
                continue
            try:
                self._check_names(data)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            try:
                self._check_row(data)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                mismatched = True
                continue
            key = tuple(map(orjson.dumps, map(data.get, self.config.key)))
            rows.pop(key, None)
            rows[key] = data  # the last event for a key wins, and keeps its place at the end
        if not rows:
            return rejections, None, mismatched
        return rejections, (orjson.dumps(list(rows.values())).decode(),), mismatched

    def _check_names(self, row: dict[str, Any]) -> None:
        """DataError for a field no column can be named like (see :func:`check_identifier`): the event is dead-lettered."""
        columns = self._column_set
        if row.keys() <= columns:  # the common case, in one C-level pass: every field is a column
            return
        for name in row:
            if name not in columns:
                check_identifier(name, "field")

    def _check_row(self, row: dict[str, Any]) -> None:
        """DataError naming the first field whose value does not fit its column (see :mod:`runtime.columns`)."""
        if all(map(frozenset.__contains__, self._fitting, map(type, map(row.get, self._columns)))):
            # The common case, the types in one C-level pass: only the ranges of numbers are left to see.
            for rule in self._ranged:
                value = row.get(rule.column)
                if value is not None and not rule.low <= value <= rule.high:
                    rule.check(value)
            return
        for rule, fitting, value in zip(self._rules, self._fitting, map(row.get, self._columns), strict=True):
            if type(value) not in fitting or (value is not None and rule.ranged):
                rule.check(value)

    async def _apply_changes(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        rejections, steps, mismatched = self._change_steps(records)
        connection = await self._connection.get(running=True)
        try:
            if mismatched:  # as in mapped: read the column types again before refusing
                await self._read_columns(connection, running=True)
                rejections, steps, _ = self._change_steps(records)
            if steps:
                await pg_call("apply changes", self._run_steps(connection, steps), self.config.timeout, running=True)
        except RetriableError:
            self._connection.drop()
            raise
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise DataError(f"PostgreSQL refused the batch: {exc.__class__.__name__}: {exc}") from exc
        except asyncpg.UndefinedTableError as exc:
            raise RetriableError(f"table {self.config.table} is missing: {exc}") from exc
        return rejections

    async def _run_steps(self, connection: asyncpg.Connection, steps: list[tuple[str, dict[tuple[bytes, ...], Any]]]) -> None:
        async with connection.transaction():
            for step, rows in steps:
                if step == "truncate":
                    await connection.execute(f"TRUNCATE TABLE {self._table}")
                elif step == "delete":
                    await connection.execute(self._delete, orjson.dumps(list(rows.values())).decode())
                else:  # the keys of a run of upserts are distinct: rows setting the same columns go as one statement
                    by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                    for row in rows.values():
                        by_fields.setdefault(tuple(row), []).append(row)
                    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                    for fields, same in by_fields.items():  # fields in another order set the same columns
                        present = set(fields)
                        by_columns.setdefault(tuple(column for column in self._columns if column in present), []).extend(same)
                    for columns, same in by_columns.items():
                        await connection.execute(_upsert(self._table, self._key_columns, columns), orjson.dumps(same).decode())

    def _change_steps(
        self, records: Sequence[ConnectorRecord]
    ) -> tuple[list[Rejection], list[tuple[str, dict[tuple[bytes, ...], Any]]], bool]:
        """The rejections, the steps in order (consecutive upserts or deletes as one), and whether a value did not fit."""
        rejections: list[Rejection] = []
        steps: list[tuple[str, dict[tuple[bytes, ...], Any]]] = []
        mismatched = False
        unavailable = self.config.unavailable_value
        for record in records:
            data = record.data
            if not isinstance(data, dict):
                rejections.append(Rejection(record, f"mode cdc needs a change envelope (JSON object), got {type(data).__name__}"))
                continue
            if "ddl" in data:
                statement = data["ddl"]
                if not (isinstance(statement, str) and statement.lstrip().upper().startswith("TRUNCATE")):
                    rejections.append(Rejection(record, "mode cdc applies no schema change but TRUNCATE; apply it by hand"))
                    continue
                steps.append(("truncate", {}))
                continue
            op = data.get("op")
            row = data.get("before" if op == "d" else "after")
            if op not in ("c", "u", "r", "d"):
                rejections.append(Rejection(record, f"change envelope has op {op!r}; mode cdc takes c, u, d or r"))
                continue
            if not isinstance(row, dict) or any(row.get(column) is None for column in self.config.key):
                image = "before" if op == "d" else "after"
                rejections.append(Rejection(record, f"change envelope's {image} image lacks the key {self.config.key}"))
                continue
            try:
                self._check_names(row)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                continue
            try:
                self._check_row(row)
            except DataError as exc:
                rejections.append(Rejection(record, exc.reason))
                mismatched = True
                continue
            step = "delete" if op == "d" else "upsert"
            if not steps or steps[-1][0] != step:
                steps.append((step, {}))
            rows = steps[-1][1]
            key = tuple(map(orjson.dumps, map(row.get, self.config.key)))
            earlier = rows.pop(key, None)
            if step == "upsert":
                if unavailable is not None and unavailable in row.values():  # not sent: left as it is
                    # A key is always sent (the row is found by it): only the other columns can be left out.
                    row = {
                        name: value
                        for name, value in row.items()
                        if name in self._key or not (type(value) is str and value == unavailable)
                    }
                if earlier is not None:  # a column the image lacks keeps the value the earlier change gave it
                    row = {**earlier, **row}
            rows[key] = row  # the last change of a key in a run wins, and keeps its place at the end
        return rejections, steps, mismatched

    async def stop(self) -> None:
        await self._connection.close()


# Column sets come from event data: the statements kept are bounded (a table's few sets stay, being used).
@functools.lru_cache(maxsize=64)
def _upsert(table: str, key: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """The upsert into ``table`` (quoted) of rows (a JSON array bound as $1) that sets ``columns`` only: the others keep
    their value. Built once per column set."""
    quoted = [quote_identifier(column) for column in columns]
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for name, column in zip(columns, quoted, strict=True) if name not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    conflict = ", ".join(quote_identifier(column) for column in key)
    return (
        f"INSERT INTO {table} ({', '.join(quoted)}) SELECT {', '.join(quoted)} "
        f"FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb) ON CONFLICT ({conflict}) {action}"
    )


def _column_rule(column: asyncpg.Record) -> ColumnRule:
    """The JSON values a column takes (see :mod:`runtime.columns`), by its (base) type."""
    name, type_name, category, sql_type = column["attname"], column["typname"], column["typcategory"], column["sql_type"]
    if type_name in _INTEGER_BITS:
        return ColumnRule.integer(name, name, sql_type, _INTEGER_BITS[type_name])
    if type_name == "numeric":
        return ColumnRule(name, name, sql_type, ColumnKind.DECIMAL)
    if type_name == "float4":
        return ColumnRule.real(name, name, sql_type)
    if category == "N":  # float8, and money, oid and the like
        return ColumnRule(name, name, sql_type, ColumnKind.FLOAT)
    if type_name == "bool":
        return ColumnRule(name, name, sql_type, ColumnKind.BOOLEAN)
    if type_name in ("json", "jsonb") or category == "S":  # text, varchar, char, name, citext
        return ColumnRule(name, name, sql_type, ColumnKind.TEXT)
    if category in ("A", "C"):  # arrays and composite types: JSON arrays and objects, or their text
        return ColumnRule(name, name, sql_type, ColumnKind.STRUCTURED)
    # Dates and times, intervals, enums, uuid, bytea, network and geometric types: strings.
    return ColumnRule(name, name, sql_type, ColumnKind.STRING)
