"""**Transformers** (:func:`compile_eventmesh_transformer`), with EventMesh's keys:
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

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import jsonpath

from runtime.errors import ConfigError
from runtime.protocol.jackson import dumps as jackson_dumps
from runtime.transforms.eventmesh.values import (
    as_text,
    checked_event,
    describe,
    is_scalar,
    java_text,
    parse_json,
    plain_json,
)

EventTransformer = Callable[[Mapping[str, object]], str]
"""The text an event becomes."""

_TRANSFORMER_KINDS: Final = ("original", "constant", "template")
_TRANSFORMER_KEYS: Final = ("transformerType", "value", "template")

# A template whose constants expand into more pieces than this is refused at compile time (constants
# referring to each other twice over grow exponentially).
_MAX_TEMPLATE_PARTS: Final = 10_000


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
            key, f"an EventMesh transformer is an object, not {describe(spec)}", 'write {"transformerType": "original"}'
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
            f"{describe(kind)} is not an EventMesh transformer type",
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
            raise ConfigError(f"{key}.value", f"the constant is text, not {describe(constant)}", "write it as a string")
        return lambda event: constant
    template = spec["template"]
    if not isinstance(template, str):
        raise ConfigError(f"{key}.template", f"the template is text, not {describe(template)}", 'write e.g. "name is ${name}"')
    return _template_transformer(_variables(spec["value"], f"{key}.value"), f"{key}.value", template, f"{key}.template")


def _original(event: Mapping[str, object]) -> str:
    checked = checked_event(event, "the EventMesh original transformer")
    return jackson_dumps(plain_json(checked, "event")).decode()


def _variables(value: object, where: str) -> dict[str, str]:
    """The template's variables as ``name -> text``, each text being a JSONPath or a constant."""
    parsed = parse_json(value, where, "the value") if isinstance(value, str) else value
    if not isinstance(parsed, Mapping):
        raise ConfigError(
            where, f"the template variables are a JSON object, not {describe(parsed)}", 'write e.g. {"name": "$.data.name"}'
        )
    variables = {}
    for name, text in parsed.items():
        if not is_scalar(text):
            raise ConfigError(
                f"{where}.{name}", f"a variable is a JSONPath or a constant, not {describe(text)}", 'write e.g. "$.data.name"'
            )
        variables[str(name)] = as_text(text, f"{where}.{name}")
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
        checked = checked_event(event, "the EventMesh template transformer")
        return "".join(part if isinstance(part, str) else _read(part, checked) for part in filled)

    return template_transformer


def _read(part: _PathValue, event: Mapping[str, object]) -> str:
    found = part.path.findall(event)
    return java_text(found[0], part.written) if found else "null"
