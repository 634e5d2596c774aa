"""The lossless mapping between a CloudEvent and an EventMesh TCP message body.

Why a mapping at all
--------------------
The Java runtime reads every TCP message body with the CloudEvents JSON format and, when it pushes
the event to a subscriber, writes it again with the format of the event's ``datacontenttype``. Only
``application/cloudevents+json`` has a format there, and under that content type the ``data`` member
must be JSON (it is embedded raw). So on the wire every event has ``datacontenttype:
application/cloudevents+json`` and JSON ``data``; what the event really carried travels in two
extensions:

==================  ==========================================================================
``meshcontenttype``  the original ``datacontenttype`` (present only when the event had one)
``meshdataenc``      how ``data`` was put into JSON:
                     ``json``   JSON data (dict, list, number, bool, or a str under a JSON
                                content type), embedded as it is;
                     ``text``   a str under a non-JSON (or no) content type, as a JSON string;
                     ``base64`` bytes, as a base64 JSON string;
                     ``none``   no data, written as ``""`` (the Java runtime rejects null data).
==================  ==========================================================================

``body_to_event`` undoes this when ``meshdataenc`` is present, so any event (binary, text, JSON,
XML, none) comes back with the same attributes, content type and data type. Events without
``meshdataenc`` (published by Java clients) are returned as they are: ``application/cloudevents+json``
with the parsed JSON value as data (``data_base64`` becomes bytes).

Transport extensions
--------------------
The Java runtime copies the publisher's header properties into the event and stamps it on its way
(``protocoltype``, ``protocolversion``, ``protocoldesc``, ``req*``/``rsp*`` timestamps and addresses,
``rsp0sys``, ``rsp0group``, ``rsp0idc``, ``rsp0ip``). ``body_to_event`` removes them;
``body_to_event_and_transport`` returns them as well, for logging and tracing.

Rules for events
----------------
* Extension names must be ``[a-z0-9]+`` (the runtime turns header properties into extensions and
  refuses other names); ``meshcontenttype``, ``meshdataenc`` and the transport extensions are reserved. Extension values are
  str, bool or int (32-bit, the largest the Java format reads); a datetime is sent as RFC 3339 text.
* Size: the Java runtime refuses events whose ``data`` (its JSON text) is longer than
  ``eventMesh.server.maxEventSize`` characters, **1000 by default**. Raise it on the runtime for real
  payloads; base64 makes binary data 4/3 longer, and text gains its quotes and escapes.
* The body is written in Java ``JsonFormat`` order: specversion, id, source, type, datacontenttype,
  dataschema, subject, time, the extensions in Java ``HashMap`` order, data. ``time`` is RFC 3339 as
  the CloudEvents SDK writes it (``Z`` for UTC).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from cloudevents.core.v1.event import CloudEvent

from runtime.errors import DataError, LocalProtocolError
from runtime.protocol import jackson
from runtime.protocol.frames import (
    MAX_FRAME,
    PREFIX,
    Command,
    Header,
    Package,
    constant_properties,
    encode_fields,
    header_json,
)

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "CORRELATION_EXTENSION",
    "CONTENT_TYPE_EXTENSION",
    "DATA_ENCODING_EXTENSION",
    "EncodedEvent",
    "MAX_EVENT_BODY",
    "PUSH_PROPERTIES",
    "Publishable",
    "TRANSPORT_EXTENSIONS",
    "ack_frame",
    "attribute_problem",
    "attributes_to_body",
    "body_to_attributes",
    "body_to_event",
    "body_to_event_and_transport",
    "correlation_of",
    "event_to_body",
    "is_json_content_type",
    "publish_frame",
    "push_package",
]

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
CONTENT_TYPE_EXTENSION: Final = "meshcontenttype"
DATA_ENCODING_EXTENSION: Final = "meshdataenc"
# How a request and its reply are paired: the storage's correlation id reaches the responder as this
# extension (RocketMQ's CORRELATION_ID, lower case, '_' written '99'); a reply must carry it back.
CORRELATION_EXTENSION: Final = "correlation99id"
_RESERVED_EXTENSIONS = frozenset({CONTENT_TYPE_EXTENSION, DATA_ENCODING_EXTENSION})

_STAMPS = (
    "c2eventmeshtimestamp",
    "eventmesh2mqtimestamp",
    "sendeventmeship",
    "mq2eventmeshtimestamp",
    "receiveeventmeship",
    "eventmesh2ctimestamp",
)
TRANSPORT_EXTENSIONS: Final = frozenset(
    {"protocoltype", "protocolversion", "protocoldesc", "rsp0sys", "rsp0group", "rsp0idc", "rsp0ip"}
    | {prefix + stamp for prefix in ("req", "rsp") for stamp in _STAMPS}
)
"""Extensions the Java runtime adds to an event between publisher and subscriber."""

_ATTRIBUTES_BEFORE_EXTENSIONS = ("id", "source", "type")  # after specversion
_ATTRIBUTES_AFTER_CONTENT_TYPE = ("dataschema", "subject")
_CONTEXT_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_OPTIONAL_TEXT_ATTRIBUTES = ("subject", "datacontenttype", "dataschema")
_INT32 = range(-(2**31), 2**31)
_JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$")

# Header properties in the order the Java SDK's HashMap writes them: protocolversion, protocoldesc, protocoltype.
_PUBLISH_PROPERTIES = {
    version: constant_properties(
        {
            key: {"protocoltype": "cloudevents", "protocolversion": version, "protocoldesc": "tcp"}[key]
            for key in jackson.java_hashmap_order(["protocoltype", "protocolversion", "protocoldesc"])
        }
    )
    for version in ("1.0", "0.3")
}
PUSH_PROPERTIES: Final = constant_properties({"protocoltype": "cloudevents"})
"""The header properties of a pushed event: the runtime writes only the protocol type."""
_EVENT_COMMANDS = (
    Command.ASYNC_MESSAGE_TO_SERVER,
    Command.BROADCAST_MESSAGE_TO_SERVER,
    Command.ASYNC_MESSAGE_TO_CLIENT,
    Command.BROADCAST_MESSAGE_TO_CLIENT,
)
MAX_EVENT_BODY: Final = MAX_FRAME - max(
    # The frame's length field counts the prefix, the header and the body (see encode_fields);
    # a seq of 20 digits holds any 64-bit counter.
    len(PREFIX) + len(header_json(command, 0, None, "9" * 20, properties))
    for command in _EVENT_COMMANDS
    for properties in (*_PUBLISH_PROPERTIES.values(), PUSH_PROPERTIES)
)
"""The largest message body (an event in its wire form) that fits the frame limit, published or pushed."""
_ACK_OF_PUSH = {
    Command.ASYNC_MESSAGE_TO_CLIENT: Command.ASYNC_MESSAGE_TO_CLIENT_ACK,
    Command.BROADCAST_MESSAGE_TO_CLIENT: Command.BROADCAST_MESSAGE_TO_CLIENT_ACK,
    Command.REQUEST_TO_CLIENT: Command.REQUEST_TO_CLIENT_ACK,
    Command.RESPONSE_TO_CLIENT: Command.RESPONSE_TO_CLIENT_ACK,
}
_NO_PROPERTIES: Mapping[str, Any] = MappingProxyType({})
_ACK_BY_PUSH_ORDINAL = {push.value: ack for push, ack in _ACK_OF_PUSH.items()}  # an int hashes in C, a member in Python


@functools.lru_cache(maxsize=256)  # a connector uses a handful of content types, asked once per event
def is_json_content_type(content_type: str | None) -> bool:
    """True when the content type says the data is JSON (per the CloudEvents JSON format)."""
    return content_type is not None and _JSON_CONTENT_TYPE.match(content_type) is not None


def _rfc3339(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _json_bytes(value: Any) -> bytes:
    """``value`` as JSON: orjson's bytes unless they could differ from Jackson's escaping."""
    try:
        fast = orjson.dumps(value)
        if not jackson.orjson_differs(fast):
            return fast
    except TypeError:
        pass  # e.g. integers beyond 64 bits, which Jackson writes (and Java reads as BigInteger)
    try:
        return jackson.dumps(value)
    except TypeError as exc:
        raise DataError(f"event data is not JSON-serializable: {exc}") from exc


_BINARY = (bytes, bytearray, memoryview)
_TEXT_OR_BOOL = (str, bool)


def _wire_data(data: Any, content_type: str | None) -> tuple[str, bytes]:
    """(meshdataenc, the JSON text of ``data`` on the wire); JSON data as orjson writes it, checked by the caller."""
    if data is None:
        return "none", b'""'
    if isinstance(data, _BINARY):
        return "base64", b'"' + base64.b64encode(data) + b'"'
    if isinstance(data, str) and not is_json_content_type(content_type):
        if not data.isascii():
            _check_unicode(data)
        return "text", jackson.dumps_str(data)
    try:
        return "json", orjson.dumps(data)
    except TypeError:
        return "json", _json_bytes(data)


def _check_unicode(text: str) -> None:
    """Refuse text with a lone surrogate (what a surrogateescape decode of bytes that are not UTF-8 leaves):
    Jackson would write it as an escape that no strict JSON reader, the mesh's included, takes back."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise DataError(f"text data is not valid Unicode (a lone surrogate at {exc.start}), which JSON cannot carry") from exc


