"""mysql-sink cdc mode against a throwaway MariaDB: schema-change events run only as rebuilt, allow-listed table DDL in the
sink's own database; what names another database, hides code or is not table DDL is dead-lettered with the reason."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from runtime import ConnectorRecord, SinkContext, SourceContext
from services.mysql.sink.cdc import VERSIONS_TABLE
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig
from services.mysql.source.connector import MysqlSource, MysqlSourceConfig
from tests.servers import MariaDBServer

_databases = itertools.count()
OTHER_DB = "other_db"


@pytest.fixture
def database(mariadb_server: MariaDBServer) -> str:
    """The sink's database, with a table ``items``; beside it ``other_db.secrets``, which no event may reach."""
    name = f"cdc_ddl_{next(_databases)}"
    mariadb_server.sql(
        f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};"
        f"CREATE TABLE {name}.items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL);"
        f"DROP DATABASE IF EXISTS {OTHER_DB}; CREATE DATABASE {OTHER_DB};"
        f"CREATE TABLE {OTHER_DB}.secrets (id INT PRIMARY KEY, secret VARCHAR(40));"
        f"INSERT INTO {OTHER_DB}.secrets VALUES (1, 'k')"
    )
    return name


SINK_LABELS = {"connector": "mysql-sink", "name": "cdc-ddl-test"}


async def started(server: MariaDBServer, database: str, **settings: Any) -> MysqlSink:
    sink = MysqlSink(MysqlSinkConfig.model_validate({"port": server.port, "database": database, "mode": "cdc", **settings}))
    await sink.start(SinkContext("cdc-ddl-test", connector_type="mysql-sink"))
    return sink


def ddl(statement: str, pos: int, db: str = "shop") -> ConnectorRecord:
    source = {"db": db, "file": "mysql-bin.000001", "pos": pos, "row": 1, "snapshot": False}
    return ConnectorRecord(data={"ddl": statement, "source": source}, id=f"ddl:{pos}", source="/shop", type="mysql.change.ddl")


def insert(key: int, name: str, pos: int) -> ConnectorRecord:
    source = {"db": "shop", "table": "items", "file": "mysql-bin.000001", "pos": pos, "row": 1, "snapshot": False}
    data = {"op": "c", "before": None, "after": {"id": key, "name": name}, "key": ["id"], "source": source}
    return ConnectorRecord(data=data, id=f"c:{pos}", source="/shop", type="mysql.change.c", subject="items")


def lines(server: MariaDBServer, query: str) -> list[str]:
    return server.sql(query).splitlines()


