"""ConnectorRecord, what sources produce and sinks consume, and its CloudEvents 1.0 mapping.

Data keeps its meaning exactly (the Java v1 worker turns the string ``hello`` into ``"hello"``; we
do not):

* ``bytes`` is binary data (``application/octet-stream`` unless the record says otherwise);
* ``str`` with a non-JSON content type is text (``text/plain`` by default);
* with a JSON content type (``application/json``, ``*+json``, ``text/json``) ``data`` is the
  *parsed* JSON value: a ``dict``, ``list``, number, bool, ``None`` or a ``str`` holding a JSON
  string. dict/list/number/bool data with no content type is JSON (``application/json``).

The topic of a record is its CloudEvent ``subject``. When a source gives no ``id``, it is derived
from the connector name, partition and offset (:func:`derive_event_id`), so a replayed record
carries the same ``source`` + ``id`` and idempotent sinks drop the duplicate.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import DataError

__all__ = [
    "JsonValue",
    "ConnectorRecord",
    "derive_event_id",
    "event_attributes",
    "is_json_content_type",
    "partition_key",
    "record_to_cloudevent",
    "cloudevent_to_record",
    "EXTENSION_NAME",
]

JsonValue: TypeAlias = Any
"""Any value ``orjson`` can serialize: dict, list, str, int, float, bool or None."""

EXTENSION_NAME = re.compile(r"[a-z0-9]{1,64}")  # used with fullmatch: "$" would let a trailing newline through
_JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$")
_CONTEXT_ATTRIBUTES = frozenset(
    {"id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)
# Events derived from positions share this namespace, so ids are stable across versions.
_EVENT_ID_NAMESPACE = uuid.UUID("6f7e2c1a-3b8d-5e0f-9a41-0c2d7b6e5f13")
_EVENT_ID_NAMESPACE_BYTES = _EVENT_ID_NAMESPACE.bytes


@functools.lru_cache(maxsize=256)  # a connector uses a handful of content types, asked once per record
def is_json_content_type(content_type: str | None) -> bool:
    """True when the content type says the data is JSON (per the CloudEvents JSON format)."""
    return content_type is not None and _JSON_CONTENT_TYPE.match(content_type) is not None


def partition_key(partition: Mapping[str, JsonValue]) -> str:
    """The canonical text of a partition map: the key offsets are stored under."""
    return orjson.dumps(partition, option=orjson.OPT_SORT_KEYS).decode()


def derive_event_id(connector: str, partition: Mapping[str, JsonValue], offset: Mapping[str, JsonValue]) -> str:
    """A stable event id for the record at ``offset`` of ``partition`` of ``connector``: ``str(uuid.uuid5(...))``,
    computed without the UUID object (once per published record)."""
    name = "\x00".join((connector, partition_key(partition), orjson.dumps(offset, option=orjson.OPT_SORT_KEYS).decode()))
    digest = bytearray(hashlib.sha1(_EVENT_ID_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True)
class ConnectorRecord:
    """One unit of data moving through a connector.

    ``partition`` and ``offset`` are opaque, JSON-able maps owned by the source: the framework
    stores the offset of the last record of each partition once the mesh acknowledged it, and
    gives it back through ``SourceContext.offset(partition)`` after a restart. Each record of a
    partition must carry a distinct offset. Sinks receive records with empty position maps.
    """

    data: JsonValue | bytes = None
    partition: Mapping[str, JsonValue] = field(default_factory=dict)
    offset: Mapping[str, JsonValue] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise DataError("record timestamp must be timezone-aware (use datetime.now(UTC))")
        for name, value in self.extensions.items():
            if not EXTENSION_NAME.fullmatch(name) or name in _CONTEXT_ATTRIBUTES:
                raise DataError(
                    f"extension name {name!r} is invalid: CloudEvents extension names are 1-64 "
                    "lower-case letters or digits and must not shadow a context attribute"
                )
            if value is None or not isinstance(value, str | int | bool):
                raise DataError(f"extension {name!r} must be a string, integer or boolean, got {value!r}")

    @property
    def topic(self) -> str | None:
        """The EventMesh topic of this record: its CloudEvent subject."""
        return self.subject

    @property
    def effective_content_type(self) -> str | None:
        """The content type the data is published with (explicit, or inferred from its type)."""
        if self.datacontenttype is not None:
            return self.datacontenttype
        if self.data is None:
            return None
        if isinstance(self.data, bytes):
            return "application/octet-stream"
        if isinstance(self.data, str):
            return "text/plain"
        return "application/json"


def record_to_cloudevent(
    record: ConnectorRecord,
    *,
    connector: str,
    default_source: str,
    default_type: str,
    default_subject: str | None = None,
) -> CloudEvent:
    """Build the CloudEvent a source publishes for ``record``.

    Raises :class:`DataError` when the record cannot become a valid event (e.g. text data under a
    JSON content type that is not valid JSON, or no topic at all).
    """
    attributes, data = event_attributes(
        record, connector=connector, default_source=default_source, default_type=default_type, default_subject=default_subject
    )
    try:
        return CloudEvent(attributes, data)
    except Exception as exc:  # the SDK raises its own validation errors: map them at this seam
        raise DataError(f"record cannot become a CloudEvent: {exc}") from exc


def event_attributes(
    record: ConnectorRecord,
    *,
    connector: str,
    default_source: str,
    default_type: str,
    default_subject: str | None = None,
) -> tuple[dict[str, Any], Any]:
    """(the attributes, the data) of the event for ``record``, before the CloudEvents SDK validates them."""
    content_type = record.effective_content_type
    data = record.data
    if isinstance(data, bytes) and is_json_content_type(content_type):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"data is declared {content_type} but is not valid JSON: {exc}") from exc
    elif data is not None and not isinstance(data, (str, bytes)) and not is_json_content_type(content_type):
        raise DataError(f"data of type {type(data).__name__} needs a JSON content type, not {content_type!r}")
    subject = record.subject or default_subject
    if not subject:
        raise DataError("record has no subject (topic) and the connector config names none")
    if record.id is not None:
        event_id = record.id
    elif record.offset:
        event_id = derive_event_id(connector, record.partition, record.offset)
    else:
        event_id = str(uuid.uuid4())
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": record.source or default_source,
        "type": record.type or default_type,
        "subject": subject,
        "time": record.timestamp,
    }
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if record.dataschema is not None:
        attributes["dataschema"] = record.dataschema
    if record.extensions:
        attributes.update(record.extensions)
    return attributes, data


def cloudevent_to_record(event: CloudEvent) -> ConnectorRecord:
    """The record a sink receives for ``event``: attributes kept, extensions as given."""
    attributes = event.get_attributes()
    extensions = {k: v for k, v in attributes.items() if k not in _CONTEXT_ATTRIBUTES}
    time = attributes.get("time")
    timestamp = time if isinstance(time, datetime) else datetime.now(UTC)
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return ConnectorRecord(
        data=event.get_data(),
        timestamp=timestamp,
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        subject=attributes.get("subject"),
        datacontenttype=attributes.get("datacontenttype"),
        dataschema=attributes.get("dataschema"),
        extensions=extensions,
    )
