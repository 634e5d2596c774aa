"""SQL literals for values, as the driver (aiomysql over PyMySQL) would bind them, a few times faster.

PyMySQL's binding runs ``str.translate`` over every string and dispatches each value through a
Python mapping; on a multi-row upsert that is half the sink's CPU. Here a string is checked with
C-level ``in`` scans and only the characters it holds are replaced, and the common types are
dispatched on their exact type. What comes out is the driver's text for every value except bytes,
which become hex literals (``X'00ff'``): the same binary string, and correct under
``NO_BACKSLASH_ESCAPES`` too, where aiomysql's own ``_binary'...'`` escaping is not.
Types not handled here (timedelta, struct_time, sequences ...) go to the driver's own encoders.

Escaping depends on the session, exactly as in the driver: ``NO_BACKSLASH_ESCAPES`` (which the
server reports in every reply's status flags) turns backslash escapes into quote doubling, so the
builder is chosen per statement by :func:`literals_for`. Backslash escaping is safe only in a
character set where no multi-byte character contains the byte of ``\\`` or ``'``: the connection
must speak UTF-8 (:func:`check_session` refuses anything else at start).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal
from math import isfinite
from typing import Any

from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_item

from runtime import ConfigError, DataError

__all__ = ["BACKSLASH_ESCAPES", "QUOTE_DOUBLING", "Literals", "check_session", "literals_for"]

# Connection character sets in which backslash escaping cannot be undone by a multi-byte character.
_SAFE_CHARSETS = frozenset({"utf8mb4", "utf8mb3", "utf8"})


def _quoted_with_backslashes(value: str) -> str:
    # PyMySQL's escapes (converters._escape_table), as C-level scans and replaces of only the characters
    # present: JSON text always holds '"', and str.translate with a multi-character table is slower than
    # the driver's own. The backslash goes first, so the backslashes added after are not doubled.
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "'" in value:
        value = value.replace("'", "\\'")
    if '"' in value:
        value = value.replace('"', '\\"')
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    if "\x00" in value:
        value = value.replace("\x00", "\\0")
    if "\x1a" in value:
        value = value.replace("\x1a", "\\Z")
    return "'" + value + "'"


def _quoted_with_doubling(value: str) -> str:
    if "'" in value:
        return "'" + value.replace("'", "''") + "'"
    return "'" + value + "'"


def _bytes(value: bytes | bytearray) -> str:
    return "X'" + value.hex() + "'"


def _float(value: float) -> str:
    if not isfinite(value):
        raise DataError(f"the number {value!r} cannot be stored in MySQL (not finite)")
    text = repr(value)
    return text if "e" in text else text + "e0"


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise DataError(f"the decimal {value} cannot be stored in MySQL (not finite)")
    return format(value, "f")


def _datetime(value: dt.datetime) -> str:
    # The driver writes the wall-clock fields and drops any tzinfo; so does this.
    return "'" + (value if value.tzinfo is None else value.replace(tzinfo=None)).isoformat(" ") + "'"


def _time(value: dt.time) -> str:
    return "'" + (value if value.tzinfo is None else value.replace(tzinfo=None)).isoformat() + "'"


def _date(value: dt.date) -> str:
    return "'" + value.isoformat() + "'"


class Literals:
    """SQL literals for one escaping rule: :meth:`row` is ``(v1,v2,...)`` for a VALUES list."""

    def __init__(self, quote_string: Callable[[str], str]) -> None:
        self._quote_string = quote_string
        self._by_type: dict[type, Callable[[Any], str]] = {
            str: quote_string,
            int: str,
            bool: lambda value: "1" if value else "0",
            type(None): lambda _value: "NULL",
            float: _float,
            Decimal: _decimal,
            bytes: _bytes,
            bytearray: _bytes,
            dt.datetime: _datetime,
            dt.date: _date,
            dt.time: _time,
        }

    def literal(self, value: Any) -> str:
        """``value`` as SQL text; DataError for a float or Decimal that is not finite."""
        build = self._by_type.get(type(value))
        if build is not None:
            return build(value)
        # Subclasses and rarer types: the driver's own order (str and bytes first, then its encoders).
        if isinstance(value, str):
            return self._quote_string(value)
        if isinstance(value, bytes | bytearray):
            return _bytes(value)
        return str(escape_item(value, "utf8mb4"))

    def row(self, values: Iterable[Any]) -> str:
        """``(v1,v2,...)``: the literals of ``values`` for a VALUES list."""
        by_type = self._by_type
        literal = self.literal
        return "(" + ",".join([(by_type.get(type(value)) or literal)(value) for value in values]) + ")"


BACKSLASH_ESCAPES = Literals(_quoted_with_backslashes)
QUOTE_DOUBLING = Literals(_quoted_with_doubling)


def literals_for(connection: Any) -> Literals:
    """The builder for ``connection``'s current sql_mode, read from its last reply as the driver does."""
    if connection.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return QUOTE_DOUBLING
    return BACKSLASH_ESCAPES


async def check_session(cursor: Any, what: str) -> str:
    """The session's sql_mode, after checking its character set is one the builder escapes safely.

    Every sql_mode is supported: ``NO_BACKSLASH_ESCAPES`` is followed per statement, ``ANSI_QUOTES``
    does not touch single-quoted literals or backquoted identifiers.
    """
    await cursor.execute("SELECT @@SESSION.sql_mode, @@SESSION.character_set_client, @@SESSION.character_set_connection")
    sql_mode, client_charset, connection_charset = await cursor.fetchone()
    for charset in (client_charset, connection_charset, cursor.connection.charset):
        if str(charset).lower() not in _SAFE_CHARSETS:
            raise ConfigError(
                what,
                f"the MySQL session speaks character set {charset}, in which values cannot be escaped safely",
                "connect with utf8mb4 (the default); check init_connect and character_set_* settings on the server",
            )
    return str(sql_mode)
