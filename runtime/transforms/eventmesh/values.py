"""How Apache EventMesh sees the values of an event: the text of a number, a timestamp, a missing field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NoReturn

import orjson

from runtime.errors import ConfigError, DataError
from runtime.protocol.jackson import java_double_to_string

# Nesting deeper than this in event data is refused rather than walked (Python's own recursion limit
# would otherwise end the process on a hostile event).
_MAX_DEPTH: Final = 256


class Missing:
    """An absent field: EventMesh reads it as a JSON null, ``exists`` tells it apart."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = Missing()


# --------------------------------------------------------------------------- values as EventMesh sees them


def _timestamp_text(value: datetime) -> str:
    """A timestamp as the structured JSON of an event writes it (RFC 3339, UTC as ``Z``)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()[1:-1]


def as_text(value: object, where: str) -> str:
    """Jackson's ``asText`` of a field: the text filter conditions compare."""
    if value is None or value is MISSING:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return _integer_text(value, where)
    if isinstance(value, float):
        return java_double_to_string(value)
    if isinstance(value, datetime):
        return _timestamp_text(value)
    if isinstance(value, Mapping | list | tuple):
        return ""
    raise _not_json(value, where)


def _integer_text(value: int, where: str) -> str:
    try:
        return str(value)
    except ValueError as exc:  # Python refuses to write integers of more than 4300 digits
        raise DataError(f"event field {where} holds an integer too long to write ({exc}); send it as text") from exc


def java_text(value: object, where: str, depth: int = 0) -> str:
    """Java's ``toString`` of what a JSONPath read finds: the text a template inserts."""
    if depth > _MAX_DEPTH:
        raise DataError(f"event field {where} nests deeper than {_MAX_DEPTH} levels; flatten the event data")
    if isinstance(value, Mapping):
        members = (f"{name}={java_text(item, f'{where}.{name}', depth + 1)}" for name, item in value.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(java_text(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)) + "]"
    return as_text(value, where)


def plain_json(value: object, where: str, depth: int = 0) -> object:
    """``value`` with timestamps as text, checked to be JSON all through."""
    if depth > _MAX_DEPTH:
        raise DataError(f"event field {where} nests deeper than {_MAX_DEPTH} levels; flatten the event data")
    if isinstance(value, datetime):
        return _timestamp_text(value)
    if isinstance(value, Mapping):
        plain = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise DataError(f"event field {where} has a key {name!r} that is not text; JSON object keys are text")
            plain[name] = plain_json(item, f"{where}.{name}", depth + 1)
        return plain
    if isinstance(value, list | tuple):
        return [plain_json(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        _integer_text(value, where)
    if value is None or isinstance(value, str | int | float):
        return value
    raise _not_json(value, where)


def _not_json(value: object, where: str) -> DataError:
    return DataError(
        f"event field {where} holds a {type(value).__name__}, which is not a JSON value; "
        "EventMesh rules read events as JSON: have the source produce JSON data"
    )


def checked_event(event: object, what: str) -> Mapping[str, object]:
    if not isinstance(event, Mapping):
        raise DataError(f"{what} got a {type(event).__name__}, not a CloudEvent mapping; pass the structured event")
    return event


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"the key {name!r} appears twice in one object")
        members[name] = value
    return members


def parse_json(text: str, key: str, what: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_unique_members, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            key,
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            f"write {what} as one JSON object",
        ) from exc
    except ValueError as exc:
        raise ConfigError(key, f"{what} is not valid JSON: {exc}", f"write {what} as one JSON object") from exc


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def describe(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
