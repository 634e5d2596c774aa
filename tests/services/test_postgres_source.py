"""postgres-source (logical decoding) against a throwaway PostgreSQL, driven directly (with postgres-sink: test_postgres.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from runtime.connector import SourceContext
from runtime.errors import RetriableError
from runtime.testing import (
    SourceHarness,
    poll_until,
    run_source_conformance,
)
from services.postgres.source.connector import PostgresSource, PostgresSourceConfig
from tests.servers import PostgresServer
from tests.services.postgres import connect_when_up, database_connection, drain, fresh_table, offsets_of, start_source


@pytest.fixture
async def db(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    async with database_connection(postgres_server) as connection:
        yield connection


@pytest.fixture
async def table(postgres_server: PostgresServer) -> AsyncIterator[str]:
    async with fresh_table(postgres_server) as name:
        yield name


async def test_source_streams_inserts_updates_deletes_in_commit_order(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    source = await start_source(postgres_server.dsn, table)
    try:
        await db.execute(f"INSERT INTO {table} VALUES (1, 'a', '{{\"k\": [1]}}', 1.50, true), (2, NULL, NULL, NULL, false)")
        await db.execute(f"UPDATE {table} SET name = 'b' WHERE id = 1")
        await db.execute(f"DELETE FROM {table} WHERE id = 2")
        records = await poll_until(source, 4)
        await source.commit(records)
    finally:
        await source.stop()
    assert [(r.data["op"], r.type) for r in records] == [
        ("c", "postgres.change.c"),
        ("c", "postgres.change.c"),
        ("u", "postgres.change.u"),
        ("d", "postgres.change.d"),
    ]
    assert records[0].data["after"] == {"id": 1, "name": "a", "doc": {"k": [1]}, "price": "1.50", "ok": True}
    assert records[0].data["before"] is None and records[0].data["key"] == ["id"]
    assert records[0].data["source"]["table"] == table and records[0].extensions["pgtable"] == f"public.{table}"
    assert records[3].data["before"] == {"id": 2, "name": None, "doc": None, "price": None, "ok": None}
    assert records[3].data["after"] is None
    assert records[2].data["source"]["ts_ms"] == int(records[2].timestamp.timestamp() * 1000)
    assert records[0].timestamp.tzinfo is not None
    pending = await db.fetchval(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)",
        table,
        table,
    )
    assert pending == 0  # the slot moved past everything committed


async def test_source_resumes_inside_a_transaction_without_duplicates(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    await (await start_source(postgres_server.dsn, table, snapshot_mode="never")).stop()  # creates the slot before the writes
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, 5)")
    source = await start_source(postgres_server.dsn, table, batch_size=2, snapshot_mode="never")
    first = await source.poll()
    await source.commit(first)  # two of five: the slot cannot move yet
    await source.stop()
    assert [r.data["after"]["id"] for r in first] == [1, 2]
    source = await start_source(postgres_server.dsn, table, offsets=offsets_of(first))
    try:
        rest = await poll_until(source, 3)
        await source.commit(rest)
        assert await poll_until(source, 1, within=0.5) == []
    finally:
        await source.stop()
    assert [r.data["after"]["id"] for r in rest] == [3, 4, 5]


async def test_source_loses_nothing_across_a_server_restart(postgres_server: PostgresServer, table: str) -> None:
    db = await connect_when_up(postgres_server.dsn)
    source = await start_source(postgres_server.dsn, table)
    try:
        await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, 10)")
        first = await poll_until(source, 10)
        await source.commit(first[:4])
        await db.close()
        await asyncio.to_thread(postgres_server.restart)
        db = await connect_when_up(postgres_server.dsn)
        await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(11, 15)")
        await source.commit(first[4:])  # retried by the worker after the restart
        rest = await poll_until(source, 5, within=20)
        await source.commit(rest)
    finally:
        await source.stop()
        await db.close()
    assert sorted(r.data["after"]["id"] for r in first + rest) == list(range(1, 16))


async def test_source_snapshots_the_rows_that_precede_the_slot_then_streams(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    odd = "tab\there, back\\slash, 'quote', new\nline"
    await db.execute(f"INSERT INTO {table} VALUES (1, 'a', '{{\"k\": [1]}}', 1.50, true), (2, NULL, NULL, NULL, NULL)")
    await db.execute(f"INSERT INTO {table} (id, name) VALUES (3, $1)", odd)
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(4, 7)")
    source = await start_source(postgres_server.dsn, table, snapshot_chunk_size=2)
    try:
        await db.execute(f"INSERT INTO {table} (id, name) VALUES (8, 'after the slot')")
        await db.execute(f"UPDATE {table} SET name = 'b' WHERE id = 1")
        records = await drain(source)
    finally:
        await source.stop()
    assert [(r.data["op"], r.data["after"]["id"]) for r in records] == [*(("r", n) for n in range(1, 8)), ("c", 8), ("u", 1)]
    first = records[0]
    assert first.type == "postgres.change.r" and first.data["key"] == ["id"] and first.data["before"] is None
    assert first.data["after"] == {"id": 1, "name": "a", "doc": {"k": [1]}, "price": "1.50", "ok": True}
    assert records[1].data["after"] == {"id": 2, "name": None, "doc": None, "price": None, "ok": None}
    assert records[2].data["after"]["name"] == odd
    assert first.data["source"]["snapshot"] is True and records[7].data["source"]["snapshot"] is False
    assert first.data["source"]["lsn"] < records[7].data["source"]["lsn"]  # snapshot rows stand before every change


async def test_a_snapshot_goes_on_after_its_connection_is_lost(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, 10)")
    source = await start_source(postgres_server.dsn, table, snapshot_chunk_size=3)
    try:
        first = list(await source.poll())
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname IS NOT NULL"
        )
        with pytest.raises(RetriableError):
            await source.poll()
        rest = await drain(source)
    finally:
        await source.stop()
    assert [r.data["after"]["id"] for r in first + rest] == list(range(1, 11))


async def test_a_snapshot_whose_slot_was_lost_starts_again(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, 10)")
    source = await start_source(postgres_server.dsn, table, snapshot_chunk_size=3)
    first = list(await source.poll())
    await source.commit(first)
    await source.stop()
    await db.execute("SELECT pg_drop_replication_slot($1)", table)
    source = await start_source(postgres_server.dsn, table, offsets=offsets_of(first), snapshot_chunk_size=3)
    try:
        again = await drain(source)
    finally:
        await source.stop()
    assert [r.data["after"]["id"] for r in again] == list(range(1, 11))


async def test_a_slot_left_by_a_run_that_committed_nothing_is_made_again_with_its_snapshot(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    # The first run creates the slot (and its snapshot) and stops before any offset is committed. Rows
    # written since are in the slot: a snapshot read in a new transaction would publish them a second
    # time, under snapshot ids the sinks cannot match with their change ids.
    await db.execute(f"INSERT INTO {table} (id) VALUES (1)")
    source = await start_source(postgres_server.dsn, table)
    await source.stop()
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(2, 5)")
    source = await start_source(postgres_server.dsn, table)
    try:
        records = await drain(source)
    finally:
        await source.stop()
    assert sorted(r.data["after"]["id"] for r in records) == [1, 2, 3, 4, 5]
    assert all(r.data["op"] == "r" for r in records)  # one snapshot, taken with the new slot: no change after it


async def test_without_snapshots_a_slot_left_by_a_run_that_committed_nothing_is_kept(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    source = await start_source(postgres_server.dsn, table, snapshot_mode="never")
    await source.stop()
    await db.execute(f"INSERT INTO {table} (id) SELECT generate_series(1, 3)")  # held by the slot: made anew, lost
    source = await start_source(postgres_server.dsn, table, snapshot_mode="never")
    try:
        records = await drain(source)
    finally:
        await source.stop()
    assert [(r.data["op"], r.data["after"]["id"]) for r in records] == [("c", 1), ("c", 2), ("c", 3)]


async def test_a_table_without_primary_key_is_snapshot_in_chunks(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    await db.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
    await db.execute(f"INSERT INTO {table} (id) SELECT n % 3 FROM generate_series(1, 7) n")
    source = await start_source(postgres_server.dsn, table, snapshot_chunk_size=2)
    try:
        records = await drain(source)
    finally:
        await source.stop()
    assert sorted(r.data["after"]["id"] for r in records) == sorted(n % 3 for n in range(1, 8))
    assert {r.data["op"] for r in records} == {"r"} and records[0].data["key"] == []


async def test_postgres_source_conformance(postgres_server: PostgresServer, table: str, tmp_path: Path) -> None:
    async def produce(start: int, count: int) -> None:
        connection = await connect_when_up(postgres_server.dsn)
        try:
            await connection.execute(
                f"INSERT INTO {table} (id) SELECT generate_series($1::int, $2::int)", start, start + count - 1
            )
        finally:
            await connection.close()

    await run_source_conformance(
        SourceHarness(
            connector=PostgresSource,
            config=lambda: {"dsn": postgres_server.dsn, "slot": table, "publication": table, "tables": [table], "timeout": 5},
            produce=produce,
            number_of=lambda event: int(event.get_data()["after"]["id"]),  # type: ignore[index]
            kill_system=postgres_server.kill,
            restart_system=postgres_server.start,
        ),
        workdir=tmp_path,
        within=60,
    )


async def test_source_reports_how_far_behind_the_commits_it_reads(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    settings = {"dsn": postgres_server.dsn, "slot": table, "publication": table, "tables": [table], "idle_wait": 0.1}
    source = PostgresSource(PostgresSourceConfig.model_validate(settings))
    await source.start(SourceContext("pg-lag-test", {}, connector_type="postgres-source"))
    labels = {"connector": "postgres-source", "name": "pg-lag-test"}
    try:
        await db.execute(f"INSERT INTO {table} (id) VALUES (1)")
        assert len(await poll_until(source, 1)) == 1
        lag = REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels)
        assert lag is not None and 0 < lag < 60  # read after its commit, on this host's clock
        assert await source.poll() == []  # read every commit: caught up
        assert REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels) == 0
    finally:
        await source.stop()


async def _refused_twice(source: PostgresSource, reason: str) -> None:
    """Polls fail with a RetriableError naming ``reason`` (the worker backs off, not ready), never a ConfigError."""
    refused = 0
    for _ in range(10):
        try:
            await source.poll()
        except RetriableError as exc:
            refused += reason in str(exc)
        if refused >= 2:
            return
    raise AssertionError(f"polls were not refused with {reason}")


async def test_source_waits_out_a_revoked_replication_right_and_a_refused_login(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    role = f"src_{uuid.uuid4().hex[:6]}"
    await db.execute(
        f"CREATE ROLE {role} LOGIN REPLICATION; GRANT SELECT ON {table} TO {role}; CREATE PUBLICATION {table} FOR TABLE {table}"
    )
    dsn = postgres_server.dsn.replace(f"//{postgres_server.user}@", f"//{role}:not-a-Secret@")
    source = await start_source(dsn, table, snapshot_mode="never", timeout=5)
    try:
        await db.execute(f"INSERT INTO {table} (id) VALUES (1)")
        await source.commit(await poll_until(source, 1))

        await db.execute(f"ALTER ROLE {role} NOREPLICATION")
        await db.execute(f"INSERT INTO {table} (id) VALUES (2)")
        await _refused_twice(source, "InsufficientPrivilegeError")
        await db.execute(f"ALTER ROLE {role} REPLICATION")
        records = await poll_until(source, 1)
        assert [r.data["after"]["id"] for r in records] == [2]
        await source.commit(records)

        await db.execute(f"ALTER ROLE {role} NOLOGIN")
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await db.execute(f"INSERT INTO {table} (id) VALUES (3)")
        await _refused_twice(source, "InvalidAuthorizationSpecificationError")
        await db.execute(f"ALTER ROLE {role} LOGIN")
        assert [r.data["after"]["id"] for r in await poll_until(source, 1)] == [3]
    finally:
        await source.stop()


async def test_a_table_dropped_mid_snapshot_is_skipped_with_a_warning(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    """A dropped table has no rows left to read: the snapshot goes on with the others (its rows read before stay)."""
    reread, gone = f"{table}_b", f"{table}_c"  # read after ``table``, in name order
    for name in (reread, gone):
        await db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
    for name in (table, reread, gone):
        await db.execute(f"INSERT INTO {name} (id) SELECT generate_series(1, 6)")
    source = await start_source(postgres_server.dsn, table, tables=[table, reread, gone], snapshot_chunk_size=4)
    try:
        records = [*await source.poll(), *await source.poll(), *await source.poll()]  # table: 4 + 2, then reread: 4
        # Not read yet, so not locked by the snapshot's transaction: dropped before the snapshot reaches it.
        await db.execute(f"DROP TABLE {gone}")
        # Half read, and then its lock is gone with the transaction: dropped before the new transaction reads on.
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname IS NOT NULL"
        )
        await db.execute(f"DROP TABLE {reread}")
        with pytest.raises(RetriableError):
            await source.poll()
        records += await drain(source)
        await db.execute(f"INSERT INTO {table} (id) VALUES (7)")
        records += await drain(source)
    finally:
        await source.stop()
    read = [(r.data["source"]["table"], r.data["op"], r.data["after"]["id"]) for r in records]
    assert read == [
        *((table, "r", n) for n in range(1, 7)),
        *((reread, "r", n) for n in range(1, 5)),
        (table, "c", 7),
    ]


async def test_column_names_with_dots_are_quoted_as_one_identifier(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    dotted = f"{table}_dots"
    await db.execute(f'CREATE TABLE {dotted} ("k.id" int PRIMARY KEY, "a.b" text, "x.y.z" int)')
    await db.execute(f"INSERT INTO {dotted} SELECT n, 'v' || n, n * 10 FROM generate_series(1, 5) n")
    source = await start_source(postgres_server.dsn, table, tables=[dotted], snapshot_chunk_size=2)
    try:
        records = await drain(source)
    finally:
        await source.stop()
    assert [r.data["after"] for r in records] == [{"k.id": n, "a.b": f"v{n}", "x.y.z": n * 10} for n in range(1, 6)]
    assert records[0].data["key"] == ["k.id"]


@pytest.mark.parametrize("table", ["a.b.c", "x" * 64, "public.t\x00", "é" * 32])
def test_source_config_refuses_table_names_postgresql_cannot_hold(table: str) -> None:
    with pytest.raises(ValidationError, match=r"is not \[schema.\]name"):
        PostgresSourceConfig.model_validate({"tables": ["ok", table]})
