"""mysql-sink's configuration: the server, the mode and each mode's keys (see the README's tables)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from runtime import ConnectorConfig, DataError, Secret
from services.mysql.sql import check_identifier

__all__ = ["MysqlSinkConfig"]


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
