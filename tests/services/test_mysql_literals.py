"""mysql-sink's literal builder stores every value byte for byte as the driver's own binding does (real MariaDB)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aiomysql
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import ConfigError, DataError, SinkContext
from services.mysql.literals import BACKSLASH_ESCAPES, QUOTE_DOUBLING, literals_for
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig
from tests.servers import MariaDBServer
from tests.services.test_mysql_sink import database, event, rows  # noqa: F401 - the database fixture

DEFAULT_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
NO_BACKSLASH_MODE = DEFAULT_MODE + ",NO_BACKSLASH_ESCAPES"

# column, type, what is generated for it (None too)
_ZONES = st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
).map(lambda value: orjson.dumps(value).decode())
_TRICKY = st.sampled_from(["'", '"', "\\", "\x00", "\x1a", "\n", "\r", "%", "😀", "\U0010fffd", "é"])
_COLUMNS: list[tuple[str, str, st.SearchStrategy[Any]]] = [
    ("s", "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", st.text(st.one_of(_TRICKY, st.characters(codec="utf-8")))),
    ("b", "LONGBLOB", st.binary() | st.binary().map(bytearray)),
    ("i", "BIGINT", st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1, 0])),
    ("u", "BIGINT UNSIGNED", st.integers(0, 2**64 - 1) | st.just(2**64 - 1)),
    ("f", "DOUBLE", st.floats(allow_nan=False, allow_infinity=False)),
    ("d", "DECIMAL(65,20)", st.decimals(-(10**44) + 1, 10**44 - 1, places=20) | st.decimals(-(10**6), 10**6, places=3)),
    ("da", "DATE", st.dates(dt.date(1000, 1, 1))),
    ("t", "TIME(6)", st.times(timezones=_ZONES)),
    ("ts", "DATETIME(6)", st.datetimes(dt.datetime(1000, 1, 1), timezones=_ZONES)),
    ("bo", "TINYINT(1)", st.booleans()),
    ("j", "JSON", _JSON),
]
_TABLE = "CREATE TABLE literal_values (id INT PRIMARY KEY, {}) DEFAULT CHARSET=utf8mb4".format(
    ", ".join(f"{name} {kind} NULL" for name, kind, _ in _COLUMNS)
)
# Byte-exact renderings: HEX of strings, bytes and JSON text; numbers and times as the server prints them.
_READ = (
    "SELECT "
    + ", ".join(f"HEX({name})" if name in ("s", "b", "j") else f"CAST({name} AS CHAR)" for name, _, _ in _COLUMNS)
    + " FROM literal_values ORDER BY id"
)
_INSERT = f"INSERT INTO literal_values VALUES ({', '.join(['%s'] * (len(_COLUMNS) + 1))})"
_ROWS = st.tuples(*(st.none() | strategy for _, _, strategy in _COLUMNS))


class Session:
    """One aiomysql connection under a given sql_mode, driven from synchronous hypothesis tests."""

    def __init__(self, server: MariaDBServer, schema: str, sql_mode: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(
            aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=schema, charset="utf8mb4", autocommit=True)
        )
        self.run(f"SET SESSION sql_mode='{sql_mode}', time_zone='+00:00'")
        self.run(_TABLE)

    def run(self, statement: str | bytes, args: Any = None) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            async with self.conn.cursor() as cursor:
                await cursor.execute(statement, args)
                return list(await cursor.fetchall())

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.ensure_closed())
        self.loop.close()


@pytest.fixture(params=[DEFAULT_MODE, NO_BACKSLASH_MODE], ids=["default", "no_backslash_escapes"])
def session(request: pytest.FixtureRequest, mariadb_server: MariaDBServer, database: str) -> Iterator[Session]:  # noqa: F811
    session = Session(mariadb_server, database, request.param)
    yield session
    session.close()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=_ROWS)
def test_every_value_kind_is_stored_as_the_driver_binds_it(session: Session, values: tuple[Any, ...]) -> None:
    no_backslash = "NO_BACKSLASH" in session.run("SELECT @@SESSION.sql_mode")[0][0]
    literals = literals_for(session.conn)
    assert literals is (QUOTE_DOUBLING if no_backslash else BACKSLASH_ESCAPES)
    # Same text as the driver's for everything but bytes (hex literals here, quoted escapes there).
    for value in values:
        if not isinstance(value, bytes | bytearray):
            assert literals.literal(value) == session.conn.escape(value)
    session.run("DELETE FROM literal_values")
    blob = _COLUMNS.index(next(column for column in _COLUMNS if column[0] == "b"))
    by_driver = list(values)
    if no_backslash or isinstance(values[blob], bytearray):
        # aiomysql escapes bytes with backslashes even under NO_BACKSLASH_ESCAPES (it stores them wrong
        # or fails), and binds a bytearray as its repr: what the hex literal stores is checked below instead.
        by_driver[blob] = None
    session.run(_INSERT, (1, *by_driver))
    session.run(b"INSERT INTO literal_values VALUES " + literals.row((2, *values)).encode("utf-8", "surrogateescape"))
    driver_row, literal_row = session.run(_READ)
    assert literal_row[blob] == (None if values[blob] is None else bytes(values[blob]).hex().upper())
    assert literal_row[:blob] + literal_row[blob + 1 :] == driver_row[:blob] + driver_row[blob + 1 :]
    if by_driver[blob] is not None:
        assert literal_row[blob] == driver_row[blob]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), Decimal("NaN"), Decimal("-Infinity")])
def test_numbers_that_are_not_finite_are_refused(value: Any) -> None:
    for literals in (BACKSLASH_ESCAPES, QUOTE_DOUBLING):
        with pytest.raises(DataError, match="not finite"):
            literals.row(("a", value))


async def test_a_session_in_a_character_set_it_cannot_escape_safely_fails_the_start(
    mariadb_server: MariaDBServer,
    database: str,  # noqa: F811
) -> None:
    mariadb_server.sql("SET GLOBAL init_connect='SET NAMES sjis'")
    try:
        # init_connect is skipped for privileged users such as root: a user with rights on the database only.
        mariadb_server.sql(f"CREATE USER IF NOT EXISTS lit@'%'; GRANT ALL ON {database}.* TO lit@'%'")
        sink = MysqlSink(MysqlSinkConfig.model_validate({"port": mariadb_server.port, "database": database, "user": "lit"}))
        with pytest.raises(ConfigError, match="character set sjis"):
            await sink.start(SinkContext("sink-test"))
    finally:
        mariadb_server.sql("SET GLOBAL init_connect=''; DROP USER IF EXISTS lit@'%'")


async def test_a_batch_too_long_for_one_statement_is_cut_by_size_into_the_fewest_statements(
    mariadb_server: MariaDBServer,
    database: str,  # noqa: F811
) -> None:
    # Two rows of 600 kB cannot share a statement (the client's limit is 1,024,000 bytes); the small rows fit beside one.
    blobs = ["a" * 600_000, "b" * 600_000] + [str(n) * 1000 for n in range(10)]
    sink = MysqlSink(MysqlSinkConfig.model_validate({"port": mariadb_server.port, "database": database}))
    await sink.start(SinkContext("sink-test"))
    try:
        before = int(mariadb_server.sql("SHOW GLOBAL STATUS LIKE 'Com_insert'").split()[1])
        assert await sink.put([event({"blob": blob}, id=str(n)) for n, blob in enumerate(blobs)]) == []
        after = int(mariadb_server.sql("SHOW GLOBAL STATUS LIKE 'Com_insert'").split()[1])
    finally:
        await sink.stop()
    assert after - before == 2
    assert rows(mariadb_server, "SELECT COUNT(*), SUM(LENGTH(data)) FROM cloudevents", database) == [
        [str(len(blobs)), str(sum(len(blob) + len('{"blob":""}') for blob in blobs))]
    ]
