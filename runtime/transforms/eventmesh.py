"""Apache EventMesh's event filter patterns and transformers, for rules carried over from EventMesh.

Both work on an event given as a structured-mode CloudEvent mapping: its attributes, its extensions and
``data`` (already parsed when it is JSON).

**Filter patterns** (:func:`compile_eventmesh_filter`). A pattern is a JSON object. Its keys are
CloudEvents attributes (``id source specversion type datacontenttype dataschema subject time``; not
extensions) and ``data``, whose value is an object nesting down to the fields of the data. Each leaf
holds a non-empty list of conditions: the field matches when one of them holds, and the event passes
when every field matches (``{}`` passes everything). The conditions:

* a bare value (``"enable"``, ``10``, ``true``, ``null``) or ``{"specified": value}``: equal as text;
* ``{"prefix": text}``, ``{"suffix": text}``: the field's text starts or ends with it;
* ``{"numeric": [">", 0, "<=", 10]}``: the field is a number and every operator/bound pair holds
  (operators ``= != > >= < <=``; numbers compare as Java doubles);
* ``{"exists": true|false}``: the field is present (a null value counts as present) or absent;
* ``{"anything-but": x}`` where ``x`` is a value, a list of values, or an object of the conditions
  above (``{"prefix": "init"}``): none of them holds.

Comparisons use EventMesh's text of a value (Jackson's ``asText``): strings as they are, integers in
decimal, other numbers as Java's ``Double.toString`` writes them (``50.7``, ``1.0E20``), ``true``,
``false``, ``null`` (which an absent field also reads as), and the empty text for objects and lists.
So ``"10"`` matches the number 10 and ``10.0`` does not. When a field holds a list, a condition holds
when it holds for one of the elements (``exists`` looks at the field itself).

Where EventMesh's runtime does something its rules cannot have meant, this module follows the rule,
not the accident (each was seen by running EventMesh's own classes):

* ``exists`` tests presence; in EventMesh an absent field reads as a JSON null, so ``exists: true``
  matches every event and ``exists: false`` none;
* ``numeric`` holds only for numbers; EventMesh lets every non-number (an absent field too) pass;
* a list-valued field is one field among the others; in EventMesh an element that matches ends the
  whole ``data`` check as passed, and a list where nothing matches is not checked at all;
* a rule EventMesh would take but never apply as written is refused when it is compiled: a condition
  object with several keys (EventMesh reads the first), an empty one (EventMesh fails on every
  event), an unknown numeric operator or a bound that is not a number, a ``data`` leaf that is not a
  list, an empty condition list or anything-but, ``exists`` inside anything-but, a field name holding
  JSONPath syntax (EventMesh pastes the name into a path), a rule that is not a JSON object (EventMesh
  drops such a filter), or JSON followed by anything else.

**Transformers** (:func:`compile_eventmesh_transformer`), with EventMesh's keys:
``{"transformerType": "original"}`` gives the event as JSON (as Jackson writes it);
``{"transformerType": "constant", "value": text}`` gives ``text``; and
``{"transformerType": "template", "value": variables, "template": text}`` fills ``text``, where
``variables`` (an object, or its JSON text as EventMesh's configuration stores it) maps each name to a
JSONPath or a constant. A name is read from the event when its value is a definite JSONPath (``$``
then names and single indexes: ``$.data.name``, ``$['data']['a b']``, ``$.data.list[-1]``) and is the
value itself otherwise (``$.data.*`` is the text ``$.data.*``). What a path finds is written as Java
writes it (``100``, ``true``, ``1.0E20``, ``{k=v, n=[1, 2]}``), and ``null`` when nothing is there.
The template is Apache Commons Text's: ``${name}``, ``${name:-default}``, ``$${...}`` for a literal
``${...}``, and an unknown name without a default stays as written. Constants and defaults are
templates themselves. Unlike EventMesh, text read from the event is inserted as it is, never read as
a template again: event data cannot pull in other variables or make the expansion loop. Refused at
compile time: an unknown type or key, a missing ``value`` or ``template`` (EventMesh would write
``null``), constants that refer to each other in a loop (EventMesh fails on every event), and Jayway's
path functions such as ``.length()``, which no Python JSONPath library reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, NoReturn

import jsonpath
import orjson

from runtime.errors import ConfigError, DataError
from runtime.protocol.jackson import dumps as jackson_dumps
from runtime.protocol.jackson import java_double_to_string

__all__ = ["EventFilter", "EventTransformer", "compile_eventmesh_filter", "compile_eventmesh_transformer"]

EventFilter = Callable[[Mapping[str, object]], bool]
"""True when the event (a structured-mode CloudEvent mapping) passes."""

EventTransformer = Callable[[Mapping[str, object]], str]
"""The text an event becomes."""

_ATTRIBUTES: Final = ("id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time")
"""The CloudEvents 1.0 attributes EventMesh lets a pattern name (the Java SDK's ``SpecVersion.V1``)."""

_CONDITION_KINDS: Final = ("specified", "prefix", "suffix", "numeric", "exists", "anything-but")
_TRANSFORMER_KINDS: Final = ("original", "constant", "template")
_TRANSFORMER_KEYS: Final = ("transformerType", "value", "template")

# A data field name is pasted into a JSONPath by EventMesh: these characters would make it a path step,
# a selector or an invalid path there, so such a name could never mean the field it spells.
_PATH_SYNTAX: Final = re.compile(r"[.\[\]*()'\"\s]")

# Nesting deeper than this in event data is refused rather than walked (Python's own recursion limit
# would otherwise end the process on a hostile event).
_MAX_DEPTH: Final = 256

# A template whose constants expand into more pieces than this is refused at compile time (constants
# referring to each other twice over grow exponentially).
_MAX_TEMPLATE_PARTS: Final = 10_000


class _Missing:
    """An absent field: EventMesh reads it as a JSON null, ``exists`` tells it apart."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- values as EventMesh sees them


def _timestamp_text(value: datetime) -> str:
    """A timestamp as the structured JSON of an event writes it (RFC 3339, UTC as ``Z``)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()[1:-1]


def _as_text(value: object, where: str) -> str:
    """Jackson's ``asText`` of a field: the text filter conditions compare."""
    if value is None or value is _MISSING:
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


def _java_text(value: object, where: str, depth: int = 0) -> str:
    """Java's ``toString`` of what a JSONPath read finds: the text a template inserts."""
    if depth > _MAX_DEPTH:
        raise DataError(f"event field {where} nests deeper than {_MAX_DEPTH} levels; flatten the event data")
    if isinstance(value, Mapping):
        members = (f"{name}={_java_text(item, f'{where}.{name}', depth + 1)}" for name, item in value.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_java_text(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)) + "]"
    return _as_text(value, where)


def _plain_json(value: object, where: str, depth: int = 0) -> object:
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
            plain[name] = _plain_json(item, f"{where}.{name}", depth + 1)
        return plain
    if isinstance(value, list | tuple):
        return [_plain_json(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
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


def _checked_event(event: object, what: str) -> Mapping[str, object]:
    if not isinstance(event, Mapping):
        raise DataError(f"{what} got a {type(event).__name__}, not a CloudEvent mapping; pass the structured event")
    return event


def _java_double(number: int | float) -> float:
    """The double Jackson's ``asDouble`` gives (integers too large for a double become infinite)."""
    try:
        return float(number)
    except OverflowError:
        return math.copysign(math.inf, number)


def _java_compare_key(number: float) -> tuple[float, ...]:
    """Order of Java's ``Double.compare``: -0.0 below 0.0, NaN above everything and equal to itself."""
    return (1.0,) if math.isnan(number) else (0.0, number, math.copysign(1.0, number))


_NUMERIC_OPERATORS: Final[Mapping[str, Callable[[tuple[float, ...], tuple[float, ...]], bool]]] = {
    "=": lambda value, bound: value == bound,
    "!=": lambda value, bound: value != bound,
    ">": lambda value, bound: value > bound,
    ">=": lambda value, bound: value >= bound,
    "<": lambda value, bound: value < bound,
    "<=": lambda value, bound: value <= bound,
}


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class _Specified:
    text: str
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return _as_text(value, where) == self.text


@dataclass(frozen=True, slots=True)
class _Prefix:
    text: str
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return _as_text(value, where).startswith(self.text)


@dataclass(frozen=True, slots=True)
class _Suffix:
    text: str
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return _as_text(value, where).endswith(self.text)


@dataclass(frozen=True, slots=True)
class _Numeric:
    comparisons: tuple[tuple[str, tuple[float, ...]], ...]
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        key = _java_compare_key(_java_double(value))
        return all(_NUMERIC_OPERATORS[operator](key, bound) for operator, bound in self.comparisons)


@dataclass(frozen=True, slots=True)
class _Exists:
    present: bool
    per_element: ClassVar[bool] = False

    def holds(self, value: object, where: str) -> bool:
        return (value is not _MISSING) == self.present


@dataclass(frozen=True, slots=True)
class _AnythingBut:
    excluded: tuple[_Condition, ...]
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return not any(condition.holds(value, where) for condition in self.excluded)


_Condition = _Specified | _Prefix | _Suffix | _Numeric | _Exists | _AnythingBut


@dataclass(frozen=True, slots=True)
class _FieldRule:
    """One field of a pattern: where it is in the event, and the conditions one of which must hold."""

    attribute: str  # a top-level attribute, or "data"
    data_path: tuple[str, ...]
    conditions: tuple[_Condition, ...]
    where: str  # the field as error messages name it: data.obj.k

    def value_in(self, event: Mapping[str, object]) -> object:
        value: object = event.get(self.attribute, _MISSING)
        for name in self.data_path:
            if not isinstance(value, Mapping) or name not in value:
                return _MISSING
            value = value[name]
        return value

    def matches(self, event: Mapping[str, object]) -> bool:
        value = self.value_in(event)
        where = self.where
        elements: Sequence[object] = value if isinstance(value, list | tuple) else (value,)
        for condition in self.conditions:
            if condition.per_element:
                if any(condition.holds(element, where) for element in elements):
                    return True
            elif condition.holds(value, where):
                return True
        return False


# --------------------------------------------------------------------------- compiling a filter


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"the key {name!r} appears twice in one object")
        members[name] = value
    return members


def _parse_json(text: str, key: str, what: str) -> object:
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


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def _describe(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def compile_eventmesh_filter(rule: str | Mapping[str, object], *, key: str = "filter") -> EventFilter:
    """The filter an EventMesh pattern ``rule`` (JSON text, or already parsed) describes.

    ``key`` is where the rule sits in the configuration; errors point below it (``filter.data.num[0]``).
    Raises ``ConfigError`` for a rule that is not a pattern; the returned filter raises ``DataError``
    for an event it cannot read (a value that is not JSON, nesting beyond 256 levels).
    """
    parsed = _parse_json(rule, key, "the EventMesh filter pattern") if isinstance(rule, str) else rule
    if not isinstance(parsed, Mapping):
        raise ConfigError(
            key,
            f"an EventMesh filter pattern is a JSON object, not {_describe(parsed)}",
            'write an object such as {"source": [{"prefix": "eventmesh."}]}, or {} to pass every event',
        )
    fields: list[_FieldRule] = []
    for name, value in parsed.items():
        where = f"{key}.{name}"
        if name == "data":
            if not isinstance(value, Mapping):
                raise ConfigError(
                    where,
                    f"data takes an object of data fields, not {_describe(value)}",
                    'write the fields of the data with their conditions, e.g. {"state": ["enable"]}',
                )
            fields.extend(_data_fields(value, (), where))
        elif name in _ATTRIBUTES:
            fields.append(_FieldRule(name, (), _conditions(value, where), name))
        else:
            raise ConfigError(
                where,
                f"{name!r} is not a CloudEvents attribute an EventMesh pattern can name (extensions cannot be filtered)",
                f"use one of {', '.join(_ATTRIBUTES)}, or data",
            )
    compiled = tuple(fields)

    def event_filter(event: Mapping[str, object]) -> bool:
        checked = _checked_event(event, "the EventMesh filter")
        return all(field.matches(checked) for field in compiled)

    return event_filter


def _data_fields(members: Mapping[str, object], path: tuple[str, ...], where: str) -> Iterator[_FieldRule]:
    for name, value in members.items():
        field_where = f"{where}.{name}"
        if not isinstance(name, str) or not name or _PATH_SYNTAX.search(name):
            raise ConfigError(
                field_where,
                f"the field name {name!r} is empty or holds JSONPath syntax (. [ ] * ( ) quotes or spaces)",
                "name one field per level and nest objects for deeper fields",
            )
        if isinstance(value, Mapping):
            yield from _data_fields(value, (*path, name), field_where)
        else:
            yield _FieldRule("data", (*path, name), _conditions(value, field_where), ".".join(("data", *path, name)))


def _conditions(value: object, where: str) -> tuple[_Condition, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(
            where,
            f"a field's conditions are a list, not {_describe(value)}",
            f"wrap it in a list: [{_describe(value)}]",
        )
    if not value:
        raise ConfigError(where, "the list of conditions is empty, so no event could match", "give at least one condition")
    return tuple(_condition(item, f"{where}[{index}]") for index, item in enumerate(value))


def _condition(item: object, where: str) -> _Condition:
    if _is_scalar(item):
        return _Specified(_as_text(item, where))
    if not isinstance(item, Mapping):
        raise ConfigError(
            where, f"a condition is a value or an object, not {_describe(item)}", "give values one by one in the field's list"
        )
    if len(item) != 1:
        raise ConfigError(
            where,
            f"a condition object has exactly one key, this one has {len(item)}",
            'write each condition as its own object in the list, e.g. [{"prefix": "a"}, {"suffix": "b"}]',
        )
    ((kind, parameter),) = item.items()
    return _condition_of_kind(kind, parameter, f"{where}.{kind}", allow_exists=True)


def _condition_of_kind(kind: object, parameter: object, where: str, *, allow_exists: bool) -> _Condition:
    if kind in ("specified", "prefix", "suffix"):
        if not _is_scalar(parameter) or parameter is None:
            raise ConfigError(
                where, f"{kind} takes a text or a number, not {_describe(parameter)}", f'write {{"{kind}": "text"}}'
            )
        text = _as_text(parameter, where)
        return _Specified(text) if kind == "specified" else _Prefix(text) if kind == "prefix" else _Suffix(text)
    if kind == "numeric":
        return _numeric(parameter, where)
    if kind == "exists" and allow_exists:
        if not isinstance(parameter, bool):
            raise ConfigError(where, f"exists takes true or false, not {_describe(parameter)}", 'write {"exists": true}')
        return _Exists(parameter)
    if kind == "exists":
        raise ConfigError(where, "exists cannot be excluded inside anything-but", 'write {"exists": false} as its own condition')
    if kind == "anything-but":
        return _anything_but(parameter, where)
    raise ConfigError(where, f"{kind!r} is not an EventMesh condition", f"use one of {', '.join(_CONDITION_KINDS)}")


def _numeric(parameter: object, where: str) -> _Numeric:
    fix = 'write operator and number pairs, e.g. {"numeric": [">", 0, "<=", 10]}'
    if not isinstance(parameter, list | tuple) or not parameter or len(parameter) % 2:
        raise ConfigError(where, f"numeric takes a non-empty list of operator and number pairs, not {_describe(parameter)}", fix)
    comparisons = []
    for index in range(0, len(parameter), 2):
        operator, bound = parameter[index], parameter[index + 1]
        if not isinstance(operator, str) or operator not in _NUMERIC_OPERATORS:
            raise ConfigError(
                f"{where}[{index}]",
                f"{_describe(operator)} is not a numeric operator",
                f"use one of {' '.join(_NUMERIC_OPERATORS)}",
            )
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(
                f"{where}[{index + 1}]", f"{_describe(bound)} is not a number", "write the bound as a JSON number, unquoted"
            )
        comparisons.append((operator, _java_compare_key(_java_double(bound))))
    return _Numeric(tuple(comparisons))


def _anything_but(parameter: object, where: str) -> _AnythingBut:
    if _is_scalar(parameter):
        return _AnythingBut((_Specified(_as_text(parameter, where)),))
    if isinstance(parameter, list | tuple) and parameter:
        excluded: list[_Condition] = []
        for index, value in enumerate(parameter):
            if not _is_scalar(value):
                raise ConfigError(
                    f"{where}[{index}]",
                    f"anything-but lists values, not {_describe(value)}",
                    'write {"anything-but": {"prefix": "x"}} for conditions',
                )
            excluded.append(_Specified(_as_text(value, where)))
        return _AnythingBut(tuple(excluded))
    if isinstance(parameter, Mapping) and parameter:
        return _AnythingBut(
            tuple(_condition_of_kind(kind, value, f"{where}.{kind}", allow_exists=False) for kind, value in parameter.items())
        )
    raise ConfigError(
        where,
        f"anything-but takes a value, a non-empty list of values or an object of conditions, not {_describe(parameter)}",
        'write e.g. {"anything-but": ["stopped", "overloaded"]}',
    )


# --------------------------------------------------------------------------- transformers


@dataclass(frozen=True, slots=True)
class _Reference:
    """``${name}`` or ``${name:-default}`` in a template, and how it was written."""

    name: str
    default: str | None
    written: str


@dataclass(frozen=True, slots=True)
class _PathValue:
    """The place in the filled template where what ``path`` finds goes."""

    written: str
    path: jsonpath.JSONPath


def _template_pieces(text: str) -> list[str | _Reference]:
    """``text`` cut as Commons Text's ``StringSubstitutor`` reads it: text, and references."""
    pieces: list[str | _Reference] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        if not text.startswith("${", index):
            literal.append(text[index])
            index += 1
            continue
        if literal and literal[-1] == "$":
            # "$${" is an escape for "${": of the two dollars, one stays text (the one already taken)
            # and scanning goes on at the "{", so what follows is no reference.
            index += 1
            continue
        end = text.find("}", index + 2)
        if end < 0:
            literal.append(text[index:])
            break
        expression = text[index + 2 : end]
        # A default follows ":-", searched only before any "${" inside the name.
        nested = expression.find("${")
        delimiter = (expression if nested < 0 else expression[:nested]).find(":-")
        if delimiter >= 0:
            reference = _Reference(expression[:delimiter], expression[delimiter + 2 :], text[index : end + 1])
        else:
            reference = _Reference(expression, None, text[index : end + 1])
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append(reference)
        index = end + 1
    if literal:
        pieces.append("".join(literal))
    return pieces


def compile_eventmesh_transformer(spec: Mapping[str, object], *, key: str = "transformer") -> EventTransformer:
    """The transformer an EventMesh ``TransformerParam`` ``spec`` describes.

    ``spec`` has ``transformerType`` (original, constant or template), ``value`` and ``template`` as
    EventMesh's transformer configuration does. ``key`` is where it sits in the configuration. Raises
    ``ConfigError`` for a spec that does not describe a transformer; the returned transformer raises
    ``DataError`` for an event it cannot read.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(
            key, f"an EventMesh transformer is an object, not {_describe(spec)}", 'write {"transformerType": "original"}'
        )
    unknown = [name for name in spec if name not in _TRANSFORMER_KEYS]
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}", "is not a key of an EventMesh transformer", f"use only {', '.join(_TRANSFORMER_KEYS)}"
        )
    kind = spec.get("transformerType")
    if kind not in _TRANSFORMER_KINDS:
        raise ConfigError(
            f"{key}.transformerType",
            f"{_describe(kind)} is not an EventMesh transformer type",
            f"use one of {', '.join(_TRANSFORMER_KINDS)} (lower case)",
        )
    allowed = {"original": (), "constant": ("value",), "template": ("value", "template")}[str(kind)]
    for name in ("value", "template"):
        if name in spec and name not in allowed:
            raise ConfigError(f"{key}.{name}", f"a {kind} transformer takes no {name}", f"remove {name}")
        if name not in spec and name in allowed:
            raise ConfigError(f"{key}.{name}", f"a {kind} transformer needs {name}", f"add {name}")
    if kind == "original":
        return _original
    if kind == "constant":
        constant = spec["value"]
        if not isinstance(constant, str):
            raise ConfigError(f"{key}.value", f"the constant is text, not {_describe(constant)}", "write it as a string")
        return lambda event: constant
    template = spec["template"]
    if not isinstance(template, str):
        raise ConfigError(f"{key}.template", f"the template is text, not {_describe(template)}", 'write e.g. "name is ${name}"')
    return _template_transformer(_variables(spec["value"], f"{key}.value"), f"{key}.value", template, f"{key}.template")


def _original(event: Mapping[str, object]) -> str:
    checked = _checked_event(event, "the EventMesh original transformer")
    return jackson_dumps(_plain_json(checked, "event")).decode()


def _variables(value: object, where: str) -> dict[str, str]:
    """The template's variables as ``name -> text``, each text being a JSONPath or a constant."""
    parsed = _parse_json(value, where, "the value") if isinstance(value, str) else value
    if not isinstance(parsed, Mapping):
        raise ConfigError(
            where, f"the template variables are a JSON object, not {_describe(parsed)}", 'write e.g. {"name": "$.data.name"}'
        )
    variables = {}
    for name, text in parsed.items():
        if not _is_scalar(text):
            raise ConfigError(
                f"{where}.{name}", f"a variable is a JSONPath or a constant, not {_describe(text)}", 'write e.g. "$.data.name"'
            )
        variables[str(name)] = _as_text(text, f"{where}.{name}")
    return variables


def _space_between_segments(text: str) -> bool:
    """Whether ``text`` has white space outside brackets before its end, which Jayway refuses in a path."""
    depth, quote, escaped = 0, "", False
    for char in text.rstrip():
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "[]":
            depth += 1 if char == "[" else -1
        elif char.isspace() and depth == 0:
            return True
    return False


def _definite_path(text: str, where: str) -> jsonpath.JSONPath | None:
    """The path ``text`` is when Jayway JsonPath would read it as a definite path; ``None`` for a constant."""
    if not text.startswith("$") or (len(text) > 1 and text[1] not in ".[") or _space_between_segments(text):
        return None
    try:
        path = jsonpath.compile(text)
    except jsonpath.JSONPathError as exc:
        if text.rstrip().endswith(")"):
            raise ConfigError(
                where, f"{text!r} calls a JSONPath function, which only Jayway JsonPath reads", "read the field itself"
            ) from exc
        return None  # EventMesh takes a path it cannot compile as text
    if not isinstance(path, jsonpath.JSONPath) or not path.singular_query():
        return None  # EventMesh takes an indefinite path (wildcards, filters, slices) as text
    return path


def _template_transformer(variables: Mapping[str, str], variables_key: str, template: str, where: str) -> EventTransformer:
    paths = {
        name: _PathValue(text, path)
        for name, text in variables.items()
        if (path := _definite_path(text, f"{variables_key}.{name}")) is not None
    }
    constants = {name: text for name, text in variables.items() if name not in paths}

    def expand(text: str, chain: tuple[str, ...]) -> Iterator[str | _PathValue]:
        for piece in _template_pieces(text):
            if isinstance(piece, str):
                yield piece
                continue
            if piece.name in chain:
                raise ConfigError(
                    where,
                    f"the variables refer to each other in a loop: {' -> '.join((*chain, piece.name))}",
                    "make one of them a plain constant",
                )
            if piece.name in paths:
                yield paths[piece.name]
            elif piece.name in constants:
                yield from expand(constants[piece.name], (*chain, piece.name))
            elif piece.default is not None:
                yield from expand(piece.default, (*chain, piece.name))
            else:
                yield piece.written

    parts: list[str | _PathValue] = []
    for count, part in enumerate(expand(template, ())):
        if count >= _MAX_TEMPLATE_PARTS:
            raise ConfigError(
                where, f"the template expands into more than {_MAX_TEMPLATE_PARTS} pieces", "refer to fewer constants"
            )
        if isinstance(part, str) and parts and isinstance(parts[-1], str):
            parts[-1] += part
        else:
            parts.append(part)
    filled = tuple(parts)

    def template_transformer(event: Mapping[str, object]) -> str:
        checked = _checked_event(event, "the EventMesh template transformer")
        return "".join(part if isinstance(part, str) else _read(part, checked) for part in filled)

    return template_transformer


def _read(part: _PathValue, event: Mapping[str, object]) -> str:
    found = part.path.findall(event)
    return _java_text(found[0], part.written) if found else "null"
