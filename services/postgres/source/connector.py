"""postgres-source: a consistent snapshot of PostgreSQL tables, then their changes by logical decoding (pgoutput).

On its first start (``snapshot_mode``) the source creates the replication slot together with a
snapshot and reads every table of the publication in primary-key chunks (:mod:`.snapshot`), each
row a record with ``op: r``; then it streams from the slot's consistent point. The slot is read
through SQL: each poll *peeks* at the slot's pending changes (``pg_logical_slot_peek_binary_changes``
with the built-in ``pgoutput`` plugin and a publication), and :meth:`commit` moves the slot forward
(``pg_replication_slot_advance``) only past transactions whose every change the mesh stored. A crash
therefore replays from the last fully stored transaction, and the committed offset (commit LSN +
index of the change in its transaction, or the table and key of the last snapshot row) skips what
was already published.

Each change is one record in mysql-source's envelope (:mod:`services.mysql.envelope`): data
``{"op": "c|u|d|r", "before", "after", "key", "source"}``, a TRUNCATE ``{"ddl", "source"}``, type
``postgres.change.<op>`` (``ddl`` for a TRUNCATE), time = the commit time. Every poll decodes from
the slot's position, as far as the changes already handed out plus a batch (at most ``max_peek``
messages: keep it above what is in flight, the worker's poll queue plus the mesh window); whole
transactions are always read, so a very large transaction is read at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import structlog
from pydantic import Field, SecretStr, field_validator

from runtime import ConfigError, ConnectorConfig, ConnectorRecord, RetriableError, Secret, Source, SourceContext
from services.postgres.client import PgConnection, pg_call, quote_identifier, relation_parts
from services.postgres.source.pgoutput import Begin, Change, Commit, Relation, Truncate, decode
from services.postgres.source.snapshot import SnapshotChunk, SnapshotReader, read_tables

__all__ = ["PostgresSource", "PostgresSourceConfig"]

log = structlog.get_logger()

_PEEK = "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"
_TYPE_PREFIX = "postgres.change"
_OPS = {"insert": "c", "update": "u", "delete": "d"}


class PostgresSourceConfig(ConnectorConfig):
    dsn: Secret = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), description="postgresql:// DSN (may hold a password)."
    )
    slot: str = Field("meshconnect", pattern=r"^[a-z0-9_]{1,63}$", description="Logical replication slot (created if missing).")
    publication: str = Field("meshconnect", pattern=IDENTIFIER, description="Publication naming the tables (created if missing).")
    tables: list[str] = Field(
        default_factory=list, description="Tables ([schema.]name) of the publication when it is created; empty = all tables."
    )
    snapshot_mode: Literal["initial", "never", "when_needed"] = Field(
        "initial",
        description="initial: snapshot when no offset; never: stream from now; when_needed: also when the slot was lost.",
    )
    snapshot_chunk_size: int = Field(2000, ge=1, le=100_000, description="Rows per snapshot query (primary-key chunks).")
    batch_size: int = Field(500, ge=1, description="Changes per poll, at most.")
    max_peek: int = Field(20_000, ge=100, description="Messages decoded per poll at most (see above).")
    idle_wait: float = Field(0.5, gt=0, le=1.0, description="Seconds to wait before looking again when nothing changed.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for connecting or any query.")

    @field_validator("tables")
    @classmethod
    def _relation_names(cls, tables: list[str]) -> list[str]:
        for table in tables:
            relation_parts(table)
        return tables


class PostgresSource(Source[PostgresSourceConfig]):
    name = "postgres-source"
    description = (
        "Snapshots PostgreSQL tables, then streams their row changes and TRUNCATEs by logical decoding (pgoutput slot),"
        " advancing the slot after the mesh ack."
    )
    config_model = PostgresSourceConfig

    def __init__(self, config: PostgresSourceConfig) -> None:
        super().__init__(config)
        self._connection = PgConnection(config.dsn, config.timeout)
        self._relations: dict[int, Relation] = {}
        self._partition = {"slot": config.slot}
        self._cursor: tuple[int, int] = (0, -1)  # (commit LSN, change index) of the last change handed out
        # Every peek decodes from the slot's position: remember how far in the changes not yet handed out begin.
        self._rows_behind = 0
        self._transaction_rows: dict[int, int] = {}  # end LSN -> messages, of the transactions of the last peek
        self._context = SourceContext(self.name, {})  # the worker's, once started
        self._snapshot: SnapshotReader | None = None
        self._snapshot_lsn = 0  # the slot's consistent point: where the snapshot's rows stand
        self._reading: asyncpg.Connection | None = None  # the snapshot's repeatable-read transaction

    async def start(self, context: SourceContext) -> None:
        self._context = context
        committed = context.offset(self._partition)
        resume = committed.get("snapshot") if committed is not None else None
        streaming = committed is not None and not isinstance(resume, dict)
        if committed is not None and streaming:
            self._cursor = (int(committed["lsn"]), int(committed["n"]))
        snapshot = isinstance(resume, dict) or (committed is None and self.config.snapshot_mode != "never")
        connection = await self._connection.get()
        try:
            await self._ensure_publication(connection)
            slot_lsn = await self._slot_lsn(connection)
            if slot_lsn is not None and committed is None and snapshot:
                # Left by a run that committed nothing: its snapshot ended with that run, and one read now in a
                # new transaction would hold rows the slot also streams, published twice under different ids.
                log.warning("replication slot left by a run that committed no offset: made again", slot=self.config.slot)
                await pg_call(  # gone meanwhile (another run dropped it): nothing to drop, no error
                    "drop slot",
                    connection.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                        self.config.slot,
                    ),
                    self.config.timeout,
                )
                slot_lsn = None
            if slot_lsn is None:
                if isinstance(resume, dict):  # the rows handed out stand before changes the lost slot held
                    log.warning("replication slot is missing mid-snapshot; the snapshot starts again", slot=self.config.slot)
                    resume = None
                elif streaming and self.config.snapshot_mode == "when_needed":
                    log.warning("replication slot is missing; taking a new snapshot", slot=self.config.slot)
                    snapshot, self._cursor = True, (0, -1)
                elif streaming:
                    log.warning(
                        "replication slot is missing: changes since the committed offset are lost; created anew"
                        " (snapshot_mode: when_needed snapshots again instead)",
                        slot=self.config.slot,
                    )
                if snapshot:  # the slot's own snapshot: exactly what precedes its first change
                    self._reading = await self._create_slot_with_snapshot()
                else:
                    await pg_call(
                        "create slot",
                        connection.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", self.config.slot),
                        self.config.timeout,
                    )
                log.info("replication slot created", slot=self.config.slot, snapshot=snapshot)
            if snapshot:
                await self._plan_snapshot(connection, committed if isinstance(resume, dict) else None, context)
        except BaseException:
            await self.stop()
            raise

    async def _slot_lsn(self, connection: asyncpg.Connection) -> int | None:
        """The slot's consistent point (confirmed flush LSN); None when there is no such slot."""
        lsn = await pg_call(
            "slot lookup",
            connection.fetchval(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                self.config.slot,
            ),
            self.config.timeout,
        )
        return None if lsn is None else int(lsn)

    async def _create_slot_with_snapshot(self) -> asyncpg.Connection:
        """The slot, created on a replication connection whose open transaction keeps the slot's snapshot."""
        reading = await pg_call(
            "connect for the snapshot",
            asyncpg.connect(self.config.dsn.get_secret_value(), server_settings={"replication": "database"}),
            self.config.timeout,
        )
        try:
            await pg_call("begin snapshot", reading.execute("SET standard_conforming_strings = on"), self.config.timeout)
            await pg_call("begin snapshot", reading.execute("BEGIN ISOLATION LEVEL REPEATABLE READ"), self.config.timeout)
            # The slot name matches ^[a-z0-9_]{1,63}$ (config): a plain identifier of the replication grammar.
            statement = f"CREATE_REPLICATION_SLOT {self.config.slot} LOGICAL pgoutput USE_SNAPSHOT"
            await pg_call("create slot with snapshot", reading.execute(statement), self.config.timeout)
        except BaseException:
            reading.terminate()
            raise
        return reading

    async def _plan_snapshot(
        self, connection: asyncpg.Connection, committed: Mapping[str, Any] | None, context: SourceContext
    ) -> None:
        tables = await read_tables(connection, self.config.publication, self.config.timeout)
        resume = None
        if committed is not None:
            self._snapshot_lsn = int(committed["lsn"])
            resume = (str(committed["snapshot"]["table"]), committed["snapshot"]["after"])
        else:
            self._snapshot_lsn = await self._slot_lsn(connection) or 0
        self._snapshot = SnapshotReader(tables, self.config.snapshot_chunk_size, context, resume, self.config.timeout)
        log.info(
            "snapshot starting",
            tables=len(tables),
            resume_table=resume[0] if resume else None,
            own_transaction=self._reading is not None,
        )

    async def _ensure_publication(self, connection: asyncpg.Connection) -> None:
        found = await pg_call(
            "publication lookup",
            connection.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", self.config.publication),
            self.config.timeout,
        )
        if found:
            return
        tables = ", ".join(quote_identifier(*relation_parts(table)) for table in self.config.tables)
        target = f"TABLE {tables}" if tables else "ALL TABLES"
        statement = f"CREATE PUBLICATION {quote_identifier(self.config.publication)} FOR {target}"
        try:
            await pg_call("create publication", connection.execute(statement), self.config.timeout)
        except asyncpg.UndefinedTableError as exc:
            raise ConfigError("config.tables", str(exc), "name existing tables") from exc

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self._snapshot is not None:
            return await self._poll_snapshot(self._snapshot)
        try:  # after a good start a refusal is an operator's to mend: retried (running=True), not fatal
            connection = await self._connection.get(running=True)
            rows = await pg_call(
                "peek changes",
                connection.fetch(_PEEK, self.config.slot, self._peek_size(), self.config.publication),
                self.config.timeout,
                running=True,
            )
        except RetriableError:
            self._connection.drop()
            raise
        records = self._records(rows)
        self._context.report_lag(records[-1].timestamp if records else None)  # a record's time is its commit's
        if not records:
            await asyncio.sleep(self.config.idle_wait)
        return records

    async def _poll_snapshot(self, snapshot: SnapshotReader) -> list[ConnectorRecord]:
        try:
            if self._reading is None:
                # The slot's snapshot ended with its connection: go on in a new one (see services.postgres.source.snapshot).
                reading = await pg_call(
                    "connect for the snapshot",
                    asyncpg.connect(self.config.dsn.get_secret_value()),
                    self.config.timeout,
                    running=True,
                )
                self._reading = reading
                await pg_call(
                    "begin snapshot", reading.execute("SET standard_conforming_strings = on"), self.config.timeout, running=True
                )
                await pg_call(
                    "begin snapshot",
                    reading.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
                    self.config.timeout,
                    running=True,
                )
                log.info("snapshot continues in a new transaction", slot=self.config.slot)
            chunk = await snapshot.next_chunk(self._reading, await self._connection.get(running=True))
        except RetriableError:
            self._connection.drop()
            self._drop_reading()
            raise
        if chunk is None:
            await self._end_snapshot()
            log.info("snapshot finished; streaming from the slot", slot=self.config.slot)
            return []
        return self._snapshot_records(chunk)

    def _snapshot_records(self, chunk: SnapshotChunk) -> list[ConnectorRecord]:
        table = chunk.table
        now = datetime.now(UTC)
        source = self._source_block(table.schema, table.name, lsn=self._snapshot_lsn, index=0, xid=None, time=now, snapshot=True)
        return [
            ConnectorRecord(
                data={"op": "r", "before": None, "after": row, "key": list(table.key), "source": source},
                partition=self._partition,
                offset={"lsn": self._snapshot_lsn, "snapshot": {"table": table.qualified, "after": after}},
                timestamp=now,
                type=f"{_TYPE_PREFIX}.r",
                datacontenttype="application/json",
                extensions={"pgtable": table.qualified},
            )
            for row, after in chunk.rows
        ]

    async def _end_snapshot(self) -> None:
        """Every table read: end the transaction (it holds back vacuum) and stream."""
        self._snapshot = None
        if self._reading is not None:
            reading, self._reading = self._reading, None
            try:
                await pg_call("end snapshot", reading.close(timeout=self.config.timeout), self.config.timeout)
            except RetriableError:
                reading.terminate()

    def _drop_reading(self) -> None:
        if self._reading is not None:
            self._reading.terminate()
            self._reading = None

    def _source_block(
        self, schema: str, table: str, *, lsn: int, index: int, xid: int | None, time: datetime, snapshot: bool
    ) -> dict[str, Any]:
        return {
            "slot": self.config.slot,
            "lsn": lsn,
            "n": index,
            "xid": xid,
            "ts_ms": int(time.timestamp() * 1000),
            "schema": schema,
            "table": table,
            "snapshot": snapshot,
        }

    def _peek_size(self) -> int:
        """Messages to decode: those before the first change not handed out yet, plus room for a batch."""
        return min(self.config.max_peek, self._rows_behind + 2 * self.config.batch_size + 10)

    def _records(self, rows: Sequence[Any]) -> list[ConnectorRecord]:
        records: list[ConnectorRecord] = []
        begin: Begin | None = None
        begin_row = 0
        changes: list[Change] = []
        self._transaction_rows = {}
        for row_number, row in enumerate(rows):
            message = decode(bytes(row["data"]), self._relations)
            if isinstance(message, Begin):
                begin, begin_row, changes = message, row_number, []
            elif isinstance(message, Change):
                changes.append(message)
            elif isinstance(message, Truncate):  # one change per table emptied
                changes += [Change("truncate", oid) for oid in message.relation_oids]
            elif isinstance(message, Commit) and begin is not None:
                records += self._transaction(begin, message, changes, self.config.batch_size - len(records))
                self._transaction_rows[message.end_lsn] = row_number + 1 - begin_row
                self._rows_behind = row_number + 1
                if len(records) >= self.config.batch_size:
                    break
        return records

    def _transaction(self, begin: Begin, commit: Commit, changes: list[Change], room: int) -> list[ConnectorRecord]:
        records: list[ConnectorRecord] = []
        for index, change in enumerate(changes):
            if (begin.commit_lsn, index) <= self._cursor or len(records) >= room:
                continue
            relation = self._relations[change.relation_oid]
            source = self._source_block(
                relation.schema,
                relation.table,
                lsn=begin.commit_lsn,
                index=index,
                xid=begin.xid,
                time=begin.commit_time,
                snapshot=False,
            )
            data: dict[str, Any]
            if change.op == "truncate":
                op = "ddl"
                data = {"ddl": f"TRUNCATE TABLE {quote_identifier(relation.schema, relation.table)}", "source": source}
            else:
                op = _OPS[change.op]
                key = [name for name, _, in_key in relation.columns if in_key]
                data = {"op": op, "before": change.old, "after": change.new, "key": key, "source": source}
            offset = {"lsn": begin.commit_lsn, "n": index, "end": commit.end_lsn, "last": index == len(changes) - 1}
            records.append(
                ConnectorRecord(
                    data=data,
                    partition=self._partition,
                    offset=offset,
                    timestamp=begin.commit_time,
                    type=f"{_TYPE_PREFIX}.{op}",
                    datacontenttype="application/json",
                    extensions={"pgtable": f"{relation.schema}.{relation.table}", "pgxid": begin.xid},
                )
            )
            self._cursor = (begin.commit_lsn, index)
        return records

    async def commit(self, records: Sequence[ConnectorRecord]) -> None:
        finished = [int(record.offset["end"]) for record in records if record.offset.get("last")]
        if not finished:
            return
        # Every change of these transactions is stored: the slot may forget them.
        connection = await self._connection.get(running=True)
        try:
            await pg_call(
                "advance slot",
                connection.execute(
                    "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", self.config.slot, _lsn_text(max(finished))
                ),
                self.config.timeout,
                running=True,
            )
        except asyncpg.ObjectNotInPrerequisiteStateError:
            pass  # the slot is already past that point
        except RetriableError as exc:
            # Not advanced: the transactions are peeked again and skipped by the committed offset; nothing lost.
            self._connection.drop()
            log.warning("replication slot not advanced", error=str(exc))
        else:  # the next peek starts after these transactions: fewer messages to skip
            advanced = [end for end in self._transaction_rows if end <= max(finished)]
            self._rows_behind = max(0, self._rows_behind - sum(self._transaction_rows.pop(end) for end in advanced))

    async def stop(self) -> None:
        self._drop_reading()
        await self._connection.close()


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
