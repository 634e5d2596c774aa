"""mysql-sink: CloudEvents into MySQL/MariaDB, one transaction per batch, idempotent on replay.

Three modes (``mode``):

* ``events``: one row per event in ``table`` (created if missing), primary key (source, id).
* ``mapped``: fields of the JSON data (``fields``: path -> column, nested paths with dots) upserted
  into ``table`` on its primary key (or ``key_columns``); an event whose ``delete_field`` holds one
  of ``delete_values``, or whose type is in ``delete_types``, deletes the row instead. Each value is
  checked against its column's type (:mod:`runtime.columns`) before it is bound: one that does not
  fit makes the event a data error, never a silent conversion (``true`` into an INT key is not row 1).
* ``cdc``: applies mysql-source change envelopes (c/u/d/r with before/after images, DDL) to the same
  tables in ``database``, so source -> mesh -> sink replicates tables. DDL text is never run as it
  came: :mod:`services.mysql_sink.ddl` parses it, checks it against an allow-list and rebuilds it
  with every table in ``database`` (or refuses it as a DataError).

Ordering in cdc mode. The mesh delivers at least once and not necessarily in source order (a
redelivered push, or changes of one row spread over several sink replicas), so the sink never
trusts arrival order: every change envelope carries its binlog position (``source.file``,
``source.pos``, ``source.row``) and is applied only when it is newer than the last change applied to
its row. The version of a change is ``<binlog file number>:<pos>:<phase>:<row>``, zero-padded so
that text order is source order; phase 0 is a snapshot's table DDL, 1 a snapshot row (both at the
snapshot's position), 2 a streamed change, so a streamed change at or after the snapshot position
always wins over the snapshot's copy of its row. Per target row the sink keeps the version of the
last change applied in ``meshconnect_row_versions`` (``tbl``, ``pk`` = the key as JSON, ``version``)
of the target database, in the transaction of the row change: the batch locks its keys' versions
(``SELECT ... FOR UPDATE``), keeps per key only the newest change that is newer than the stored
version, applies those and upserts their versions. A delete leaves its version behind (a
tombstone), so an older insert or update delivered late cannot bring the row back; a replay is a
no-op; an update that changes the primary key versions both keys (the old one as deleted).
Schema changes are ordered per table the same way (``pk`` ``ddl``): a DDL event not newer than the
table's last applied one is skipped; CREATE, DROP and TRUNCATE also set the table's floor (``pk``
``reset``): row changes from before it belong to an earlier incarnation of the table and are
skipped. The marks are set, with a ``pending`` one, before the statement runs, under a named lock per
table: a second replica with the same change skips it, and newer row changes wait until it ran.
Envelopes of mysql-source's polling mode have no binlog position and are applied as they
come. Versions compare positions of one source server: after a switch to another server (whose
binlog numbering differs) the replica is re-created, or the versions table emptied. Tombstones
older than ``tombstone_retention`` are purged in the background; the purge raises the table's floor
to the newest version it removed, so what a tombstone kept out, the floor still keeps out.

Within a batch, changes to one key collapse to their net effect (deletes run before upserts), so
each batch is a few multi-row statements. When the server refuses a row's values the batch is
rolled back and replayed row by row under savepoints: the bad rows come back as rejections, the
rest commit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, NoReturn

import aiomysql
import orjson
import pymysql
import structlog
from prometheus_client import Counter
from pydantic import Field, model_validator

from runtime import (
    ConfigError,
    ConnectorConfig,
    ConnectorRecord,
    DataError,
    MeshConnectError,
    Rejection,
    RetriableError,
    Secret,
    Sink,
    SinkContext,
)
from runtime.columns import ColumnKind, ColumnRule
from runtime.record import is_json_content_type
from services.mysql_sink.ddl import rebuild_ddl
from services.mysql_sink.schema import SchemaCatalog, column_rule, sql_type_from_json_schema, sql_type_from_value
from services.mysql_sink.sql import (
    RETRIABLE_CODES,
    TableSchema,
    check_identifier,
    error_code,
    is_data_error,
    load_table,
    quote,
    translate_mysql_errors,
)
from services.mysql_source.envelope import OPS, decode_row

__all__ = ["MysqlSink", "MysqlSinkConfig"]

log = structlog.get_logger()

# Replaying DDL must not fail on what is already there: table exists, duplicate column/key, unknown column/key to drop.
_ALREADY_APPLIED = frozenset({1050, 1051, 1060, 1061, 1091, 1146})
_DELETE_CHUNK = 1000
VERSIONS_TABLE = "meshconnect_row_versions"
# Row ids are JSON arrays (or '#' and a hash), so these per-table markers never collide with a row.
_DDL_MARK = "ddl"
_RESET_MARK = "reset"
_PENDING_MARK = "pending"  # a schema change being applied: newer row changes of the table wait for it
_MAX_ROW_ID = 255
_BINLOG_NUMBER = re.compile(r"(\d+)$")
_ABSENT: Any = object()  # what _lookup finds at a path the data does not have
_CONTAINERS = (dict, list)  # bound as JSON text; a tuple, as `dict | list` is built anew on every isinstance
# cdc: JSON values bound as they are (exact types: one set lookup)
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
_VERSIONS_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  `tbl` VARBINARY(64) NOT NULL,
  `pk` VARBINARY(255) NOT NULL,
  `version` VARBINARY(64) NOT NULL,
  `deleted_at` DATETIME(6) NULL,
  PRIMARY KEY (`tbl`, `pk`),
  KEY `deleted_at` (`deleted_at`)
) ENGINE=InnoDB"""
# Versions tables made before tombstones were purged lack the deletion time.
_VERSIONS_DELETED_AT = "ALTER TABLE {table} ADD COLUMN `deleted_at` DATETIME(6) NULL, ADD KEY `deleted_at` (`deleted_at`)"
_PURGE_CHUNK = 1000
LATE_RESETS = Counter(
    "meshconnect_cdc_late_resets_total",
    "TRUNCATE/DROP applied after newer row changes of its table: those rows went with it (re-sync the table).",
    ["name"],
)
DDL_SKIPPED = Counter(
    "meshconnect_cdc_ddl_skipped_total", "Schema-change events acknowledged without running them (apply_ddl: false).", ["name"]
)
TOMBSTONES_PURGED = Counter(
    "meshconnect_tombstones_purged_total", "Versions of deleted rows (tombstones) purged after tombstone_retention.", ["name"]
)


