"""The steps: each takes a record and gives the record to pass on, None to drop it, or raises DataError.

* ``filter``: keep the event when the test is true, else drop it.
* ``route``: a source's topic (one the config allows) or a sink's target (:attr:`ConnectorRecord.target`).
* ``set`` / ``remove``: attributes (``type``, ``datacontenttype``, ``dataschema``, ``time``) and extensions.
  ``id`` and ``source`` are the event's identity: sinks drop an event whose source and id they
  already hold, and a source derives the id from the record's position, so a replay is recognised.
  A computed id could merge two distinct events into one (one of them lost) or split one into two;
  no step changes them. ``subject`` is the topic: a ``route`` step sets it, within the allowed topics.
* ``map``: the data reshaped (jq). The data's ``dataschema`` no longer describes it and is removed.
* ``mask``: fields of the data hashed (keyed HMAC-SHA256, equal values stay equal) or redacted.

``filter`` and ``map`` take a language: a step's text is CEL (filter) or jq (map), and a mapping
names one of :data:`FILTER_LANGUAGES` / :data:`MAP_LANGUAGES`; a language is a compiler from its
spec to a test (filter) or a reshaping (map) of a record, given the step's config key and the view.
``eventmesh`` is both: Apache EventMesh's filter patterns and transformers (:mod:`.eventmesh`),
which read the event as its structured CloudEvent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from runtime.errors import ConfigError, DataError
from runtime.protocol.events import is_json_content_type
from runtime.record import CONTEXT_ATTRIBUTES, EXTENSION_NAME, ConnectorRecord, JsonValue
from runtime.transforms.cel import CelProgram
from runtime.transforms.jq import JqProgram
from runtime.transforms.spec import MaskSpec, StepSpec
from runtime.transforms.view import ATTRIBUTES, EventView, event_data, json_value

__all__ = ["FILTER_LANGUAGES", "MAP_LANGUAGES", "Routing", "Step", "build_step"]

Step = Callable[[ConnectorRecord], ConnectorRecord | None]
Test = Callable[[ConnectorRecord], bool]
Reshape = Callable[[ConnectorRecord], tuple[JsonValue, str]]
"""The new data of a record and its content type."""
FilterCompiler = Callable[[Any, str, EventView], Test]
MapCompiler = Callable[[Any, str, EventView], Reshape]

_SETTABLE = ("type", "datacontenttype", "dataschema", "time")
_IDENTITY = ("id", "source")


@dataclass(frozen=True, slots=True)
class Routing:
    """Where a ``route`` step's value goes: a source's topic, which ``permits`` must allow (``allowed`` says
    which are), or a sink's ``target`` (what it is, e.g. ``table``; None: the sink has no target to route)."""

    side: Literal["source", "sink"]
    permits: Callable[[str], bool] | None = None
    allowed: str = ""
    target: str | None = None
    connector: str = ""


def _cel_filter(spec: Any, key: str, view: EventView) -> Test:
    program = _cel(spec, key, view)

    def test(record: ConnectorRecord) -> bool:
        keep = program(record)
        if keep is True or keep is False:
            return keep
        raise DataError(f"{program.expression!r} gave {keep!r}, not true or false")

    return test


def _jq_map(spec: Any, key: str, _view: EventView) -> Reshape:
    if not isinstance(spec, str):
        raise ConfigError(key, "a jq program is text", "write the program as a string, e.g. '{id: .after.id}'")
    program = JqProgram(spec, key=key)

    def reshape(record: ConnectorRecord) -> tuple[JsonValue, str]:
        data = event_data(record)
        if isinstance(data, bytes):
            raise DataError(f"jq {spec!r}: the data is binary ({record.effective_content_type}), not JSON or text")
        return program(data), "application/json"

    return reshape


def _structured_event(view: EventView, members: frozenset[str] | None = None) -> Callable[[ConnectorRecord], dict[str, Any]]:
    """How to give a record to EventMesh's rules: its structured CloudEvent as a mapping, attributes and
    extensions as members, JSON data parsed, text data as text, binary data as ``data_base64``; only the
    attributes and data in ``members`` when the rule reads no others (a filter: its pattern's keys)."""
    wanted = frozenset((*ATTRIBUTES, "data")) if members is None else members
    attributes = tuple((name, view.getter(name)) for name in ATTRIBUTES if name != "datacontenttype" and name in wanted)
    extensions, content_type, data = members is None, "datacontenttype" in wanted, "data" in wanted

    def event(record: ConnectorRecord) -> dict[str, Any]:
        structured: dict[str, Any] = dict(record.extensions) if extensions else {}
        for name, read in attributes:
            value = read(record)
            if value is not None:
                structured[name] = value
        if content_type and record.effective_content_type is not None:
            structured["datacontenttype"] = record.effective_content_type
        if data:
            value = event_data(record)
            if isinstance(value, bytes):
                structured["data_base64"] = base64.b64encode(value).decode("ascii")
            elif value is not None:
                structured["data"] = value
        return structured

    return event


