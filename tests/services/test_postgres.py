"""postgres-sink, and postgres-source feeding it, against a throwaway PostgreSQL, driven directly (the source alone:
test_postgres_source.py)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import ValidationError

from runtime.connector import SinkContext
from runtime.errors import DataError, RetriableError
from runtime.mesh import EmbeddedMesh
from runtime.record import ConnectorRecord
from runtime.testing import (
    SinkHarness,
    WorkerProcess,
    run_sink_conformance,
)
from services.postgres.sink.connector import PostgresSink, PostgresSinkConfig
from services.postgres.source.connector import PostgresSource
from tests.servers import PostgresServer, free_port
from tests.services.postgres import connect_when_up, database_connection, drain, fresh_table, offsets_of, start_source
from tests.services.workers import DEAD_LETTER_TOPIC, publish, readiness, sink_worker, until


@pytest.fixture
async def db(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    async with database_connection(postgres_server) as connection:
        yield connection


@pytest.fixture
async def table(postgres_server: PostgresServer) -> AsyncIterator[str]:
    async with fresh_table(postgres_server) as name:
        yield name


async def _target(db: asyncpg.Connection) -> str:
    name = f"target_{uuid.uuid4().hex[:6]}"
    await db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text, doc jsonb, price numeric, ok bool)")
    return name


async def _rows(db: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await db.fetch(f"SELECT id, name, doc, price, ok FROM {table} ORDER BY id")]


async def test_truncate_replicates_into_a_postgres_sink_target(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    target = await _target(db)
    source = await start_source(postgres_server.dsn, table)
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    try:
        await db.execute(f"INSERT INTO {table} (id, name) SELECT n, 'old' FROM generate_series(1, 3) n")
        await db.execute(f"TRUNCATE {table}")
        await db.execute(f"INSERT INTO {table} (id, name) VALUES (4, 'new')")
        records = await drain(source, sink)
    finally:
        await sink.stop()
        await source.stop()
    truncate = [r for r in records if r.type == "postgres.change.ddl"]
    assert [r.data["ddl"] for r in truncate] == [f'TRUNCATE TABLE "public"."{table}"']
    assert truncate[0].data["source"]["table"] == table
    assert await _rows(db, target) == [(4, "new", None, None, None)]


async def test_cdc_sink_dead_letters_what_it_cannot_apply(postgres_server: PostgresServer, db: asyncpg.Connection) -> None:
    target = await _target(db)
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    changes = {
        "alter": {"ddl": "ALTER TABLE t ADD COLUMN x int", "source": {}},
        "op": {"op": "x", "before": None, "after": {"id": 1}, "source": {}},
        "no-key": {"op": "d", "before": {"name": "a"}, "after": None, "source": {}},
        "misfit": {"op": "c", "before": None, "after": {"id": "1"}, "source": {}},
        "good": {"op": "c", "before": None, "after": {"id": 2, "name": "two"}, "source": {}},
    }
    try:
        rejections = await sink.put([_event(0, id=name, data=data) for name, data in changes.items()])
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == {"alter", "op", "no-key", "misfit"}
    assert "TRUNCATE" in reasons["alter"] and "'x'" in reasons["op"] and "before image lacks the key" in reasons["no-key"]
    assert await _rows(db, target) == [(2, "two", None, None, None)]


async def test_a_snapshot_stopped_midway_resumes_without_gaps_or_duplicates(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    await db.execute(f"INSERT INTO {table} (id, name) SELECT n, 'v' || n FROM generate_series(1, 25) n")
    target = await _target(db)
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    source = await start_source(postgres_server.dsn, table, snapshot_chunk_size=4)
    try:
        handed_out = [*await source.poll(), *await source.poll()]
        stored = handed_out[:6]  # the mesh stored six of eight when the source was stopped
        assert await sink.put(stored) == []
        await source.commit(stored)
        await source.stop()
        # Written while no source runs: before, inside and after what the first run read.
        await db.execute(f"UPDATE {table} SET name = 'changed' WHERE id IN (3, 15)")
        await db.execute(f"DELETE FROM {table} WHERE id IN (5, 20)")
        await db.execute(f"INSERT INTO {table} (id, name) VALUES (30, 'late')")
        source = await start_source(postgres_server.dsn, table, offsets=offsets_of(stored), snapshot_chunk_size=4)
        rest = await drain(source, sink)
    finally:
        await sink.stop()
        await source.stop()
    resumed = [r.data["after"]["id"] for r in rest if r.data.get("op") == "r"]
    assert resumed == [n for n in range(7, 26) if n != 20] + [30]  # the second run begins after the last stored row
    assert await _rows(db, target) == await _rows(db, table)
    assert len(await _rows(db, target)) == 24


def _event(n: int, **overrides: Any) -> ConnectorRecord:
    return ConnectorRecord(
        **{"data": {"id": n, "name": f"n{n}"}, "id": f"id-{n}", "source": "/tests", "type": "t", "subject": "s", **overrides}
    )


async def _sink(dsn: str, **config: Any) -> PostgresSink:
    sink = PostgresSink(PostgresSinkConfig.model_validate({"dsn": dsn, **config}))
    await sink.start(SinkContext(connector_name="pg-test"))
    return sink


async def test_events_sink_is_idempotent_and_keeps_data_types(postgres_server: PostgresServer, db: asyncpg.Connection) -> None:
    table = f"events_{uuid.uuid4().hex[:6]}"
    sink = await _sink(postgres_server.dsn, table=table)
    try:
        batch = [
            _event(1),
            _event(2, data="text", datacontenttype="text/plain"),
            _event(3, data=b"\x00\x01"),
            _event(4, extensions={"k": "v"}),
        ]
        assert await sink.put(batch) == []
        assert await sink.put([*batch[2:], _event(5)]) == []  # redelivered 3 and 4
        assert [r.record.id for r in await sink.put([_event(6, id=None)])] == [None]
    finally:
        await sink.stop()
    rows = await db.fetch(f"SELECT id, data, data_bytes, extensions FROM {table} ORDER BY id")
    assert [row["id"] for row in rows] == ["id-1", "id-2", "id-3", "id-4", "id-5"]
    assert rows[0]["data"] == '{"id": 1, "name": "n1"}' and rows[1]["data"] == '"text"'
    assert rows[2]["data_bytes"] == b"\x00\x01" and rows[3]["extensions"] == '{"k": "v"}'


async def test_mapped_sink_upserts_and_singles_out_poison(postgres_server: PostgresServer, db: asyncpg.Connection) -> None:
    table = f"m_{uuid.uuid4().hex[:6]}"
    await db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
    sink = await _sink(postgres_server.dsn, mode="mapped", table=table, key=["id"])
    try:
        await sink.put([_event(1), _event(2), _event(1, data={"id": 1, "name": "again"})])
        rejected = await sink.put([_event(3, data="not an object")])
        assert "object" in rejected[0].reason
        with pytest.raises(DataError, match="PostgreSQL refused"):
            await sink.put([_event(4), _event(5, data={"id": 5, "name": None})])  # NOT NULL: the server refuses
        await sink.put([_event(4)])  # the worker retries one by one: the good one lands
    finally:
        await sink.stop()
    assert [tuple(row) for row in await db.fetch(f"SELECT id, name FROM {table} ORDER BY id")] == [
        (1, "again"),
        (2, "n2"),
        (4, "n4"),
    ]


async def test_mapped_sink_refuses_values_that_do_not_fit_their_columns(
    postgres_server: PostgresServer, db: asyncpg.Connection
) -> None:
    table = f"m_{uuid.uuid4().hex[:6]}"
    await db.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text, qty int2, price numeric(10,2), ratio float8, ok bool,"
        " doc jsonb, at timestamptz, tags int[]);"
        f" INSERT INTO {table} (id, name) VALUES (1, 'one')"
    )
    sink = await _sink(postgres_server.dsn, mode="mapped", table=table, key=["id"])
    refused = {
        "true-id": {"id": True, "name": "overwritten"},
        "text-id": {"id": "1", "name": "overwritten"},  # PostgreSQL would read it as row 1
        "wide": {"id": 3, "qty": 40000},
        "number-flag": {"id": 4, "ok": 1},
        "text-flag": {"id": 5, "ok": "yes"},
        "not-a-numeral": {"id": 6, "price": "12.5 EUR"},
        "text-number": {"id": 7, "ratio": "private 1.5"},
        "epoch": {"id": 8, "at": 1767225600},
        "fraction": {"id": 9, "qty": 1.0},
        "number-array": {"id": 10, "tags": 5},
    }
    valid = {
        "all": {
            "id": 20,
            "name": 7.5,
            "qty": -32768,
            "price": "-12.50",
            "ratio": 2,
            "ok": True,
            "doc": "text",
            "at": "2026-01-01T00:00:00Z",
            "tags": [1, 2],
        },
        "text": {"id": 21, "name": True, "doc": {"k": [1]}, "price": 3.25},
    }
    try:
        records = [_event(0, id=name, data=data) for name, data in {**refused, **valid}.items()]
        rejections = await sink.put(records)
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == set(refused)
    assert reasons["true-id"] == (
        "field 'id' holds a boolean, which does not fit column id (integer): it takes integers from -2147483648 to 2147483647"
        " (fix the event, or the column's type)"
    )
    assert "holds a string" in reasons["text-id"] and "an integer out of range" in reasons["wide"]
    assert "column ok (boolean): it takes booleans" in reasons["number-flag"] and "a string" in reasons["text-flag"]
    assert "not a decimal numeral" in reasons["not-a-numeral"] and "EUR" not in reasons["not-a-numeral"]
    assert "column ratio (double precision)" in reasons["text-number"] and "private" not in reasons["text-number"]
    assert "an integer" in reasons["epoch"] and "a floating-point number" in reasons["fraction"]
    assert "column tags (integer[])" in reasons["number-array"]
    found = await db.fetch(f"SELECT id, name, qty, price::text, ratio, ok, doc::text, at, tags FROM {table} ORDER BY id")
    assert [tuple(row) for row in found] == [
        (1, "one", None, None, None, None, None, None, None),
        (20, "7.5", -32768, "-12.50", 2.0, True, '"text"', datetime(2026, 1, 1, tzinfo=UTC), [1, 2]),
        (21, "true", None, "3.25", None, None, '{"k": [1]}', None, None),
    ]


@pytest.mark.parametrize("mode", ["mapped", "cdc"])
async def test_a_number_out_of_its_columns_range_is_refused_alone_and_the_batch_lands(
    postgres_server: PostgresServer, db: asyncpg.Connection, mode: str
) -> None:
    """PostgreSQL would refuse the whole batch for one value out of range: the sink refuses that event alone, saying why."""
    table = f"m_{uuid.uuid4().hex[:6]}"
    await db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, single real, small int2, double float8)")
    sink = await _sink(postgres_server.dsn, mode=mode, table=table, key=["id"])
    rows = {
        "fits": {"id": 1, "single": -3.4e38, "small": -32768, "double": 1e300},
        "huge-single": {"id": 2, "single": 1e39},
        "wide": {"id": 3, "small": 32768},
        "integer-single": {"id": 4, "single": 2**64 - 1},  # the largest integer an event holds (JSON decoding)
    }
    try:
        rejections = await sink.put(
            [_event(0, id=name, data=row if mode == "mapped" else {"op": "c", "after": row}) for name, row in rows.items()]
        )
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == {"huge-single", "wide"}
    assert reasons["huge-single"] == (
        "field 'single' holds a floating-point number out of range, which does not fit column single (real): it takes"
        " numbers of magnitude below 3.4e38 (single precision) (fix the event, or the column's type)"
    )
    assert "an integer out of range" in reasons["wide"]
    found = await db.fetch(f"SELECT id, single, small, double FROM {table} ORDER BY id")
    assert [(row["id"], row["small"], row["double"]) for row in found] == [(1, -32768, 1e300), (4, None, None)]
    assert found[0]["single"] == pytest.approx(-3.4e38) and found[1]["single"] == pytest.approx(2.0**64)


async def test_mapped_sink_reads_a_widened_column_again_before_refusing(
    postgres_server: PostgresServer, db: asyncpg.Connection
) -> None:
    table = f"m_{uuid.uuid4().hex[:6]}"
    await db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int2)")
    sink = await _sink(postgres_server.dsn, mode="mapped", table=table, key=["id"])
    try:
        await db.execute(f"ALTER TABLE {table} ALTER COLUMN n TYPE int8")
        assert await sink.put([_event(1, data={"id": 1, "n": 2**40})]) == []
    finally:
        await sink.stop()
    assert await db.fetchval(f"SELECT n FROM {table}") == 2**40


async def test_sink_bad_config_fails_at_start(postgres_server: PostgresServer) -> None:
    with pytest.raises(Exception, match="does not exist"):
        await _sink(postgres_server.dsn, mode="mapped", table="no_such_table", key=["id"])


async def test_sink_while_the_server_is_down_is_retriable(postgres_server: PostgresServer, db: asyncpg.Connection) -> None:
    table = f"events_{uuid.uuid4().hex[:6]}"
    sink = await _sink(postgres_server.dsn, table=table, timeout=5)
    await db.close()
    try:
        await sink.put([_event(1)])
        await asyncio.to_thread(postgres_server.kill)
        with pytest.raises(RetriableError):
            await sink.put([_event(2)])
        await asyncio.to_thread(postgres_server.start)
        for _ in range(50):  # the worker's retry loop
            try:
                await sink.put([_event(2)])
                break
            except RetriableError:
                await asyncio.sleep(0.2)
    finally:
        await sink.stop()
    check = await connect_when_up(postgres_server.dsn)
    assert await check.fetchval(f"SELECT count(*) FROM {table}") == 2
    await check.close()


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_postgres_sink_conformance(postgres_server: PostgresServer, tmp_path: Path) -> None:
    table = f"events_{uuid.uuid4().hex[:6]}"

    async def read() -> list[str]:
        connection = await connect_when_up(postgres_server.dsn)
        try:
            return [row["id"] for row in await connection.fetch(f"SELECT id FROM {table}")]
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await connection.close()

    await run_sink_conformance(
        SinkHarness(
            connector=PostgresSink,
            config=lambda: {"dsn": postgres_server.dsn, "table": table, "timeout": 5},
            read=read,
            kill_system=postgres_server.kill,
            restart_system=postgres_server.start,
        ),
        workdir=tmp_path,
        within=60,
    )


async def test_sink_worker_waits_out_a_revoked_grant_and_a_refused_login(
    postgres_server: PostgresServer, db: asyncpg.Connection
) -> None:
    """Access denied after a good start is the operator's to mend: retried, not ready meanwhile, never an exit."""
    table = f"m_{uuid.uuid4().hex[:6]}"
    role = f"sink_{uuid.uuid4().hex[:6]}"
    await db.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text); CREATE ROLE {role} LOGIN;"
        f" GRANT SELECT, INSERT, UPDATE ON {table} TO {role}"
    )
    dsn = postgres_server.dsn.replace(f"//{postgres_server.user}@", f"//{role}:not-a-Secret@")
    admin_port = free_port()
    async with (
        EmbeddedMesh(port=0) as mesh,
        aiohttp.ClientSession() as http,
        sink_worker(PostgresSink, mesh, admin_port, dsn=dsn, mode="mapped", table=table, key=["id"], timeout=5) as worker,
    ):
        ready = readiness(http, admin_port)

        async def landed(count: int) -> bool:
            return bool(await db.fetchval(f"SELECT count(*) FROM {table}") == count)

        await until(lambda: ready(200), "ready")
        await publish(mesh, ("e1", {"id": 1, "name": "one"}))
        await until(lambda: landed(1), "the first order written")

        await db.execute(f"REVOKE INSERT, UPDATE ON {table} FROM {role}")
        await publish(mesh, ("e2", {"id": 2, "name": "two"}))
        await until(lambda: ready(503, "InsufficientPrivilegeError"), "not ready with the refusal as reason")
        assert not worker.done() and await landed(1)
        await db.execute(f"GRANT INSERT, UPDATE ON {table} TO {role}")
        await until(lambda: landed(2), "the second order written once the grant is back")
        await until(lambda: ready(200), "ready again")

        await db.execute(f"ALTER ROLE {role} NOLOGIN")
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await publish(mesh, ("e3", {"id": 3, "name": "three"}))
        await until(lambda: ready(503, "InvalidAuthorizationSpecificationError"), "not ready: the login is refused")
        assert not worker.done() and await landed(2)
        await db.execute(f"ALTER ROLE {role} LOGIN")
        await until(lambda: landed(3), "the third order written once the login is back")
        await until(lambda: ready(200), "ready again")
        assert mesh.topic_depth(DEAD_LETTER_TOPIC) == 0
    assert worker.result() == 0


