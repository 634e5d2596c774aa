"""The change envelope mysql-source publishes and mysql-sink (cdc mode) applies.

::

    {"op": "c|u|d|r", "before": {...} | null, "after": {...} | null, "key": ["id"],
     "binary": ["blob_col"],                       # columns whose values are base64 text
     "source": {"server_id", "file", "pos", "row", "gtid", "ts_ms", "db", "table", "snapshot"}}

    {"ddl": "ALTER TABLE ...", "source": {...}}     # a schema change (type <prefix>.ddl)

``file``/``pos``/``row`` are the change's binlog position (the transaction's boundary and the
change's index in it, counted from 1); snapshot rows and their table's DDL carry the snapshot's
position with ``row`` 0 and ``snapshot: true``. mysql-sink orders changes of one row by them.

Column values are JSON: numbers stay numbers, DECIMAL becomes its exact text, dates and times
their MySQL literal text (``2024-05-01 10:00:00.000001``), sets a comma list, and bytes that are
not UTF-8 base64 (the column is named in ``binary``).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["OPS", "decode_row", "encode_row", "json_value"]

OPS = frozenset({"c", "u", "d", "r"})
_JSON_AS_IS = frozenset({type(None), bool, int, float, str})


def json_value(value: Any) -> tuple[Any, bool]:
    """A JSON-able form of a column value, and whether it had to be base64-encoded."""
    if value is None or isinstance(value, bool | int | float | str):
        return value, False
    if isinstance(value, Decimal):
        return str(value), False
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" "), False
    if isinstance(value, dt.date):
        return value.isoformat(), False
    if isinstance(value, dt.timedelta):
        seconds = int(value.total_seconds())
        sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
        micros = abs(value.microseconds) if seconds == 0 or value >= dt.timedelta(0) else 0
        text = f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        return (f"{text}.{micros:06d}" if micros else text), False
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8"), False
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii"), True
    if isinstance(value, set | frozenset):
        return ",".join(sorted(str(item) for item in value)), False
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=_json_default).decode(), False
    return str(value), False


def _json_default(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def encode_row(row: Mapping[str, Any] | None, binary: set[str]) -> dict[str, Any] | None:
    """A row image as JSON; names of base64-encoded columns are added to ``binary``."""
    if row is None:
        return None
    encoded = dict(row)
    for name, value in row.items():
        # Once per column of every change: most values are JSON as they are (json_value returns them unchanged),
        # a set lookup of their exact type rather than a call.
        if type(value) not in _JSON_AS_IS:
            encoded[name], was_binary = json_value(value)
            if was_binary:
                binary.add(name)
    return encoded


def decode_row(row: Mapping[str, Any], binary: Iterable[str]) -> dict[str, Any]:
    """The row with base64 columns turned back into bytes, ready to bind."""
    decoded = dict(row)
    for name in binary:
        if isinstance(decoded.get(name), str):
            decoded[name] = base64.b64decode(decoded[name])
    return decoded
