"""The one mapping between a ``ConnectorRecord`` and a CloudEvent 1.0, and the encodings connectors use.

A record becomes the attributes and data of its event (:func:`event_attributes`), and the attributes
and data of an event become a record (:func:`record_of_attributes`); every path goes through these two:

* the EventMesh TCP message body, Java-exact (:func:`record_to_body`, :func:`body_to_record`; the
  wire codec itself, on attributes and bytes, is :mod:`runtime.protocol.events`), what the workers
  publish and receive;
* the CloudEvents SDK's ``CloudEvent`` (:func:`record_to_cloudevent`, :func:`cloudevent_to_record`);
* structured-mode CloudEvents JSON (``application/cloudevents+json``), what the connectors that
  carry whole events through another system (file lines, Redis, RabbitMQ, MQTT, NATS, HTTP) write
  and read, so a sink's output is a source's input and any CloudEvents SDK can read it. Data follows
  the format's rules: JSON data (a JSON content type, or none with non-text data) is embedded as a
  JSON value, text as a string, bytes as ``data_base64``. The SDK's own JSON format uses the standard
  ``json`` module; this one (orjson) is several times faster and keeps the record's data types exactly.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import DataError
from runtime.protocol.events import (
    CLOUDEVENTS_CONTENT_TYPE,
    EncodedEvent,
    attribute_problem,
    attributes_to_body,
    body_to_attributes,
    is_json_content_type,
)
from runtime.record import CONTEXT_ATTRIBUTES, ConnectorRecord, JsonValue, derive_event_id

__all__ = [
    "CLOUDEVENTS_JSON",
    "PayloadFormat",
    "SinkPayload",
    "body_to_record",
    "cloudevent_to_record",
    "data_bytes",
    "event_attributes",
    "is_json_content_type",
    "record_from_json",
    "record_from_mapping",
    "record_from_payload",
    "record_of_attributes",
    "record_to_body",
    "record_to_cloudevent",
    "record_to_json",
    "record_to_mapping",
    "record_to_payload",
]

CLOUDEVENTS_JSON = CLOUDEVENTS_CONTENT_TYPE
"""The content type of a structured CloudEvent in JSON: ``application/cloudevents+json``."""
_REQUIRED = ("id", "source", "type")
_OPTIONAL = ("subject", "datacontenttype", "dataschema")


def event_attributes(
    record: ConnectorRecord,
    *,
    connector: str,
    default_source: str,
    default_type: str,
    default_subject: str | None = None,
) -> tuple[dict[str, Any], Any]:
    """(the attributes, the data) of the event a source publishes for ``record``, before they are validated."""
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


def _utc_now() -> datetime:
    return datetime.now(UTC)


def record_of_attributes(attributes: dict[str, Any], data: Any, *, now: Callable[[], datetime] = _utc_now) -> ConnectorRecord:
    """The record a sink receives for the valid v1.0 event with these attributes (consumed) and ``data``:
    attributes kept, extensions as given; ``now()`` (timezone-aware) is asked only when there is no time."""
    moment = attributes.pop("time", None)
    # Most events carry no extension: one C-level subset test spares the loop over their attributes.
    extensions = (
        {}
        if attributes.keys() <= CONTEXT_ATTRIBUTES
        else {name: value for name, value in attributes.items() if name not in CONTEXT_ATTRIBUTES}
    )
    get = attributes.get
    return ConnectorRecord(
        data=data,
        timestamp=now() if moment is None else moment,
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        subject=get("subject"),
        datacontenttype=get("datacontenttype"),
        dataschema=get("dataschema"),
        extensions=extensions,
    )


def record_to_body(
    record: ConnectorRecord,
    *,
    connector: str,
    default_source: str,
    default_type: str,
    default_subject: str | None = None,
) -> EncodedEvent:
    """The message body a source publishes for ``record`` (once per polled record): the bytes and the verdicts
    of ``event_to_body(record_to_cloudevent(record, ...))`` without the CloudEvent, which a test holds equal."""
    attributes, data = event_attributes(
        record, connector=connector, default_source=default_source, default_type=default_type, default_subject=default_subject
    )
    problem = attribute_problem(attributes)
    if problem is not None:
        raise DataError(f"record cannot become a CloudEvent: {problem}")
    return EncodedEvent(attributes_to_body(attributes, data))


def body_to_record(body: bytes, *, now: Callable[[], datetime], new_id: Callable[[], str]) -> ConnectorRecord:
    """The record a sink receives for a pushed message body (once per pushed event): the record and the
    verdicts of ``cloudevent_to_record(body_to_event(body))`` without the CloudEvent, which a test holds
    equal. ``now()`` and ``new_id()`` are asked only for a body without ``time`` or ``id``."""
    attributes, data = body_to_attributes(body, new_id=new_id)
    return record_of_attributes(attributes, data, now=now)


def record_to_cloudevent(
    record: ConnectorRecord,
    *,
    connector: str,
    default_source: str,
    default_type: str,
    default_subject: str | None = None,
) -> CloudEvent:
    """The CloudEvent a source publishes for ``record``.

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


