"""mysql-source against a throwaway MariaDB (binlog ROW): snapshot, stream, DDL, resume without gap, heartbeats, polling."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from runtime import ConfigError, ConnectorRecord, RetriableError, SourceContext
from runtime.record import derive_event_id, partition_key
from runtime.testing import SourceHarness, run_source_conformance
from services.mysql.source.binlog import Mark, Phase, Step, Transaction
from services.mysql.source.connector import MysqlSource, MysqlSourceConfig
from tests.servers import MariaDBServer

_ids = itertools.count()


@pytest.fixture
def database(mariadb_server: MariaDBServer) -> str:
    # Restarts (fault tests) drop SET GLOBAL settings: column names in the binlog need this.
    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
    name = f"src_{next(_ids)}"
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")
    return name


async def started(server: MariaDBServer, offsets: Mapping[str, Mapping[str, Any]] | None = None, **config: Any) -> MysqlSource:
    config.setdefault("replica_id", 60000 + next(_ids))
    source = MysqlSource(MysqlSourceConfig.model_validate({"port": server.port, **config}))
    await source.start(SourceContext("source-test", dict(offsets or {}), connector_type="mysql-source"))
    return source


async def drain(source: MysqlSource, done: Callable[[list[ConnectorRecord]], bool], within: float = 20) -> list[ConnectorRecord]:
    records: list[ConnectorRecord] = []
    deadline = time.monotonic() + within
    while not done(records):
        assert time.monotonic() < deadline, f"gave up after {len(records)} records: {[r.type for r in records[-5:]]}"
        records.extend(await source.poll())
    return records


def changes(records: Sequence[ConnectorRecord]) -> list[ConnectorRecord]:
    return [r for r in records if r.type is not None and r.type.rsplit(".", 1)[1] in {"c", "u", "d", "r"}]


def offsets_of(record: ConnectorRecord) -> dict[str, Mapping[str, Any]]:
    return {partition_key(record.partition): record.offset}


async def test_snapshot_then_stream_inserts_updates_deletes_and_ddl(mariadb_server: MariaDBServer, database: str) -> None:
    db = database
    mariadb_server.sql(
        "CREATE TABLE a (id INT PRIMARY KEY, name VARCHAR(20), price DECIMAL(6,2), at DATETIME(3), raw VARBINARY(4));"
        "CREATE TABLE b (k1 INT, k2 VARCHAR(5), v INT, PRIMARY KEY (k1, k2));"
        "CREATE TABLE skipped (id INT PRIMARY KEY);"
        "INSERT INTO a VALUES (1,'one',1.50,'2026-01-01 10:00:00.123',x'00ff'),(2,'two',NULL,NULL,NULL),(3,'three',3,NULL,'abc');"
        "INSERT INTO b VALUES (1,'x',1),(1,'y',2),(2,'x',3); INSERT INTO skipped VALUES (1)",
        db,
    )
    source = await started(mariadb_server, include_databases=[db], exclude_tables=[f"{db}.skipped"], snapshot_chunk_size=2)
    try:
        snapshot = await drain(source, lambda rs: len(changes(rs)) == 6)
        assert [r.type for r in snapshot] == [
            "mysql.change.ddl",
            *["mysql.change.r"] * 3,
            "mysql.change.ddl",
            *["mysql.change.r"] * 3,
        ]
        assert "CREATE TABLE IF NOT EXISTS `a`" in snapshot[0].data["ddl"]
        first = snapshot[1].data
        assert first["after"] == {"id": 1, "name": "one", "price": "1.50", "at": "2026-01-01 10:00:00.123000", "raw": "AP8="}
        assert first["binary"] == ["raw"] and first["key"] == ["id"] and first["source"]["snapshot"] is True
        assert snapshot[1].subject == f"{db}.a" and snapshot[5].data["key"] == ["k1", "k2"]
        labels = {"connector": "mysql-source", "name": "source-test", "table": f"{db}.b"}
        assert REGISTRY.get_sample_value("meshconnect_snapshot_rows_done", labels) == 3
        assert len({r.offset["snapshot"]["after"] is None for r in snapshot}) == 2
        assert len({partition_key(r.offset) for r in snapshot}) == len(snapshot)  # distinct offsets

        mariadb_server.sql(
            "INSERT INTO a (id, name) VALUES (4,'four'); UPDATE a SET name='ONE' WHERE id=1; DELETE FROM b WHERE k1=2;"
            "INSERT INTO skipped VALUES (2); ALTER TABLE a ADD COLUMN note TEXT; INSERT INTO a (id, note) VALUES (5, 'hi');"
            "BEGIN; UPDATE b SET v = v + 10; COMMIT",
            db,
        )
        stream = await drain(source, lambda rs: len(rs) >= 7)
    finally:
        await source.stop()
    assert [(r.type, r.subject) for r in stream] == [
        ("mysql.change.c", f"{db}.a"),
        ("mysql.change.u", f"{db}.a"),
        ("mysql.change.d", f"{db}.b"),
        ("mysql.change.ddl", f"{db}.a"),
        ("mysql.change.c", f"{db}.a"),
        ("mysql.change.u", f"{db}.b"),
        ("mysql.change.u", f"{db}.b"),
    ]
    insert, update, delete, ddl, after_ddl, multi1, multi2 = (r.data for r in stream)
    assert insert["before"] is None and insert["after"]["name"] == "four" and insert["source"]["snapshot"] is False
    assert update["before"]["name"] == "one" and update["after"]["name"] == "ONE" and update["key"] == ["id"]
    assert delete["before"] == {"k1": 2, "k2": "x", "v": 3} and delete["after"] is None
    assert ddl["ddl"] == "ALTER TABLE a ADD COLUMN note TEXT"
    assert after_ddl["after"]["note"] == "hi"
    assert multi1["source"]["pos"] == multi2["source"]["pos"] and stream[5].offset["row"] == 1 and stream[6].offset["row"] == 2
    assert (multi1["source"]["row"], multi2["source"]["row"]) == (1, 2)  # the sink orders changes of one row by it
    assert all(r.offset["file"].startswith("mysql-bin.") for r in stream)


async def test_restart_from_a_committed_offset_has_no_gap_and_no_duplicate(mariadb_server: MariaDBServer, database: str) -> None:
    db = database
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)", db)
    source = await started(mariadb_server, include_databases=[db], snapshot_mode="never", max_batch=50)
    # Multi-row transactions, so resuming lands inside one.
    statements = [f"INSERT INTO t VALUES {','.join(f'({n},{n})' for n in range(i, i + 40))}" for i in range(0, 400, 40)]
    mariadb_server.sql(";".join(statements) + "; UPDATE t SET v = v + 1000 WHERE id < 100; DELETE FROM t WHERE id >= 390", db)
    try:
        everything = await drain(source, lambda rs: len(rs) >= 510)
    finally:
        await source.stop()
    ids = [derive_event_id("mysql-source", r.partition, r.offset) for r in everything]
    assert len(set(ids)) == 510
    for cut in (17, 40, 509):  # the mesh acknowledged everything up to and including record `cut`
        resumed = await started(mariadb_server, offsets=offsets_of(everything[cut]), include_databases=[db], max_batch=50)
        try:
            rest = await drain(resumed, lambda rs, n=509 - cut: len(rs) >= n)
            if cut == 509:
                rest.extend(await resumed.poll())  # nothing more may come
        finally:
            await resumed.stop()
        assert [derive_event_id("mysql-source", r.partition, r.offset) for r in rest] == ids[cut + 1 :]
        assert [r.data for r in rest] == [r.data for r in everything[cut + 1 :]]


async def test_snapshot_resumes_after_the_last_acknowledged_row(mariadb_server: MariaDBServer, database: str) -> None:
    db = database
    mariadb_server.sql(
        "CREATE TABLE t1 (id INT PRIMARY KEY); CREATE TABLE t2 (id INT PRIMARY KEY);"
        "INSERT INTO t1 SELECT seq FROM seq_1_to_50; INSERT INTO t2 SELECT seq FROM seq_1_to_30",
        db,
    )
    source = await started(mariadb_server, include_databases=[db], snapshot_chunk_size=7)
    try:
        first = await drain(source, lambda rs: len(changes(rs)) >= 20)
    finally:
        await source.stop()
    cut = first[15]  # a row in the middle of t1
    # Changes made while the snapshot was interrupted arrive from the binlog afterwards.
    mariadb_server.sql("INSERT INTO t2 VALUES (31); DELETE FROM t1 WHERE id = 50", db)
    resumed = await started(mariadb_server, offsets=offsets_of(cut), include_databases=[db], snapshot_chunk_size=7)
    try:
        rest = await drain(resumed, lambda rs: any(r.type == "mysql.change.d" for r in rs))
    finally:
        await resumed.stop()
    rows = [(r.subject, r.data["after"]["id"]) for r in rest if r.type == "mysql.change.r"]
    assert rows == [(f"{db}.t1", n) for n in range(cut.data["after"]["id"] + 1, 50)] + [(f"{db}.t2", n) for n in range(1, 32)]
    assert [r.type for r in rest[-2:]] == ["mysql.change.c", "mysql.change.d"]


async def test_heartbeats_advance_the_offset_on_quiet_tables(mariadb_server: MariaDBServer, database: str) -> None:
    db = database
    mariadb_server.sql("CREATE TABLE watched (id INT PRIMARY KEY); CREATE TABLE busy (id INT PRIMARY KEY)", db)
    source = await started(mariadb_server, include_tables=[f"{db}.watched"], snapshot_mode="never", heartbeat_interval=0.3)
    try:
        mariadb_server.sql("INSERT INTO watched VALUES (1)", db)
        seen = await drain(source, lambda rs: len(rs) >= 1)
        mariadb_server.sql("INSERT INTO busy VALUES (1); INSERT INTO busy VALUES (2)", db)
        beats = await drain(source, lambda rs: any(r.type == "mysql.change.heartbeat" for r in rs))
    finally:
        await source.stop()
    beat = beats[-1]
    assert beat.subject == "mysql.heartbeat" and beat.offset["row"] == 0
    assert (beat.offset["file"], beat.offset["pos"]) > (seen[0].offset["file"], seen[0].offset["pos"])
    # Resuming from the heartbeat skips the busy table's transactions and reads what comes next.
    mariadb_server.sql("INSERT INTO watched VALUES (2)", db)
    resumed = await started(mariadb_server, offsets=offsets_of(beat), include_tables=[f"{db}.watched"])
    try:
        after = await drain(resumed, lambda rs: len(changes(rs)) >= 1)
    finally:
        await resumed.stop()
    assert [r.data["after"] for r in changes(after)] == [{"id": 2}]


async def test_purged_binlog_position_fails_with_the_way_out(mariadb_server: MariaDBServer, database: str) -> None:
    gone = {"file": "mysql-bin.000000", "pos": 4, "row": 0}
    offsets = {partition_key({"server": "mysql"}): gone}
    with pytest.raises(ConfigError, match="offsets reset"):
        await started(mariadb_server, offsets=offsets, include_databases=[database])
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (7)", database)
    source = await started(mariadb_server, offsets=offsets, include_databases=[database], snapshot_mode="when_needed")
    try:
        records = await drain(source, lambda rs: len(changes(rs)) >= 1)
    finally:
        await source.stop()
    assert changes(records)[0].data["after"] == {"id": 7}


async def test_server_without_full_row_metadata_is_refused_at_start(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        with pytest.raises(ConfigError, match="binlog_row_metadata"):
            await started(mariadb_server, include_databases=[database])
    finally:
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")


async def test_polling_mode_by_incrementing_and_timestamp_columns(mariadb_server: MariaDBServer, database: str) -> None:
    db = database
    mariadb_server.sql(
        "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(10));"
        "CREATE TABLE item (id INT PRIMARY KEY, v INT,"
        " changed TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6));"
        "INSERT INTO log (msg) VALUES ('a'),('b'),('c'); INSERT INTO item (id, v) VALUES (1,1),(2,2)",
        db,
    )
    tables = [
        {"table": f"{db}.log", "incrementing_column": "id"},
        {"table": f"{db}.item", "incrementing_column": "id", "timestamp_column": "changed"},
    ]
    config = {"mode": "polling", "poll_tables": tables, "poll_interval": 0.1}
    source = await started(mariadb_server, **config)
    try:
        first = await drain(source, lambda rs: len(rs) >= 5)
        await asyncio.sleep(0.05)
        mariadb_server.sql("INSERT INTO log (msg) VALUES ('d'); UPDATE item SET v = 20 WHERE id = 2", db)
        second = await drain(source, lambda rs: len(rs) >= 2)
        assert await source.poll() == []
    finally:
        await source.stop()
    assert sorted((r.subject, r.data["after"]["id"]) for r in first) == sorted(
        [(f"{db}.log", 1), (f"{db}.log", 2), (f"{db}.log", 3), (f"{db}.item", 1), (f"{db}.item", 2)]
    )
    assert sorted((r.subject, r.data["after"]["id"]) for r in second) == [(f"{db}.item", 2), (f"{db}.log", 4)]
    # A restart from the committed offsets reads nothing again.
    last = {partition_key(r.partition): r.offset for r in [*first, *second]}
    again = await started(mariadb_server, offsets=last, **config)
    try:
        assert await again.poll() == [] and await again.poll() == []
    finally:
        await again.stop()


async def test_timestamp_only_polling_splits_rows_sharing_a_stamp_by_primary_key_without_skipping_any(
    mariadb_server: MariaDBServer, database: str
) -> None:
    db = database
    mariadb_server.sql(
        "CREATE TABLE tag (grp CHAR(1), n INT, changed TIMESTAMP(6) NOT NULL, PRIMARY KEY (grp, n));"
        "INSERT INTO tag VALUES ('b',1,'2026-01-01 00:00:01'),('a',2,'2026-01-01 00:00:01'),('a',1,'2026-01-01 00:00:01'),"
        "('b',2,'2026-01-01 00:00:01'),('a',3,'2026-01-01 00:00:01'),('c',1,'2026-01-01 00:00:02')",
        db,
    )
    config = {"mode": "polling", "poll_tables": [{"table": f"{db}.tag", "timestamp_column": "changed"}], "max_batch": 2}
    source = await started(mariadb_server, **config)
    try:
        first = await source.poll()  # two of the five rows stamped 00:00:01
    finally:
        await source.stop()
    assert [(r.data["after"]["grp"], r.data["after"]["n"]) for r in first] == [("a", 1), ("a", 2)]
    # Resumed from the committed offset of the second row: the other three of that stamp, then the next stamp.
    again = await started(mariadb_server, offsets=offsets_of(first[-1]), **config)
    try:
        rest = await drain(again, lambda rs: len(rs) >= 4)
        assert await again.poll() == []
    finally:
        await again.stop()
    assert [(r.data["after"]["grp"], r.data["after"]["n"]) for r in rest] == [("a", 3), ("b", 1), ("b", 2), ("c", 1)]
    assert len({r.offset["key"][0] + str(r.offset["key"][1]) for r in [*first, *rest]}) == 6


async def test_timestamp_only_polling_pages_through_a_binary_primary_key(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql(
        "CREATE TABLE blob_key (k VARBINARY(4) PRIMARY KEY, changed TIMESTAMP(6) NOT NULL);"
        "INSERT INTO blob_key VALUES (0xff02,'2026-01-01'),(0xff01,'2026-01-01'),(0xfe,'2026-01-01')",
        database,
    )
    table = {"table": f"{database}.blob_key", "timestamp_column": "changed"}
    source = await started(mariadb_server, mode="polling", poll_tables=[table], max_batch=1)
    try:
        records = await drain(source, lambda rs: len(rs) >= 3)
        assert await source.poll() == []
    finally:
        await source.stop()
    assert [r.offset["key"] for r in records] == [[{"base64": "/g=="}], [{"base64": "/wE="}], [{"base64": "/wI="}]]


@pytest.mark.slow
async def test_conformance(mariadb_server: MariaDBServer, database: str, tmp_path: Path) -> None:
    mariadb_server.sql("CREATE TABLE items (n INT PRIMARY KEY, text VARCHAR(40))", database)

    async def produce(start: int, count: int) -> None:
        values = ",".join(f"({n}, 'item {n}')" for n in range(start, start + count))
        await asyncio.to_thread(mariadb_server.sql, f"INSERT INTO items VALUES {values}", database)

    def restart() -> None:
        mariadb_server.restart()
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")

    await run_source_conformance(
        SourceHarness(
            connector=MysqlSource,
            config=lambda: {
                "port": mariadb_server.port,
                "include_tables": [f"{database}.items"],
                "topic_template": "conformance",
                "replica_id": 61000 + next(_ids),
                "heartbeat_interval": 1,
            },
            produce=produce,
            number_of=lambda event: int((event.get_data().get("after") or {"n": -1})["n"]),  # -1: the table's schema
            kill_system=mariadb_server.kill,
            restart_system=restart,
        ),
        workdir=tmp_path,
    )


async def test_rows_written_without_column_names_stop_the_stream_with_a_fix(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY)", database)
    source = await started(mariadb_server, include_databases=[database], snapshot_mode="never")
    try:
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'; INSERT INTO t VALUES (1)", database)
        deadline = time.monotonic() + 10
        with pytest.raises(RetriableError, match="binlog_row_metadata=FULL"):  # retried, never published with made-up names
            while time.monotonic() < deadline:
                assert await source.poll() == []
    finally:
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
        await source.stop()


@pytest.mark.slow
async def test_snapshot_goes_on_after_the_server_restarts_mid_snapshot(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t SELECT seq FROM seq_1_to_60", database)
    source = await started(mariadb_server, include_databases=[database], snapshot_chunk_size=7)
    try:
        records = await drain(source, lambda rs: len(changes(rs)) >= 14)
        await asyncio.to_thread(mariadb_server.restart)
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
        failures = 0
        deadline = time.monotonic() + 30
        while len(changes(records)) < 60:
            assert time.monotonic() < deadline
            try:
                records.extend(await source.poll())
            except RetriableError:
                failures += 1
                await asyncio.sleep(0.2)
        mariadb_server.sql("INSERT INTO t VALUES (61)", database)
        records.extend(await drain(source, lambda rs: len(changes(rs)) >= 1))
    finally:
        await source.stop()
    assert failures >= 1
    assert [r.data["after"]["id"] for r in changes(records)] == list(range(1, 62))


def test_binlog_transactions_open_and_end_as_the_phase_table_says() -> None:
    mysql_ddl = Transaction()  # MySQL: a GTID, then the statement alone, no BEGIN
    assert mysql_ddl.mark(Mark.GTID_STATEMENT, "uuid:7") is Step.START
    assert (mysql_ddl.mark(Mark.DDL), mysql_ddl.phase, mysql_ddl.gtid) == (Step.END, Phase.BETWEEN, "uuid:7")

    group = Transaction()  # MySQL row changes: GTID, BEGIN, rows, XID; the BEGIN keeps the GTID and the count
    group.mark(Mark.GTID_STATEMENT, "uuid:8")
    group.rows = 3
    assert (group.mark(Mark.BEGIN), group.gtid, group.rows) == (Step.CONTINUE, "uuid:8", 3)
    assert group.mark(Mark.STATEMENT) is Step.CONTINUE  # e.g. an INSERT logged as a statement: still inside
    assert (group.mark(Mark.XID), group.open) == (Step.END, False)

    bare = Transaction(gtid="0-1-1", rows=5, delivered=2)  # no GTID (a server without them): BEGIN starts it
    assert (bare.mark(Mark.BEGIN), bare.gtid, bare.rows, bare.delivered) == (Step.START, None, 0, 0)
    assert bare.mark(Mark.COMMIT) is Step.END
    assert bare.mark(Mark.STATEMENT) is Step.END  # a statement between transactions is a boundary of its own

    mariadb = Transaction(phase=Phase.GROUP)  # a transaction without COMMIT, then a new GTID: a new transaction
    assert (mariadb.mark(Mark.GTID_GROUP, "0-1-9"), mariadb.phase) == (Step.START, Phase.GROUP)
    assert mariadb.mark(Mark.DDL) is Step.END  # DDL commits implicitly


async def test_binlog_stream_reports_how_far_behind_the_server_it_reads(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY)", database)
    settings = {"port": mariadb_server.port, "replica_id": 60000 + next(_ids), "include_databases": [database]}
    source = MysqlSource(MysqlSourceConfig.model_validate({**settings, "snapshot_mode": "never"}))
    await source.start(SourceContext("lag-test", {}, connector_type="mysql-source"))
    labels = {"connector": "mysql-source", "name": "lag-test"}
    try:
        # The binlog stamps an event with its statement's time: an hour back, as a replica an hour behind sees it.
        mariadb_server.sql("SET TIMESTAMP = UNIX_TIMESTAMP() - 3600; INSERT INTO t VALUES (1)", database)
        await drain(source, lambda rs: bool(changes(rs)))
        lag = REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels)
        assert lag is not None and 3590 < lag < 3700
        await drain(source, lambda rs: REGISTRY.get_sample_value("meshconnect_source_lag_seconds", labels) == 0)
    finally:
        await source.stop()


async def _poll_refused(source: MysqlSource, code: str) -> None:
    """The next polls fail with a RetriableError naming the refusal (the worker backs off, not ready), never exit."""
    with pytest.raises(RetriableError, match=code):
        await source.poll()
    with pytest.raises(RetriableError, match=code):
        await source.poll()


def _source_user(server: MariaDBServer, user: str, grants: str) -> dict[str, Any]:
    server.sql(f"DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY 'first-Secret-1'")
    server.sql(f"GRANT {grants} TO '{user}'@'%'")
    return {"user": user, "password": "first-Secret-1"}


def _kill_sessions(server: MariaDBServer, user: str) -> None:
    """End ``user``'s sessions: its next query must log in again."""
    for line in server.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER='{user}'").split():
        if line.isdigit():
            server.sql(f"KILL {line}")


