"""Whether a JSON value fits a SQL column: the one rule set of the sinks that map event fields to columns.

A sink maps each column's database type to a :class:`ColumnKind` once per table schema (a
:class:`ColumnRule`; :meth:`ColumnRule.integer` for an integer column of some width,
:meth:`ColumnRule.real` for a single-precision one). A row's values are then looked at in one
pass: a value whose type is in :attr:`ColumnRule.fitting` fits, once a number for a
:attr:`~ColumnRule.ranged` column is compared with its bounds; :meth:`ColumnRule.check` says why
any other value does not. ``null`` fits every column (NOT NULL is the database's to enforce). The
kinds:

==========  ==============================================  ==============================================
kind        takes                                           for example
==========  ==============================================  ==============================================
INTEGER     JSON integers within the column's range         INT, BIGINT UNSIGNED, YEAR, BIT(8), int4
FLAG        booleans and integers in range (a 0/1 column)   MySQL BOOLEAN = TINYINT(1), BIT(1)
BOOLEAN     booleans                                        PostgreSQL boolean
DECIMAL     numbers, and strings that are decimal numerals  DECIMAL, NUMERIC
REAL        numbers a single-precision float holds          MySQL FLOAT, PostgreSQL real (float4)
FLOAT       numbers                                         DOUBLE, float8
TEXT        anything; a non-string is kept as its JSON text VARCHAR, TEXT, JSON, jsonb
STRING      strings, which the database parses               dates and times, ENUM, SET, binary, uuid
STRUCTURED  objects, arrays and strings                     PostgreSQL arrays and composite types
==========  ==============================================  ==============================================

So a boolean is never a number (``true`` would be ``1``), a string is never a number (``"12"``),
except a decimal numeral (``"-12.50"``: sign, digits, optional fraction; no exponent, no spaces)
for an exact DECIMAL column, a number is text only in a text column, a float (``3.0`` too) never
goes into an integer column, and an object or array only into a text, JSON or structured column.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from runtime.errors import DataError

__all__ = ["ColumnKind", "ColumnRule", "value_kind"]


class ColumnKind(enum.Enum):
    INTEGER = "integer"
    FLAG = "flag"
    BOOLEAN = "boolean"
    DECIMAL = "decimal"
    REAL = "real"
    FLOAT = "float"
    TEXT = "text"
    STRING = "string"
    STRUCTURED = "structured"


_NONE = type(None)
_TAKES: dict[ColumnKind, frozenset[type]] = {
    ColumnKind.INTEGER: frozenset({int, _NONE}),
    ColumnKind.FLAG: frozenset({int, bool, _NONE}),
    ColumnKind.BOOLEAN: frozenset({bool, _NONE}),
    ColumnKind.DECIMAL: frozenset({int, float, str, _NONE}),
    ColumnKind.REAL: frozenset({int, float, _NONE}),
    ColumnKind.FLOAT: frozenset({int, float, _NONE}),
    ColumnKind.TEXT: frozenset({str, int, float, bool, dict, list, _NONE}),
    ColumnKind.STRING: frozenset({str, _NONE}),
    ColumnKind.STRUCTURED: frozenset({dict, list, str, _NONE}),
}
_RANGED = frozenset({ColumnKind.INTEGER, ColumnKind.FLAG, ColumnKind.REAL})
# The least magnitude a double rounds to infinity as a single-precision float (FLT_MAX and half a unit in its last
# place): PostgreSQL's real refuses from there. MariaDB's FLOAT refuses from FLT_MAX on, and PostgreSQL a tiny number
# that rounds to zero (MariaDB stores 0): those narrow bands are the database's to refuse, as a constraint is.
_REAL_OVERFLOW = 2**128 - 2**103
_TAKES_IN_WORDS = {
    ColumnKind.FLAG: "booleans and integers from {low} to {high}",
    ColumnKind.INTEGER: "integers from {low} to {high}",
    ColumnKind.BOOLEAN: "booleans",
    ColumnKind.DECIMAL: 'numbers, and decimal numerals as strings such as "-12.50"',
    ColumnKind.REAL: "numbers of magnitude below 3.4e38 (single precision)",
    ColumnKind.FLOAT: "numbers",
    ColumnKind.TEXT: "any value",
    ColumnKind.STRING: "strings",
    ColumnKind.STRUCTURED: "objects, arrays and strings",
}
_VALUE_KINDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a floating-point number",
    str: "a string",
    dict: "an object",
    list: "an array",
    _NONE: "null",
}
_DECIMAL_NUMERAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def value_kind(value: Any) -> str:
    """What a JSON value is, in words (never the value itself: it may be large or private)."""
    return _VALUE_KINDS.get(type(value)) or f"a {type(value).__name__}"


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """Which JSON values field ``field`` may bind to ``column`` (of database type ``sql_type``).

    ``low`` and ``high`` bound INTEGER, FLAG and REAL columns. Made once per column of a table schema.
    """

    field: str
    column: str
    sql_type: str
    kind: ColumnKind
    low: int = 0
    high: int = 0
    ranged: bool = dataclasses.field(init=False, repr=False, compare=False)
    """Whether a number fits only from ``low`` to ``high``: INTEGER, FLAG and REAL columns."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranged", self.kind in _RANGED)  # a slot, not a property: read for each value of a row

    @classmethod
    def integer(
        cls, field: str, column: str, sql_type: str, bits: int, *, signed: bool = True, kind: ColumnKind = ColumnKind.INTEGER
    ) -> ColumnRule:
        """The rule of a ``bits``-wide integer column (``kind`` FLAG: a 0/1 column such as MySQL's TINYINT(1))."""
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return cls(field, column, sql_type, kind, low, high)

    @classmethod
    def real(cls, field: str, column: str, sql_type: str) -> ColumnRule:
        """The rule of a single-precision float column: a number beyond its range would be refused by the database."""
        return cls(field, column, sql_type, ColumnKind.REAL, 1 - _REAL_OVERFLOW, _REAL_OVERFLOW - 1)

    @property
    def fitting(self) -> frozenset[type]:
        """The value types that fit by their type alone, once a number (not null) for a :attr:`ranged` column is
        compared with the bounds; :meth:`check` judges every other value (a DECIMAL column's strings must be numerals)."""
        takes = _TAKES[self.kind]
        return takes - {str} if self.kind is ColumnKind.DECIMAL else takes

    def check(self, value: Any) -> None:
        """Raise :class:`DataError` naming the field, the column, its type and what the value is, if it does not fit."""
        value_type = type(value)
        if value_type not in _TAKES[self.kind]:
            self._refuse(value_kind(value))
        if self.ranged and value_type is not bool and value is not None and not self.low <= value <= self.high:
            self._refuse(f"{value_kind(value)} out of range")  # NaN and infinities too: no comparison holds for them
        if value_type is str and self.kind is ColumnKind.DECIMAL and _DECIMAL_NUMERAL.fullmatch(value) is None:
            self._refuse("a string that is not a decimal numeral")

    def _refuse(self, what: str) -> None:
        takes = _TAKES_IN_WORDS[self.kind].format(low=self.low, high=self.high)
        raise DataError(
            f"field {self.field!r} holds {what}, which does not fit column {self.column} ({self.sql_type}): it takes {takes}"
            " (fix the event, or the column's type)"
        )
