"""postgres-sink stores every kind of value the same on each of its paths, against a throwaway PostgreSQL.

Mode mapped upserts whole rows with one statement over every column; mode cdc sets only the columns
an image holds (a statement per set of fields) and merges the changes of a row in a batch. Both
check each row's value types in one pass before the rule-by-rule path. For random rows of every
value kind the verdicts are those of the rules one by one, and the rows stored are byte for byte
the same: cdc's partial updates end where mapped's whole merged rows end.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.connector import SinkContext
from runtime.errors import DataError
from runtime.record import ConnectorRecord
from services.postgres.sink.connector import PostgresSink, PostgresSinkConfig
from tests.servers import PostgresServer

_COLUMNS = (
    "(id int8 PRIMARY KEY, t text, b bytea, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, d date,"
    " tm time, ts timestamp, tz timestamptz, ok bool, j jsonb)"
)
_MISFITS = st.sampled_from([True, "7", 1.5, [1], {"k": 1}, "x", 2**15, -(2**31) - 1, 2**63, "1e5", " 1", "NaN", -1e39])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _integers(bits: int) -> st.SearchStrategy[int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.sampled_from([low, high, 0]) | st.integers(low, high)


_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "t": st.text() | _JSON,  # quotes, backslashes, NUL (jsonb refuses it), non-BMP; a non-string as its JSON text
    "b": st.binary(max_size=20).map(lambda data: "\\x" + data.hex()),
    "i2": _integers(16),
    "i4": _integers(32),
    "i8": _integers(64),
    "f4": st.floats(width=32) | st.integers(-(2**24), 2**24),
    "f8": st.floats() | st.integers(-(2**53), 2**53),  # NaN and infinities: JSON has none (null)
    "n": st.decimals(allow_nan=False, allow_infinity=False, places=6, min_value=-(10**12), max_value=10**12).map(
        lambda value: format(value, "f")
    )
    | st.integers(-(2**63), 2**63 - 1),
    "d": st.dates().map(lambda value: value.isoformat()),
    "tm": st.times().map(lambda value: value.isoformat()),
    "ts": st.datetimes().map(lambda value: value.isoformat()),
    "tz": st.datetimes(timezones=_ZONES).map(lambda value: value.isoformat()),
    "ok": st.booleans(),
    "j": _JSON,
}
_IDS = st.integers(1, 6)


@st.composite
def _rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Rows of some columns each, one in three with a value that does not fit its column."""
    rows = draw(st.lists(st.fixed_dictionaries({"id": _IDS}, optional=_KINDS), max_size=6))
    for row in rows:
        if draw(st.integers(0, 2)) == 0:
            row[draw(st.sampled_from(sorted(_KINDS)))] = draw(_MISFITS)
    return rows


_ROWS = _rows()


def _record(number: int, data: dict[str, Any]) -> ConnectorRecord:
    return ConnectorRecord(data=data, id=f"e{number}", source="/values", type="t")


async def _put(sink: PostgresSink, datas: list[dict[str, Any]]) -> dict[str, str] | None:
    """The reasons of the rejections by event id; None: PostgreSQL refused the batch."""
    try:
        return {r.record.id or "": r.reason for r in await sink.put([_record(n, data) for n, data in enumerate(datas)])}
    except DataError:
        return None


def _verdicts(sink: PostgresSink, rows: list[dict[str, Any]]) -> dict[str, str]:
    """What the column rules say, one by one as ever (the sink's own rules, read from the catalog)."""
    reasons = {}
    for number, row in enumerate(rows):
        try:
            for rule in sink._rules:
                rule.check(row.get(rule.column))
        except DataError as exc:
            reasons[f"e{number}"] = exc.reason
    return reasons


async def _stored(connection: asyncpg.Connection, table: str) -> list[str]:
    return [row[0] for row in await connection.fetch(f"SELECT (x.*)::text FROM {table} x ORDER BY id")]


async def _compare(dsn: str, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]) -> None:
    suffix = uuid.uuid4().hex[:8]
    whole, partial = f"whole_{suffix}", f"partial_{suffix}"
    connection = await asyncpg.connect(dsn)
    await connection.execute(f"CREATE TABLE {whole} {_COLUMNS}; CREATE TABLE {partial} {_COLUMNS}")
    mapped = PostgresSink(PostgresSinkConfig.model_validate({"dsn": dsn, "mode": "mapped", "table": whole, "key": ["id"]}))
    cdc = PostgresSink(PostgresSinkConfig.model_validate({"dsn": dsn, "mode": "cdc", "table": partial, "key": ["id"]}))
    await mapped.start(SinkContext("values"))
    await cdc.start(SinkContext("values"))
    try:
        # Whole rows, then changes of some columns: cdc gets only those, mapped the row merged as cdc must
        # merge it. A batch each, so that a refusal by PostgreSQL (a NUL in text) takes one row alone.
        stored: dict[int, dict[str, Any]] = {}
        applied: list[dict[str, Any]] = []  # the changes written one by one
        for op, row in [*(("c", row) for row in inserts), *(("u", row) for row in updates)]:
            whole_row = {**stored.get(row["id"], {}), **row}
            verdict = _verdicts(mapped, [row])
            from_cdc = await _put(cdc, [{"op": op, "before": None, "after": row}])
            from_mapped = await _put(mapped, [whole_row])
            assert from_cdc == from_mapped
            assert from_cdc == verdict or (from_cdc is None and not verdict)  # refused by the rules, or by PostgreSQL
            if from_cdc == {}:
                stored[row["id"]] = whole_row
                applied += [row] if op == "u" else []
        assert await _stored(connection, whole) == await _stored(connection, partial)
        # The changes written again as one cdc batch: merged per row, a statement per set of fields. (A change
        # PostgreSQL refuses alone may pass merged under a later one of its row: only those written go again.)
        assert await _put(cdc, [{"op": "u", "before": None, "after": row} for row in applied]) == {}
        assert await _stored(connection, whole) == await _stored(connection, partial)
    finally:
        await mapped.stop()
        await cdc.stop()
        await connection.execute(f"DROP TABLE {whole}; DROP TABLE {partial}")
        await connection.close()


@settings(max_examples=40, deadline=None)
@given(inserts=_ROWS, updates=_ROWS)
def test_mapped_and_cdc_store_every_value_kind_alike(
    postgres_server: PostgresServer, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> None:
    asyncio.run(_compare(postgres_server.dsn, inserts, updates))


def test_decimal_numerals_keep_every_digit(postgres_server: PostgresServer) -> None:
    numerals = ["-12.50", "0.000001", "123456789012345678901234567890.123456789"]

    async def store() -> list[Decimal]:
        connection = await asyncpg.connect(postgres_server.dsn)
        table = f"n_{uuid.uuid4().hex[:8]}"
        await connection.execute(f"CREATE TABLE {table} {_COLUMNS}")
        config = {"dsn": postgres_server.dsn, "mode": "cdc", "table": table, "key": ["id"]}
        sink = PostgresSink(PostgresSinkConfig.model_validate(config))
        await sink.start(SinkContext("values"))
        try:
            changes = [{"op": "c", "before": None, "after": {"id": n, "n": text}} for n, text in enumerate(numerals)]
            assert await _put(sink, changes) == {}
            return [row[0] for row in await connection.fetch(f"SELECT n FROM {table} ORDER BY id")]
        finally:
            await sink.stop()
            await connection.close()

    assert asyncio.run(store()) == [Decimal(text) for text in numerals]