def event_to_body(event: CloudEvent) -> bytes:
    """The TCP message body for ``event`` (see the module docstring). Raises ``DataError`` for events
    that cannot travel (bad extension names or values, data that is not JSON-serializable)."""
    return attributes_to_body(event.get_attributes(), event.get_data())


class EncodedEvent(msgspec.Struct, frozen=True, gc=False):
    """A CloudEvents 1.0 event already in its message-body form: the client publishes it without encoding it again
    (one per published record: a msgspec Struct, cheaper to build than a frozen dataclass)."""

    body: bytes


Publishable = CloudEvent | EncodedEvent
"""What the client publishes: an event, or one already encoded."""


def attributes_to_body(attributes: Mapping[str, Any], value: Any) -> bytes:
    """The TCP message body of the event with these attributes and data (``value``); the attributes are taken
    as valid CloudEvents 1.0 ones (see :func:`attribute_problem`), the extensions are checked here."""
    content_type = attributes.get("datacontenttype")
    encoding, data = _wire_data(value, content_type)
    document: dict[str, Any] = {"specversion": attributes.get("specversion", "1.0")}
    for name in _ATTRIBUTES_BEFORE_EXTENSIONS:
        document[name] = attributes[name]
    document["datacontenttype"] = CLOUDEVENTS_CONTENT_TYPE
    for name in _ATTRIBUTES_AFTER_CONTENT_TYPE:
        attribute = attributes.get(name)
        if attribute is not None:
            document[name] = attribute
    moment = attributes.get("time")
    if type(moment) is datetime and moment.tzinfo is UTC:
        document["time"] = moment  # orjson writes it as _rfc3339 does (Z, microseconds when set), in C
    elif moment is not None:
        document["time"] = _rfc3339(moment) if isinstance(moment, datetime) else str(moment)
    for name in _extension_order(tuple(attributes), content_type is not None):
        if name == DATA_ENCODING_EXTENSION:
            document[name] = encoding
        elif name == CONTENT_TYPE_EXTENSION:
            document[name] = content_type
        else:
            document[name] = _extension_value(name, attributes[name])
    # One orjson call writes the whole body as Jackson does, unless a string needs Jackson's own escapes:
    # one check over the whole output, then the general writer for the attributes and the data.
    document["data"] = orjson.Fragment(data)
    try:
        fast = orjson.dumps(document, option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError as exc:  # what every value above can still hold: a lone surrogate
        raise DataError(f"event holds text that is not valid Unicode (a lone surrogate), which JSON cannot carry: {exc}") from exc
    if not jackson.orjson_differs(fast):
        return fast
    del document["data"]
    if document.get("time") is moment is not None:
        document["time"] = _rfc3339(moment)
    if encoding == "json":
        data = _json_bytes(value)
    return jackson.dumps(document)[:-1] + b',"data":' + data + b"}"


@functools.lru_cache(maxsize=1024)
def _extension_order(attribute_names: tuple[str, ...], has_content_type: bool) -> tuple[str, ...]:
    """The extensions among an event's attributes, in Java HashMap order, after checking their names."""
    names = tuple(name for name in attribute_names if name not in _CONTEXT_ATTRIBUTES)
    for name in names:
        if name in _RESERVED_EXTENSIONS or name in TRANSPORT_EXTENSIONS or not _EXTENSION_NAME.fullmatch(name):
            raise DataError(
                f"extension name {name!r} cannot travel over EventMesh TCP: use lower-case letters and digits, "
                "and none of the names the mapping and the runtime use (meshcontenttype, meshdataenc, protocol*, req*/rsp*)"
            )
    added = (CONTENT_TYPE_EXTENSION, DATA_ENCODING_EXTENSION) if has_content_type else (DATA_ENCODING_EXTENSION,)
    return tuple(jackson.java_hashmap_order(names + added))


def _extension_value(name: str, value: Any) -> str | bool | int:
    if isinstance(value, _TEXT_OR_BOOL):
        return value
    if isinstance(value, int):
        if value not in _INT32:
            raise DataError(
                f"extension {name!r} = {value} does not fit the 32-bit integer the Java runtime reads; send it as a string"
            )
        return value
    if isinstance(value, datetime):
        return _rfc3339(value)
    raise DataError(f"extension {name!r} must be a string, boolean or integer, got {type(value).__name__}")


def body_to_event_and_transport(body: bytes) -> tuple[CloudEvent, dict[str, Any]]:
    """The original event of a message body, and the transport extensions the runtime added to it.

    Raises ``DataError`` when the body is not a valid CloudEvent (the caller dead-letters it).
    """
    attributes, data, transport = _decode_body(body, None)
    had_time = "time" in attributes
    try:
        event = CloudEvent(attributes, data)
    except Exception as exc:  # the SDK raises its own validation errors: map them at this seam
        raise DataError(f"message body is not a valid CloudEvent: {exc}") from exc
    if not had_time:
        # The SDK stamps a missing time with "now"; an event published without one stays without one.
        event.get_attributes().pop("time", None)
    return event, transport


def body_to_attributes(body: bytes, *, new_id: Callable[[], str]) -> tuple[dict[str, Any], Any]:
    """(the attributes, the data) of the original event of a message body, without building a CloudEvent
    (once per pushed event): the SDK's defaults (specversion, an id) applied and its verdicts given
    (:func:`attribute_problem`). The codec draws no random id itself: ``new_id()`` is called only for a
    body without ``id``."""
    attributes, data, _ = _decode_body(body, new_id)
    return attributes, data


def _decode_body(body: bytes, new_id: Callable[[], str] | None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The one decoding of a message body: (its valid attributes, its data, the transport extensions); a body
    without ``id`` gets ``new_id()``, or keeps none when ``new_id`` is None (the CloudEvents SDK makes one up).

    A body with no extension of its own (what sources publish as a rule, the runtime's stamps allowed)
    is read by a typed decoder that checks in C what :func:`attribute_problem` checks; any other body
    (an extension, an odd member, invalid JSON) is read by the general reader, which gives the same
    result (a test holds the two equal over generated bodies) and the reason of a refusal.
    """
    plain = _read_plain_body(body, new_id)
    return plain if plain is not None else _read_any_body(body, new_id)


def _read_any_body(body: bytes, new_id: Callable[[], str] | None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """:func:`_decode_body` for any body: the general reader, then the checks."""
    attributes, data, transport = _read_body(body)
    attributes.setdefault("specversion", "1.0")
    if "id" not in attributes and new_id is not None:
        attributes["id"] = new_id()
    problem = attribute_problem(attributes)
    if problem is not None:
        raise DataError(f"message body is not a valid CloudEvent: {problem}")
    return attributes, data, transport


_Text = Annotated[str, msgspec.Meta(min_length=1)]
_UNSET: Any = msgspec.UNSET
_OPTIONAL_TEXT = _Text | msgspec.UnsetType
_PLAIN_ATTRIBUTES = ("source", "type", "id", "subject", "datacontenttype", "dataschema")
# The members of a body without extensions of its own, typed as attribute_problem wants them (in this
# order, which astuple() keeps): what does not fit (an extension, an empty id, a number as subject,
# invalid JSON ...) goes to the general reader.
_PLAIN_MEMBERS: tuple[tuple[str, Any, Any] | tuple[str, Any], ...] = (
    ("source", _Text),
    ("type", _Text),
    *((name, _OPTIONAL_TEXT, _UNSET) for name in _PLAIN_ATTRIBUTES[2:]),
    ("specversion", Literal["1.0"], "1.0"),
    ("time", str | msgspec.UnsetType, _UNSET),
    (DATA_ENCODING_EXTENSION, Literal["json", "text", "base64", "none"] | msgspec.UnsetType, _UNSET),
    (CONTENT_TYPE_EXTENSION, _OPTIONAL_TEXT, _UNSET),
    ("data", Any, None),
    ("data_base64", Any, None),
    *((name, Any, _UNSET) for name in sorted(TRANSPORT_EXTENSIONS)),
)
_PLAIN_DECODER = msgspec.json.Decoder(msgspec.defstruct("_PlainBody", _PLAIN_MEMBERS, forbid_unknown_fields=True))
_MEMBER_NAMES = [member[0] for member in _PLAIN_MEMBERS]
_TIME, _ENCODING, _ORIGINAL_TYPE, _DATA, _BASE64 = (
    _MEMBER_NAMES.index(name) for name in ("time", DATA_ENCODING_EXTENSION, CONTENT_TYPE_EXTENSION, "data", "data_base64")
)
_TRANSPORT_AT = _BASE64 + 1
_TRANSPORT_NAMES = _MEMBER_NAMES[_TRANSPORT_AT:]


def _read_plain_body(body: bytes, new_id: Callable[[], str] | None) -> tuple[dict[str, Any], Any, dict[str, Any]] | None:
    """What :func:`_decode_body` returns for a body without extensions of its own, or None for any other."""
    try:
        values = msgspec.structs.astuple(_PLAIN_DECODER.decode(body))
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None  # the general reader decides (nesting msgspec gives up on, orjson takes up to 1024 levels)
    attributes: dict[str, Any] = {"specversion": "1.0"}
    for name, value in zip(_PLAIN_ATTRIBUTES, values, strict=False):
        if value is not _UNSET:
            attributes[name] = value
    encoding = values[_ENCODING]
    if encoding is _UNSET:
        wire_data, wire_base64 = values[_DATA], values[_BASE64]
        data = _decode_base64(wire_base64) if wire_data is None and wire_base64 is not None else wire_data
    else:
        data = _restore_data(encoding, values[_DATA])
        original_type = values[_ORIGINAL_TYPE]
        if original_type is _UNSET:
            attributes.pop("datacontenttype", None)
        else:
            attributes["datacontenttype"] = original_type
    if values[_TIME] is not _UNSET:
        attributes["time"] = _parse_time(values[_TIME])
    if "id" not in attributes and new_id is not None:
        attributes["id"] = new_id()
    transport_values = values[_TRANSPORT_AT:]
    if transport_values.count(_UNSET) == len(transport_values):
        return attributes, data, {}
    transport = {name: value for name, value in zip(_TRANSPORT_NAMES, transport_values, strict=True) if value is not _UNSET}
    return attributes, data, transport


def _parse_time(moment: str) -> datetime:
    try:
        return datetime.fromisoformat(moment)
    except ValueError as exc:
        raise DataError(f"event time {moment!r} is not RFC 3339") from exc


def attribute_problem(attributes: Mapping[str, Any]) -> str | None:
    """What the CloudEvents SDK would refuse in these v1.0 attributes (see ``CloudEvent.__init__``), or None;
    a timezone on the time and the extension names are left to the caller (``ConnectorRecord`` checks them).
    No ``id`` at all is no refusal: the SDK makes one up."""
    for name in ("id", "source", "type"):
        value = attributes.get(name)
        if (not value or not isinstance(value, str)) and (name != "id" or name in attributes):
            return f"attribute {name!r} must be a non-empty string"
    if attributes["specversion"] != "1.0":
        return "attribute 'specversion' must be '1.0'"
    if "time" in attributes and not isinstance(attributes["time"], datetime):
        return "attribute 'time' must be an RFC 3339 time"
    for name in _OPTIONAL_TEXT_ATTRIBUTES:
        if name in attributes:
            value = attributes[name]
            if not value or not isinstance(value, str):
                return f"attribute {name!r} must be a non-empty string"
    return None


def _read_body(body: bytes) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """(the event's attributes, its data, the transport extensions) of any message body, the mapping undone."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise DataError(f"message body is a JSON {type(document).__name__}, not a CloudEvent object")
    wire_data = document.pop("data", None)
    wire_base64 = document.pop("data_base64", None)
    transport = (
        {}
        if TRANSPORT_EXTENSIONS.isdisjoint(document)
        else {name: document.pop(name) for name in list(document) if name in TRANSPORT_EXTENSIONS}
    )
    encoding = document.pop(DATA_ENCODING_EXTENSION, None)
    original_type = document.pop(CONTENT_TYPE_EXTENSION, None)
    if encoding is None:
        data = _decode_base64(wire_base64) if wire_data is None and wire_base64 is not None else wire_data
    else:
        data = _restore_data(encoding, wire_data)
        if original_type is None:
            document.pop("datacontenttype", None)
        else:
            document["datacontenttype"] = original_type
    moment = document.get("time")
    if isinstance(moment, str):
        document["time"] = _parse_time(moment)
    return document, data, transport


def _load_json(body: bytes) -> Any:
    # orjson reads integers beyond 64 bits as floats; the standard parser keeps them exact (Java's BigInteger).
    if not jackson.has_long_digits(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"message body is not JSON: {exc}") from exc
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"message body is not JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def body_to_event(body: bytes) -> CloudEvent:
    """The original event of a message body (see ``body_to_event_and_transport``)."""
    return body_to_event_and_transport(body)[0]


def _restore_data(encoding: Any, wire_data: Any) -> Any:
    if encoding == "json":
        return wire_data
    if encoding == "none":
        return None
    if not isinstance(wire_data, str):
        raise DataError(f"{DATA_ENCODING_EXTENSION}={encoding!r} needs string data, got {type(wire_data).__name__}")
    if encoding == "text":
        return wire_data
    if encoding == "base64":
        return _decode_base64(wire_data)
    raise DataError(f"unknown {DATA_ENCODING_EXTENSION} {encoding!r}; expected json, text, base64 or none")


def _decode_base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise DataError("data_base64 must be a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or text beyond ASCII
        raise DataError(f"event data is not valid base64: {exc}") from exc


def publish_frame(event: Publishable, command: Command = Command.ASYNC_MESSAGE_TO_SERVER, seq: str | None = None) -> bytes:
    """The frame a client sends to publish ``event`` (ASYNC/BROADCAST_MESSAGE_TO_SERVER, REQUEST/RESPONSE_TO_SERVER).

    The header carries the protocol type, version and description in the Java SDK's order; the body is
    ``event_to_body(event)`` (an ``EncodedEvent`` is its body already).
    """
    if isinstance(event, EncodedEvent):
        return encode_fields(command, seq, _PUBLISH_PROPERTIES["1.0"], event.body)
    return encode_fields(command, seq, _publish_properties(event), event_to_body(event))


def _publish_properties(event: CloudEvent) -> Mapping[str, Any]:
    version = event.get_specversion()
    properties = _PUBLISH_PROPERTIES.get(version)
    if properties is None:
        raise DataError(f"specversion {version!r} is not one the Java runtime accepts (1.0 or 0.3)")
    return properties


def push_package(event: CloudEvent, command: Command, seq: str, *, body: bytes | None = None) -> Package:
    """The frame a mesh pushes to a subscriber; ``body`` (already encoded) avoids encoding ``event`` again."""
    return Package(Header(command, seq=seq, properties=PUSH_PROPERTIES), event_to_body(event) if body is None else body)


def ack_frame(push: Package) -> bytes:
    """The acknowledgement of a pushed frame: ``<cmd>_ACK``, the same seq, code 0, no properties, no body."""
    return encode_fields(_ack_command(push), push.header.seq, _NO_PROPERTIES, None)


def _ack_command(push: Package) -> Command:
    command = _ACK_BY_PUSH_ORDINAL.get(push.header.command._value_)
    if command is None:
        raise LocalProtocolError(f"{push.header.command.name} is not a push and cannot be acknowledged")
    return command


def correlation_of(body: bytes | None) -> str | None:
    """The ``CORRELATION_EXTENSION`` of an event body, if the body is a JSON object that has one."""
    try:
        event = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return None
    value = event.get(CORRELATION_EXTENSION) if isinstance(event, dict) else None
    return value if isinstance(value, str) else None
