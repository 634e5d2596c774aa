"""jq programs (https://jqlang.org) over event data, compiled once by the ``jq`` package (bindings to C jq).

The program reads the event's data (a JSON value; text is a JSON string) and must produce exactly
one value, the new data. This module is the one seam where jq's exceptions become meshconnect's.
jq holds numbers as doubles: an integer beyond 2^53 comes out rounded, an integral number as an
integer (``1.0`` becomes ``1``).

The data crosses into jq as JSON text and its result back as Python values, which costs several
microseconds per KiB. A program that only selects and assembles (``.``, ``.a.b``, or an object such
as ``{id, total: .after.total, kind: "order"}`` whose values are such paths or literals) is run in
Python on the data as it is, with jq's result: a missing field is null, an integral number an
integer; integers stay exact (jq would round those beyond 2^53). Data such a program cannot read
(a field of a number, a value that is not JSON, nesting deeper than 256) goes to jq, for its result
or its error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Final

import jq
import orjson

from runtime.errors import ConfigError, DataError

__all__ = ["JqProgram"]

_HOW = "fix the program (the jq manual: https://jqlang.org/manual/)"


class JqProgram:
    """One compiled jq program; calling it on data gives the one value it produces (DataError otherwise)."""

    __slots__ = ("_compiled", "_direct", "program")

    def __init__(self, program: str, *, key: str, direct: bool = True) -> None:
        """``direct``: run a program that only selects and assembles in Python (see the module docstring)."""
        self.program = program
        try:
            self._compiled = jq.compile(program)
        except ValueError as exc:
            raise ConfigError(key, f"jq cannot compile {program!r}: {exc}", _HOW) from None
        self._direct = _direct_program(program) if direct else None

    def __call__(self, data: Any) -> Any:
        if self._direct is not None:
            try:
                return self._direct(data)
            except _NotDirect:
                pass
        return self._through_jq(data)

    def _through_jq(self, data: Any) -> Any:
        try:
            text = orjson.dumps(data).decode()
        except TypeError as exc:
            raise DataError(f"jq {self.program!r}: the data is not JSON: {exc}") from None
        try:
            outputs = self._compiled.input_text(text).all()
        except ValueError as exc:
            raise DataError(f"jq {self.program!r}: {exc}") from None
        if len(outputs) != 1:
            raise DataError(
                f"jq {self.program!r} produced {len(outputs)} values; a map produces exactly one (collect several with [...])"
            )
        return outputs[0]


class _NotDirect(Exception):
    """Data a direct program leaves to jq."""


Direct = Callable[[Any], Any]

_TOKEN: Final = re.compile(
    r"\s*(?:(?P<path>\.(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r'|(?P<text>"[^"\\]*")|(?P<number>-?(?:0|[1-9][0-9]{0,14}))|(?P<mark>[{}:,]))'
)
# Words jq reads as keywords or constants, left to jq wherever they appear.
_KEYWORDS: Final = frozenset(
    {"true", "false", "null", "if", "then", "elif", "else", "end", "as", "def", "reduce", "foreach", "try", "catch"}
    | {"label", "import", "include", "and", "or", "not", "__loc__"}
)
_MAX_DEPTH: Final = 256
_PLAIN: Final = (str, int, bool, type(None))


def _direct_program(program: str) -> Direct | None:
    """The program as a Python function when it only selects and assembles; None for any other program."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(program.rstrip()):
        match = _TOKEN.match(program, position)
        if match is None or match.lastgroup is None:
            return None
        tokens.append((match.lastgroup, match[match.lastgroup]))
        position = match.end()
    if len(tokens) == 1 and tokens[0][0] == "path":
        return _path(tokens[0][1])
    if len(tokens) < 2 or tokens[0] != ("mark", "{") or tokens[-1] != ("mark", "}"):
        return None
    return _object(tokens[1:-1])


def _path(text: str) -> Direct | None:
    names = tuple(name for name in text.split(".") if name)
    if any(name in _KEYWORDS for name in names):
        return None

    def select(data: Any) -> Any:
        for name in names:
            if type(data) is dict:
                data = data.get(name)
            elif data is not None:
                raise _NotDirect
        return _as_jq_gives(data, 0)

    return select


def _object(tokens: list[tuple[str, str]]) -> Direct | None:
    members: list[tuple[str, Direct]] = []
    entries: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("mark", ","):
            entries.append([])
        else:
            entries[-1].append(token)
    for entry in entries:
        if len(entry) == 1 and entry[0][0] == "name" and entry[0][1] not in _KEYWORDS:
            key, value = entry[0][1], _path(f".{entry[0][1]}")
        elif len(entry) == 3 and entry[1] == ("mark", ":") and entry[0][0] in ("name", "text"):
            kind, written = entry[0]
            if kind == "name" and written in _KEYWORDS:
                return None
            key, value = (written if kind == "name" else written[1:-1]), _value(*entry[2])
        else:
            return None
        if value is None:
            return None
        members.append((key, value))

    def assemble(data: Any) -> Any:
        return {key: value(data) for key, value in members}

    return assemble


def _value(kind: str, written: str) -> Direct | None:
    if kind == "path":
        return _path(written)
    if kind in {"text", "number"} or written in {"true", "false", "null"}:
        constant = orjson.loads(written)
        return lambda _data: constant
    return None


def _as_jq_gives(value: Any, depth: int) -> Any:
    """``value`` as jq's result holds it: integral numbers as integers; _NotDirect for what jq must see."""
    kind = type(value)
    if kind in _PLAIN:
        if kind is str and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate: not JSON text
                raise _NotDirect from None
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _NotDirect
        return int(value) if value.is_integer() else value
    if depth >= _MAX_DEPTH:
        raise _NotDirect
    if kind is dict:
        for name, item in value.items():
            if type(name) is not str:
                raise _NotDirect
            if type(item) not in _PLAIN or (type(item) is str and not item.isascii()):
                return {_text_key(name): _as_jq_gives(item, depth + 1) for name, item in value.items()}
        return value
    if kind is list:
        return [_as_jq_gives(item, depth + 1) for item in value]
    raise _NotDirect


def _text_key(name: Any) -> str:
    if type(name) is not str:
        raise _NotDirect
    return name