async def test_a_source_worker_killed_mid_snapshot_resumes_without_gaps_into_a_sink_target(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str, tmp_path: Path
) -> None:
    """SIGKILL during the snapshot; the restarted worker goes on from its committed offset and the target converges."""
    rows = 20_000
    await db.execute(f"INSERT INTO {table} (id, name) SELECT n, 'v' || n FROM generate_series(1, $1::int) n", rows)
    target = await _target(db)

    async def copied() -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {target}"))

    async with (
        EmbeddedMesh(port=0) as mesh,
        sink_worker(PostgresSink, mesh, free_port(), dsn=postgres_server.dsn, mode="cdc", table=target, key=["id"]),
    ):
        config = {
            "name": "pg-snapshot-source",
            "connector": PostgresSource.name,
            "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
            "registry": {"kind": "file", "path": str(tmp_path / "registry"), "lease_ttl": 2},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "log": {"format": "json"},
            "source": {"topic": "orders", "checkpoint_every": 10, "checkpoint_interval": 0.2},
            "config": {
                "dsn": postgres_server.dsn,
                "slot": table,
                "publication": table,
                "tables": [table],
                "snapshot_chunk_size": 100,
            },
        }
        source = WorkerProcess(PostgresSource, config, tmp_path)
        try:
            await source.start(within=30)
            await until(lambda: _more_than(copied, 500), "the first snapshot rows copied")
            await source.kill()
            assert await copied() < rows, "the snapshot ended before the kill: nothing to resume"
            await db.execute(f"UPDATE {table} SET name = 'changed' WHERE id IN (1, 19000)")
            await db.execute(f"DELETE FROM {table} WHERE id IN (2, 19001)")
            await db.execute(f"INSERT INTO {table} (id, name) VALUES ($1, 'late')", rows + 1)
            await source.start(within=30)

            async def converged() -> bool:
                return await _rows(db, target) == await _rows(db, table)

            await until(converged, "the target equal to the source table", within=60)
        finally:
            await source.kill()
    assert await copied() == rows - 1  # two deleted, one added


