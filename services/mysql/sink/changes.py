"""Row changes: what a record asks of one row, its values checked against the table and made bindable.

A :class:`Shape` is worked out once per table and set of field names (which column each value
goes to, what it must be to fit); :meth:`Shape.change` then turns a row's values into a
:class:`Change` with one cheap pass in the common case.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NoReturn

import orjson

from runtime import ColumnKind, ColumnRule, DataError
from services.mysql.sink.schema import column_rule
from services.mysql.sql import TableSchema

__all__ = ["Change", "Shape"]

_CONTAINERS = (dict, list)  # bound as JSON text; a tuple, as `dict | list` is built anew on every isinstance
# cdc: JSON values bound as they are (exact types: one set lookup)
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


class Change(NamedTuple):
    """One net row operation: upsert ``row`` (bound values of ``columns``) or delete the row with ``key``.

    cdc: the change is at source ``version``. A named tuple, not a frozen dataclass: one is made per
    event, and a frozen dataclass takes several times as long to build.
    """

    table: str
    op: Literal["upsert", "delete"]
    key_columns: tuple[str, ...]
    key: tuple[Any, ...]
    columns: tuple[str, ...]
    row: tuple[Any, ...]
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """Where the values of one set of field names go in a table: worked out once per column set, used for every row."""

    table: str
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]  # the table's spelling of each field's column, each once
    unchecked: tuple[frozenset[type], ...]  # per column: the value types bound as they are, without a look
    binders: tuple[Callable[[Any], Any], ...]  # per column: any other value, checked and made bindable
    ranges: tuple[tuple[int, int, int, Callable[[Any], None]], ...]  # integer, real columns: position, bounds, refusal
    pick: tuple[int, ...] | None  # the values to keep when two names are one column (the last wins); None: all
    key_at: tuple[int, ...] | None  # positions of the key columns in ``columns``; None: one of them is not there

    @classmethod
    def resolve(
        cls, schema: TableSchema, key_columns: tuple[str, ...], names: tuple[str, ...], fields: Mapping[str, str] | None
    ) -> Shape:
        """``fields`` (column name -> the event field it comes from) checks each value against its column's type;
        None (cdc: rows of a source table) binds values as they come."""
        if not key_columns:
            raise DataError(f"table {schema.table} has no primary key and no key_columns: rows cannot be matched")
        last: dict[str, tuple[int, frozenset[type], Callable[[Any], Any], ColumnRule | None]] = {}
        for index, name in enumerate(names):
            column = schema.column(name)
            if column is None:
                raise DataError(f"column {name!r} does not exist in {schema.database}.{schema.table} (set auto_evolve to add it)")
            temporal = column.data_type in ("datetime", "timestamp")
            if fields is None:
                unchecked = _SCALARS - {str} if temporal else _SCALARS
                last[column.name] = (index, unchecked, functools.partial(_bindable, temporal=temporal), None)
            else:
                rule = column_rule(column, fields.get(name, name))
                last[column.name] = (
                    index,
                    _unchecked_binding(rule, temporal),
                    functools.partial(_bind_checked, rule, temporal),
                    rule,
                )
        columns = tuple(last)
        pick = tuple(index for index, _, _, _ in last.values())
        key_at = tuple(columns.index(c) for c in key_columns) if all(c in last for c in key_columns) else None
        ranges = tuple(
            (position, rule.low, rule.high, rule.check)
            for position, (_, _, _, rule) in enumerate(last.values())
            if rule is not None and rule.ranged
        )
        return cls(
            schema.table,
            key_columns,
            columns,
            tuple(types for _, types, _, _ in last.values()),
            tuple(binder for _, _, binder, _ in last.values()),
            ranges,
            None if len(pick) == len(names) else pick,
            key_at,
        )

    def change(self, op: Literal["upsert", "delete"], values: Sequence[Any], version: str | None = None) -> Change:
        """The change writing ``values`` (one per name, in order) to this shape's columns; a delete binds only the key."""
        if self.pick is not None:
            values = [values[index] for index in self.pick]
        if op == "delete" and self.key_at is not None:
            key = tuple([self._bound(index, values[index]) for index in self.key_at])
            if None in key:
                self._missing_key(dict(zip(self.key_columns, key, strict=True)))
            return Change(self.table, "delete", self.key_columns, key, self.key_columns, key, version)
        if not all(map(frozenset.__contains__, self.unchecked, map(type, values))):  # the common case: one C-level pass
            values = [
                value if type(value) in unchecked else bind(value)
                for value, unchecked, bind in zip(values, self.unchecked, self.binders, strict=True)
            ]
        for index, low, high, refuse in self.ranges:  # numbers pass the type test; their range is looked at here
            value = values[index]
            if value is not None and not low <= value <= high:
                refuse(value)
        row = tuple(values)
        key = () if self.key_at is None else tuple([row[index] for index in self.key_at])
        if self.key_at is None or None in key:
            self._missing_key(dict(zip(self.columns, row, strict=True)))
        return Change(self.table, op, self.key_columns, key, self.columns, row, version)

    def _bound(self, index: int, value: Any) -> Any:
        bound = value if type(value) in self.unchecked[index] else self.binders[index](value)  # a misfit type: refused
        for position, low, high, refuse in self.ranges:
            if position == index and bound is not None and not low <= bound <= high:
                refuse(bound)
        return bound

    def _missing_key(self, present: Mapping[str, Any]) -> NoReturn:
        missing = [c for c in self.key_columns if present.get(c) is None]
        raise DataError(f"key column(s) {', '.join(missing)} missing or null in the event")


def _unchecked_binding(rule: ColumnRule, temporal: bool) -> frozenset[type]:
    """The value types bound to ``rule``'s column as they are: those that always fit and need no conversion."""
    if temporal:
        return frozenset({type(None)})  # strings are ISO date-times to convert
    if rule.kind is ColumnKind.TEXT:
        return frozenset({str, int, type(None)})  # other values become their JSON text
    return rule.fitting  # the shape compares numbers with a ranged column's bounds, without a call


def _bind_checked(rule: ColumnRule, temporal: bool, value: Any) -> Any:
    """``value`` bindable to ``rule``'s column, or DataError: a text column gets a non-string as its JSON text."""
    rule.check(value)
    if rule.kind is ColumnKind.TEXT and not isinstance(value, str) and value is not None:
        return orjson.dumps(value).decode()
    return _bindable(value, temporal)


def _bindable(value: Any, temporal: bool) -> Any:
    """A JSON value as a bound parameter (objects as JSON text, ISO date-times for date columns as UTC)."""
    if isinstance(value, _CONTAINERS):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and temporal and ("T" in value or value.endswith("Z")):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return value  # the server judges it
        return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return value