class MysqlSinkConfig(ConnectorConfig):
    host: str = Field("127.0.0.1", description="MySQL/MariaDB host.")
    port: int = Field(3306, ge=1, le=65535, description="MySQL/MariaDB port.")
    user: str = Field("root", description="MySQL user.")
    password: Secret | None = Field(None, description="MySQL password.")
    database: str = Field(description="Target database (schema) of every table written.")
    mode: Literal["events", "mapped", "cdc"] = Field("events", description="events table, mapped columns, or CDC apply.")
    table: str | None = Field(None, description="Target table (events: default 'cloudevents'; mapped: required).")
    fields: dict[str, str] = Field(
        default_factory=dict, description="mapped: data field path (dots for nesting) -> column; empty = top-level keys as is."
    )
    key_columns: list[str] = Field(default_factory=list, description="mapped: upsert key; default the table's primary key.")
    delete_field: str | None = Field(None, description="mapped: data field path whose value marks a delete, e.g. 'op'.")
    delete_values: list[Any] = Field(
        default_factory=lambda: ["d", "delete"], description="mapped: values of delete_field meaning delete."
    )
    delete_types: list[str] = Field(default_factory=list, description="mapped: CloudEvent types meaning delete.")
    table_map: dict[str, str] = Field(default_factory=dict, description="cdc: source 'db.table' -> target table name.")
    apply_ddl: bool = Field(
        True,
        description="cdc: run schema-change events (parsed, allow-listed, rebuilt into the target database); "
        "false acknowledges and skips them, for schemas managed by hand.",
    )
    tombstone_retention: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="cdc: seconds a deleted row's version (tombstone) is kept; then it is purged and its table's floor "
        "rises to it, so a change older than that is skipped. Longer than any redelivery delay; 0 keeps them forever.",
    )
    auto_create: bool = Field(False, description="Create a missing table (and database) from the dataschema or observed JSON.")
    auto_evolve: bool = Field(False, description="Add missing nullable columns from the dataschema or observed JSON.")
    schemas: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="JSON Schemas by dataschema URI, for auto_create/evolve (file:// URIs are read too)."
    )
    pool_size: int = Field(4, ge=1, le=64, description="Connections in the pool.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection.")
    write_timeout: float = Field(60.0, gt=0, description="Seconds one batch may take before it is retried.")

    @model_validator(mode="after")
    def _check(self) -> MysqlSinkConfig:
        try:
            check_identifier(self.database, "database")
            if self.table is not None:
                check_identifier(self.table, "table")
            for column in [*self.fields.values(), *self.key_columns]:
                check_identifier(column, "column")
            for target in self.table_map.values():
                check_identifier(target, "table")
        except DataError as exc:
            raise ValueError(exc.reason) from exc
        if self.mode == "mapped" and self.table is None:
            raise ValueError("mode 'mapped' needs 'table': the table the data fields are written to")
        return self

    @property
    def events_table(self) -> str:
        return self.table or "cloudevents"


class Change(NamedTuple):
    """One net row operation: upsert ``row`` (bound values of ``columns``) or delete the row with ``key``.

    cdc: the change is at source ``version``. A named tuple, not a frozen dataclass: one is made per
    event, and a frozen dataclass takes several times as long to build.
    """

    table: str
    op: Literal["upsert", "delete"]
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    columns: tuple[str, ...]
    row: tuple[Any, ...]
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Ddl:
    """A schema change of ``table`` at source ``version`` (None: unordered), rebuilt by :func:`rebuild_ddl`.

    ``resets``: CREATE, DROP, TRUNCATE; ``removes_rows``: of those, DROP, TRUNCATE and CREATE OR REPLACE.
    """

    statement: str
    table: str
    version: str | None
    resets: bool
    removes_rows: bool


