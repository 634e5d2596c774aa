"""CEL (https://cel.dev) expressions over an event, compiled once by ``common-expression-language`` (cel-rust).

The variables are the event's context attributes (``id``, ``source``, ``type``, ``specversion``,
``subject``, ``time``, ``datacontenttype``, ``dataschema``; an unset one is ``null``), ``data`` and
``extensions`` (a map: ``extensions.tenant``, ``has(extensions.tenant)``). Compiling refuses a
syntax error, a variable that is none of these and a function CEL's standard library does not have
(:class:`~runtime.errors.ConfigError`, with a caret under the place). Evaluating hands the program
only the variables it reads, so an expression over attributes never converts the data. This module
is the one seam where the library's exceptions become meshconnect's.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import cel

from runtime.errors import ConfigError, DataError
from runtime.record import ConnectorRecord
from runtime.transforms.view import ATTRIBUTES, EventView

__all__ = ["VARIABLES", "CelProgram"]

VARIABLES = (*ATTRIBUTES, "data", "extensions")
_HOW = "see the README's transforms section for the language (https://cel.dev) and the event's fields"
# The functions and methods of CEL's standard library that cel-rust implements; operators are named `_x_`, `@x`, `!_`.
_FUNCTIONS = frozenset(
    {
        "size", "matches", "contains", "startsWith", "endsWith", "int", "uint", "double", "string", "bytes",
        "timestamp", "duration", "dyn", "type", "of", "none", "getDate", "getDayOfMonth", "getDayOfWeek",
        "getDayOfYear", "getFullYear", "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds",
    }
)  # fmt: skip
# The variables whose values repeat from event to event (not id, time or data), and how many results are kept.
_MEMO_VARIABLES = frozenset({"source", "type", "specversion", "subject", "datacontenttype", "dataschema", "extensions"})
_MEMO_SIZE = 4096
_ABSENT: Any = object()
# Comprehension macros bind a variable of their own: list.exists(x, x > 1).
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class CelProgram:
    """One compiled expression; calling it on a record evaluates it (DataError when it fails on that record)."""

    __slots__ = ("_getters", "_memo", "_program", "expression")

    def __init__(self, expression: str, *, key: str, view: EventView) -> None:
        self.expression = expression
        try:
            self._program = cel.compile(expression)
        except ValueError as exc:
            raise ConfigError(key, f"CEL syntax error in {expression!r}:\n{_indented(str(exc))}", _HOW) from None
        bound = set(_BOUND.findall(expression))
        names = [name for name in self._program.variables() if name not in bound]
        for name in names:
            if name not in VARIABLES:
                close = difflib.get_close_matches(name, VARIABLES, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    key,
                    f"{expression!r} reads {name!r}, which is not a field of an event:\n{_pointer(expression, name)}",
                    f"{hint}read one of {', '.join(VARIABLES)}; an extension is extensions.<name>",
                )
        for function in self._program.functions():
            if function[0].isalpha() and function not in _FUNCTIONS:
                raise ConfigError(
                    key,
                    f"{expression!r} calls {function!r}, which CEL's standard library does not have:\n"
                    f"{_pointer(expression, function)}",
                    f"use one of {', '.join(sorted(_FUNCTIONS))}",
                )
        self._getters = tuple((name, view.getter(name)) for name in names)
        # An expression over a few attributes (a type, a tenant) is a function of their values alone, and events
        # share a handful of them: its results are kept per values (not the errors), up to _MEMO_SIZE of them.
        self._memo: dict[Any, Any] | None = {} if set(names) <= _MEMO_VARIABLES else None

    def __call__(self, record: ConnectorRecord) -> Any:
        activation = {name: read(record) for name, read in self._getters}
        memo = self._memo
        if memo is None:
            return self._execute(activation)
        key = tuple(_memo_key(value) for value in activation.values())
        result = memo.get(key, _ABSENT)
        if result is _ABSENT:
            result = self._execute(activation)
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[key] = result
        return result

    def _execute(self, activation: dict[str, Any]) -> Any:
        try:
            return self._program.execute(activation)
        except KeyError as exc:
            raise DataError(f"{self.expression!r}: the event has no {exc.args[0]!r} (test it first with has(...))") from None
        except Exception as exc:  # the library's errors, one type per kind of failure: mapped here, once
            raise DataError(f"{self.expression!r}: {type(exc).__name__}: {exc}") from None


def _memo_key(value: Any) -> Any:
    """``value`` (an attribute, or the extensions) as part of a key; a value's type too, as True == 1 in Python, not in CEL."""
    if isinstance(value, dict):
        return frozenset((name, type(item), item) for name, item in value.items())
    return (type(value), value)


def _pointer(expression: str, name: str) -> str:
    """The expression with a caret under the first whole-word ``name`` in it."""
    found = re.search(rf"\b{re.escape(name)}\b", expression)
    column = found.start() if found else 0
    return _indented(f"{expression}\n{' ' * column}^")


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
