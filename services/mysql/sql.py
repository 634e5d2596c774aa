"""SQL text for MySQL/MariaDB: plain identifiers, quoting, and the live schema of a table.

Event data never becomes SQL text: values are bound, and every identifier that goes into a
statement passes :func:`check_identifier` first (:func:`quote` does it for each part).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime import DataError

__all__ = ["Column", "TableSchema", "check_identifier", "load_table", "quote"]

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


def check_identifier(name: str, what: str = "identifier") -> str:
    """``name`` if it is a plain MySQL identifier (letters, digits, ``_``, ``$``; 1-64 chars)."""
    if not _IDENTIFIER.match(name):
        raise DataError(f"{what} {name!r} is not a plain identifier (letters, digits, _ or $, at most 64 characters)")
    return name


def quote(*names: str) -> str:
    """Backquote a (possibly qualified) identifier after checking each part."""
    return ".".join(f"`{check_identifier(name)}`" for name in names)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    data_type: str
    column_type: str
    nullable: bool
    has_default: bool


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A table as the server describes it now: ordered columns and primary key."""

    database: str
    table: str
    columns: Mapping[str, Column]
    primary_key: tuple[str, ...]

    def column(self, name: str) -> Column | None:
        return self.columns.get(name) or self.columns.get(name.lower())


async def load_table(cursor: Any, database: str, table: str) -> TableSchema | None:
    """Read ``database.table`` from information_schema; ``None`` when it does not exist."""
    await cursor.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, COLUMN_KEY, EXTRA"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    rows = await cursor.fetchall()
    if not rows:
        return None
    columns = {
        name: Column(
            name,
            str(data_type).lower(),
            str(column_type).lower(),
            nullable == "YES",
            default is not None or nullable == "YES" or "auto_increment" in str(extra),
        )
        for name, data_type, column_type, nullable, default, _key, extra in rows
    }
    await cursor.execute(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    primary_key = tuple(row[0] for row in await cursor.fetchall())
    return TableSchema(database, table, columns, primary_key)