async def test_polling_waits_out_a_revoked_grant_and_a_changed_password(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql(
        "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(10)); INSERT INTO log (msg) VALUES ('a')", database
    )
    login = _source_user(mariadb_server, "poll_src", f"SELECT ON {database}.*")
    config = {
        "mode": "polling",
        "poll_tables": [{"table": f"{database}.log", "incrementing_column": "id"}],
        "poll_interval": 0.05,
    }
    source = await started(mariadb_server, **login, **config)
    try:
        assert len(await drain(source, lambda rs: len(rs) >= 1)) == 1
        mariadb_server.sql(f"REVOKE SELECT ON {database}.* FROM 'poll_src'@'%'; INSERT INTO {database}.log (msg) VALUES ('b')")
        await asyncio.sleep(0.1)  # past poll_interval: the next poll queries again
        await _poll_refused(source, "1142")
        mariadb_server.sql(f"GRANT SELECT ON {database}.* TO 'poll_src'@'%'")
        assert [r.data["after"]["msg"] for r in await drain(source, lambda rs: len(rs) >= 1)] == ["b"]

        mariadb_server.sql("ALTER USER 'poll_src'@'%' IDENTIFIED BY 'second-Secret-2'")
        _kill_sessions(mariadb_server, "poll_src")
        mariadb_server.sql(f"INSERT INTO {database}.log (msg) VALUES ('c')")
        failures = 0
        deadline = time.monotonic() + 20
        while failures < 2:  # the killed session's error first, then the refused login
            assert time.monotonic() < deadline
            try:
                assert await source.poll() == []
            except RetriableError as exc:
                failures += "1045" in str(exc)
        mariadb_server.sql("ALTER USER 'poll_src'@'%' IDENTIFIED BY 'first-Secret-1'")
        assert [r.data["after"]["msg"] for r in await drain(source, lambda rs: len(rs) >= 1)] == ["c"]
    finally:
        await source.stop()


async def test_snapshot_waits_out_a_changed_password(mariadb_server: MariaDBServer, database: str) -> None:
    mariadb_server.sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t SELECT seq FROM seq_1_to_30", database)
    login = _source_user(mariadb_server, "snap_src", "SELECT, RELOAD, LOCK TABLES, REPLICATION CLIENT, REPLICATION SLAVE ON *.*")
    source = await started(mariadb_server, include_databases=[database], snapshot_chunk_size=5, **login)
    try:
        records = await drain(source, lambda rs: len(changes(rs)) >= 5)
        mariadb_server.sql("ALTER USER 'snap_src'@'%' IDENTIFIED BY 'second-Secret-2'")
        _kill_sessions(mariadb_server, "snap_src")
        refused = 0
        deadline = time.monotonic() + 20
        while refused < 2:  # the killed session's error first, then the refused login, again and again
            assert time.monotonic() < deadline
            try:
                records.extend(await source.poll())
            except RetriableError as exc:
                refused += "1045" in str(exc)
        mariadb_server.sql("ALTER USER 'snap_src'@'%' IDENTIFIED BY 'first-Secret-1'")
        records.extend(await drain(source, lambda rs: len(changes(rs)) >= 30 - len(changes(records))))
    finally:
        await source.stop()
    assert sorted({r.data["after"]["id"] for r in changes(records)}) == list(range(1, 31))