def tables_of(server: MariaDBServer, db: str) -> list[str]:
    return lines(server, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' ORDER BY 1")


def columns_of(server: MariaDBServer, db: str, table: str) -> list[str]:
    return lines(
        server,
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
        f" WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION",
    )


HOSTILE = [
    pytest.param(f"DROP TABLE {OTHER_DB}.secrets", "names database 'other_db'", id="drop-other-db"),
    pytest.param(f"DROP TABLE shop.items, {OTHER_DB}.secrets", "names database 'other_db'", id="drop-two-one-elsewhere"),
    pytest.param(f"CREATE TABLE stolen AS SELECT * FROM {OTHER_DB}.secrets", "SELECT", id="create-as-select"),
    pytest.param(f"CREATE TABLE stolen LIKE {OTHER_DB}.secrets", "names database 'other_db'", id="create-like-other-db"),
    pytest.param(f"RENAME TABLE items TO {OTHER_DB}.items", "names database 'other_db'", id="rename-into-other-db"),
    pytest.param(f"RENAME TABLE {OTHER_DB}.secrets TO items_2", "names database 'other_db'", id="rename-out-of-other-db"),
    pytest.param(f"ALTER TABLE items RENAME TO {OTHER_DB}.items", "names database 'other_db'", id="alter-rename-other-db"),
    pytest.param(
        f"ALTER TABLE items ADD COLUMN x INT /*!, RENAME TO {OTHER_DB}.items */", "executable comment", id="executable-comment"
    ),
    pytest.param(
        f"ALTER TABLE items ADD COLUMN x INT /*M!100000 , RENAME TO {OTHER_DB}.items */",
        "executable comment",
        id="mariadb-executable-comment",
    ),
    pytest.param(
        f"ALTER TABLE items ADD COLUMN x INT; DROP TABLE {OTHER_DB}.secrets", "exactly one statement", id="two-statements"
    ),
    pytest.param(f"RENAME TABLE items TO items_2; DROP TABLE {OTHER_DB}.secrets", "exactly one statement", id="rename-then-drop"),
    pytest.param(
        f"CREATE TABLE stolen (id INT, secret VARCHAR(40) DEFAULT (SELECT secret FROM {OTHER_DB}.secrets LIMIT 1))",
        "subquery",
        id="subquery-default",
    ),
    pytest.param(f"TRUNCATE TABLE {VERSIONS_TABLE}", "sink's own table", id="truncate-versions"),
    pytest.param("CREATE TEMPORARY TABLE scratch (id INT)", "temporary", id="temporary"),
    pytest.param(  # sqlglot recurses per level: the parser's RecursionError must not end the sink
        "ALTER TABLE items ADD COLUMN x INT DEFAULT " + "(" * 300 + "1" + ")" * 300, "too deeply", id="deep-nesting"
    ),
]


@pytest.mark.parametrize(("statement", "reason"), HOSTILE)
async def test_hostile_schema_changes_are_dead_lettered_and_touch_nothing(
    mariadb_server: MariaDBServer, database: str, statement: str, reason: str
) -> None:
    sink = await started(mariadb_server, database)
    try:
        assert await sink.put([insert(1, "one", 100)]) == []
        hostile = ddl(statement, 200)
        rejections = await sink.put([hostile])
        assert [r.record for r in rejections] == [hostile]
        assert "refused" in rejections[0].reason and reason in rejections[0].reason, rejections[0].reason
        assert statement not in rejections[0].reason  # reasons are logged; the text may carry a password
    finally:
        await sink.stop()
    assert tables_of(mariadb_server, OTHER_DB) == ["secrets"]
    assert lines(mariadb_server, f"SELECT id, secret FROM {OTHER_DB}.secrets") == ["1\tk"]
    assert tables_of(mariadb_server, database) == ["items", VERSIONS_TABLE]
    assert columns_of(mariadb_server, database, "items") == ["id", "name"]
    assert lines(mariadb_server, f"SELECT id, name FROM {database}.items") == ["1\tone"]
    assert lines(mariadb_server, f"SELECT tbl, pk FROM {database}.{VERSIONS_TABLE}") == ["items\t[1]"]  # no mark, no loss


async def test_a_statement_sqlglot_cannot_rebuild_whole_is_refused_not_run_with_less(
    mariadb_server: MariaDBServer, database: str
) -> None:
    partitioned = ddl("CREATE TABLE parts (id INT PRIMARY KEY) PARTITION BY HASH(id) PARTITIONS 4", 100)
    invisible = ddl("ALTER TABLE items ADD COLUMN hidden INT INVISIBLE", 200)
    sink = await started(mariadb_server, database)
    try:
        rejections = await sink.put([partitioned, invisible])
    finally:
        await sink.stop()
    assert [r.record for r in rejections] == [partitioned, invisible]
    assert "cannot parse faithfully" in rejections[0].reason and "INVISIBLE" in rejections[1].reason
    assert tables_of(mariadb_server, database) == ["items", VERSIONS_TABLE]
    assert columns_of(mariadb_server, database, "items") == ["id", "name"]


async def test_with_apply_ddl_false_schema_changes_are_acknowledged_counted_and_not_run(
    mariadb_server: MariaDBServer, database: str
) -> None:
    def skipped() -> float:
        return REGISTRY.get_sample_value("meshconnect_cdc_ddl_skipped_total", SINK_LABELS) or 0.0

    before = skipped()
    sink = await started(mariadb_server, database, apply_ddl=False)
    try:
        truncate = ddl("TRUNCATE TABLE `shop`.`items`", 200)
        assert await sink.put([insert(1, "one", 100), truncate, ddl("ALTER TABLE items ADD COLUMN note TEXT", 300)]) == []
        assert await sink.put([insert(2, "two", 150)]) == []  # older than the skipped TRUNCATE: no floor holds it out
    finally:
        await sink.stop()
    assert skipped() == before + 2
    assert columns_of(mariadb_server, database, "items") == ["id", "name"]
    assert lines(mariadb_server, f"SELECT id FROM {database}.items ORDER BY id") == ["1", "2"]
    assert lines(mariadb_server, f"SELECT pk FROM {database}.{VERSIONS_TABLE} ORDER BY pk") == ["[1]", "[2]"]  # no marks


_SOURCE_TABLE = (
    "CREATE TABLE a (id INT UNSIGNED NOT NULL AUTO_INCREMENT,"
    " name VARCHAR(40) CHARACTER SET latin1 COLLATE latin1_bin NOT NULL DEFAULT 'it''s',"
    " price DECIMAL(10,2) DEFAULT 0.50, doc JSON,"
    " at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),"
    " flags SET('x','y') DEFAULT 'x',"
    " PRIMARY KEY (id), UNIQUE KEY name (name), KEY price (price, name(5))"
    ") ENGINE=InnoDB AUTO_INCREMENT=7 DEFAULT CHARSET=utf8mb4 COMMENT='rows of a'"
)
_SOURCE_DDL = [
    "ALTER TABLE a ADD COLUMN note TEXT AFTER name, ADD INDEX note_at (at)",
    "ALTER TABLE a MODIFY COLUMN price DECIMAL(12,3) NOT NULL DEFAULT 1.000, CHANGE COLUMN note remark VARCHAR(100) NULL",
    "CREATE TABLE b LIKE a",
    "RENAME TABLE b TO c",
    "ALTER TABLE c DROP INDEX note_at, DROP COLUMN remark, ALTER COLUMN flags SET DEFAULT 'y'",
    "CREATE INDEX by_at ON c (at)",
    "ALTER TABLE c RENAME INDEX by_at TO at_idx",
    "DROP INDEX at_idx ON c",
    "INSERT INTO c (id, name, doc) VALUES (1, 'c1', '{}')",
    "TRUNCATE TABLE c",
    "ALTER TABLE c ADD COLUMN twice DECIMAL(14,3) AS (price * 2) VIRTUAL,"
    " ADD COLUMN tag VARCHAR(50) GENERATED ALWAYS AS (concat(name, '!')) STORED",
    "CREATE TABLE d (id INT PRIMARY KEY)",
    "DROP TABLE d",
]


def show_create(server: MariaDBServer, db: str, table: str) -> str:
    text = server.sql(f"SHOW CREATE TABLE `{db}`.`{table}`").split("\t", 1)[1]
    return re.sub(r" AUTO_INCREMENT=\d+", "", text.replace(f"CREATE TABLE `{table}`", "CREATE TABLE"))


async def test_schema_changes_from_mysql_sources_binlog_replicate_into_the_mapped_tables(
    mariadb_server: MariaDBServer, database: str
) -> None:
    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
    src = f"{database}_src"
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {src}; CREATE DATABASE {src}; USE {src}; {_SOURCE_TABLE};")
    mariadb_server.sql("INSERT INTO a (name, doc) VALUES ('one', '[1]'), ('two', NULL)", src)
    source = MysqlSource(
        MysqlSourceConfig.model_validate(
            {"port": mariadb_server.port, "include_databases": [src], "replica_id": 63000 + next(_databases)}
        )
    )
    await source.start(SourceContext("cdc-ddl-source", {}))
    records: list[ConnectorRecord] = []
    try:
        deadline = time.monotonic() + 20
        while len(records) < 3:  # the snapshot: a's CREATE TABLE and its two rows; the stream goes on from its position
            records += await source.poll()
            assert time.monotonic() < deadline
        mariadb_server.sql("; ".join(_SOURCE_DDL), src)
        ddl_count = sum(1 for statement in _SOURCE_DDL if not statement.startswith("INSERT"))
        while sum(1 for r in records if r.type == "mysql.change.ddl") < ddl_count + 1:
            records += await source.poll()
            assert time.monotonic() < deadline, [r.data.get("ddl") for r in records]
    finally:
        await source.stop()
    # Mapped names: a stays a_copy, c (b renamed) lands as c_copy; every statement is rebuilt onto them.
    sink = await started(mariadb_server, database, table_map={f"{src}.a": "a_copy", f"{src}.c": "c_copy"})
    try:
        assert await sink.put(records) == []
        assert await sink.put(records) == []  # a replay, DDL included, changes nothing
    finally:
        await sink.stop()
    assert tables_of(mariadb_server, database) == ["a_copy", "c_copy", "items", VERSIONS_TABLE]
    assert show_create(mariadb_server, database, "a_copy") == show_create(mariadb_server, src, "a")
    assert show_create(mariadb_server, database, "c_copy") == show_create(mariadb_server, src, "c")
    assert lines(mariadb_server, f"SELECT id, name, doc FROM {database}.a_copy ORDER BY id") == ["7\tone\t[1]", "8\ttwo\tNULL"]
    assert lines(mariadb_server, f"SELECT COUNT(*) FROM {database}.c_copy") == ["0"]
