"""JSON as the Java runtime's Jackson ``ObjectMapper`` writes and reads it, and Java ``HashMap`` order.

The EventMesh Java codec serializes headers and non-CloudEvents bodies with Jackson (compact, no pretty
printing). To be byte-compatible we reproduce its output rules:

* members in the order given (Java beans write fields in declaration order; maps in iteration order);
* non-ASCII characters as raw UTF-8, except characters outside the Basic Multilingual Plane, which are
  written as a surrogate pair of escapes with upper-case hex (``\\uD83C\\uDF89``);
* ``"`` and ``\\`` escaped; control characters below U+0020 as ``\\b \\t \\n \\f \\r`` or ``\\u00XX``
  (upper-case hex); ``/``, DEL and U+2028 written as they are;
* numbers as Java prints them: integers in decimal, doubles with ``Double.toString`` (``1.0E10``).

orjson produces the same bytes for most strings and is an order of magnitude faster, so it is used
whenever a string holds none of the characters where the two differ.

Reading (``parse`` and the ``as_*`` coercions) follows the EventMesh ``JsonUtils`` defaults: the first
JSON value counts and what follows it is ignored, scalars are coerced to the bean field's type (a number
to a String, a numeric string to an int, an enum by name or ordinal), and what Jackson refuses raises
``JsonInvalid`` saying why.

``java_hashmap_order`` gives the iteration order of a ``java.util.HashMap<String, ?>`` filled with the
given keys, which is the order Java writes header properties and CloudEvent extensions in.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

__all__ = [
    "LONG_DIGITS",
    "JsonBean",
    "JsonInvalid",
    "as_enum",
    "as_int",
    "as_object",
    "as_string",
    "dumps",
    "dumps_str",
    "has_long_digits",
    "java_double_to_string",
    "java_hashmap_order",
    "java_string_hash",
    "orjson_differs",
    "parse",
]


@runtime_checkable
class JsonBean(Protocol):
    """A value that knows its Jackson bean shape: its non-null fields in Java declaration order."""

    def json_fields(self) -> Mapping[str, Any]: ...


# Characters for which orjson's output differs from Jackson's: control characters whose \u00XX escape
# contains a hex letter (orjson writes lower case), surrogates, and characters beyond the BMP.
_ORJSON_DIFFERS_TEXT = re.compile("[\x0b\x0e\x0f\x1a-\x1f\ud800-\udfff\U00010000-\U0010ffff]")
_HEX_LETTER_ESCAPE = re.compile(rb"\\u00(?:0[bef]|1[a-f])")
_FOUR_BYTE_LEAD = re.compile(b"[\xf0-\xf4]")


def orjson_differs(output: bytes) -> bool:
    """Whether orjson's ``output`` may differ from Jackson's: a control character escaped with lower-case hex,
    or a 4-byte UTF-8 sequence (a false positive, a literal backslash before such text, only costs the slow path)."""
    # A one-byte search (memchr) first: most outputs hold no backslash at all.
    if b"\\" in output and b"\\u00" in output and _HEX_LETTER_ESCAPE.search(output) is not None:
        return True
    return not output.isascii() and _FOUR_BYTE_LEAD.search(output) is not None


# Digit runs long enough to hold an integer beyond 64 bits, which orjson would read as a float.
LONG_DIGITS = re.compile(rb"[0-9]{19}")
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_ZEROS = b"0" * 19


def has_long_digits(raw: bytes | bytearray | memoryview) -> bool:
    """Whether ``raw`` holds a run of 19 digits (``LONG_DIGITS``): a translate and a substring search, in C,
    an order of magnitude faster than the regex over a body of some KiB."""
    return _LONG_ZEROS in (raw if type(raw) is bytes else bytes(raw)).translate(_DIGITS_AS_ZERO)


_FLAT_TYPES = frozenset({str, int, bool, type(None)})
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f\ud800-\udfff\U00010000-\U0010ffff]')

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"
    return f"\\u{code:04X}"


def dumps_str(text: str) -> bytes:
    """A JSON string literal (quotes included) as Jackson writes it, UTF-8 encoded."""
    if _ORJSON_DIFFERS_TEXT.search(text) is None:
        return orjson.dumps(text)
    return b'"' + _NEEDS_ESCAPE.sub(_escape_char, text).encode("utf-8") + b'"'


def java_double_to_string(value: float) -> str:
    """``Double.toString``: plain decimal for 1e-3 <= |v| < 1e7, computerized scientific notation otherwise."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digits, exponent = _shortest_digits(abs(value))
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e7:
        point = exponent + 1
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        if point >= len(digits):
            return f"{sign}{digits}{'0' * (point - len(digits))}.0"
        return f"{sign}{digits[:point]}.{digits[point:]}"
    fraction = digits[1:] or "0"
    return f"{sign}{digits[0]}.{fraction}E{exponent}"


