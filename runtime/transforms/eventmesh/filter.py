"""**Filter patterns** (:func:`compile_eventmesh_filter`). A pattern is a JSON object. Its keys are
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
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from runtime.errors import ConfigError
from runtime.transforms.eventmesh.values import (
    MISSING,
    as_text,
    checked_event,
    describe,
    is_scalar,
    parse_json,
)

EventFilter = Callable[[Mapping[str, object]], bool]
"""True when the event (a structured-mode CloudEvent mapping) passes."""


_ATTRIBUTES: Final = ("id", "source", "specversion", "type", "datacontenttype", "dataschema", "subject", "time")
"""The CloudEvents 1.0 attributes EventMesh lets a pattern name (the Java SDK's ``SpecVersion.V1``)."""

_CONDITION_KINDS: Final = ("specified", "prefix", "suffix", "numeric", "exists", "anything-but")

# A data field name is pasted into a JSONPath by EventMesh: these characters would make it a path step,
# a selector or an invalid path there, so such a name could never mean the field it spells.
_PATH_SYNTAX: Final = re.compile(r"[.\[\]*()'\"\s]")


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
class _Text:
    """The value's text equals ``text`` (``str.__eq__``), starts with it or ends with it."""

    text: str
    test: Callable[[str, str], bool] = str.__eq__
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return self.test(as_text(value, where), self.text)


_TEXT_TESTS: dict[str, Callable[[str, str], bool]] = {"specified": str.__eq__, "prefix": str.startswith, "suffix": str.endswith}


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
        return (value is not MISSING) == self.present


@dataclass(frozen=True, slots=True)
class _AnythingBut:
    excluded: tuple[_Condition, ...]
    per_element: ClassVar[bool] = True

    def holds(self, value: object, where: str) -> bool:
        return not any(condition.holds(value, where) for condition in self.excluded)


_Condition = _Text | _Numeric | _Exists | _AnythingBut


@dataclass(frozen=True, slots=True)
class _FieldRule:
    """One field of a pattern: where it is in the event, and the conditions one of which must hold."""

    attribute: str  # a top-level attribute, or "data"
    data_path: tuple[str, ...]
    conditions: tuple[_Condition, ...]
    where: str  # the field as error messages name it: data.obj.k

    def value_in(self, event: Mapping[str, object]) -> object:
        value: object = event.get(self.attribute, MISSING)
        for name in self.data_path:
            if not isinstance(value, Mapping) or name not in value:
                return MISSING
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


def compile_eventmesh_filter(rule: str | Mapping[str, object], *, key: str = "filter") -> EventFilter:
    """The filter an EventMesh pattern ``rule`` (JSON text, or already parsed) describes.

    ``key`` is where the rule sits in the configuration; errors point below it (``filter.data.num[0]``).
    Raises ``ConfigError`` for a rule that is not a pattern; the returned filter raises ``DataError``
    for an event it cannot read (a value that is not JSON, nesting beyond 256 levels).
    """
    parsed = parse_json(rule, key, "the EventMesh filter pattern") if isinstance(rule, str) else rule
    if not isinstance(parsed, Mapping):
        raise ConfigError(
            key,
            f"an EventMesh filter pattern is a JSON object, not {describe(parsed)}",
            'write an object such as {"source": [{"prefix": "eventmesh."}]}, or {} to pass every event',
        )
    fields: list[_FieldRule] = []
    for name, value in parsed.items():
        where = f"{key}.{name}"
        if name == "data":
            if not isinstance(value, Mapping):
                raise ConfigError(
                    where,
                    f"data takes an object of data fields, not {describe(value)}",
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
        checked = checked_event(event, "the EventMesh filter")
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
            f"a field's conditions are a list, not {describe(value)}",
            f"wrap it in a list: [{describe(value)}]",
        )
    if not value:
        raise ConfigError(where, "the list of conditions is empty, so no event could match", "give at least one condition")
    return tuple(_condition(item, f"{where}[{index}]") for index, item in enumerate(value))


def _condition(item: object, where: str) -> _Condition:
    if is_scalar(item):
        return _Text(as_text(item, where))
    if not isinstance(item, Mapping):
        raise ConfigError(
            where, f"a condition is a value or an object, not {describe(item)}", "give values one by one in the field's list"
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
    if isinstance(kind, str) and kind in _TEXT_TESTS:
        if not is_scalar(parameter) or parameter is None:
            raise ConfigError(where, f"{kind} takes a text or a number, not {describe(parameter)}", f'write {{"{kind}": "text"}}')
        return _Text(as_text(parameter, where), _TEXT_TESTS[kind])
    if kind == "numeric":
        return _numeric(parameter, where)
    if kind == "exists" and allow_exists:
        if not isinstance(parameter, bool):
            raise ConfigError(where, f"exists takes true or false, not {describe(parameter)}", 'write {"exists": true}')
        return _Exists(parameter)
    if kind == "exists":
        raise ConfigError(where, "exists cannot be excluded inside anything-but", 'write {"exists": false} as its own condition')
    if kind == "anything-but":
        return _anything_but(parameter, where)
    raise ConfigError(where, f"{kind!r} is not an EventMesh condition", f"use one of {', '.join(_CONDITION_KINDS)}")


def _numeric(parameter: object, where: str) -> _Numeric:
    fix = 'write operator and number pairs, e.g. {"numeric": [">", 0, "<=", 10]}'
    if not isinstance(parameter, list | tuple) or not parameter or len(parameter) % 2:
        raise ConfigError(where, f"numeric takes a non-empty list of operator and number pairs, not {describe(parameter)}", fix)
    comparisons = []
    for index in range(0, len(parameter), 2):
        operator, bound = parameter[index], parameter[index + 1]
        if not isinstance(operator, str) or operator not in _NUMERIC_OPERATORS:
            raise ConfigError(
                f"{where}[{index}]",
                f"{describe(operator)} is not a numeric operator",
                f"use one of {' '.join(_NUMERIC_OPERATORS)}",
            )
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(
                f"{where}[{index + 1}]", f"{describe(bound)} is not a number", "write the bound as a JSON number, unquoted"
            )
        comparisons.append((operator, _java_compare_key(_java_double(bound))))
    return _Numeric(tuple(comparisons))


def _anything_but(parameter: object, where: str) -> _AnythingBut:
    if is_scalar(parameter):
        return _AnythingBut((_Text(as_text(parameter, where)),))
    if isinstance(parameter, list | tuple) and parameter:
        excluded: list[_Condition] = []
        for index, value in enumerate(parameter):
            if not is_scalar(value):
                raise ConfigError(
                    f"{where}[{index}]",
                    f"anything-but lists values, not {describe(value)}",
                    'write {"anything-but": {"prefix": "x"}} for conditions',
                )
            excluded.append(_Text(as_text(value, where)))
        return _AnythingBut(tuple(excluded))
    if isinstance(parameter, Mapping) and parameter:
        return _AnythingBut(
            tuple(_condition_of_kind(kind, value, f"{where}.{kind}", allow_exists=False) for kind, value in parameter.items())
        )
    raise ConfigError(
        where,
        f"anything-but takes a value, a non-empty list of values or an object of conditions, not {describe(parameter)}",
        'write e.g. {"anything-but": ["stopped", "overloaded"]}',
    )
