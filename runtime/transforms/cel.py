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
# Comprehension macros bind a variable of their own: list.exists(x, x > 1).
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class CelProgram:
    """One compiled expression; calling it on a record evaluates it (DataError when it fails on that record)."""

    __slots__ = ("_getters", "_program", "expression")

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

    def __call__(self, record: ConnectorRecord) -> Any:
        activation = {name: read(record) for name, read in self._getters}
        try:
            return self._program.execute(activation)
        except KeyError as exc:
            raise DataError(f"{self.expression!r}: the event has no {exc.args[0]!r} (test it first with has(...))") from None
        except Exception as exc:  # the library's errors, one type per kind of failure: mapped here, once
            raise DataError(f"{self.expression!r}: {type(exc).__name__}: {exc}") from None


def _pointer(expression: str, name: str) -> str:
    """The expression with a caret under the first whole-word ``name`` in it."""
    found = re.search(rf"\b{re.escape(name)}\b", expression)
    column = found.start() if found else 0
    return _indented(f"{expression}\n{' ' * column}^")


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
