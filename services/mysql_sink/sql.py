"""What every MySQL connector shares: identifier checks, the error seam, and the live schema.

Error codes are the server's (``ER_*``) and the client's (``CR_*``); the split decides what the
worker does: a broken connection or a lock conflict is retried, bad data is isolated and rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymysql

from runtime.errors import ConfigError, DataError, RetriableError

__all__ = [
    "Column",
    "TableSchema",
    "check_identifier",
    "is_data_error",
    "load_table",
    "quote",
    "translate_mysql_errors",
]

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_$]{1,64}$")

# Client-side connection errors, server going away, too many connections, shutdown, killed query.
RETRIABLE_CODES = frozenset({1040, 1053, 1205, 1213, 1927, 2002, 2003, 2005, 2006, 2013, 2014, 2055, 4031})
# The row's values do not fit the table: out of range, bad date, bad string, too long, NULL in NOT NULL,
# unknown column, duplicate on a unique secondary key, foreign key, truncated, no default, bad JSON/CHECK.
# Access denied to the database, the login, a table or column, an operation; unknown database.
REFUSED_CODES = frozenset({1044, 1045, 1049, 1142, 1143, 1227})
DATA_CODES = frozenset({1048, 1054, 1062, 1136, 1216, 1265, 1264, 1292, 1364, 1366, 1406, 1411, 1416, 1451, 1452, 3140, 4025})


def check_identifier(name: str, what: str = "identifier") -> str:
    """``name`` if it is a plain MySQL identifier (letters, digits, ``_``, ``$``; 1-64 chars)."""
    if not _IDENTIFIER.match(name):
        raise DataError(f"{what} {name!r} is not a plain identifier (letters, digits, _ or $, at most 64 characters)")
    return name


def quote(*names: str) -> str:
    """Backquote a (possibly qualified) identifier after checking each part."""
    return ".".join(f"`{check_identifier(name)}`" for name in names)


def error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.MySQLError) and error_code(exc) in DATA_CODES


@contextmanager
def translate_mysql_errors(what: str, *, running: bool = False) -> Iterator[None]:
    """The one seam where aiomysql/pymysql failures become ours.

    Connection trouble, timeouts, deadlocks and lock waits -> :class:`RetriableError`; a row that
    does not fit -> :class:`DataError` (its ``__cause__`` keeps the server error). Access denied
    (a login, a privilege) or an unknown database -> :class:`ConfigError` at start; once ``running``
    (after a start that passed those checks) the same refusal is a revoked grant, a changed password
    or a dropped database for an operator to mend: :class:`RetriableError`, waited out with backoff.
    """
    try:
        yield
    except (RetriableError, DataError, ConfigError):
        raise
    except TimeoutError as exc:
        raise RetriableError(f"{what}: MySQL did not answer in time") from exc
    except pymysql.MySQLError as exc:
        code = error_code(exc)
        message = exc.args[1] if len(exc.args) > 1 else str(exc)  # the server's text: user and host, never a password
        if code in DATA_CODES:
            raise DataError(f"{what}: MySQL error {code}: {message}") from exc
        if code in REFUSED_CODES and running:
            raise RetriableError(
                f"{what}: MySQL refused access ({code}: {message}); retrying until the grant, password or database"
                " is restored (config.user, config.password, config.database)"
            ) from exc
        if code in REFUSED_CODES:
            raise ConfigError(
                "config.user/config.database", f"MySQL refused {what}: {code} {message}", "grant the privilege or fix the name"
            ) from exc
        if code in RETRIABLE_CODES or isinstance(exc, pymysql.OperationalError | pymysql.InterfaceError):
            raise RetriableError(f"{what}: MySQL unavailable ({code}: {message})") from exc
        raise DataError(f"{what}: MySQL error {code}: {message}") from exc
    except (ConnectionError, OSError, RuntimeError) as exc:
        # aiomysql raises RuntimeError/OSError when a connection dies under it.
        raise RetriableError(f"{what}: connection to MySQL lost ({exc})") from exc


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