async def _more_than(count: Callable[[], Awaitable[int]], least: int) -> bool:
    return await count() > least


# -- cdc: images without unchanged TOASTed values; identifiers from the table, the config and the data ----


async def test_an_update_leaving_a_toasted_value_out_keeps_it_in_the_replica(
    postgres_server: PostgresServer, db: asyncpg.Connection, table: str
) -> None:
    """PostgreSQL logs no unchanged TOASTed value: the update's after image lacks it, and the replica keeps it."""
    await db.execute(f"ALTER TABLE {table} ADD COLUMN body text")  # REPLICA IDENTITY DEFAULT: the key only
    target = await _target(db)
    await db.execute(f"ALTER TABLE {target} ADD COLUMN body text")
    big = secrets.token_urlsafe(6000)  # 8 kB that pglz cannot shrink below 2 kB: stored out of line
    source = await start_source(postgres_server.dsn, table)
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    try:
        await db.execute(f"INSERT INTO {table} (id, name, body) VALUES (1, 'one', $1)", big)
        await drain(source, sink)
        assert await db.fetchval(f"SELECT pg_column_size(body) FROM {table}") > 2000
        # One batch: a row inserted and updated, and an update of a row already copied.
        await db.execute(f"INSERT INTO {table} (id, name, body) VALUES (2, 'two', $1)", big[::-1])
        await db.execute(f"UPDATE {table} SET name = 'changed' WHERE id IN (1, 2)")
        records = await drain(source, sink)
    finally:
        await sink.stop()
        await source.stop()
    updates = [record.data["after"] for record in records if record.data.get("op") == "u"]
    assert [sorted(after) for after in updates] == [["doc", "id", "name", "ok", "price"]] * 2  # no body
    found = await db.fetch(f"SELECT id, name, body FROM {target} ORDER BY id")
    assert [tuple(row) for row in found] == [(1, "changed", big), (2, "changed", big[::-1])]


