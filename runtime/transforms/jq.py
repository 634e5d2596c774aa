"""jq programs (https://jqlang.org) over event data, compiled once by the ``jq`` package (bindings to C jq).

The program reads the event's data (a JSON value; text is a JSON string) and must produce exactly
one value, the new data. This module is the one seam where jq's exceptions become meshconnect's.
Numbers travel as JSON text: jq keeps an integer beyond 2^53 as written only while the program
does no arithmetic on it.
"""

from __future__ import annotations

from typing import Any

import jq
import orjson

from runtime.errors import ConfigError, DataError

__all__ = ["JqProgram"]

_HOW = "fix the program (the jq manual: https://jqlang.org/manual/)"


class JqProgram:
    """One compiled jq program; calling it on data gives the one value it produces (DataError otherwise)."""

    __slots__ = ("_compiled", "program")

    def __init__(self, program: str, *, key: str) -> None:
        self.program = program
        try:
            self._compiled = jq.compile(program)
        except ValueError as exc:
            raise ConfigError(key, f"jq cannot compile {program!r}: {exc}", _HOW) from None

    def __call__(self, data: Any) -> Any:
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
