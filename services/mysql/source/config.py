"""mysql-source's configuration: the server, what to capture, and how (binlog, or polling tables)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runtime import ConnectorConfig, DataError, Secret
from services.mysql.sql import check_identifier

__all__ = ["MysqlSourceConfig", "PolledTable"]


class PolledTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = Field(description="db.table to poll.")
    incrementing_column: str | None = Field(None, description="A strictly increasing column (auto-increment id): new rows.")
    timestamp_column: str | None = Field(None, description="A last-modified column: new and updated rows.")

    @model_validator(mode="after")
    def _check(self) -> PolledTable:
        parts = self.table.split(".")
        if len(parts) != 2:
            raise ValueError(f"poll table {self.table!r} must be written db.table")
        try:
            for name in [*parts, self.incrementing_column or "x", self.timestamp_column or "x"]:
                check_identifier(name)
        except DataError as exc:
            raise ValueError(exc.reason) from exc
        if not (self.incrementing_column or self.timestamp_column):
            raise ValueError(f"poll table {self.table} needs incrementing_column, timestamp_column or both")
        return self


class MysqlSourceConfig(ConnectorConfig):
    host: str = Field("127.0.0.1", description="MySQL/MariaDB host.")
    port: int = Field(3306, ge=1, le=65535, description="MySQL/MariaDB port.")
    user: str = Field("root", description="MySQL user (binlog: REPLICATION SLAVE, REPLICATION CLIENT, SELECT, RELOAD on MySQL).")
    password: Secret | None = Field(None, description="MySQL password.")
    mode: Literal["binlog", "polling"] = Field(
        "binlog", description="binlog CDC, or polling by column when the binlog is off limits."
    )
    server_name: str = Field("mysql", description="Logical server name: the partition offsets are stored under; keep it stable.")
    replica_id: int = Field(
        54001, ge=1, lt=2**32, description="Server id this reader registers as; unique among the server's replicas."
    )
    include_databases: list[str] = Field(
        default_factory=list, description="Databases to capture (globs); empty = all but system ones."
    )
    exclude_databases: list[str] = Field(default_factory=list, description="Databases to leave out (globs).")
    include_tables: list[str] = Field(
        default_factory=list, description="'db.table' globs to capture; empty = every table of the databases."
    )
    exclude_tables: list[str] = Field(default_factory=list, description="'db.table' globs to leave out.")
    snapshot_mode: Literal["initial", "never", "when_needed"] = Field(
        "initial",
        description="initial: snapshot when no offset; never: stream from now; when_needed: also when the offset was purged.",
    )
    snapshot_chunk_size: int = Field(2000, ge=1, description="Rows per snapshot query (primary-key chunks).")
    type_prefix: str = Field("mysql.change", description="CloudEvent type prefix: <prefix>.c|u|d|r|ddl|heartbeat.")
    topic_template: str = Field(
        "{db}.{table}", description="Topic (subject) of a table's changes; {db} and {table} are replaced."
    )
    heartbeat_interval: float = Field(10.0, ge=0, description="Seconds between heartbeats on quiet tables; 0 = none.")
    heartbeat_topic: str = Field("mysql.heartbeat", description="Topic of heartbeat records.")
    max_batch: int = Field(1000, ge=1, description="Records per poll at most.")
    queue_batches: int = Field(32, ge=1, description="Batches the binlog thread may read ahead (bounded).")
    poll_tables: list[PolledTable] = Field(default_factory=list, description="polling: the tables and their columns.")
    poll_interval: float = Field(1.0, gt=0, le=60, description="polling: seconds between queries when nothing is new.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a connection.")
    query_timeout: float = Field(60.0, gt=0, description="Seconds one query may take.")

    @model_validator(mode="after")
    def _check(self) -> MysqlSourceConfig:
        if self.mode == "polling" and not self.poll_tables:
            raise ValueError("mode 'polling' needs poll_tables: [{table: db.t, incrementing_column: id}]")
        try:
            self.topic_template.format(db="d", table="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"topic_template may only use {{db}} and {{table}}: {exc}") from exc
        return self