@dataclass(slots=True)
class _Planned:
    record: ConnectorRecord
    steps: list[Change | Ddl] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where the values of one set of field names go in a table: worked out once per column set, used for every row."""

    table: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]  # the table's spelling of each field's column, each once
    unchecked: tuple[frozenset[type], ...]  # per column: the value types bound as they are, without a look
    binders: tuple[Callable[[Any], Any], ...]  # per column: any other value, checked and made bindable
    ranges: tuple[tuple[int, int, int, Callable[[Any], None]], ...]  # integer columns: position, bounds, the refusal
    pick: tuple[int, ...] | None  # the values to keep when two names are one column (the last wins); None: all
    key_at: tuple[int, ...] | None  # positions of the key columns in ``columns``; None: one of them is not there

    @classmethod
    def resolve(
        cls, schema: TableSchema, key_columns: tuple[str, ...], names: tuple[str, ...], fields: Mapping[str, str] | None
    ) -> _Shape:
        """``fields`` (column name -> the event field it comes from) checks each value against its column's type;
        None (cdc: rows of a source table) binds values as they come."""
        if not key_columns:
            raise DataError(f"table {schema.table} has no primary key and no key_columns: rows cannot be matched")
        last: dict[str, tuple[int, frozenset[type], Callable[[Any], Any], ColumnRule | None]] = {}
        for index, name in enumerate(names):
            column = schema.column(name)
            if column is None:
                raise DataError(f"column {name!r} does not exist in {schema.database}.{schema.table} (set auto_evolve to add it)")
            temporal = column.data_type in ("datetime", "timestamp")
            if fields is None:
                unchecked = _SCALARS - {str} if temporal else _SCALARS
                last[column.name] = (index, unchecked, functools.partial(_bindable, temporal=temporal), None)
            else:
                rule = column_rule(column, fields.get(name, name))
                last[column.name] = (
                    index,
                    _unchecked_binding(rule, temporal),
                    functools.partial(_bind_checked, rule, temporal),
                    rule,
                )
        columns = tuple(last)
        pick = tuple(index for index, _, _, _ in last.values())
        key_at = tuple(columns.index(c) for c in key_columns) if all(c in last for c in key_columns) else None
        ranges = tuple(
            (position, rule.low, rule.high, rule.check)
            for position, (_, _, _, rule) in enumerate(last.values())
            if rule is not None and rule.kind in (ColumnKind.INTEGER, ColumnKind.FLAG)
        )
        return cls(
            schema.table,
            key_columns,
            columns,
            tuple(types for _, types, _, _ in last.values()),
            tuple(binder for _, _, binder, _ in last.values()),
            ranges,
            None if len(pick) == len(names) else pick,
            key_at,
        )

    def change(self, op: Literal["upsert", "delete"], values: Sequence[Any], version: str | None = None) -> Change:
        """The change writing ``values`` (one per name, in order) to this shape's columns; a delete binds only the key."""
        if self.pick is not None:
            values = [values[index] for index in self.pick]
        if op == "delete" and self.key_at is not None:
            key = tuple([self._bound(index, values[index]) for index in self.key_at])
            if None in key:
                self._missing_key(dict(zip(self.key_columns, key, strict=True)))
            return Change(self.table, "delete", self.key_columns, key, self.key_columns, key, version)
        if not all(map(frozenset.__contains__, self.unchecked, map(type, values))):  # the common case: one C-level pass
            values = [
                value if type(value) in unchecked else bind(value)
                for value, unchecked, bind in zip(values, self.unchecked, self.binders, strict=True)
            ]
        for index, low, high, refuse in self.ranges:  # integers pass the type test; their range is looked at here
            value = values[index]
            if type(value) is int and not low <= value <= high:
                refuse(value)
        row = tuple(values)
        key = () if self.key_at is None else tuple([row[index] for index in self.key_at])
        if self.key_at is None or None in key:
            self._missing_key(dict(zip(self.columns, row, strict=True)))
        return Change(self.table, op, self.key_columns, key, self.columns, row, version)

    def _bound(self, index: int, value: Any) -> Any:
        for position, low, high, refuse in self.ranges:
            if position == index and type(value) is int and not low <= value <= high:
                refuse(value)
        return value if type(value) in self.unchecked[index] else self.binders[index](value)

    def _missing_key(self, present: Mapping[str, Any]) -> NoReturn:
        missing = [c for c in self.key_columns if present.get(c) is None]
        raise DataError(f"key column(s) {', '.join(missing)} missing or null in the event")


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