def cloudevent_to_record(event: CloudEvent) -> ConnectorRecord:
    """The record a sink receives for ``event``: attributes kept, extensions as given."""
    return record_of_attributes(dict(event.get_attributes()), event.get_data())


_REQUIRED = ("id", "source", "type")
_OPTIONAL = ("subject", "datacontenttype", "dataschema")


def record_to_mapping(record: ConnectorRecord) -> dict[str, Any]:
    """The structured CloudEvent of ``record`` as a dict ready for orjson (raw JSON data kept as a Fragment)."""
    missing = [name for name in _REQUIRED if not getattr(record, name)]
    if missing:
        raise DataError(f"event has no {', '.join(missing)}: a CloudEvent needs id, source and type")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": record.id,
        "source": record.source,
        "type": record.type,
    }
    for name in _OPTIONAL:
        value = getattr(record, name)
        if value is not None:
            event[name] = value
    event["time"] = record.timestamp
    event.update(record.extensions)
    data = record.data
    content_type = record.effective_content_type
    if isinstance(data, bytes):
        if is_json_content_type(content_type):
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"data is declared {content_type} but is not valid JSON: {exc}") from exc
            event["data"] = orjson.Fragment(data)
        else:
            event["data_base64"] = base64.b64encode(data).decode("ascii")
    elif data is not None:
        if not isinstance(data, str) and not is_json_content_type(content_type):
            raise DataError(f"data of type {type(data).__name__} needs a JSON content type, not {content_type!r}")
        event["data"] = data
    return event


def record_to_json(record: ConnectorRecord) -> bytes:
    """``record`` as one line of structured CloudEvents JSON (no trailing newline)."""
    try:
        return orjson.dumps(record_to_mapping(record), option=orjson.OPT_UTC_Z)
    except TypeError as exc:
        raise DataError(f"event data cannot be written as JSON: {exc}") from exc


def data_bytes(record: ConnectorRecord) -> bytes:
    """The data of ``record`` alone, as the body of a message: bytes as they are, text as UTF-8, JSON encoded."""
    data = record.data
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str) and not is_json_content_type(record.effective_content_type):
        return data.encode()
    try:
        return orjson.dumps(data)
    except TypeError as exc:
        raise DataError(f"event data cannot be written as JSON: {exc}") from exc


SinkPayload = Literal["cloudevent", "data"]
"""What a sink writes as a message body: the whole structured CloudEvent, or the event data alone."""


def record_to_payload(record: ConnectorRecord, payload: SinkPayload) -> tuple[bytes, str | None]:
    """The message body a sink writes for ``record``, and its content type.

    ``cloudevent``: the structured CloudEvent JSON under :data:`CLOUDEVENTS_JSON`, which a source reads
    back whole; ``data``: the data alone under the event's own content type (``None`` when it has
    none). :class:`DataError` when the event cannot be written so (the sink dead-letters it).
    """
    if payload == "cloudevent":
        return record_to_json(record), CLOUDEVENTS_JSON
    return data_bytes(record), record.effective_content_type


def record_from_json(body: bytes | str, **position: Any) -> ConnectorRecord:
    """Parse one structured CloudEvent; raises :class:`DataError` saying what is wrong with it.

    ``position`` (``partition``, ``offset``, ``extensions`` to add) is passed on to :func:`record_from_mapping`.
    """
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DataError(f"not a structured CloudEvent: invalid JSON ({exc})") from exc
    return record_from_mapping(event, **position)