async def test_cdc_sink_upserts_a_column_set_with_one_statement_built_once(
    postgres_server: PostgresServer, db: asyncpg.Connection
) -> None:
    """After images holding the same columns, in whatever field order, go as one upsert; its text is built once."""
    target = await _target(db)
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    statements: list[str] = []
    (await sink._connection.get()).add_query_logger(lambda logged: statements.append(logged.query))
    images = [{"id": 1, "name": "a", "ok": True}, {"ok": False, "id": 2, "name": "b"}, {"name": "c", "ok": True, "id": 3}]
    try:
        for batch in (0, 10):
            changes = [{"op": "c", "before": None, "after": {**image, "id": image["id"] + batch}} for image in images]
            assert await sink.put([_event(n, data=change) for n, change in enumerate(changes)]) == []
    finally:
        await sink.stop()
    upserts = [statement for statement in statements if statement.startswith("INSERT")]
    assert len(upserts) == 2 and upserts[0] is upserts[1]
    assert [row[:2] for row in await _rows(db, target)] == [
        (n + batch, name) for batch in (0, 10) for n, name in ((1, "a"), (2, "b"), (3, "c"))
    ]


async def test_cdc_sink_leaves_a_placeholder_column_as_it_is(postgres_server: PostgresServer, db: asyncpg.Connection) -> None:
    target = await _target(db)
    await db.execute(f"INSERT INTO {target} (id, name, price) VALUES (1, 'kept', 2.5)")
    sink = await _sink(postgres_server.dsn, mode="cdc", table=target, key=["id"])
    placeholder = "__debezium_unavailable_value"
    try:
        changes = [
            {"op": "u", "before": None, "after": {"id": 1, "name": placeholder, "price": "3.5"}},
            {"op": "c", "before": None, "after": {"id": 2, "name": "new", "price": "1"}},
            {"op": "u", "before": None, "after": {"id": 2, "name": placeholder, "price": "4"}},
        ]
        assert await sink.put([_event(n, data=change) for n, change in enumerate(changes)]) == []
    finally:
        await sink.stop()
    assert await _rows(db, target) == [(1, "kept", None, Decimal("3.5"), None), (2, "new", None, Decimal("4"), None)]