def _not_installed(key: str, exc: ImportError) -> ConfigError:
    # :mod:`.eventmesh` is imported when a step uses it: its JSONPath library comes with the ``transforms`` extra.
    return ConfigError(
        key, f"EventMesh rules need a library that is not installed ({exc.name})", "pip install 'meshconnect[transforms]'"
    )


def _eventmesh_filter(spec: Any, key: str, view: EventView) -> Test:
    try:
        from runtime.transforms.eventmesh import compile_eventmesh_filter
    except ImportError as exc:
        raise _not_installed(key, exc) from None
    event_filter = compile_eventmesh_filter(spec, key=key)
    # The pattern compiled, so it is a JSON object whose keys are the attributes (and data) it reads.
    pattern = json.loads(spec) if isinstance(spec, str) else spec
    event = _structured_event(view, frozenset(pattern))
    return lambda record: event_filter(event(record))


def _eventmesh_map(spec: Any, key: str, view: EventView) -> Reshape:
    """The transformer's text is the new data: the JSON value it holds when the data was JSON and it is
    JSON (the transformer kept or made JSON), else text (``text/plain``)."""
    try:
        from runtime.transforms.eventmesh import compile_eventmesh_transformer
    except ImportError as exc:
        raise _not_installed(key, exc) from None
    transformer = compile_eventmesh_transformer(spec, key=key)
    event = _structured_event(view)

    def reshape(record: ConnectorRecord) -> tuple[JsonValue, str]:
        text = transformer(event(record))
        if is_json_content_type(record.effective_content_type):
            try:
                return json_value(text.encode()), "application/json"
            except ValueError:
                pass
        return text, "text/plain"

    return reshape


FILTER_LANGUAGES: dict[str, FilterCompiler] = {"cel": _cel_filter, "eventmesh": _eventmesh_filter}
MAP_LANGUAGES: dict[str, MapCompiler] = {"jq": _jq_map, "eventmesh": _eventmesh_map}


def build_step(spec: StepSpec, key: str, view: EventView, routing: Routing) -> Step:
    """The step ``spec`` configures (``key``: its config key, for errors); ConfigError when it cannot be one."""
    if spec.filter is not None:
        language, text = _language(spec.filter, key, FILTER_LANGUAGES, "cel")
        return _filter(FILTER_LANGUAGES[language](text, f"{key}.{language}" if isinstance(spec.filter, dict) else key, view))
    if spec.route is not None:
        return _route(_cel(spec.route, key, view), key, routing)
    if spec.set is not None:
        return _set(spec.set, key, view)
    if spec.remove is not None:
        return _remove(spec.remove, key)
    if spec.map is not None:
        language, text = _language(spec.map, key, MAP_LANGUAGES, "jq")
        return _map(MAP_LANGUAGES[language](text, f"{key}.{language}" if isinstance(spec.map, dict) else key, view))
    assert spec.mask is not None  # StepSpec holds exactly one kind
    return _mask(spec.mask)


def _language(spec: str | dict[str, Any], key: str, languages: Mapping[str, object], default: str) -> tuple[str, Any]:
    if isinstance(spec, str):
        return default, spec
    if len(spec) == 1 and next(iter(spec)) in languages:
        language, text = next(iter(spec.items()))
        return language, text
    choices = ", ".join(languages)
    fix = f"write the {default} text, or one of {{{choices}: ...}}"
    raise ConfigError(key, f"{sorted(spec)} names no language of this step", fix)


def _cel(spec: Any, key: str, view: EventView) -> CelProgram:
    if not isinstance(spec, str):
        raise ConfigError(key, "a CEL expression is text", "write the expression as a string, e.g. 'type != \"heartbeat\"'")
    return CelProgram(spec, key=key, view=view)


def _filter(test: Test) -> Step:
    def step(record: ConnectorRecord) -> ConnectorRecord | None:
        return record if test(record) else None

    return step


def _route(program: CelProgram, key: str, routing: Routing) -> Step:
    if routing.side == "sink" and routing.target is None:
        raise ConfigError(
            key,
            f"{routing.connector} has no target a route step could choose (its topics are subscribed, not chosen)",
            "remove the step; a sink that routes (mysql-sink: the table) says so in its README",
        )

    def target_of(record: ConnectorRecord) -> str:
        value = program(record)
        if not isinstance(value, str) or not value:
            raise DataError(f"{program.expression!r} gave {value!r}, not a non-empty string")
        return value

    if routing.side == "sink":
        return lambda record: record.replace(target=target_of(record))
    permits = routing.permits
    assert permits is not None  # a source's routing always says what it allows

    def to_topic(record: ConnectorRecord) -> ConnectorRecord:
        topic = target_of(record)
        if not permits(topic):
            raise DataError(f"{program.expression!r} gave topic {topic[:200]!r}, which is not allowed here ({routing.allowed})")
        return record.replace(subject=topic)

    return to_topic


