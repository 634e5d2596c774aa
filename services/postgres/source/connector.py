"""postgres-source: row changes of PostgreSQL tables by logical decoding (pgoutput), at least once.

The source reads a logical replication slot through SQL: each poll *peeks* at the slot's pending
changes (``pg_logical_slot_peek_binary_changes`` with the built-in ``pgoutput`` plugin and a
publication), and :meth:`commit` moves the slot forward (``pg_replication_slot_advance``) only past
transactions whose every change the mesh stored. A crash therefore replays from the last fully
stored transaction, and the committed offset (commit LSN + index of the change in its transaction)
skips what was already published. No replication-protocol connection is needed: plain asyncpg.

Each change becomes one record: data ``{"op", "schema", "table", "row", "old"}`` (``row`` the new
row of an insert or update, ``old`` the key, or the whole old row with REPLICA IDENTITY FULL, of an
update or delete), type ``postgres.<op>``, time = the commit time. Every poll decodes from the
slot's position, as far as the changes already handed out plus a batch (at most ``max_peek``
messages: keep it above what is in flight, the worker's poll queue plus the mesh window); whole
transactions are always read, so a very large transaction is read at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from pydantic import Field, SecretStr

from runtime.config import ConnectorConfig, Secret
from runtime.connector import Source, SourceContext
from runtime.errors import ConfigError, RetriableError
from runtime.record import ConnectorRecord
from services.postgres.client import PgConnection, pg_call, quote_identifier
from services.postgres.source.pgoutput import Begin, Change, Commit, Relation, decode

__all__ = ["PostgresSource", "PostgresSourceConfig"]

log = structlog.get_logger()

_PEEK = "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', 'publication_names', $3)"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"


class PostgresSourceConfig(ConnectorConfig):
    dsn: Secret = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), description="postgresql:// DSN (may hold a password)."
    )
    slot: str = Field("meshconnect", pattern=r"^[a-z0-9_]{1,63}$", description="Logical replication slot (created if missing).")
    publication: str = Field("meshconnect", pattern=IDENTIFIER, description="Publication naming the tables (created if missing).")
    tables: list[str] = Field(
        default_factory=list, description="Tables ([schema.]name) of the publication when it is created; empty = all tables."
    )
    batch_size: int = Field(500, ge=1, description="Changes per poll, at most.")
    max_peek: int = Field(20_000, ge=100, description="Messages decoded per poll at most (see above).")
    idle_wait: float = Field(0.5, gt=0, le=1.0, description="Seconds to wait before looking again when nothing changed.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for connecting or any query.")


class PostgresSource(Source[PostgresSourceConfig]):
    name = "postgres-source"
    description = "Streams PostgreSQL row changes by logical decoding (pgoutput slot), advancing the slot after the mesh ack."
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

    async def start(self, context: SourceContext) -> None:
        self._context = context
        committed = context.offset(self._partition)
        if committed is not None:
            self._cursor = (int(committed["lsn"]), int(committed["n"]))
        connection = await self._connection.get()
        try:
            await self._ensure_publication(connection)
            exists = await pg_call(
                "slot lookup",
                connection.fetchval("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", self.config.slot),
                self.config.timeout,
            )
            if not exists:
                await pg_call(
                    "create slot",
                    connection.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", self.config.slot),
                    self.config.timeout,
                )
                log.info("replication slot created", slot=self.config.slot)
        except BaseException:
            await self.stop()
            raise

    async def _ensure_publication(self, connection: asyncpg.Connection) -> None:
        found = await pg_call(
            "publication lookup",
            connection.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", self.config.publication),
            self.config.timeout,
        )
        if found:
            return
        target = "ALL TABLES" if not self.config.tables else "TABLE " + ", ".join(quote_identifier(t) for t in self.config.tables)
        statement = f"CREATE PUBLICATION {quote_identifier(self.config.publication)} FOR {target}"
        try:
            await pg_call("create publication", connection.execute(statement), self.config.timeout)
        except asyncpg.UndefinedTableError as exc:
            raise ConfigError("config.tables", str(exc), "name existing tables") from exc

    async def poll(self) -> Sequence[ConnectorRecord]:
        try:
            connection = await self._connection.get()
            rows = await pg_call(
                "peek changes",
                connection.fetch(_PEEK, self.config.slot, self._peek_size(), self.config.publication),
                self.config.timeout,
            )
        except RetriableError:
            self._connection.drop()
            raise
        records = self._records(rows)
        self._context.report_lag(records[-1].timestamp if records else None)  # a record's time is its commit's
        if not records:
            await asyncio.sleep(self.config.idle_wait)
        return records

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
            data = {"op": change.op, "schema": relation.schema, "table": relation.table, "row": change.new, "old": change.old}
            offset = {"lsn": begin.commit_lsn, "n": index, "end": commit.end_lsn, "last": index == len(changes) - 1}
            records.append(
                ConnectorRecord(
                    data=data,
                    partition=self._partition,
                    offset=offset,
                    timestamp=begin.commit_time,
                    type=f"postgres.{change.op}",
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
        connection = await self._connection.get()
        try:
            await pg_call(
                "advance slot",
                connection.execute(
                    "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", self.config.slot, _lsn_text(max(finished))
                ),
                self.config.timeout,
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
        await self._connection.close()


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