def record_from_mapping(
    event: Any,
    *,
    partition: Mapping[str, JsonValue] | None = None,
    offset: Mapping[str, JsonValue] | None = None,
    extensions: Mapping[str, str | int | bool] | None = None,
) -> ConnectorRecord:
    """The record of a decoded structured CloudEvent (a JSON object), at a source's position if given."""
    if not isinstance(event, dict):
        raise DataError(f"not a structured CloudEvent: expected a JSON object, got {type(event).__name__}")
    attributes: dict[str, Any] = dict(event)
    if attributes.pop("specversion", None) != "1.0":
        raise DataError("not a CloudEvent 1.0: 'specversion' must be \"1.0\"")
    for name in _REQUIRED:
        if not isinstance(attributes.get(name), str) or not attributes[name]:
            raise DataError(f"CloudEvent attribute '{name}' is missing or not a non-empty string")
    for name in _OPTIONAL:
        if name in attributes and (not isinstance(attributes[name], str) or not attributes[name]):
            raise DataError(f"CloudEvent attribute '{name}' must be a non-empty string")
    timestamp = _parse_time(attributes.pop("time", None))
    data: JsonValue | bytes = attributes.pop("data", None)
    encoded = attributes.pop("data_base64", None)
    if encoded is not None:
        if data is not None:
            raise DataError("a CloudEvent carries 'data' or 'data_base64', not both")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise DataError(f"'data_base64' is not valid base64: {exc}") from exc
    fixed: Mapping[str, Any] = {name: attributes.pop(name, None) for name in (*_REQUIRED, *_OPTIONAL)}
    if extensions:
        attributes.update(extensions)
    return ConnectorRecord(
        data=data, timestamp=timestamp, extensions=attributes, partition=partition or {}, offset=offset or {}, **fixed
    )


def _parse_time(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise DataError("CloudEvent attribute 'time' must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DataError(f"CloudEvent attribute 'time' is not RFC 3339: {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


PayloadFormat = Literal["cloudevents", "json", "text", "binary"]
"""How a source reads message payloads: a structured CloudEvent, JSON data, UTF-8 text or raw bytes."""


def record_from_payload(
    payload: bytes,
    payload_format: PayloadFormat,
    *,
    partition: Mapping[str, JsonValue],
    offset: Mapping[str, JsonValue],
    extensions: Mapping[str, str | int | bool] | None = None,
    timestamp: datetime | None = None,
) -> ConnectorRecord:
    """The record of one message payload read by a source, at ``partition``/``offset``.

    A payload that is not what ``payload_format`` promises is not dropped: invalid JSON keeps its
    JSON content type, so the worker dead-letters it with the parse error as the reason; a payload
    that is no valid CloudEvent travels on as binary data with the reason in the ``meshformaterror``
    extension, so a stray message on a shared queue is visible, not lost. ``timestamp`` (the time
    the system stored the message) is the time of a record that is not a CloudEvent with its own;
    without it, the time of reading.
    """
    position: dict[str, Any] = {"partition": partition, "offset": offset, "extensions": extensions or {}}
    if payload_format == "cloudevents":
        try:
            return record_from_json(payload, **position)
        except DataError as exc:
            position["extensions"] = {**position["extensions"], "meshformaterror": exc.reason[:500]}
            if timestamp is not None:
                position["timestamp"] = timestamp
            return ConnectorRecord(data=payload, datacontenttype="application/octet-stream", **position)
    if timestamp is not None:
        position["timestamp"] = timestamp
    if payload_format == "json":
        try:
            return ConnectorRecord(data=orjson.loads(payload), datacontenttype="application/json", **position)
        except orjson.JSONDecodeError:
            return ConnectorRecord(data=payload, datacontenttype="application/json", **position)
    if payload_format == "text":
        try:
            return ConnectorRecord(data=payload.decode(), datacontenttype="text/plain", **position)
        except UnicodeDecodeError:
            return ConnectorRecord(data=payload, datacontenttype="text/plain", **position)
    return ConnectorRecord(data=payload, datacontenttype="application/octet-stream", **position)