def _set(assignments: Mapping[str, str], key: str, view: EventView) -> Step:
    programs: list[tuple[str, CelProgram]] = []
    for name, expression in assignments.items():
        where = f"{key}.{name}"
        if name in _IDENTITY:
            raise ConfigError(
                where,
                f"'{name}' is the event's identity: sinks drop an event whose source and id they hold already, so a computed"
                " one could merge two events into one or make a replay a new event",
                "keep it (a source derives the id from the record's position); put the value in an extension instead",
            )
        if name == "subject":
            raise ConfigError(where, "'subject' is the event's topic", "use a route step: it keeps to the allowed topics")
        if name not in _SETTABLE and (name in CONTEXT_ATTRIBUTES or not EXTENSION_NAME.fullmatch(name)):
            raise ConfigError(
                where,
                f"{name!r} is neither a settable attribute nor an extension name",
                f"set one of {', '.join(_SETTABLE)}, or an extension: 1-64 lower-case letters or digits",
            )
        programs.append((name, CelProgram(expression, key=where, view=view)))

    def step(record: ConnectorRecord) -> ConnectorRecord:
        changes: dict[str, Any] = {}
        extensions: dict[str, Any] | None = None
        for name, program in programs:
            value = program(record)
            if name in _SETTABLE:
                changes["timestamp" if name == "time" else name] = _attribute_value(name, value, program)
                continue
            if extensions is None:
                extensions = dict(record.extensions)
            if value is None:
                extensions.pop(name, None)
            elif isinstance(value, str | int | bool):
                extensions[name] = value
            else:
                kind = type(value).__name__
                raise DataError(f"{program.expression!r} gave {kind} {value!r}; an extension is a string, int or bool")
        if extensions is not None:
            changes["extensions"] = extensions
        return record.replace(**changes)

    return step


def _attribute_value(name: str, value: Any, program: CelProgram) -> Any:
    if name == "time":
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value
        raise DataError(f"{program.expression!r} gave {value!r}, not a timestamp (use timestamp(...))")
    if name == "dataschema" and value is None:
        return None
    if isinstance(value, str) and value:
        return value
    raise DataError(f"{program.expression!r} gave {value!r}; '{name}' is a non-empty string")


def _remove(names: list[str], key: str) -> Step:
    for name in names:
        if name != "dataschema" and (name in CONTEXT_ATTRIBUTES or not EXTENSION_NAME.fullmatch(name)):
            fix = "name extensions (or dataschema); an event keeps its attributes"
            raise ConfigError(key, f"{name!r} cannot be removed", fix)
    gone = frozenset(names)
    schema_too = "dataschema" in gone

    def step(record: ConnectorRecord) -> ConnectorRecord:
        extensions = {name: value for name, value in record.extensions.items() if name not in gone}
        if schema_too:
            return record.replace(extensions=extensions, dataschema=None)
        return record.replace(extensions=extensions)

    return step


def _map(reshape: Reshape) -> Step:
    def step(record: ConnectorRecord) -> ConnectorRecord:
        data, content_type = reshape(record)
        if is_json_content_type(record.effective_content_type) and is_json_content_type(content_type):
            content_type = record.effective_content_type or content_type
        return record.replace(data=data, datacontenttype=content_type, dataschema=None)

    return step


def _mask(spec: MaskSpec) -> Step:
    paths = [tuple(path.split(".")) for path in spec.fields]
    if spec.method == "hmac":
        assert spec.secret is not None  # MaskSpec's check
        key = spec.secret.get_secret_value().encode()

        def hide(value: Any) -> Any:
            if value is None:
                return None
            try:
                text = value.encode() if isinstance(value, str) else orjson.dumps(value)
            except (TypeError, UnicodeEncodeError) as exc:  # nested too deep for JSON, or text that is not Unicode
                raise DataError(f"mask: a value cannot be hashed: {exc}") from None
            return hmac.new(key, text, hashlib.sha256).hexdigest()

    else:
        replacement = spec.replacement

        def hide(value: Any) -> Any:
            return None if value is None else replacement

    def step(record: ConnectorRecord) -> ConnectorRecord:
        data = event_data(record)
        if data is None:
            return record
        if not isinstance(data, dict | list):
            raise DataError(f"mask needs JSON object or array data, not {type(data).__name__}: the fields could not be masked")
        for path in paths:
            data = _masked(data, path, hide)
        return record.replace(data=data)

    return step


def _masked(node: Any, path: tuple[str, ...], hide: Callable[[Any], Any]) -> Any:
    """``node`` with the value at ``path`` hidden, copied along the path (the record's data is never changed);
    ``*`` is every element of a list or value of an object; an absent path leaves ``node`` as it is."""
    if not path:
        return hide(node)
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(node, list):
            return [_masked(item, rest, hide) for item in node]
        if isinstance(node, dict):
            return {name: _masked(item, rest, hide) for name, item in node.items()}
        return node
    if isinstance(node, dict) and head in node:
        copy = dict(node)
        copy[head] = _masked(node[head], rest, hide)
        return copy
    if isinstance(node, list) and head.isdigit() and int(head) < len(node):
        items = list(node)
        items[int(head)] = _masked(node[int(head)], rest, hide)
        return items
    return node
