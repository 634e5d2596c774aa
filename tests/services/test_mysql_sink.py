"""mysql-sink against a throwaway MariaDB: every mode, replays, poison rows, the server dying mid-batch."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime import ConfigError, ConnectorRecord, RetriableError, SinkContext
from runtime.mesh import EmbeddedMesh
from runtime.testing import SinkHarness, run_sink_conformance
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig
from tests.servers import MariaDBServer, free_port
from tests.services.workers import DEAD_LETTER_TOPIC, dead_letters, publish, readiness, sink_worker, until

_databases = itertools.count()


@pytest.fixture
def database(mariadb_server: MariaDBServer) -> str:
    name = f"sink_{next(_databases)}"
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")
    return name


async def started(server: MariaDBServer, **config: Any) -> MysqlSink:
    sink = MysqlSink(MysqlSinkConfig.model_validate({"port": server.port, **config}))
    await sink.start(SinkContext("sink-test"))
    return sink


def rows(server: MariaDBServer, query: str, database: str) -> list[list[str]]:
    return [line.split("\t") for line in server.sql(query, database).splitlines()]


def event(data: Any, *, id: str, type: str = "order.v1", **extra: Any) -> ConnectorRecord:
    return ConnectorRecord(data=data, id=id, source="/shop", type=type, subject="orders", **extra)


async def test_events_mode_creates_the_table_and_replays_are_idempotent(mariadb_server: MariaDBServer, database: str) -> None:
    sink = await started(mariadb_server, database=database, mode="events")
    try:
        when = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        batch = [
            event({"n": 1}, id="a", timestamp=when, extensions={"tenant": "x"}),
            event("plain text", id="b", datacontenttype="text/plain"),
            event(b"\x00\xff", id="c", datacontenttype="application/octet-stream"),
        ]
        assert await sink.put(batch) == []
        assert await sink.put(batch) == []  # a replay
    finally:
        await sink.stop()
    table = rows(mariadb_server, "SELECT id, type, subject, time, data, extensions FROM cloudevents ORDER BY id", database)
    assert [r[0] for r in table] == ["a", "b", "c"]
    assert table[0][1:] == ["order.v1", "orders", "2026-01-02 03:04:05.123456", '{"n":1}', '{"tenant":"x"}']
    assert json.loads(table[1][4]) == "plain text"
    assert json.loads(table[2][4]) == "AP8="


async def test_mapped_mode_upserts_nested_fields_and_deletes(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql(
        "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer VARCHAR(50), total DECIMAL(10,2),"
        " placed DATETIME, tags JSON)",
        database,
    )
    sink = await started(
        mariadb_server,
        database=database,
        mode="mapped",
        table="orders",
        fields={"id": "order_id", "customer.name": "customer", "amount.total": "total", "at": "placed", "tags": "tags"},
        delete_field="op",
        delete_types=["order.cancelled"],
    )
    try:
        batch = [
            event(
                {"id": 1, "customer": {"name": "ann"}, "amount": {"total": 10.5}, "at": "2026-03-01T10:00:00Z", "tags": ["a"]},
                id="1",
            ),
            event({"id": 2, "customer": {"name": "bob"}, "amount": {"total": 3}}, id="2"),
            event({"id": 3, "customer": {"name": "cy"}}, id="3"),
            event({"id": 1, "amount": {"total": 11}}, id="4"),  # partial update of 1 in the same batch
            event({"id": 2, "op": "d"}, id="5"),
            event({"id": 3}, id="6", type="order.cancelled"),
            event({"id": 3, "customer": {"name": "cy again"}}, id="7"),  # delete then insert: back, with new values
        ]
        assert await sink.put(batch) == []
        assert await sink.put(batch) == []
    finally:
        await sink.stop()
    assert rows(mariadb_server, "SELECT order_id, customer, total, placed, tags FROM orders ORDER BY order_id", database) == [
        ["1", "ann", "11.00", "2026-03-01 10:00:00", '["a"]'],
        ["3", "cy again", "NULL", "NULL", "NULL"],
    ]


async def test_a_batch_larger_than_the_server_packet_limit_is_split(mariadb_server: MariaDBServer, database: str) -> None:
    packet = int(mariadb_server.sql("SELECT @@max_allowed_packet"))
    size = 256 * 1024
    blobs = [str(n % 10) * size for n in range(packet // size + 8)]  # over the server's limit in total
    blobs.append("x" * 2 * 1024 * 1024)  # alone over the client's statement length
    sink = await started(mariadb_server, database=database, mode="events")
    try:
        assert await sink.put([event({"blob": blob}, id=str(n)) for n, blob in enumerate(blobs)]) == []
    finally:
        await sink.stop()
    assert rows(mariadb_server, "SELECT COUNT(*), SUM(LENGTH(data)) FROM cloudevents", database) == [
        [str(len(blobs)), str(sum(len(blob) + len('{"blob":""}') for blob in blobs))]
    ]


async def test_mapped_mode_poison_events_are_rejected_and_the_rest_commits(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY, qty INT NOT NULL, name VARCHAR(5))", database)
    sink = await started(mariadb_server, database=database, mode="mapped", table="t")
    try:
        batch = [
            event({"id": 1, "qty": 1}, id="1"),
            event({"qty": 2}, id="2"),  # no key
            event({"id": 3, "qty": "many"}, id="3"),  # wrong type
            event({"id": 4, "qty": 4, "colour": "red"}, id="4"),  # unknown column
            event({"id": 5, "qty": 5, "name": "far too long"}, id="5"),  # too long (server refuses)
            event(["not", "an", "object"], id="6"),
            event({"id": 7, "qty": 7}, id="7"),
        ]
        rejections = await sink.put(batch)
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == {"2", "3", "4", "5", "6"}
    assert "id" in reasons["2"] and "colour" in reasons["4"] and "object" in reasons["6"]
    assert "holds a string" in reasons["3"] and "too long" in reasons["5"]
    assert rows(mariadb_server, "SELECT id, qty FROM t ORDER BY id", database) == [["1", "1"], ["7", "7"]]


async def test_mapped_mode_field_edges(mariadb_server: MariaDBServer, database: str) -> None:
    """Two paths into one column (the last found wins), list indexes, JSON values, column names in another case."""
    mariadb_server.sql("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), first_tag VARCHAR(20), meta JSON)", database)
    sink = await started(
        mariadb_server,
        database=database,
        mode="mapped",
        table="items",
        fields={"id": "id", "title": "name", "label.text": "name", "tags.0": "first_tag", "meta": "meta", "ID": "ID"},
    )
    try:
        batch = [
            event({"id": 1, "title": "t1", "label": {"text": "l1"}, "tags": ["a", "b"], "meta": {"k": [1]}}, id="1"),
            event({"id": 20, "ID": 2, "title": "t2", "tags": []}, id="2"),  # both name column id: the later path wins
            event({"ID": 3, "label": {"text": "l3"}, "tags": "not a list"}, id="3"),
            event({"title": "no key"}, id="4"),
        ]
        rejections = await sink.put(batch)
    finally:
        await sink.stop()
    assert [(r.record.id, r.reason) for r in rejections] == [("4", "key column(s) id missing or null in the event")]
    assert rows(mariadb_server, "SELECT id, name, first_tag, meta FROM items ORDER BY id", database) == [
        ["1", "l1", "a", '{"k":[1]}'],
        ["2", "t2", "NULL", "NULL"],
        ["3", "l3", "NULL", "NULL"],
    ]
    schemaless = await started(mariadb_server, database=database, mode="mapped", table="items", delete_field="op")
    try:
        batch = [event({"id": 2, "op": "d"}, id="5"), event({"id": 4, "Name": "n4", "op": "u"}, id="6")]
        assert await schemaless.put(batch) == []
        rejections = await schemaless.put([event({"id": 5, "bad name": 1}, id="7")])
    finally:
        await schemaless.stop()
    assert [r.record.id for r in rejections] == ["7"] and "not a plain identifier" in rejections[0].reason
    assert rows(mariadb_server, "SELECT id, name FROM items ORDER BY id", database) == [["1", "l1"], ["3", "l3"], ["4", "n4"]]


async def test_mapped_mode_auto_create_and_evolve_from_json_and_schema(
    mariadb_server: MariaDBServer, database: str, tmp_path: Path
) -> None:
    schema = tmp_path / "reading.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"sensor": {"type": "string", "maxLength": 40}, "at": {"type": "string", "format": "date-time"}},
            }
        )
    )
    sink = await started(
        mariadb_server,
        database=database,
        mode="mapped",
        table="readings",
        key_columns=["sensor", "seq"],
        auto_create=True,
        auto_evolve=True,
    )
    try:
        first = event(
            {"sensor": "s1", "seq": 1, "value": 1.5, "at": "2026-01-01T00:00:00Z"}, id="1", dataschema=f"file://{schema}"
        )
        assert await sink.put([first]) == []
        later = event({"sensor": "s1", "seq": 2, "value": 2.5, "ok": True, "meta": {"unit": "C"}}, id="2")
        assert await sink.put([later]) == []
    finally:
        await sink.stop()
    types = dict(
        rows(
            mariadb_server,
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
            " WHERE TABLE_NAME='readings' AND TABLE_SCHEMA=DATABASE()",
            database,
        )
    )
    assert types["sensor"] == "varchar(40)" and types["seq"] == "bigint(20)" and types["value"] == "double"
    assert types["at"] == "datetime(6)" and types["ok"] == "tinyint(1)" and types["meta"] == "longtext"
    assert rows(mariadb_server, "SELECT seq, value, at, ok FROM readings ORDER BY seq", database) == [
        ["1", "1.5", "2026-01-01 00:00:00.000000", "NULL"],
        ["2", "2.5", "NULL", "1"],
    ]


async def test_cdc_mode_applies_changes_and_ddl(mariadb_server: MariaDBServer, database: str) -> None:
    sink = await started(mariadb_server, database=database, mode="cdc")

    def change(op: str, before: Any, after: Any, n: int) -> ConnectorRecord:
        source = {"db": "shop", "table": "items", "file": "mysql-bin.000001", "pos": n, "row": 1, "snapshot": False}
        return event(
            {"op": op, "before": before, "after": after, "key": ["id"], "source": source}, id=str(n), type=f"mysql.change.{op}"
        )

    def ddl(statement: str, n: int) -> ConnectorRecord:
        source = {"db": "shop", "file": "mysql-bin.000001", "pos": n, "row": 1, "snapshot": False}
        return event({"ddl": statement, "source": source}, id=str(n), type="mysql.change.ddl")

    batch = [
        ddl("CREATE TABLE `shop`.`items` (id INT PRIMARY KEY, name VARCHAR(20))", 0),
        change("c", None, {"id": 1, "name": "one"}, 1),
        change("c", None, {"id": 2, "name": "two"}, 2),
        change("u", {"id": 1, "name": "one"}, {"id": 10, "name": "ten"}, 3),  # key change
        change("d", {"id": 2, "name": "two"}, None, 4),
        ddl("ALTER TABLE items ADD COLUMN price INT", 5),
        change("r", None, {"id": 3, "name": "three", "price": 7}, 6),
        event({"ts_ms": 1}, id="7", type="mysql.change.heartbeat"),
        ddl(f"DROP DATABASE {database}", 8),
    ]
    try:
        for _ in range(2):  # the second time a replay, DDL included
            rejections = await sink.put(batch)
            assert [r.record.id for r in rejections] == ["8"] and "DROP DATABASE is not a schema change" in rejections[0].reason
    finally:
        await sink.stop()
    assert rows(mariadb_server, "SELECT id, name, price FROM items ORDER BY id", database) == [
        ["3", "three", "7"],
        ["10", "ten", "NULL"],
    ]


async def test_mapped_table_missing_fails_at_start(mariadb_server: MariaDBServer, database: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.table"):
        await started(mariadb_server, database=database, mode="mapped", table="nope")


async def test_access_denied_at_start_fails_naming_the_keys(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("DROP USER IF EXISTS 'no_grants'@'%'; CREATE USER 'no_grants'@'%' IDENTIFIED BY 'pw-Secret'")
    with pytest.raises(ConfigError, match=r"config\.user.*1044") as refused:
        await started(mariadb_server, database=f"{database}_new", mode="events", user="no_grants", password="pw-Secret")
    assert "pw-Secret" not in str(refused.value)


@pytest.mark.slow
async def test_server_killed_mid_batch_every_event_lands_exactly_once(mariadb_server: MariaDBServer, database: str) -> None:
    sink = await started(mariadb_server, database=database, mode="events", write_timeout=10)
    batches = [[event({"n": n}, id=f"{b}-{n}") for n in range(2000)] for b in range(6)]
    retried = 0
    try:
        for index, batch in enumerate(batches):
            if index == 2:
                # Kill while the batch is being written.
                writing = asyncio.ensure_future(sink.put(batch))
                await asyncio.sleep(0.02)
                await asyncio.to_thread(mariadb_server.kill)
                with pytest.raises(RetriableError):
                    await writing
                with pytest.raises(RetriableError):  # still down: retriable, never dead-lettered
                    await sink.put(batch)
                await asyncio.to_thread(mariadb_server.start)
            while True:
                try:
                    assert await sink.put(batch) == []
                    break
                except RetriableError:
                    retried += 1
                    assert retried < 50
                    await asyncio.sleep(0.2)
    finally:
        await sink.stop()
    assert rows(mariadb_server, "SELECT COUNT(*), COUNT(DISTINCT id) FROM cloudevents", database) == [["12000", "12000"]]


def restart_with_cdc_settings(server: MariaDBServer) -> None:
    server.restart()
    server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")


@pytest.mark.slow
async def test_conformance(mariadb_server: MariaDBServer, database: str, tmp_path: Path) -> None:
    async def read() -> list[str]:
        return [row[0] for row in await asyncio.to_thread(rows, mariadb_server, "SELECT id FROM cloudevents", database)]

    await run_sink_conformance(
        SinkHarness(
            connector=MysqlSink,
            config=lambda: {"port": mariadb_server.port, "database": database, "mode": "events", "write_timeout": 5},
            read=read,
            kill_system=mariadb_server.kill,
            restart_system=lambda: restart_with_cdc_settings(mariadb_server),
        ),
        workdir=tmp_path,
    )


async def test_cdc_mode_writes_binary_column_values_exactly(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE blobs (id INT PRIMARY KEY, payload VARBINARY(16))", database)
    raw = b"\x00\xff\xfe binary"  # not UTF-8: the envelope carries it base64-encoded
    source = {"db": "shop", "table": "blobs", "file": "mysql-bin.000001", "pos": 4, "row": 1, "snapshot": False}
    envelope = {
        "op": "c",
        "before": None,
        "after": {"id": 1, "payload": base64.b64encode(raw).decode()},
        "key": ["id"],
        "binary": ["payload"],
        "source": source,
    }
    sink = await started(mariadb_server, database=database, mode="cdc")
    try:
        assert await sink.put([event(envelope, id="b1", type="mysql.change.c")]) == []
    finally:
        await sink.stop()
    assert rows(mariadb_server, "SELECT HEX(payload) FROM blobs", database) == [[raw.hex().upper()]]


async def test_mapped_values_must_fit_their_column_types(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql(
        "CREATE TABLE t (id INT PRIMARY KEY, flag BOOLEAN, bit1 BIT(1), small TINYINT, u INT UNSIGNED, price DECIMAL(10,2),"
        " ratio DOUBLE, name VARCHAR(40), doc JSON, at DATETIME, kind ENUM('a','b'), single FLOAT);"
        " INSERT INTO t (id, name) VALUES (1, 'one')",
        database,
    )
    sink = await started(mariadb_server, database=database, mode="mapped", table="t", delete_field="op")
    refused = {
        "true-id": {"id": True, "name": "overwritten"},  # a boolean is not row 1
        "wide": {"id": 2, "small": 128},
        "negative": {"id": 3, "u": -1},
        "text-number": {"id": 4, "ratio": "private 1.5"},
        "not-a-numeral": {"id": 5, "price": "12.5 EUR"},
        "fraction": {"id": 6, "small": 1.0},
        "epoch": {"id": 7, "at": 1767225600},
        "enum-index": {"id": 8, "kind": 2},
        "text-flag": {"id": 9, "flag": "true"},
        "object": {"id": 10, "small": {"n": 1}},
        "bool-decimal": {"id": 11, "price": True},
        "array-double": {"id": 12, "ratio": [1.5]},
        "huge-key": {"id": 2**31, "name": "x"},
        "huge-single": {"id": 13, "single": 1e39},  # the server would refuse it too, with a reason of its own
        "text-key-delete": {"id": "14", "op": "d"},
    }
    valid = {
        "all": {
            "id": 20,
            "flag": True,
            "bit1": False,
            "small": -128,
            "u": 4294967295,
            "price": "-12.50",
            "ratio": 2,
            "name": 7.5,
            "doc": True,
            "at": "2026-01-01T00:00:00Z",
            "kind": "b",
            "single": -2.5e38,
        },
        "text": {"id": 21, "name": True, "doc": {"k": [1]}, "price": 3.25},
        "delete": {"id": 22, "op": "d", "small": "only the key of a delete is bound"},
    }
    try:
        rejections = await sink.put([event(data, id=name) for name, data in {**refused, **valid}.items()])
    finally:
        await sink.stop()
    reasons = {rejection.record.id: rejection.reason for rejection in rejections}
    assert set(reasons) == set(refused)
    assert reasons["true-id"] == (
        "field 'id' holds a boolean, which does not fit column id (int(11)): it takes integers from -2147483648 to 2147483647"
        " (fix the event, or the column's type)"
    )
    assert "an integer out of range" in reasons["wide"] and "tinyint(4)" in reasons["wide"]
    assert "an integer out of range" in reasons["negative"] and "from 0 to 4294967295" in reasons["negative"]
    assert "holds a string" in reasons["text-number"] and "private" not in reasons["text-number"]  # never the value
    assert "not a decimal numeral" in reasons["not-a-numeral"] and "EUR" not in reasons["not-a-numeral"]
    assert "a floating-point number" in reasons["fraction"] and "an integer" in reasons["epoch"]
    assert "column kind (enum('a','b'))" in reasons["enum-index"] and "column flag (tinyint(1))" in reasons["text-flag"]
    assert "an object" in reasons["object"] and "a boolean" in reasons["bool-decimal"] and "an array" in reasons["array-double"]
    assert "holds a floating-point number out of range, which does not fit column single (float)" in reasons["huge-single"]
    assert "holds a string" in reasons["text-key-delete"]
    table = "SELECT id, flag, bit1 + 0, small, u, price, ratio, name, doc, at, kind, single FROM t ORDER BY id"
    assert rows(mariadb_server, table, database) == [
        ["1", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "one", "NULL", "NULL", "NULL", "NULL"],
        ["20", "1", "0", "-128", "4294967295", "-12.50", "2", "7.5", "true", "2026-01-01 00:00:00", "b", "-2.5e38"],
        ["21", "NULL", "NULL", "NULL", "NULL", "3.25", "NULL", "true", '{"k":[1]}', "NULL", "NULL", "NULL"],
    ]


async def test_a_widened_column_is_read_again_before_a_value_is_refused(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY, n SMALLINT)", database)
    sink = await started(mariadb_server, database=database, mode="mapped", table="t")
    try:
        assert await sink.put([event({"id": 1, "n": 1}, id="1")]) == []
        mariadb_server.sql("ALTER TABLE t MODIFY n BIGINT", database)
        assert await sink.put([event({"id": 2, "n": 2**40}, id="2")]) == []
        rejected = await sink.put([event({"id": 3, "n": 2**63}, id="3")])
    finally:
        await sink.stop()
    assert [r.record.id for r in rejected] == ["3"] and "bigint(20)" in rejected[0].reason
    assert rows(mariadb_server, "SELECT id, n FROM t ORDER BY id", database) == [["1", "1"], ["2", str(2**40)]]


# -- through the worker and the embedded mesh ----------------------------------------------------


async def test_worker_dead_letters_values_that_do_not_fit_and_writes_the_rest(
    mariadb_server: MariaDBServer, database: str
) -> None:
    mariadb_server.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, name VARCHAR(20), qty SMALLINT); INSERT INTO orders VALUES (1, 'one', 1)",
        database,
    )
    fields = {"order.id": "id", "order.name": "name", "order.qty": "qty"}
    async with (
        EmbeddedMesh(port=0) as mesh,
        sink_worker(
            MysqlSink,
            mesh,
            free_port(),
            port=mariadb_server.port,
            database=database,
            mode="mapped",
            table="orders",
            fields=fields,
        ) as worker,
    ):
        await publish(
            mesh,
            ("e1", {"order": {"id": True, "name": "overwritten", "qty": 9}}),
            ("e2", {"order": {"id": 2, "name": "two", "qty": 2}}),
            ("e3", {"order": {"id": 3, "name": "three", "qty": "3"}}),
            ("e4", {"order": {"id": 4, "name": "four", "qty": 40000}}),
        )
        letters = await dead_letters(mesh, 3)
        assert not worker.done()
    assert sorted(letters) == ["e1", "e3", "e4"]
    assert letters["e1"].get_extension("dlqreason") == (
        "field 'order.id' holds a boolean, which does not fit column id (int(11)): it takes integers from -2147483648"
        " to 2147483647 (fix the event, or the column's type)"
    )
    assert "field 'order.qty' holds a string" in str(letters["e3"].get_extension("dlqreason"))
    assert "field 'order.qty' holds an integer out of range" in str(letters["e4"].get_extension("dlqreason"))
    assert rows(mariadb_server, "SELECT id, name, qty FROM orders ORDER BY id", database) == [
        ["1", "one", "1"],
        ["2", "two", "2"],
    ]


async def test_worker_waits_out_a_revoked_grant_and_a_changed_password(mariadb_server: MariaDBServer, database: str) -> None:
    """Access denied after a good start is the operator's to mend: retried, not ready meanwhile, never an exit."""
    mariadb_server.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, name VARCHAR(20));"
        " DROP USER IF EXISTS 'orders_sink'@'%'; CREATE USER 'orders_sink'@'%' IDENTIFIED BY 'first-Secret-1';"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON {database}.* TO 'orders_sink'@'%'",
        database,
    )
    admin_port = free_port()
    config = {"port": mariadb_server.port, "database": database, "mode": "mapped", "table": "orders"}
    config |= {"user": "orders_sink", "password": "first-Secret-1"}

    async with (
        EmbeddedMesh(port=0) as mesh,
        aiohttp.ClientSession() as http,
        sink_worker(MysqlSink, mesh, admin_port, **config) as worker,
    ):
        ready = readiness(http, admin_port)

        async def landed(count: int) -> bool:
            found = await asyncio.to_thread(rows, mariadb_server, "SELECT COUNT(*) FROM orders", database)
            return found == [[str(count)]]

        await until(lambda: ready(200), "ready")
        await publish(mesh, ("e1", {"id": 1, "name": "one"}))
        await until(lambda: landed(1), "the first order written")

        mariadb_server.sql(f"REVOKE INSERT, UPDATE ON {database}.* FROM 'orders_sink'@'%'")
        await publish(mesh, ("e2", {"id": 2, "name": "two"}))
        await until(lambda: ready(503, "1142"), "not ready with the refusal as reason")
        assert not worker.done() and await landed(1)
        mariadb_server.sql(f"GRANT INSERT, UPDATE ON {database}.* TO 'orders_sink'@'%'")
        await until(lambda: landed(2), "the second order written once the grant is back")
        await until(lambda: ready(200), "ready again")

        mariadb_server.sql("ALTER USER 'orders_sink'@'%' IDENTIFIED BY 'second-Secret-2'")
        for (connection,) in rows(mariadb_server, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER='orders_sink'", ""):
            mariadb_server.sql(f"KILL {connection}")  # the pooled sessions go: the next one must log in again
        await publish(mesh, ("e3", {"id": 3, "name": "three"}))
        await until(lambda: ready(503, "1045"), "not ready: the login is refused")
        assert not worker.done() and await landed(2)
        mariadb_server.sql("ALTER USER 'orders_sink'@'%' IDENTIFIED BY 'first-Secret-1'")
        await until(lambda: landed(3), "the third order written once the password is back")
        await until(lambda: ready(200), "ready again")
        assert mesh.topic_depth(DEAD_LETTER_TOPIC) == 0

        # Every grant revoked: the table vanishes from information_schema too, which a value that does not fit
        # makes the sink read again. A table it saw at start is missing, not the event's fault: nothing dead-lettered.
        mariadb_server.sql(f"REVOKE ALL PRIVILEGES ON {database}.* FROM 'orders_sink'@'%'")
        await publish(mesh, ("e4", {"id": "4", "name": "four"}), ("e5", {"id": 5, "name": "five"}))
        await until(lambda: ready(503, "no longer visible"), "not ready: the table is out of sight")
        assert mesh.topic_depth(DEAD_LETTER_TOPIC) == 0 and await landed(3)
        mariadb_server.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {database}.* TO 'orders_sink'@'%'")
        await until(lambda: landed(4), "the fifth order written once the grants are back")
        letters = await dead_letters(mesh, 1)
        assert "field 'id' holds a string" in str(letters["e4"].get_extension("dlqreason"))
    assert worker.result() == 0
