"""Dead letters: the event as it was, re-addressed to the dead-letter topic, with why as extensions.

EventMesh routes by the CloudEvent ``subject``, so a dead letter's subject is the dead-letter topic
and the original subject travels in ``dlqtopic``. Everything else of the original event is kept
as it was; ``dlqreason``, ``dlqconnector``, ``dlqtime`` (RFC 3339) and ``dlqattempts`` say what
happened. :func:`replay_event` undoes exactly that (``meshconnect dlq replay``).

A dead letter must always get through, or the offsets behind it can never commit. When the mesh
refuses an event for what it is (too large, invalid: see :func:`refusal_of`), the event is never
sent again as it was; :class:`DeadLetterForms` gives smaller forms of its dead letter to try in
turn: whole, then with the data cut to a :data:`PREVIEW_BYTES` preview, then with no data. A cut
dead letter keeps every attribute and says what was cut: ``dlqdatasize`` and ``dlqdatasha256``
(bytes and SHA-256 of the whole data: UTF-8 for text, the bytes for binary data, the JSON text
otherwise) and ``dlqdatacontenttype`` (the original content type; the preview is text/plain).
A worker whose last form is refused too logs the event's attributes and skips it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import FrameTooLargeError, MeshRejectedError
from runtime.record import ConnectorRecord

__all__ = [
    "DLQ_EXTENSIONS",
    "PREVIEW_BYTES",
    "DeadLetterForms",
    "dead_letter_event",
    "record_dead_letter_event",
    "awaits_subscriber",
    "refusal_of",
    "refused_for_size",
    "replay_event",
]

DLQ_EXTENSIONS = (
    "dlqreason",
    "dlqconnector",
    "dlqtime",
    "dlqattempts",
    "dlqtopic",
    "dlqdatasize",
    "dlqdatasha256",
    "dlqdatacontenttype",
)
PREVIEW_BYTES = 128
"""The data a cut dead letter keeps: even with every character escaped in JSON it stays below the
Java runtime's default ``eventMesh.server.maxEventSize`` of 1000."""
_MAX_REASON = 1000
_PREVIEW_CONTENT_TYPE = "text/plain; charset=utf-8"
# What the mesh says when it refuses a publish for the moment, not for the event: a full topic (the
# embedded mesh), the global rate limit and a full session window (the Java runtime), a session going away.
_PASSING_REFUSAL = re.compile(r"\bfull\b|retry later|overload|flow control|too.fast|no session", re.IGNORECASE)
# ...and when it stores nothing on a topic that no group subscribes to yet: the Java runtime's standalone
# store answers "Send message error, topic: X" (its log says "The topic:X is not created"), and "topic X
# is not subscribed" once the last subscriber left. That is a missing consumer, not a bad event: it is
# waited out like an unreachable mesh, never dead-lettered (the dead letter would be refused alike).
_UNSUBSCRIBED_TOPIC = re.compile(r"send message error|not created|not subscribed", re.IGNORECASE)
# ...and when it refuses an event for its size (Java: "event size exceeds the limit: 1000").
_SIZE_REFUSAL = re.compile(r"size|too (large|big)|exceed", re.IGNORECASE)


def refusal_of(error: BaseException) -> str | None:
    """Why the mesh will never take the event it refused with ``error`` as it is; None when the same event
    may be taken later (the mesh is busy or away, or the refusal says so)."""
    if isinstance(error, FrameTooLargeError):
        return str(error)
    if isinstance(error, MeshRejectedError) and not (_PASSING_REFUSAL.search(error.desc or "") or awaits_subscriber(error)):
        return error.desc or f"{error.command} refused with code {error.code} and no reason"
    return None


def awaits_subscriber(error: BaseException) -> bool:
    """The mesh refused the publish because no group subscribes its topic yet: retried for as long as it takes."""
    return isinstance(error, MeshRejectedError) and _UNSUBSCRIBED_TOPIC.search(error.desc or "") is not None


def refused_for_size(refusal: str) -> bool:
    """``refusal`` (from :func:`refusal_of`) is about the event's size: its data must be cut to get through."""
    return _SIZE_REFUSAL.search(refusal) is not None


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
    try:
        body = orjson.loads(orjson.dumps(fields, default=repr, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:  # text that is not valid Unicode: its lone surrogates become U+FFFD
        body = orjson.loads(orjson.dumps(_valid_unicode(fields), default=repr, option=orjson.OPT_NON_STR_KEYS))
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


def _valid_unicode(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_valid_unicode(key): _valid_unicode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_unicode(item) for item in value]
    return value


class DeadLetterForms:
    """The forms of one dead letter, each smaller than the one before: ``whole``, then :meth:`smaller` ones."""

    def __init__(self, whole: CloudEvent) -> None:
        self.whole = whole
        self._previews = [PREVIEW_BYTES, 0]

    def smaller(self, refusal: str) -> CloudEvent | None:
        """The next form after the mesh refused the last one for what it is (``refusal``); None when none is left."""
        if not self._previews:
            return None
        return _cut(self.whole, self._previews.pop(0), refusal)


def _cut(dead_letter: CloudEvent, preview_bytes: int, refusal: str) -> CloudEvent:
    data = dead_letter.get_data()
    if isinstance(data, bytes):
        whole, text = data, base64.b64encode(data[:preview_bytes]).decode()
    else:
        text = data if isinstance(data, str) else orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        whole = text.encode()
    attributes = dict(dead_letter.get_attributes())
    content_type = attributes.pop("datacontenttype", None)
    if content_type is not None:
        attributes["dlqdatacontenttype"] = content_type
    attributes["datacontenttype"] = _PREVIEW_CONTENT_TYPE
    reason = f"{attributes.get('dlqreason') or 'dead-lettered'}; data cut to fit, the mesh refused it whole: {refusal}"
    attributes["dlqreason"] = reason[:_MAX_REASON]
    attributes["dlqdatasize"] = len(whole)
    attributes["dlqdatasha256"] = hashlib.sha256(whole).hexdigest()
    preview = text.encode()[:preview_bytes].decode(errors="ignore")
    return CloudEvent(attributes, preview)


def replay_event(event: CloudEvent) -> CloudEvent:
    """The original event back from a dead letter: its topic restored, the dead-letter extensions gone."""
    attributes = {key: value for key, value in event.get_attributes().items() if key not in DLQ_EXTENSIONS}
    original = event.get_extension("dlqtopic")
    if original:
        attributes["subject"] = original
    return CloudEvent(attributes, event.get_data())