class MysqlSink(Sink[MysqlSinkConfig]):
    name: ClassVar[str] = "mysql-sink"
    description: ClassVar[str] = (
        "Writes events to MySQL/MariaDB: events table, mapped columns or CDC apply; upserts, one transaction per batch."
    )
    config_model: ClassVar[type[ConnectorConfig]] = MysqlSinkConfig

    def __init__(self, config: MysqlSinkConfig) -> None:
        super().__init__(config)
        self._pool: Any = None
        self._tables: dict[str, TableSchema | None] = {}
        # (table, key columns, field names) -> shape; valid while the table's schema is the one in _tables.
        self._shapes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Shape] = {}
        self._catalog = SchemaCatalog(config.schemas)
        self._paths = {path: tuple(path.split(".")) for path in config.fields}
        # (column, the data key when the path is one key, the path): a one-key path is read with one get().
        self._fields = [(column, None if "." in path else path, self._paths[path]) for path, column in config.fields.items()]
        self._key_columns = tuple(config.key_columns)
        self._delete_path = tuple(config.delete_field.split(".")) if config.delete_field else None
        self._delete_types = frozenset(config.delete_types)
        # Without a field map the data's top-level keys are the columns, less a top-level delete marker.
        self._marker_key = None if config.fields or not config.delete_field or "." in config.delete_field else config.delete_field
        # mapped: column -> the field(s) read into it, named when a value does not fit the column (unlisted: the same name).
        paths_of: dict[str, list[str]] = {}
        for path, column in config.fields.items():
            paths_of.setdefault(column, []).append(path)
        self._field_names = {column: " or ".join(paths) for column, paths in paths_of.items()}
        self._read_in_put: set[str] = set()  # tables whose schema was read from the server during this put
        self._log: Any = log
        self._purger: asyncio.Task[None] | None = None
        self._instance = self.name

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, context: SinkContext) -> None:
        self._log = context.log.bind(connector=self.name, name=context.connector_name)
        self._instance = context.connector_name
        config = self.config
        with translate_mysql_errors(f"connecting to {config.host}:{config.port}"):
            self._pool = await asyncio.wait_for(
                aiomysql.create_pool(
                    host=config.host,
                    port=config.port,
                    user=config.user,
                    password=config.password.get_secret_value() if config.password else "",
                    minsize=1,
                    maxsize=config.pool_size,
                    autocommit=False,
                    charset="utf8mb4",
                    connect_timeout=config.connect_timeout,
                    init_command="SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone='+00:00'",
                ),
                config.connect_timeout * 2,
            )
        try:
            with translate_mysql_errors(f"preparing {config.database} on {config.host}:{config.port}"):
                await self._prepare_target()
        except BaseException:
            await self.stop()
            raise
        if config.mode == "cdc" and config.tombstone_retention > 0:
            self._purger = asyncio.create_task(self._purge_tombstones_forever())

    async def _prepare_target(self) -> None:
        config = self.config
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (config.database,))
            if await cursor.fetchone() is None:
                if not (config.auto_create or config.mode == "events"):
                    raise ConfigError(
                        "config.database", f"database {config.database!r} does not exist", "create it or set auto_create: true"
                    )
                await cursor.execute(f"CREATE DATABASE IF NOT EXISTS {quote(config.database)} DEFAULT CHARSET utf8mb4")
            if config.mode == "events":
                await cursor.execute(_EVENTS_DDL.format(table=quote(config.database, config.events_table)))
            elif config.mode == "cdc":
                versions = await load_table(cursor, config.database, VERSIONS_TABLE)
                if versions is None:
                    await cursor.execute(_VERSIONS_DDL.format(table=quote(config.database, VERSIONS_TABLE)))
                elif versions.column("deleted_at") is None:
                    await cursor.execute(_VERSIONS_DELETED_AT.format(table=quote(config.database, VERSIONS_TABLE)))
            elif config.mode == "mapped":
                assert config.table is not None
                schema = await load_table(cursor, config.database, config.table)
                if schema is None and not (config.auto_create and config.key_columns):
                    raise ConfigError(
                        "config.table",
                        f"table {config.database}.{config.table} does not exist",
                        "create it, or set auto_create: true with key_columns",
                    )
                if schema is not None and not (config.key_columns or schema.primary_key):
                    raise ConfigError(
                        "config.key_columns", f"table {config.table} has no primary key", "list the upsert key in key_columns"
                    )
                if schema is not None:
                    for column in config.key_columns:
                        if schema.column(column) is None:
                            raise ConfigError(
                                "config.key_columns", f"column {column!r} is not in table {config.table}", "name existing columns"
                            )
            await conn.commit()

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.wait([self._purger])
            self._purger = None
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    # -- put ---------------------------------------------------------------------------------------

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        with translate_mysql_errors(f"writing {len(records)} records to {self.config.database}", running=True):
            async with asyncio.timeout(self.config.write_timeout):
                return await self._put(records)

    async def _put(self, records: Sequence[ConnectorRecord]) -> list[Rejection]:
        rejections: list[Rejection] = []
        segment: list[_Planned] = []
        self._read_in_put.clear()
        async with self._connection() as conn:
            for record in records:
                try:
                    planned = await self._plan(conn, record)
                except DataError as exc:
                    rejections.append(Rejection(record, exc.reason))
                    continue
                if self.config.mode == "cdc" and any(isinstance(step, Ddl) for step in planned.steps):
                    rejections += await self._write_segment(conn, segment)
                    segment = []
                    await self._apply_ddl(conn, [step for step in planned.steps if isinstance(step, Ddl)])
                else:
                    segment.append(planned)
            rejections += await self._write_segment(conn, segment)
        return rejections

    async def _write_segment(self, conn: Any, segment: list[_Planned]) -> list[Rejection]:
        """Write ``segment`` in one transaction; on a data error, again row by row to isolate it."""
        if not segment:
            return []
        changes = [step for planned in segment for step in planned.steps if isinstance(step, Change)]
        # autocommit is off: everything since the last commit or rollback is this batch's one transaction.
        try:
            async with conn.cursor() as cursor:
                await self._write_changes(cursor, changes)
            await conn.commit()
            return []
        except pymysql.MySQLError as exc:
            await self._rollback(conn)
            if not is_data_error(exc):
                raise
            self._log.info("batch refused by the server; isolating the bad rows", reason=str(exc))
            self._forget_schemas()
        rejections: list[Rejection] = []
        async with conn.cursor() as cursor:
            for planned in segment:
                await cursor.execute("SAVEPOINT row_write")
                try:
                    await self._write_changes(cursor, [step for step in planned.steps if isinstance(step, Change)])
                except pymysql.MySQLError as exc:
                    if not is_data_error(exc):
                        raise
                    await cursor.execute("ROLLBACK TO SAVEPOINT row_write")
                    rejections.append(Rejection(planned.record, f"MySQL refused the row: {exc.args[-1]}"))
        await conn.commit()
        return rejections

    async def _rollback(self, conn: Any) -> None:
        try:
            await conn.rollback()
        except Exception:  # the connection is already broken; the pool drops it on release
            conn.close()

    @staticmethod
    def _collapse(
        changes: list[Change],
    ) -> dict[tuple[str, tuple[Any, ...]], tuple[tuple[str, ...], bool, dict[str, Any] | None]]:
        """(table, key) -> (key columns, delete first?, values to upsert after): the net effect of the changes, in order."""
        net: dict[tuple[str, tuple[Any, ...]], tuple[tuple[str, ...], bool, dict[str, Any] | None]] = {}
        for change in changes:
            slot = (change.table, change.key)
            _, deleted, values = net.get(slot, (change.key_columns, False, None))
            if change.op == "delete":
                net[slot] = (change.key_columns, True, None)
            else:
                merged = dict(values) if values is not None else {}
                merged.update(zip(change.columns, change.row, strict=True))
                net[slot] = (change.key_columns, deleted, merged)
        return net

    async def _write_changes(self, cursor: Any, changes: list[Change]) -> None:
        """Write ``changes``; cdc: only those newer than their row's version, recording the new versions."""
        versioned = [change for change in changes if change.version is not None]
        if not versioned:
            await self._execute_net(cursor, changes)
            return
        newer = await self._newer_changes(cursor, versioned)
        await self._execute_net(cursor, [change for change in changes if change.version is None] + [c for _, c in newer])
        if newer:
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the session's time zone is UTC
            await cursor.executemany(
                f"INSERT INTO {quote(self.config.database, VERSIONS_TABLE)} (`tbl`, `pk`, `version`, `deleted_at`)"
                " VALUES (%s, %s, %s, %s)"
                " ON DUPLICATE KEY UPDATE `version` = VALUES(`version`), `deleted_at` = VALUES(`deleted_at`)",
                [(change.table, row_id, change.version, now if change.op == "delete" else None) for row_id, change in newer],
            )

    async def _newer_changes(self, cursor: Any, changes: list[Change]) -> list[tuple[str, Change]]:
        """Per row the newest of ``changes``, if it is newer than the row's stored version and its table's floor.

        The rows' versions stay locked until the transaction ends, so a concurrent writer of the same
        rows (another replica) waits and then compares with what this one wrote.
        """
        latest: dict[tuple[str, str], Change] = {}
        for change in changes:
            slot = (change.table, _row_id(change.key))
            held = latest.get(slot)
            if held is None or str(change.version) > str(held.version):
                latest[slot] = change
        by_table: dict[str, list[str]] = {}
        for table, row_id in sorted(latest):  # one lock order for every writer
            by_table.setdefault(table, []).append(row_id)
        versions = quote(self.config.database, VERSIONS_TABLE)
        newer: list[tuple[str, Change]] = []
        for table, row_ids in by_table.items():
            stored: dict[str, str] = {}
            for start in range(0, len(row_ids), _DELETE_CHUNK):
                chunk = row_ids[start : start + _DELETE_CHUNK]
                await cursor.execute(
                    f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN ({','.join(['%s'] * len(chunk))})"
                    " FOR UPDATE",
                    [table, *chunk],
                )
                stored.update(await _fetch_versions(cursor))
            await cursor.execute(
                f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN (%s, %s) LOCK IN SHARE MODE",
                (table, _RESET_MARK, _PENDING_MARK),
            )
            marks = dict(await _fetch_versions(cursor))
            floor = marks.get(_RESET_MARK, "")
            pending = marks.get(_PENDING_MARK)
            if pending is not None and any(str(latest[(table, row_id)].version) > pending for row_id in row_ids):
                raise RetriableError(f"changes to {table} wait for its schema change at {pending} to be applied")
            for row_id in row_ids:
                change = latest[(table, row_id)]
                if str(change.version) > max(stored.get(row_id, ""), floor):
                    newer.append((row_id, change))
        return newer

    async def _execute_net(self, cursor: Any, changes: list[Change]) -> None:
        """Collapse changes per key to their net effect, then deletes, then upserts, multi-row."""
        deletes: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        upserts: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[tuple[Any, ...]]] = {}
        if all(c.op == "upsert" for c in changes) and len({(c.table, c.key) for c in changes}) == len(changes):
            for change in changes:  # nothing to collapse
                upserts.setdefault((change.table, change.columns, change.key_columns), []).append(change.row)
        else:
            for (table, key), (key_columns, deleted, values) in self._collapse(changes).items():
                if deleted:
                    deletes.setdefault((table, key_columns), []).append(key)
                if values is not None:
                    upserts.setdefault((table, tuple(values), key_columns), []).append(tuple(values.values()))
        for (table, key_columns), keys in deletes.items():
            for start in range(0, len(keys), _DELETE_CHUNK):
                chunk = keys[start : start + _DELETE_CHUNK]
                tuple_sql = "(" + ",".join(["%s"] * len(key_columns)) + ")"
                target = quote(*key_columns) if len(key_columns) == 1 else "(" + ",".join(quote(c) for c in key_columns) + ")"
                await cursor.execute(
                    f"DELETE FROM {quote(self.config.database, table)} WHERE {target} IN ({','.join([tuple_sql] * len(chunk))})",
                    [value for key in chunk for value in key],
                )
        for (table, columns, key_columns), rows in upserts.items():
            await self._send_upsert(cursor, (table, columns, key_columns), rows)

    async def _send_upsert(
        self, cursor: Any, target: tuple[str, tuple[str, ...], tuple[str, ...]], rows: list[tuple[Any, ...]]
    ) -> None:
        """Multi-row upserts of ``rows`` (values of ``target``'s columns), each within the client's statement length."""
        values = [value for row in rows for value in row]
        # The driver binds the values (mogrify is what execute does); bound first, so the length is known.
        statement = cursor.mogrify(_upsert_sql(self.config.database, *target, len(rows)), values)
        encoded = statement.encode(cursor.connection.encoding, "surrogateescape")
        if len(encoded) > cursor.max_stmt_length and len(rows) > 1:
            # As many parts as the length asks for, so rows alike are bound about twice, not log(n) times.
            parts = min(len(rows), len(encoded) // cursor.max_stmt_length + 1)
            step = -(-len(rows) // parts)
            for start in range(0, len(rows), step):
                await self._send_upsert(cursor, target, rows[start : start + step])
            return
        await cursor.execute(encoded)

    # -- tombstones -------------------------------------------------------------------------------

    async def _purge_tombstones_forever(self) -> None:
        """Purge tombstones older than ``tombstone_retention`` now and then, for as long as the sink runs.

        Housekeeping: a failed round (database down, a lock conflict with a batch) is logged and tried again
        at the next one; the batches' own retries show the outage.
        """
        retention = self.config.tombstone_retention
        interval = min(max(retention / 4, 1.0), 3600.0)
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # replicas of one group do not purge in step
            try:
                with translate_mysql_errors(f"purging tombstones in {self.config.database}", running=True):
                    async with asyncio.timeout(self.config.write_timeout):
                        purged = await self.purge_tombstones(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention))
            except MeshConnectError as exc:  # any verdict (down, refused, denied): the task lives on, the next round retries
                self._log.warning("tombstone purge failed; tried again later", error=str(exc), retry_in_s=round(interval, 1))
                continue
            if purged:
                TOMBSTONES_PURGED.labels(self._instance).inc(purged)

    async def purge_tombstones(self, cutoff: dt.datetime) -> int:
        """Remove the versions of rows deleted before ``cutoff`` (tombstones); returns how many went.

        A table's floor rises to the newest version purged, in the same transaction, so a change older
        than a purged delete is still skipped: what a tombstone did for one row, the floor does for all
        rows of the table, for changes older than it.
        """
        versions = quote(self.config.database, VERSIONS_TABLE)
        before = cutoff.astimezone(dt.UTC).replace(tzinfo=None)
        purged = 0
        async with self._connection() as conn, conn.cursor() as cursor:
            await cursor.execute(f"SELECT DISTINCT `tbl` FROM {versions} WHERE `deleted_at` < %s", (before,))
            tables = sorted(bytes(row[0]).decode() for row in await cursor.fetchall())
            await conn.commit()
            for table in tables:
                while True:
                    # The rows, then the floor mark: the order a batch locks them in, so the two wait rather than deadlock.
                    await cursor.execute(
                        f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `deleted_at` < %s"
                        f" ORDER BY `pk` LIMIT {_PURGE_CHUNK} FOR UPDATE",
                        (table, before),
                    )
                    rows = await _fetch_versions(cursor)
                    if not rows:
                        await conn.commit()
                        break
                    await cursor.execute(
                        f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` IN ({','.join(['%s'] * len(rows))})",
                        [table, *(pk for pk, _ in rows)],
                    )
                    floor = max(version for _, version in rows)
                    await cursor.execute(_raise_mark_sql(versions), (table, _RESET_MARK, floor))
                    await conn.commit()
                    purged += len(rows)
                    self._log.info("tombstones purged", table=table, tombstones=len(rows), floor=floor)
                    if len(rows) < _PURGE_CHUNK:
                        break
        return purged

    async def _apply_ddl(self, conn: Any, steps: list[Ddl]) -> None:
        async with conn.cursor() as cursor:
            await cursor.execute(f"USE {quote(self.config.database)}")
            for step in steps:
                if step.version is None:
                    await self._run_ddl(cursor, step)
                    continue
                # One replica at a time applies a table's schema changes: a named lock outlives the DDL's implicit commit.
                lock = "meshconnect-ddl-" + hashlib.sha1(f"{self.config.database}.{step.table}".encode()).hexdigest()
                await cursor.execute("SELECT GET_LOCK(%s, %s)", (lock, self.config.write_timeout / 2))  # within put's bound
                (held,) = await cursor.fetchone()
                if held != 1:
                    raise RetriableError(f"another replica applies a schema change to {step.table}; retried once it is done")
                try:
                    await self._apply_ordered_ddl(conn, cursor, step)
                finally:
                    with contextlib.suppress(pymysql.MySQLError, OSError, RuntimeError):  # a lost session releases it too
                        await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                        await cursor.fetchall()
        await conn.commit()
        self._forget_schemas()

    async def _apply_ordered_ddl(self, conn: Any, cursor: Any, step: Ddl) -> None:
        """Apply ``step`` unless a change as new or newer was applied; its marks are set before it runs.

        Marks first (``ddl``, ``reset`` for CREATE/DROP/TRUNCATE, and ``pending``, in one transaction), then the
        statement, then ``pending`` goes. While it is pending, row changes of the table newer than it wait (the
        batch is retried) and older ones are obsolete if it resets the table; a replica that gets the same
        change after the marks skips it. A pending mark left by a crash makes the redelivered change run again.
        """
        versions = quote(self.config.database, VERSIONS_TABLE)
        assert step.version is not None
        await cursor.execute(
            f"SELECT `pk`, `version` FROM {versions} WHERE `tbl` = %s AND `pk` IN (%s, %s, %s) FOR UPDATE",
            (step.table, _DDL_MARK, _RESET_MARK, _PENDING_MARK),
        )
        before = dict(await _fetch_versions(cursor))
        applied = before.get(_DDL_MARK, "")
        if applied > step.version or (applied == step.version and before.get(_PENDING_MARK) != step.version):
            await conn.commit()
            self._log.info("schema change not newer than the table's last one; skipped", statement=step.statement[:200])
            return
        marks = [_DDL_MARK, _PENDING_MARK, *([_RESET_MARK] if step.resets else [])]
        await cursor.executemany(_raise_mark_sql(versions), [(step.table, mark, step.version) for mark in marks])
        if step.removes_rows:
            await self._report_newer_rows(cursor, step)
        await conn.commit()
        try:
            await self._run_ddl(cursor, step)
        except (pymysql.MySQLError, DataError):
            # The server said no: the marks go back and nothing waits for the change (it may be dead-lettered).
            # Cut off or cancelled instead, the marks stay, pending: the change is retried and runs again.
            with contextlib.suppress(pymysql.MySQLError, OSError, RuntimeError):
                listed = ",".join(["%s"] * len(marks))
                await cursor.execute(f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` IN ({listed})", (step.table, *marks))
                restore = [(step.table, mark, before[mark]) for mark in marks if mark in before and mark != _PENDING_MARK]
                if restore:
                    await cursor.executemany(_raise_mark_sql(versions), restore)
                await conn.commit()
            raise
        await cursor.execute(
            f"DELETE FROM {versions} WHERE `tbl` = %s AND `pk` = %s AND `version` = %s", (step.table, _PENDING_MARK, step.version)
        )
        await conn.commit()

    async def _report_newer_rows(self, cursor: Any, step: Ddl) -> None:
        """Say so loudly when rows changed after ``step`` at the source were applied before it: it removes them.

        That takes several replicas and a redelivery of ``step``; the rows cannot be told apart from older ones
        in the target, so the way out is a re-sync of the table.
        """
        versions = quote(self.config.database, VERSIONS_TABLE)
        await cursor.execute(
            f"SELECT COUNT(*) FROM {versions} WHERE `tbl` = %s AND `version` > %s AND `deleted_at` IS NULL"
            f" AND `pk` NOT IN (%s, %s, %s)",
            (step.table, step.version, _DDL_MARK, _RESET_MARK, _PENDING_MARK),
        )
        (newer,) = await cursor.fetchone()
        if newer:
            LATE_RESETS.labels(self._instance).inc()
            self._log.error(
                "schema change applied after newer row changes of its table; they go with it",
                table=step.table,
                rows=int(newer),
                statement=step.statement[:200],
                fix="re-sync the table: re-snapshot it at the source (meshconnect offsets reset) into an emptied target table",
            )

    async def _run_ddl(self, cursor: Any, step: Ddl) -> None:
        try:
            await cursor.execute(step.statement)
        except pymysql.MySQLError as exc:
            code = error_code(exc)
            if code in _ALREADY_APPLIED:
                self._log.info("schema change already applied", statement=step.statement[:200])
                return
            # The server's own verdict on the statement (not a client-side 2xxx or a transient one) stands on retry.
            if code is not None and not 2000 <= code < 3000 and code not in RETRIABLE_CODES:
                raise DataError(f"the target refused the schema change {step.statement[:200]!r}: {exc.args[-1]}") from exc
            raise

    # -- planning: record -> changes ---------------------------------------------------------------

    async def _plan(self, conn: Any, record: ConnectorRecord) -> _Planned:
        if self.config.mode == "events":
            return _Planned(record, [self._event_row(record)])
        data = record.data
        if self.config.mode == "cdc":
            return _Planned(record, await self._cdc_steps(conn, record))
        if not isinstance(data, dict):
            raise DataError(f"mapped mode needs a JSON object as data, got {type(data).__name__}")
        return _Planned(record, [await self._mapped_change(conn, record, data)])

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

    async def _mapped_change(self, conn: Any, record: ConnectorRecord, data: dict[str, Any]) -> Change:
        table = self.config.table
        assert table is not None
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
            schema = self._tables.get(table)
            shape = None if schema is None else self._shapes.get((table, self._key_columns or schema.primary_key, names))
            if shape is None:  # a new column set: check it, and create or widen the table if configured
                if not self._fields:
                    for name in names:
                        check_identifier(name, "column")
                schema = await self._table(conn, table, record, values, self._key_columns)
                shape = self._shape(schema, self._key_columns or schema.primary_key, names)
            try:
                return shape.change(op, list(values.values()))
            except DataError:
                if table in self._read_in_put:
                    raise
                # The verdict may rest on a table changed since it was read (a column widened): read it again, once per put.
                self._tables.pop(table, None)

    async def _cdc_steps(self, conn: Any, record: ConnectorRecord) -> list[Change | Ddl]:
        data = record.data
        if record.type is not None and record.type.endswith(".heartbeat"):
            return []
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
            raise DataError("cdc mode needs a mysql-source change envelope (an object with 'source')")
        source = data["source"]
        if "ddl" in data:
            if not self.config.apply_ddl:  # the schema is managed by hand: nothing runs, no mark is set
                DDL_SKIPPED.labels(self._instance).inc()
                at = {key: source.get(key) for key in ("db", "file", "pos")}  # not the text: it may carry a password
                self._log.info("schema change skipped (apply_ddl is false)", **at)
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
        schema = await self._table(conn, target, record, image, declared_key)
        key_columns = schema.primary_key or declared_key
        if op == "d":
            return [self._change(schema, key_columns, "delete", before or image, version)]
        assert after is not None
        steps: list[Change | Ddl] = []
        if op == "u" and before is not None and any(before.get(c) != after.get(c) for c in key_columns):
            steps.append(self._change(schema, key_columns, "delete", before, version))
        steps.append(self._change(schema, key_columns, "upsert", after, version))
        return steps

    def _change(
        self,
        schema: TableSchema,
        key_columns: tuple[str, ...],
        op: Literal["upsert", "delete"],
        values: dict[str, Any],
        version: str | None = None,
    ) -> Change:
        return self._shape(schema, key_columns, tuple(values)).change(op, list(values.values()), version)

    def _shape(self, schema: TableSchema, key_columns: tuple[str, ...], names: tuple[str, ...]) -> _Shape:
        shape = self._shapes.get((schema.table, key_columns, names))
        if shape is None:
            fields = self._field_names if self.config.mode == "mapped" else None
            shape = self._shapes[(schema.table, key_columns, names)] = _Shape.resolve(schema, key_columns, names, fields)
        return shape

    # -- live schema, auto_create / auto_evolve -----------------------------------------------------

    async def _table(
        self, conn: Any, table: str, record: ConnectorRecord, values: Mapping[str, Any], key_columns: tuple[str, ...]
    ) -> TableSchema:
        schema = await self._load(conn, table)
        if schema is None:
            if not self.config.auto_create and self.config.mode == "mapped":
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

    def _forget_schemas(self) -> None:
        """After DDL or a refused batch: read the live schema again."""
        self._tables.clear()
        self._shapes.clear()

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
        self._log.info("creating table", table=table, columns=len(definitions))
        async with conn.cursor() as cursor:
            await cursor.execute(statement + " DEFAULT CHARSET=utf8mb4")
        await conn.commit()

    async def _add_columns(self, conn: Any, table: str, record: ConnectorRecord, values: Mapping[str, Any]) -> None:
        async with conn.cursor() as cursor:
            for name, value in values.items():
                sql_type = self._column_type(record, name, value, key=False)
                self._log.info("adding column", table=table, column=name, type=sql_type)
                try:
                    await cursor.execute(
                        f"ALTER TABLE {quote(self.config.database, table)} ADD COLUMN {quote(name)} {sql_type} NULL"
                    )
                except Exception as exc:
                    if getattr(exc, "args", (None,))[0] != 1060:  # added meanwhile by another writer
                        raise
        await conn.commit()

    # -- connections -----------------------------------------------------------------------------

    def _connection(self) -> _Acquired:
        return _Acquired(self._pool, self.config.connect_timeout)


class _Acquired:
    """A pooled connection under a timeout; a connection that failed is closed so the pool drops it."""

    def __init__(self, pool: Any, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        if self._pool is None:
            raise ConfigError("mysql-sink", "put() before start()", "start the sink first")
        self._conn = await asyncio.wait_for(self._pool.acquire(), self._timeout)
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, DataError | ConfigError):
            self._conn.close()
        self._pool.release(self._conn)


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


async def _fetch_versions(cursor: Any) -> list[tuple[str, str]]:
    """The (``pk``, ``version``) rows a query of the versions table returned, as text."""
    return [(bytes(pk).decode(), bytes(version).decode()) for pk, version in await cursor.fetchall()]


def _raise_mark_sql(versions: str) -> str:
    """Set a table mark (``ddl``, ``reset``, ``pending``) to a version, never lowering it."""
    return (
        f"INSERT INTO {versions} (`tbl`, `pk`, `version`) VALUES (%s, %s, %s)"
        " ON DUPLICATE KEY UPDATE `version` = GREATEST(`version`, VALUES(`version`))"
    )


@functools.lru_cache(maxsize=64)
def _upsert_sql(database: str, table: str, columns: tuple[str, ...], key_columns: tuple[str, ...], rows: int) -> str:
    """The text of a ``rows``-row upsert, with a ``%s`` per value: built once per table, column set and row count."""
    updates = [f"{quote(c)}=VALUES({quote(c)})" for c in columns if c not in key_columns] or [
        f"{quote(key_columns[0])}={quote(key_columns[0])}"
    ]
    row = "(" + ",".join(["%s"] * len(columns)) + ")"
    return (
        f"INSERT INTO {quote(database, table)} ({','.join(quote(c) for c in columns)})"
        f" VALUES {','.join([row] * rows)} ON DUPLICATE KEY UPDATE {','.join(updates)}"
    )


def _unchecked_binding(rule: ColumnRule, temporal: bool) -> frozenset[type]:
    """The value types bound to ``rule``'s column as they are: those that always fit and need no conversion."""
    if temporal:
        return frozenset({type(None)})  # strings are ISO date-times to convert
    if rule.kind is ColumnKind.TEXT:
        return frozenset({str, int, type(None)})  # other values become their JSON text
    if rule.kind in (ColumnKind.INTEGER, ColumnKind.FLAG):
        return rule.unchecked | {int}  # the shape compares integers with the column's range, without a call
    return rule.unchecked


def _bind_checked(rule: ColumnRule, temporal: bool, value: Any) -> Any:
    """``value`` bindable to ``rule``'s column, or DataError: a text column gets a non-string as its JSON text."""
    rule.check(value)
    if rule.kind is ColumnKind.TEXT and not isinstance(value, str) and value is not None:
        return orjson.dumps(value).decode()
    return _bindable(value, temporal)


def _bindable(value: Any, temporal: bool) -> Any:
    """A JSON value as a bound parameter (objects as JSON text, ISO date-times for date columns as UTC)."""
    if isinstance(value, _CONTAINERS):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and temporal and ("T" in value or value.endswith("Z")):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # the server judges it
        return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return value


def change_version(source: Mapping[str, Any], *, ddl: bool) -> str | None:
    """The totally ordered text of a change's source position (see the module docstring); None for polling envelopes."""
    if source.get("mode") == "polling" and "pos" not in source:
        return None
    number = _BINLOG_NUMBER.search(str(source.get("file") or ""))
    pos = source.get("pos")
    if number is None or not isinstance(pos, int) or isinstance(pos, bool) or pos < 0:
        raise DataError("change envelope has no binlog position (source.file, source.pos): it cannot be ordered")
    if source.get("snapshot") is True:
        return f"{int(number[1]):010d}:{pos:020d}:{0 if ddl else 1}:{0:010d}"
    row = source.get("row")
    if not isinstance(row, int) or isinstance(row, bool) or row < 0:
        raise DataError("change envelope has no source.row (the change's index in its transaction): it cannot be ordered")
    return f"{int(number[1]):010d}:{pos:020d}:2:{row:010d}"


def _row_id(key: tuple[Any, ...]) -> str:
    """A row's key as the versions table stores it: JSON, or a hash of it when too long."""
    text = orjson.dumps(key, default=_key_default)
    return text.decode() if len(text) <= _MAX_ROW_ID else "#" + hashlib.sha256(text).hexdigest()


def _key_default(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else str(value)
