"""mysql-sink cdc mode against a throwaway MariaDB: changes of one row delivered out of order, twice, or by two replicas
at once end as if applied in source order."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import aiomysql
import pytest
from prometheus_client import REGISTRY

from runtime import ConnectorRecord, DataError, RetriableError, SinkContext
from services.mysql.sink.cdc import VERSIONS_TABLE
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig
from tests.servers import MariaDBServer

_databases = itertools.count()
_TABLE = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT NULL)"


@pytest.fixture
def database(mariadb_server: MariaDBServer) -> str:
    name = f"cdc_order_{next(_databases)}"
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}; USE {name}; {_TABLE}")
    return name


SINK_LABELS = {"connector": "mysql-sink", "name": "cdc-order-test"}


async def started(server: MariaDBServer, database: str, **settings: Any) -> MysqlSink:
    sink = MysqlSink(MysqlSinkConfig.model_validate({"port": server.port, "database": database, "mode": "cdc", **settings}))
    await sink.start(SinkContext("cdc-order-test", connector_type="mysql-sink"))
    return sink


def table(server: MariaDBServer, database: str, query: str = "SELECT id, name, qty FROM items ORDER BY id") -> list[list[str]]:
    return [line.split("\t") for line in server.sql(query, database).splitlines()]


def source(pos: int, row: int = 1, *, file: str = "mysql-bin.000001", snapshot: bool = False) -> dict[str, Any]:
    return {"db": "shop", "table": "items", "file": file, "pos": pos, "row": row, "snapshot": snapshot}


def change(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, at: dict[str, Any]) -> ConnectorRecord:
    data = {"op": op, "before": before, "after": after, "key": ["id"], "source": at}
    return ConnectorRecord(
        data=data, id=f"{at['file']}:{at['pos']}:{at['row']}:{op}", source="/shop", type=f"mysql.change.{op}", subject="items"
    )


def ddl(statement: str, at: dict[str, Any]) -> ConnectorRecord:
    data = {"ddl": statement, "source": {key: value for key, value in at.items() if key != "table"}}
    return ConnectorRecord(data=data, id=f"ddl:{at['pos']}", source="/shop", type="mysql.change.ddl", subject="items")


def item(key: int, name: str, qty: int | None = None) -> dict[str, Any]:
    return {"id": key, "name": name, "qty": qty}


async def put_each(sink: MysqlSink, *batches: Sequence[ConnectorRecord]) -> None:
    for batch in batches:
        assert await sink.put(batch) == []


async def test_an_older_update_delivered_after_a_newer_one_changes_nothing(mariadb_server: MariaDBServer, database: str) -> None:
    insert = change("c", None, item(1, "one", 1), source(100))
    update_2 = change("u", item(1, "one", 1), item(1, "one", 2), source(200))
    update_3 = change("u", item(1, "one", 2), item(1, "one", 3), source(300))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [insert], [update_3], [update_2])  # one batch each: the late one meets the stored version
        await put_each(sink, [update_2, insert])  # in one batch: both older than the row's version
        assert table(mariadb_server, database) == [["1", "one", "3"]]
        await put_each(sink, [update_3], [update_3, update_3])  # the same change again: a no-op
        assert table(mariadb_server, database) == [["1", "one", "3"]]
        # Newest first within one batch: the newest wins, whatever the order in the batch.
        later = change("u", item(1, "one", 3), item(1, "four", 4), source(300, row=2))
        await put_each(sink, [later, update_2, insert])
        assert table(mariadb_server, database) == [["1", "four", "4"]]
    finally:
        await sink.stop()


async def test_a_deleted_row_stays_deleted_when_an_older_insert_or_update_arrives_late(
    mariadb_server: MariaDBServer, database: str
) -> None:
    insert = change("c", None, item(1, "one"), source(100))
    update = change("u", item(1, "one"), item(1, "uno"), source(100, row=2))
    delete = change("d", item(1, "uno"), None, source(200))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [delete], [update], [insert])  # the delete never saw the row, yet its tombstone holds
        assert table(mariadb_server, database) == []
        await put_each(sink, [insert, delete, update])
        assert table(mariadb_server, database) == []
        reinsert = change("c", None, item(1, "again"), source(300))
        await put_each(sink, [reinsert], [delete, update])
        assert table(mariadb_server, database) == [["1", "again", "NULL"]]
    finally:
        await sink.stop()


async def test_snapshot_rows_order_below_streamed_changes_of_their_position(mariadb_server: MariaDBServer, database: str) -> None:
    snapshot_at = {"file": "mysql-bin.000002", "snapshot": True}
    snapshot_row = change("r", None, item(1, "snap"), source(400, row=0, **snapshot_at))
    snapshot_other = change("r", None, item(2, "snap"), source(400, row=0, **snapshot_at))
    # The first transaction streamed after the snapshot starts at the snapshot's position.
    streamed = change("u", item(1, "snap"), item(1, "streamed"), source(400, row=1, file="mysql-bin.000002"))
    # An older change from the previous binlog file (a higher pos, a lower file number).
    stale = change("u", item(2, "old"), item(2, "stale"), source(90_000, file="mysql-bin.000001"))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [streamed], [snapshot_row, snapshot_other], [stale])
        assert table(mariadb_server, database) == [["1", "streamed", "NULL"], ["2", "snap", "NULL"]]
    finally:
        await sink.stop()


async def test_a_key_change_versions_both_keys(mariadb_server: MariaDBServer, database: str) -> None:
    insert = change("c", None, item(1, "one"), source(100))
    rename = change("u", item(1, "one"), item(10, "ten"), source(200))
    update_old_key = change("u", item(1, "zero"), item(1, "one"), source(150))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [rename], [update_old_key, insert])  # the old key was deleted at 200: it stays gone
        assert table(mariadb_server, database) == [["10", "ten", "NULL"]]
        revert = change("u", item(10, "ten"), item(1, "one again"), source(300))
        await put_each(sink, [revert], [rename])
        assert table(mariadb_server, database) == [["1", "one again", "NULL"]]
    finally:
        await sink.stop()


async def test_schema_changes_apply_once_in_order_and_a_truncate_makes_older_rows_obsolete(
    mariadb_server: MariaDBServer, database: str
) -> None:
    add = ddl("ALTER TABLE `shop`.`items` ADD COLUMN note TEXT NULL", source(100))
    drop = ddl("ALTER TABLE `shop`.`items` DROP COLUMN note", source(200))
    insert = change("c", None, item(1, "one"), source(150))
    truncate = ddl("TRUNCATE TABLE `shop`.`items`", source(300))
    after = change("c", None, item(2, "two"), source(400))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [add, drop], [add])  # the late ADD COLUMN would bring the column back
        columns = "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items'"
        assert table(mariadb_server, database, columns + " ORDER BY ORDINAL_POSITION") == [["id"], ["name"], ["qty"]]
        await put_each(sink, [truncate, after], [insert])  # the insert happened before the truncate: obsolete
        assert table(mariadb_server, database) == [["2", "two", "NULL"]]
    finally:
        await sink.stop()


async def test_a_schema_change_left_pending_by_a_crash_holds_newer_changes_until_it_is_applied_again(
    mariadb_server: MariaDBServer, database: str
) -> None:
    old = change("c", None, item(1, "old"), source(100))
    truncate = ddl("TRUNCATE TABLE `shop`.`items`", source(300))
    older = change("c", None, item(2, "older"), source(200))
    newer = change("c", None, item(3, "newer"), source(400))
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [old], [truncate])
        version = next(v for pk, v, _ in versions(mariadb_server, database) if pk == "ddl")
        # As if a replica crashed after setting the truncate's marks, before running it.
        mariadb_server.sql(f"DELETE FROM {VERSIONS_TABLE}; INSERT INTO items VALUES (1, 'old', NULL)", database)
        marks = ", ".join(f"('items', '{mark}', '{version}')" for mark in ("ddl", "reset", "pending"))
        mariadb_server.sql(f"INSERT INTO {VERSIONS_TABLE} (tbl, pk, version) VALUES {marks}", database)
        with pytest.raises(RetriableError, match="schema change"):
            await sink.put([newer])  # newer than the pending truncate: waits for it
        await put_each(sink, [older])  # older than the truncate: obsolete
        assert table(mariadb_server, database) == [["1", "old", "NULL"]]
        await put_each(sink, [truncate])  # redelivered: it runs again, as it never ran
        assert table(mariadb_server, database) == []
        await put_each(sink, [newer], [truncate])  # the newer change goes through; the truncate, again, is skipped
        assert table(mariadb_server, database) == [["3", "newer", "NULL"]]
        assert "pending" not in [pk for pk, _, _ in versions(mariadb_server, database)]
    finally:
        await sink.stop()


async def test_a_truncate_applied_after_newer_row_changes_is_reported(mariadb_server: MariaDBServer, database: str) -> None:
    def late_resets() -> float:
        return REGISTRY.get_sample_value("meshconnect_cdc_late_resets_total", SINK_LABELS) or 0.0

    before = late_resets()
    sink = await started(mariadb_server, database)
    try:
        await put_each(
            sink, [change("c", None, item(1, "one"), source(100))], [ddl("TRUNCATE TABLE `shop`.`items`", source(200))]
        )
        assert late_resets() == before  # in order: nothing to report
        await put_each(
            sink, [change("c", None, item(2, "two"), source(400))], [ddl("TRUNCATE TABLE `shop`.`items`", source(300))]
        )
        assert late_resets() == before + 1  # the row changed at 400 went with the truncate of 300
        assert table(mariadb_server, database) == []
    finally:
        await sink.stop()


async def test_a_schema_change_the_server_refuses_leaves_no_mark_behind(mariadb_server: MariaDBServer, database: str) -> None:
    broken = ddl("ALTER TABLE `shop`.`items` ADD PRIMARY KEY (name)", source(300))  # it has one: error 1068
    newer = change("c", None, item(1, "one"), source(400))
    older = change("c", None, item(2, "two"), source(200))
    sink = await started(mariadb_server, database)
    try:
        with pytest.raises(DataError):
            await sink.put([broken])
        assert versions(mariadb_server, database) == []
        await put_each(sink, [newer], [older])  # nothing waits for it, nothing older is obsolete
        assert table(mariadb_server, database) == [["1", "one", "NULL"], ["2", "two", "NULL"]]
        # Refused on its redelivery after a crash had left it pending: the pending mark goes all the same.
        await put_each(sink, [ddl("CREATE TABLE `shop`.`other` (id INT PRIMARY KEY)", source(300))])
        other = table(mariadb_server, database, f"SELECT pk, version FROM {VERSIONS_TABLE} WHERE tbl = 'other'")
        [version] = [v for pk, v in other if pk == "ddl"]
        marks = ", ".join(f"('items', '{mark}', '{version}')" for mark in ("ddl", "pending"))
        mariadb_server.sql(f"INSERT INTO {VERSIONS_TABLE} (tbl, pk, version) VALUES {marks}", database)
        with pytest.raises(DataError):
            await sink.put([broken])
        assert [pk for pk, _, _ in versions(mariadb_server, database) if not pk.startswith("[")] == ["ddl"]
        await put_each(sink, [change("c", None, item(3, "three"), source(500))])
        assert table(mariadb_server, database)[-1] == ["3", "three", "NULL"]
    finally:
        await sink.stop()


_slow_truncates: ContextVar[bool] = ContextVar("slow_truncates", default=False)


async def test_an_older_change_written_while_another_replica_truncates_stays_out(
    mariadb_server: MariaDBServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = aiomysql.Cursor.execute

    async def slow_truncate(cursor: aiomysql.Cursor, query: str | bytes, args: Any = None) -> Any:
        result = await execute(cursor, query, args)
        if _slow_truncates.get() and isinstance(query, str) and query.lstrip().upper().startswith("TRUNCATE"):
            await asyncio.sleep(0.3)  # a replica paused just after its truncate ran
        return result

    monkeypatch.setattr(aiomysql.Cursor, "execute", slow_truncate)
    truncating, writing = [await started(mariadb_server, database) for _ in range(2)]

    async def truncate(round_: int) -> None:
        _slow_truncates.set(True)  # in this task only
        await put_each(truncating, [ddl("TRUNCATE TABLE `shop`.`items`", source(1000 * round_ + 300))])

    async def write_older(round_: int) -> None:
        await asyncio.sleep(0.1)  # while the other replica is paused after its truncate
        await put_each(writing, [change("c", None, item(round_, "older"), source(1000 * round_ + 200))])

    try:
        for round_ in range(1, 4):
            await asyncio.gather(truncate(round_), write_older(round_))
            assert table(mariadb_server, database) == [], f"round {round_}"  # the row was gone with the truncate
    finally:
        await truncating.stop()
        await writing.stop()


async def test_an_envelope_without_a_position_is_rejected_with_the_reason(mariadb_server: MariaDBServer, database: str) -> None:
    unordered = change("c", None, item(1, "one"), source(100))
    del unordered.data["source"]["row"]
    sink = await started(mariadb_server, database)
    try:
        rejections = await sink.put([unordered, change("c", None, item(2, "two"), source(100, row=2))])
    finally:
        await sink.stop()
    assert [r.record.id for r in rejections] == [unordered.id] and "source.row" in rejections[0].reason
    assert table(mariadb_server, database) == [["2", "two", "NULL"]]


def versions(server: MariaDBServer, database: str) -> list[list[str]]:
    """(pk, version, whether it is a tombstone) of every row of the versions table, by pk."""
    query = f"SELECT pk, version, deleted_at IS NOT NULL FROM {VERSIONS_TABLE} WHERE tbl = 'items' ORDER BY pk"
    return table(server, database, query)


async def test_tombstones_older_than_the_retention_are_purged_and_the_table_floor_keeps_older_changes_out(
    mariadb_server: MariaDBServer, database: str
) -> None:
    purged_before = REGISTRY.get_sample_value("meshconnect_tombstones_purged_total", SINK_LABELS) or 0.0
    insert_1 = change("c", None, item(1, "one"), source(100))
    insert_2 = change("c", None, item(2, "two"), source(150))
    delete_1 = change("d", item(1, "one"), None, source(200))
    sink = await started(mariadb_server, database, tombstone_retention=1)
    try:
        await put_each(sink, [insert_1, insert_2], [delete_1])
        (_, delete_version, _), (_, live_version, _) = stored = versions(mariadb_server, database)
        assert [(pk, tombstone) for pk, _, tombstone in stored] == [("[1]", "1"), ("[2]", "0")]
        for _ in range(100):  # the sink purges in the background, about once a second
            if len(versions(mariadb_server, database)) == 2 and versions(mariadb_server, database)[0][0] == "[2]":
                break
            await asyncio.sleep(0.1)
        # The tombstone is gone, the live row's version stays, the floor holds the purged delete's version.
        assert [row[:2] for row in versions(mariadb_server, database)] == [["[2]", live_version], ["reset", delete_version]]
        purged = REGISTRY.get_sample_value("meshconnect_tombstones_purged_total", SINK_LABELS)
        assert purged == purged_before + 1
        await put_each(sink, [insert_1], [change("u", item(1, "zero"), item(1, "one"), source(120))])
        assert table(mariadb_server, database) == [["2", "two", "NULL"]]  # older than the purged delete: skipped
        await put_each(sink, [change("c", None, item(1, "back"), source(300))])
        assert table(mariadb_server, database) == [["1", "back", "NULL"], ["2", "two", "NULL"]]
    finally:
        await sink.stop()


async def test_the_background_purge_outlives_a_round_the_server_refuses(mariadb_server: MariaDBServer, database: str) -> None:
    sink = await started(mariadb_server, database, tombstone_retention=1)
    try:
        await put_each(sink, [change("c", None, item(1, "one"), source(100))], [change("d", item(1, "one"), None, source(200))])
        rename = f"ALTER TABLE {VERSIONS_TABLE} RENAME COLUMN {{}} TO {{}}"
        mariadb_server.sql(rename.format("deleted_at", "hidden"), database)  # every round now fails: unknown column
        await asyncio.sleep(2.5)
        assert [pk for pk, _ in table(mariadb_server, database, f"SELECT pk, version FROM {VERSIONS_TABLE}")] == ["[1]"]
        mariadb_server.sql(rename.format("hidden", "deleted_at"), database)
        for _ in range(100):  # a later round purges it
            if not table(mariadb_server, database, f"SELECT pk FROM {VERSIONS_TABLE} WHERE pk = '[1]'"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the purge never ran again")
    finally:
        await sink.stop()


async def test_a_purge_takes_every_tombstone_before_its_cutoff_in_chunks_and_none_after(
    mariadb_server: MariaDBServer, database: str
) -> None:
    rows = 2500  # more than one purge chunk
    inserts = [change("c", None, item(key, f"n{key}"), source(100, row=key)) for key in range(rows)]
    deletes = [change("d", item(key, f"n{key}"), None, source(200, row=key)) for key in range(rows)]
    sink = await started(mariadb_server, database, tombstone_retention=0)
    try:
        await put_each(sink, inserts, deletes)
        newest_purged = max(version for _, version, _ in versions(mariadb_server, database))
        await asyncio.sleep(0.01)
        cutoff = datetime.now(UTC)
        await asyncio.sleep(0.01)
        await put_each(
            sink, [change("c", None, item(rows, "late"), source(300)), change("d", item(rows, "late"), None, source(301))]
        )
        assert await sink.purge_tombstones(cutoff) == rows
        left = versions(mariadb_server, database)
        assert [(pk, tombstone) for pk, _, tombstone in left] == [(f"[{rows}]", "1"), ("reset", "0")]
        assert left[1][1] == newest_purged
        assert await sink.purge_tombstones(cutoff) == 0
    finally:
        await sink.stop()


async def test_a_versions_table_from_before_tombstone_purging_gains_its_deletion_time(
    mariadb_server: MariaDBServer, database: str
) -> None:
    mariadb_server.sql(
        f"CREATE TABLE {VERSIONS_TABLE} (tbl VARBINARY(64) NOT NULL, pk VARBINARY(255) NOT NULL,"
        " version VARBINARY(64) NOT NULL, PRIMARY KEY (tbl, pk)) ENGINE=InnoDB",
        database,
    )
    sink = await started(mariadb_server, database)
    try:
        await put_each(sink, [change("c", None, item(1, "one"), source(100))], [change("d", item(1, "one"), None, source(200))])
    finally:
        await sink.stop()
    assert [row[0::2] for row in versions(mariadb_server, database)] == [["[1]", "1"]]


def history(seed: int, keys: int = 6, changes: int = 120) -> tuple[list[ConnectorRecord], dict[int, tuple[str, int | None]]]:
    """A source-ordered history of inserts, updates (some changing the key) and deletes; the final table it leaves."""
    rng = random.Random(seed)
    rows: dict[int, tuple[str, int | None]] = {}
    records: list[ConnectorRecord] = []
    pos = 4
    for n in range(changes):
        if n % 3 == 0:
            pos += rng.randint(50, 500)
        at = source(pos, row=n % 3 + 1, file=f"mysql-bin.00000{1 + n // 60}")
        key = rng.randrange(keys)
        if key not in rows:
            rows[key] = (f"v{n}", rng.choice([None, n]))
            records.append(change("c", None, item(key, *rows[key]), at))
        elif rng.random() < 0.25:
            records.append(change("d", item(key, *rows.pop(key)), None, at))
        else:
            new_key = rng.randrange(keys) if rng.random() < 0.2 else key
            if new_key != key and new_key in rows:
                new_key = key
            before = item(key, *rows.pop(key))
            rows[new_key] = (f"v{n}", n)
            records.append(change("u", before, item(new_key, *rows[new_key]), at))
    return records, rows


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_shuffled_duplicated_deliveries_end_as_the_source_order_does(
    mariadb_server: MariaDBServer, database: str, seed: int
) -> None:
    records, final = history(seed)
    rng = random.Random(seed)
    deliveries = records + rng.sample(records, len(records) // 3)  # a third redelivered
    rng.shuffle(deliveries)
    sink = await started(mariadb_server, database)
    try:
        start = 0
        while start < len(deliveries):
            size = rng.randint(1, 25)
            await put_each(sink, deliveries[start : start + size])
            start += size
    finally:
        await sink.stop()
    expected = [[str(key), name, "NULL" if qty is None else str(qty)] for key, (name, qty) in sorted(final.items())]
    assert table(mariadb_server, database) == expected


async def test_two_replicas_writing_one_rows_changes_at_once_end_as_the_source_order_does(
    mariadb_server: MariaDBServer, database: str
) -> None:
    records, final = history(7, keys=4, changes=200)
    rng = random.Random(7)
    shuffled = rng.sample(records, len(records))
    sinks = [await started(mariadb_server, database) for _ in range(2)]

    async def replica(sink: MysqlSink, share: list[ConnectorRecord]) -> int:
        retried = 0
        for start in range(0, len(share), 10):
            while True:
                try:
                    assert await sink.put(share[start : start + 10]) == []
                    break
                except RetriableError:  # two writers of the same rows: a deadlock is retried, as the worker does
                    retried += 1
                    assert retried < 200
                    await asyncio.sleep(rng.random() * 0.02)
        return retried

    try:
        await asyncio.gather(*(replica(sink, shuffled[index::2]) for index, sink in enumerate(sinks)))
    finally:
        for sink in sinks:
            await sink.stop()
    expected = [[str(key), name, "NULL" if qty is None else str(qty)] for key, (name, qty) in sorted(final.items())]
    assert table(mariadb_server, database) == expected
