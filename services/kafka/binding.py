"""The CloudEvents Kafka protocol binding, both ways: records to Kafka messages and Kafka messages to records.

*Binary mode*: the value is the event data alone, its ``datacontenttype`` the ``content-type``
header, and every other attribute and extension a ``ce_<name>`` header holding its value as UTF-8
text (the binding carries every value as a string). *Structured mode*: the value is the whole event as
``application/cloudevents+json``, named by the ``content-type`` header. In both, the message key is
the ``partitionkey`` extension (CloudEvents' partitioning extension), as the binding maps it.

Reading, a message is structured when its ``content-type`` starts with ``application/cloudevents``,
binary when it has a ``ce_specversion`` header, and otherwise plain data read in the source's
``format``. Whatever it is, the record carries where it came from (``kafkatopic``,
``kafkapartition``, and as decimal text ``kafkaoffset`` and ``kafkatimestamp`` in milliseconds),
its key (``partitionkey``) and the headers that are not binding attributes (``kafkaheaders``, a
JSON array of ``[name, value]`` pairs, in order, duplicates kept). A key or header value that is
not UTF-8 text, or a ``ce_`` header that cannot be a CloudEvents attribute, cannot be carried: the
record is refused with the reason and the worker dead-letters it (its data and position kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from runtime import (
    CLOUDEVENTS_JSON,
    ConnectorRecord,
    DataError,
    JsonValue,
    PayloadFormat,
    data_bytes,
    is_json_content_type,
    record_from_json,
    record_from_payload,
    record_to_json,
)

__all__ = ["KafkaMessage", "Position", "record_from_message", "record_to_message"]

Headers = Sequence[tuple[str, bytes | None]]

_PREFIX = "ce_"
_CONTENT_TYPE = "content-type"
_KEY_EXTENSION = "partitionkey"
_FIXED_ATTRIBUTES = ("id", "source", "type", "subject", "dataschema")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message was read: its topic, partition, offset and broker timestamp (ms since the epoch)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def partition_map(self) -> dict[str, JsonValue]:
        return {"topic": self.topic, "partition": self.partition}

    @property
    def offset_map(self) -> dict[str, JsonValue]:
        return {"offset": self.offset}


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """What a sink sends for one record: value, key and headers."""

    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


# -- writing --------------------------------------------------------------------------------------


def record_to_message(record: ConnectorRecord, *, mode: str, key: bytes | None) -> KafkaMessage:
    """The message of ``record`` in binding ``mode`` (``binary`` or ``structured``); DataError if it cannot be one."""
    if mode == "structured":
        return KafkaMessage(record_to_json(record), key, [(_CONTENT_TYPE, CLOUDEVENTS_JSON.encode())])
    missing = [name for name in ("id", "source", "type") if not getattr(record, name)]
    if missing:
        raise DataError(f"event has no {', '.join(missing)}: a CloudEvent needs id, source and type")
    headers = [(f"{_PREFIX}specversion", b"1.0")]
    for name in _FIXED_ATTRIBUTES:
        value = getattr(record, name)
        if value is not None:
            headers.append((_PREFIX + name, value.encode()))
    headers.append((f"{_PREFIX}time", record.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()))
    for name, value in record.extensions.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        headers.append((_PREFIX + name, text.encode()))
    content_type = record.effective_content_type
    if content_type is not None:
        headers.append((_CONTENT_TYPE, content_type.encode()))
    return KafkaMessage(data_bytes(record), key, headers)


# -- reading --------------------------------------------------------------------------------------


def record_from_message(
    value: bytes | None, key: bytes | None, headers: Headers, position: Position, payload_format: PayloadFormat
) -> ConnectorRecord:
    """The record of one message read at ``position`` (see the module docstring); never raises for bad input."""
    extensions: dict[str, str | int | bool] = {
        "kafkatopic": position.topic,
        "kafkapartition": position.partition,
        # Offsets and epoch milliseconds outgrow the 32-bit integers the Java runtime reads: text.
        "kafkaoffset": str(position.offset),
        "kafkatimestamp": str(position.timestamp_ms),
    }
    where: dict[str, Any] = {"partition": position.partition_map, "offset": position.offset_map}
    problems: list[str] = []
    if key is not None:
        try:
            extensions[_KEY_EXTENSION] = key.decode()
        except UnicodeDecodeError:
            problems.append("the message key is not UTF-8 text, so it cannot be the partitionkey extension")
    content_type = _header(headers, _CONTENT_TYPE)
    binding = payload_format == "cloudevents"
    structured = binding and content_type is not None and content_type.lower().startswith("application/cloudevents")
    binary = binding and not structured and any(name == f"{_PREFIX}specversion" for name, _ in headers)
    carried = [(name, raw) for name, raw in headers if not (binding and (name.startswith(_PREFIX) or name == _CONTENT_TYPE))]
    if carried:
        pairs = []
        for name, raw in carried:
            try:
                pairs.append([name, None if raw is None else raw.decode()])
            except UnicodeDecodeError:
                problems.append(f"the value of header {name[:100]!r} is not UTF-8 text")
        extensions["kafkaheaders"] = orjson.dumps(pairs).decode()
    moment = datetime.fromtimestamp(position.timestamp_ms / 1000, UTC)
    try:
        if binary:
            record = _record_from_binary(value, headers, content_type, where, extensions, received=moment)
        elif structured:
            record = record_from_json(value or b"", **where, extensions=extensions)
        elif value is None:  # a tombstone: an event without data
            record = ConnectorRecord(timestamp=moment, extensions=extensions, **where)
        else:
            record = record_from_payload(value, payload_format, **where, extensions=extensions, timestamp=moment)
    except DataError as exc:
        problems.append(exc.reason)
        record = _undecodable(value, moment, where, extensions)
    if problems:
        return record.replace(refusal="; ".join(problems))
    return record


def _header(headers: Headers, wanted: str) -> str | None:
    for name, raw in headers:
        if name.lower() == wanted and raw is not None:
            return raw.decode(errors="replace")
    return None


def _record_from_binary(
    value: bytes | None,
    headers: Headers,
    content_type: str | None,
    where: Mapping[str, Any],
    extensions: dict[str, str | int | bool],
    *,
    received: datetime,
) -> ConnectorRecord:
    """A binary-mode event: attributes from the ``ce_`` headers, data from the value; ``received`` is
    its time when it has no ``ce_time``."""
    attributes: dict[str, str] = {}
    for name, raw in headers:
        if not name.startswith(_PREFIX):
            continue
        if raw is None:
            raise DataError(f"binary-mode header {name[:100]!r} has no value")
        try:
            attributes[name[len(_PREFIX) :]] = raw.decode()
        except UnicodeDecodeError as exc:
            raise DataError(f"binary-mode header {name[:100]!r} is not UTF-8 text") from exc
    if attributes.pop("specversion") != "1.0":
        raise DataError("not a CloudEvent 1.0: the ce_specversion header must be 1.0")
    moment = attributes.pop("time", None)
    fixed = {name: attributes.pop(name, None) for name in _FIXED_ATTRIBUTES}
    for name in ("id", "source", "type"):
        if not fixed[name]:
            raise DataError(f"binary-mode CloudEvent has no ce_{name} header")
    attributes.pop("datacontenttype", None)  # the content-type header is the binding's carrier of it
    data: JsonValue | bytes = value
    if value is not None and is_json_content_type(content_type):
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = value  # declared JSON and is not: the worker dead-letters it with the parse error
    elif value is not None and content_type is not None and content_type.lower().startswith("text/"):
        try:
            data = value.decode()
        except UnicodeDecodeError as exc:
            raise DataError(f"data declared {content_type} is not UTF-8 text") from exc
    return ConnectorRecord(
        data=data,
        datacontenttype=content_type,
        timestamp=received if moment is None else _parse_time(moment),
        id=fixed["id"],
        source=fixed["source"],
        type=fixed["type"],
        subject=fixed["subject"],
        dataschema=fixed["dataschema"],
        # The broker's extensions win over headers of the same name: they say where the event was read.
        extensions={**attributes, **extensions},
        **where,
    )


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DataError(f"the ce_time header is not an RFC 3339 time: {text[:100]!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _undecodable(
    value: bytes | None, moment: datetime, where: Mapping[str, Any], extensions: Mapping[str, str | int | bool]
) -> ConnectorRecord:
    """The record of a message that cannot be read as an event: its bytes, kept for the dead letter."""
    return ConnectorRecord(
        data=value,
        datacontenttype=None if value is None else "application/octet-stream",
        timestamp=moment,
        extensions=extensions,
        **where,
    )
