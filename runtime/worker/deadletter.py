"""Dead letters: the event as it was, re-addressed to the dead-letter topic, with why as extensions.

EventMesh routes by the CloudEvent ``subject``, so a dead letter's subject is the dead-letter topic
and the original subject travels in ``dlqtopic``. Everything else of the original event is kept
as it was; ``dlqreason``, ``dlqconnector``, ``dlqtime`` (RFC 3339) and ``dlqattempts`` say what
happened. :func:`replay_event` undoes exactly that (``meshconnect dlq replay``).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from runtime.record import ConnectorRecord

__all__ = ["DLQ_EXTENSIONS", "dead_letter_event", "record_dead_letter_event", "replay_event"]

DLQ_EXTENSIONS = ("dlqreason", "dlqconnector", "dlqtime", "dlqattempts", "dlqtopic")
_MAX_REASON = 1000


def dead_letter_event(event: CloudEvent, *, topic: str, reason: str, connector: str, attempts: int) -> CloudEvent:
    """``event`` re-addressed to ``topic`` with the dead-letter extensions."""
    attributes = dict(event.get_attributes())
    attributes["dlqtopic"] = attributes.get("subject") or ""
    attributes["subject"] = topic
    attributes["dlqreason"] = reason[:_MAX_REASON]
    attributes["dlqconnector"] = connector
    attributes["dlqtime"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    attributes["dlqattempts"] = attempts
    return CloudEvent(attributes, event.get_data())


def record_dead_letter_event(
    record: ConnectorRecord, *, event_id: str, topic: str, reason: str, connector: str, default_source: str, original_topic: str
) -> CloudEvent:
    """A dead letter for a polled record that could not become an event at all: its fields as JSON data."""
    data: Any = record.data
    if isinstance(data, bytes):
        data = {"base64": base64.b64encode(data).decode()}
    fields = {
        "data": data,
        "partition": record.partition,
        "offset": record.offset,
        "source": record.source,
        "type": record.type,
        "datacontenttype": record.datacontenttype,
        "extensions": record.extensions,
    }
    # The record broke the event once already: keep only plain JSON of it, whatever it held.
    body = orjson.loads(orjson.dumps(fields, default=repr, option=orjson.OPT_NON_STR_KEYS))
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "source": default_source,
        "type": "meshconnect.deadletter.record",
        "time": record.timestamp,
        "datacontenttype": "application/json",
    }
    if original_topic:  # a record that named no topic has none to go back to (the SDK refuses an empty subject)
        attributes["subject"] = original_topic
    event = CloudEvent(attributes, body)
    return dead_letter_event(event, topic=topic, reason=reason, connector=connector, attempts=1)


def replay_event(event: CloudEvent) -> CloudEvent:
    """The original event back from a dead letter: its topic restored, the dead-letter extensions gone."""
    attributes = {key: value for key, value in event.get_attributes().items() if key not in DLQ_EXTENSIONS}
    original = event.get_extension("dlqtopic")
    if original:
        attributes["subject"] = original
    return CloudEvent(attributes, event.get_data())
