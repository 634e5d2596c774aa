"""ConnectorRecord, what sources produce and sinks consume (its CloudEvents 1.0 mapping: :mod:`runtime.cloudevents`).

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

import copy
import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

import msgspec
import orjson

from runtime.errors import DataError

__all__ = [
    "CONTEXT_ATTRIBUTES",
    "EXTENSION_NAME",
    "ConnectorRecord",
    "JsonValue",
    "derive_event_id",
    "partition_key",
]

JsonValue: TypeAlias = Any
"""Any value ``orjson`` can serialize: dict, list, str, int, float, bool or None."""

EXTENSION_NAME = re.compile(r"[a-z0-9]{1,64}")  # used with fullmatch: "$" would let a trailing newline through
CONTEXT_ATTRIBUTES = frozenset(
    {"id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)
"""The names of a CloudEvent's JSON members that are not extensions."""
# Events derived from positions share this namespace, so ids are stable across versions.
_EVENT_ID_NAMESPACE = uuid.UUID("6f7e2c1a-3b8d-5e0f-9a41-0c2d7b6e5f13")
_EVENT_ID_NAMESPACE_SHA1 = hashlib.sha1(_EVENT_ID_NAMESPACE.bytes)
_RFC4122_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_SORTED = orjson.OPT_SORT_KEYS


def partition_key(partition: Mapping[str, JsonValue]) -> str:
    """The canonical text of a partition map: the key offsets are stored under."""
    return orjson.dumps(partition, option=orjson.OPT_SORT_KEYS).decode()


def derive_event_id(connector: str, partition: Mapping[str, JsonValue], offset: Mapping[str, JsonValue]) -> str:
    """A stable event id for the record at ``offset`` of ``partition`` of ``connector``: ``str(uuid.uuid5(...))``,
    computed without the UUID object (once per published record)."""
    sha1 = _EVENT_ID_NAMESPACE_SHA1.copy()
    # The UTF-8 of the name uuid5 hashes: connector, partition key and offset, joined by NUL.
    sha1.update(b"\x00".join((connector.encode(), orjson.dumps(partition, option=_SORTED), orjson.dumps(offset, option=_SORTED))))
    text = sha1.hexdigest()
    # Version 5 in the 13th hex digit, the RFC 4122 variant in the top two bits of the 17th.
    return f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{_RFC4122_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"


_CHECKED_FIELDS = frozenset({"timestamp", "extensions"})
"""The fields ``ConnectorRecord.__post_init__`` checks: a copy that changes none of them needs no check."""


class ConnectorRecord(msgspec.Struct, frozen=True, gc=False):
    """One unit of data moving through a connector: a frozen value (change a copy with ``record.replace(...)``).

    ``partition`` and ``offset`` are opaque, JSON-able maps owned by the source: the framework
    stores the offset of the last record of each partition once the mesh acknowledged it, and
    gives it back through ``SourceContext.offset(partition)`` after a restart. Each record of a
    partition must carry a distinct offset. Sinks receive records with empty position maps.
    """

    data: JsonValue | bytes = None
    partition: Mapping[str, JsonValue] = msgspec.field(default_factory=dict)
    offset: Mapping[str, JsonValue] = msgspec.field(default_factory=dict)
    timestamp: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, str | int | bool] = msgspec.field(default_factory=dict)
    target: str | None = None
    """Where a sink writes this record when a ``route`` transform step chose it (mysql-sink: the table);
    None: where its config says. Never part of the event: a source's records do not carry it."""
    refusal: str | None = None
    """Set by a source for input it read but cannot turn into an event (a message key that is not
    text, say): the worker dead-letters the record with this reason instead of publishing it."""

    def __post_init__(self) -> None:  # checks the fields of _CHECKED_FIELDS only: replace() relies on it
        if self.timestamp.tzinfo is None:
            raise DataError("record timestamp must be timezone-aware (use datetime.now(UTC))")
        for name, value in self.extensions.items():
            if not EXTENSION_NAME.fullmatch(name) or name in CONTEXT_ATTRIBUTES:
                raise DataError(
                    f"extension name {name!r} is invalid: CloudEvents extension names are 1-64 "
                    "lower-case letters or digits and must not shadow a context attribute"
                )
            if value is None or not isinstance(value, str | int | bool):
                raise DataError(f"extension {name!r} must be a string, integer or boolean, got {value!r}")

    def replace(self, **changes: Any) -> ConnectorRecord:
        """A copy of this record with ``changes`` applied, checked as a new record is."""
        if changes.keys() <= _UNCHECKED_FIELDS:
            # Nothing to check: a copy with the fields set costs half of msgspec's replace, which runs
            # __post_init__ again (transform steps change a field of every record).
            changed = copy.copy(self)
            for name, value in changes.items():
                msgspec.structs.force_setattr(changed, name, value)
            return changed
        return msgspec.structs.replace(self, **changes)

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


_UNCHECKED_FIELDS = frozenset(ConnectorRecord.__struct_fields__) - _CHECKED_FIELDS