def _shortest_digits(magnitude: float) -> tuple[str, int]:
    """The shortest round-tripping significant digits of a positive finite double and its decimal exponent."""
    mantissa, _, exp_text = repr(magnitude).partition("e")
    exponent = int(exp_text) if exp_text else 0
    integer, _, fraction = mantissa.partition(".")
    all_digits = integer + fraction
    exponent += len(integer) - 1
    stripped = all_digits.lstrip("0")
    exponent -= len(all_digits) - len(stripped)
    return stripped.rstrip("0") or "0", exponent


def dumps(value: Any) -> bytes:
    """Serialize ``value`` (JSON values, mappings in their own order, ``JsonBean`` objects) like Jackson."""
    if isinstance(value, Mapping) and all(type(item) in _FLAT_TYPES for item in value.values()):
        # Flat maps (header properties) are the hot case: orjson writes them as Jackson does unless a
        # string holds one of the characters where the two differ.
        try:
            fast = orjson.dumps(value if type(value) is dict else dict(value))
        except TypeError:  # keys that are not strings, integers beyond 64 bits
            pass
        else:
            if not orjson_differs(fast):
                return fast
    parts: list[bytes] = []
    _write(value, parts)
    return b"".join(parts)


def _write(value: Any, parts: list[bytes]) -> None:
    if isinstance(value, str):
        parts.append(dumps_str(value))
    elif value is None:
        parts.append(b"null")
    elif value is True:
        parts.append(b"true")
    elif value is False:
        parts.append(b"false")
    elif isinstance(value, int):
        parts.append(str(int(value)).encode())
    elif isinstance(value, float):
        text = java_double_to_string(value).encode()
        # Jackson writes NaN and the infinities as strings (WRITE_NAN_AS_STRINGS is on by default).
        parts.append(text if math.isfinite(value) else b'"' + text + b'"')
    elif isinstance(value, Mapping):
        _write_members(value, parts)
    elif isinstance(value, list | tuple):
        parts.append(b"[")
        for index, item in enumerate(value):
            if index:
                parts.append(b",")
            _write(item, parts)
        parts.append(b"]")
    elif isinstance(value, JsonBean):
        _write_members(value.json_fields(), parts)
    else:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _write_members(members: Mapping[Any, Any], parts: list[bytes]) -> None:
    parts.append(b"{")
    first = True
    for key, item in members.items():
        if not first:
            parts.append(b",")
        first = False
        parts.append(dumps_str(str(key)))
        parts.append(b":")
        _write(item, parts)
    parts.append(b"}")


def java_string_hash(text: str) -> int:
    """``String.hashCode`` over UTF-16 code units, as a signed 32-bit int."""
    value = 0
    for unit in _utf16_units(text):
        value = (31 * value + unit) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _utf16_units(text: str) -> Iterable[int]:
    for char in text:
        code = ord(char)
        if code > 0xFFFF:
            code -= 0x10000
            yield 0xD800 + (code >> 10)
            yield 0xDC00 + (code & 0x3FF)
        else:
            yield code


def java_hashmap_order(keys: Iterable[str]) -> list[str]:
    """Iteration order of a ``new HashMap<>()`` after putting ``keys`` in this order (duplicates ignored).

    Buckets are ``spread(hashCode) & (capacity - 1)``; capacity starts at 16 and doubles whenever the
    size exceeds 0.75 x capacity; a resize keeps the relative order inside a bucket, so the final order
    is (bucket in the final table, insertion order). Bins of 8+ colliding keys (tree bins) are not modelled.
    """
    return list(_hashmap_order(tuple(dict.fromkeys(keys))))


@functools.lru_cache(maxsize=1024)
def _hashmap_order(unique: tuple[str, ...]) -> tuple[str, ...]:
    capacity = 16
    while len(unique) > capacity * 3 // 4:
        capacity *= 2
    mask = capacity - 1
    return tuple(sorted(unique, key=lambda key: _spread_hash(key) & mask))  # stable: insertion order within a bucket


