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
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import cel

from runtime.errors import ConfigError, DataError
from runtime.record import ConnectorRecord
from runtime.transforms.view import ATTRIBUTES, EventView

__all__ = ["VARIABLES", "CelProgram"]

Getter = Callable[[ConnectorRecord], Any]

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
# A member the expression selects of the extensions, and every mention of them: a key needs only the members
# when all mentions select one (a word before "(" is a method or macro over the whole map, not a member).
_EXTENSION_MEMBER = re.compile(r"\bextensions\s*\.\s*([A-Za-z_]\w*)\b(?!\s*\()")
_EXTENSIONS = re.compile(r"\bextensions\b")
# Comprehension macros bind a variable of their own: list.exists(x, x > 1).
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class CelProgram:
    """One compiled expression; calling it on a record evaluates it (DataError when it fails on that record)."""

    __slots__ = ("_getters", "_key_parts", "_memo", "_program", "expression")

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
        self._key_parts = tuple(_key_parts(expression, self._getters))

    def __call__(self, record: ConnectorRecord) -> Any:
        memo = self._memo
        if memo is None:
            return self._execute({name: read(record) for name, read in self._getters})
        # The key is built from the values alone; the activation only when the program has to run.
        parts = [read(record) for read in self._key_parts]
        key = tuple([part if type(part) is str else _memo_key(part) for part in parts])
        result = memo.get(key, _ABSENT)
        if result is _ABSENT:
            result = self._execute({name: read(record) for name, read in self._getters})
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


def _key_parts(expression: str, getters: tuple[tuple[str, Getter], ...]) -> Iterator[Getter]:
    """What a result is kept by: the value of each variable the expression reads; of the extensions, only the
    members it selects (``extensions.tenant``) when it reads them in no other way."""
    members = _EXTENSION_MEMBER.findall(expression)
    for name, read in getters:
        if name == "extensions" and members and len(members) == len(_EXTENSIONS.findall(expression)):
            for member in dict.fromkeys(members):
                yield functools.partial(_extension, member)
        else:
            yield read


def _extension(name: str, record: ConnectorRecord) -> Any:
    return record.extensions.get(name, _ABSENT)


def _memo_key(value: Any) -> Any:
    """``value`` (an attribute other than text, or the extensions) as part of a key, with its type, as True == 1 in
    Python, not in CEL; text stands for itself in the key (no other part of a key is a str)."""
    if isinstance(value, dict):
        return (tuple(value), tuple(map(type, value.values())), tuple(value.values()))
    return (type(value), value)


def _pointer(expression: str, name: str) -> str:
    """The expression with a caret under the first whole-word ``name`` in it."""
    found = re.search(rf"\b{re.escape(name)}\b", expression)
    column = found.start() if found else 0
    return _indented(f"{expression}\n{' ' * column}^")


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
