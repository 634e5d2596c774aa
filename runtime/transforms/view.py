"""How a transform step sees a record: as the CloudEvent it is (sink) or is about to become (source).

A source's records leave ``id``, ``source``, ``type`` and ``subject`` to the worker, which fills
them in when it publishes (:mod:`runtime.publishing`); a step must see what will be published, so
:class:`EventView` fills in the same values: the id derived from the record's position, the
configured source, type and topic. A sink's records arrive whole, and its view fills in nothing.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from runtime.errors import DataError
from runtime.protocol import jackson
from runtime.protocol.events import is_json_content_type
from runtime.record import ConnectorRecord, derive_event_id

__all__ = ["ATTRIBUTES", "EventView", "event_data", "json_value"]

ATTRIBUTES = ("id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema")
"""The CloudEvent context attributes a step can read, beside ``data`` and ``extensions``."""


@dataclass(frozen=True, slots=True)
class EventView:
    """The values a source's worker fills in (``connector``: the instance name event ids derive from); all
    None for a sink."""

    connector: str = ""
    source: str | None = None
    type: str | None = None
    subject: str | None = None

    def getter(self, name: str) -> Callable[[ConnectorRecord], Any]:
        """How to read ``name`` (an attribute, ``data`` or ``extensions``) of a record as its event has it."""
        if name == "data":
            return event_data
        if name == "extensions":
            return _extensions
        if name == "time":
            return _time
        if name == "specversion":
            return _specversion
        if name == "id":
            return self._event_id
        read = operator.attrgetter(name)
        default = {"source": self.source, "type": self.type, "subject": self.subject}.get(name)
        if default is None:
            return read
        return lambda record: read(record) or default

    def _event_id(self, record: ConnectorRecord) -> str | None:
        if record.id is not None or not record.offset:
            return record.id
        return derive_event_id(self.connector, record.partition, record.offset)


def event_data(record: ConnectorRecord) -> Any:
    """The record's data as its event carries it: bytes under a JSON content type are the JSON value they hold."""
    data = record.data
    if isinstance(data, bytes) and is_json_content_type(record.datacontenttype):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"data is declared {record.datacontenttype} but is not valid JSON: {exc}") from None
    return data


def json_value(text: bytes) -> Any:
    """The one JSON value ``text`` holds, integers beyond 64 bits kept exact (orjson would read them as floats);
    ValueError when it is not JSON."""
    if not jackson.has_long_digits(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(str(exc)) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _extensions(record: ConnectorRecord) -> Any:
    extensions = record.extensions
    return extensions if type(extensions) is dict else dict(extensions)


def _time(record: ConnectorRecord) -> Any:
    return record.timestamp


def _specversion(_record: ConnectorRecord) -> str:
    return "1.0"