@functools.lru_cache(maxsize=4096)
def _spread_hash(key: str) -> int:
    hashed = java_string_hash(key) & 0xFFFFFFFF
    return hashed ^ (hashed >> 16)


# ---------------------------------------------------------------------------------------------------------
# Reading, as Jackson reads a bean's fields.
# ---------------------------------------------------------------------------------------------------------

_E = TypeVar("_E", bound=enum.Enum)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class JsonInvalid(ValueError):
    """A JSON value Jackson would refuse; the message says why."""


def _reject_constant(name: str) -> Any:
    raise JsonInvalid(f"non-standard JSON token {name}")


_LENIENT_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_JAVA_BLANK = "".join(map(chr, range(33)))  # what Java's String.trim() removes
_JAVA_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def parse(raw: bytes | bytearray | memoryview, *, from_bytes: bool = False) -> Any:
    """Parse the first JSON value and ignore what follows it, as Jackson does by default.

    Java reads bodies from a ``String`` (invalid UTF-8 already replaced) but the header from the bytes,
    where invalid UTF-8 inside the value is an error and a leading byte order mark is skipped. orjson
    reads every document it accepts as the standard parser does, except integers beyond 64 bits (which it
    reads as floats): it is tried first unless ``raw`` holds a run of 19 digits.
    """
    if not has_long_digits(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if from_bytes:
        text = bytes(raw).decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    else:
        text = bytes(raw).decode("utf-8", "replace")
    start = _JSON_WHITESPACE.match(text)
    begin = start.end() if start else 0
    try:
        value, end = _LENIENT_JSON.raw_decode(text, begin)
    except json.JSONDecodeError as exc:
        raise JsonInvalid(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    except RecursionError as exc:
        raise JsonInvalid("JSON nested too deeply") from exc
    if from_bytes and _ESCAPED_BYTE.search(text, begin, end):
        raise JsonInvalid("invalid UTF-8")
    return value


def as_string(value: Any, name: str) -> str | None:
    """Jackson's String coercion: scalars become their text, containers are refused."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return dumps(value).decode()
    raise JsonInvalid(f"'{name}' must be a string, got {type(value).__name__}")


def as_int(value: Any, name: str) -> int:
    """Jackson's primitive int coercion: null is 0, floats truncate, numeric strings parse, range checked."""
    if type(value) is int and _INT_MIN <= value <= _INT_MAX:
        return value
    if value is None:
        return 0
    if isinstance(value, bool):
        raise JsonInvalid(f"'{name}' must be an int, got a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JsonInvalid(f"'{name}' must be an int, got {value}")
        value = int(value)
    elif isinstance(value, str):
        text = value.strip(_JAVA_BLANK)
        if not text or text == "null":
            return 0
        if not _JAVA_INT_TEXT.fullmatch(text):
            raise JsonInvalid(f"'{name}' must be an int, got {value!r}")
        value = int(text)
    elif not isinstance(value, int):
        raise JsonInvalid(f"'{name}' must be an int, got {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise JsonInvalid(f"'{name}' is out of the int range: {value}")
    return int(value)


def as_enum(value: Any, enum_type: type[_E], name: str) -> _E | None:
    """Jackson's enum reading: exact (case-sensitive) name, or the ordinal as a number or a digit string."""
    if value is None:
        return None
    if isinstance(value, str):
        member = enum_type.__members__.get(value)
        if member is not None:
            return member
        text = value.strip(_JAVA_BLANK)
        member = enum_type.__members__.get(text)
        if member is not None:
            return member
        if not (text[:1].isdigit() and text.isascii() and text.isdigit()):
            # Empty and blank strings are refused too: Jackson's default coercion for enums is to fail.
            raise JsonInvalid(f"'{name}' has an unknown {enum_type.__name__} value {value!r}")
        value = int(text)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_type(value)
        except ValueError as exc:
            raise JsonInvalid(f"'{name}' ordinal {value} is not a {enum_type.__name__}") from exc
    raise JsonInvalid(f"'{name}' must be a {enum_type.__name__} name, got {type(value).__name__}")


def as_object(value: Any, what: str) -> dict[str, Any] | None:
    """A JSON object (or null) where Jackson reads a bean or a map; anything else is refused."""
    if value is None or isinstance(value, dict):
        return value
    raise JsonInvalid(f"{what} must be a JSON object, got {type(value).__name__}")