_HOSTILE_COLUMN = 'we"ird; col'
_DOTTED_COLUMN = "dot.ted"
_LONGEST_COLUMN = "é" * 31 + "x"  # 63 bytes


@pytest.mark.parametrize("mode", ["mapped", "cdc"])
async def test_sink_quotes_every_column_and_dead_letters_field_names_no_column_can_have(
    postgres_server: PostgresServer, db: asyncpg.Connection, mode: str
) -> None:
    table = f'we"ird {uuid.uuid4().hex[:6]}; x'
    quoted = '"' + table.replace('"', '""') + '"'
    await db.execute(
        f'CREATE TABLE {quoted} (id int PRIMARY KEY, "{_HOSTILE_COLUMN.replace(chr(34), chr(34) * 2)}" text,'
        f' "{_DOTTED_COLUMN}" text, "{_LONGEST_COLUMN}" text)'
    )
    sink = await _sink(postgres_server.dsn, mode=mode, table=table, key=["id"])
    fields = {
        "good": {"id": 1, _HOSTILE_COLUMN: "a", _DOTTED_COLUMN: "b", _LONGEST_COLUMN: "c"},
        "not-a-column": {"id": 2, f'x"; DROP TABLE {quoted}; --': "ignored"},
        "nul": {"id": 3, "n\x00ul": "x"},
        "64-bytes": {"id": 4, "x" * 64: "x"},
        "64-bytes-utf8": {"id": 5, "é" * 32: "x"},  # 32 characters, but the server would cut it to 63 bytes
        "long-prefix": {"id": 6, _LONGEST_COLUMN + "y": "x"},  # cut to 63 bytes it would name a column
    }

    def data(row: dict[str, Any]) -> dict[str, Any]:
        return {"op": "c", "before": None, "after": row} if mode == "cdc" else row

    try:
        rejections = await sink.put([_event(0, id=name, data=data(row)) for name, row in fields.items()])
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == {"nul", "64-bytes", "64-bytes-utf8", "long-prefix"}
    assert all("is not a PostgreSQL identifier (1 to 63 bytes of UTF-8, no NUL)" in reason for reason in reasons.values())
    found = await db.fetch(f"SELECT * FROM {quoted} ORDER BY id")
    assert [tuple(row) for row in found] == [(1, "a", "b", "c"), (2, None, None, None)]


@pytest.mark.parametrize(
    "config",
    [
        {"table": "a.b.c"},
        {"table": "x" * 64},
        {"table": "public.t\x00"},
        {"mode": "mapped", "key": ["i\x00d"]},
        {"mode": "mapped", "key": ["é" * 32]},
    ],
)
def test_sink_config_refuses_names_postgresql_cannot_hold(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="is not"):
        PostgresSinkConfig.model_validate(config)
