"""What the postgres-source and postgres-sink tests share: connections, a fresh table with its own slot, a started
source, draining it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from runtime.connector import SourceContext
from runtime.record import ConnectorRecord, partition_key
from services.postgres.sink.connector import PostgresSink
from services.postgres.source.connector import PostgresSource, PostgresSourceConfig
from tests.servers import PostgresServer


async def connect_when_up(dsn: str, within: float = 30.0) -> asyncpg.Connection:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (asyncpg.CannotConnectNowError, OSError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def database_connection(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect_when_up(postgres_server.dsn)
    try:
        yield connection
    finally:
        if not connection.is_closed():
            await connection.close()


@contextlib.asynccontextmanager
async def fresh_table(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh table with a slot and publication name of its own; the slot is dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    connection = await connect_when_up(postgres_server.dsn)
    await connection.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text, doc jsonb, price numeric, ok bool)")
    await connection.close()
    yield name
    connection = await connect_when_up(postgres_server.dsn)
    await connection.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", name)
    await connection.close()


async def start_source(dsn: str, name: str, offsets: dict[str, Any] | None = None, **config: Any) -> PostgresSource:
    settings = {"dsn": dsn, "slot": name, "publication": name, "tables": [name], "idle_wait": 0.1, **config}
    source = PostgresSource(PostgresSourceConfig.model_validate(settings))
    await source.start(SourceContext(connector_name="pg-test", committed_offsets=offsets or {}))
    return source


def offsets_of(records: list[ConnectorRecord]) -> dict[str, Any]:
    return {partition_key(records[-1].partition): dict(records[-1].offset)}


async def drain(source: PostgresSource, sink: PostgresSink | None = None, quiet_polls: int = 3) -> list[ConnectorRecord]:
    """Every record until the source has nothing more (bounded), each batch written to ``sink`` and committed."""
    records: list[ConnectorRecord] = []
    quiet = 0
    for _ in range(200):
        batch = list(await source.poll())
        if sink is not None and batch:
            assert await sink.put(batch) == []
        await source.commit(batch)
        records += batch
        quiet = 0 if batch else quiet + 1
        if quiet >= quiet_polls:
            return records
    raise AssertionError("the source never went quiet")
