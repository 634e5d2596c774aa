"""EventMesh TCP frames, sans IO: ``encode(package) -> bytes`` and ``FrameDecoder().feed(bytes) -> [Package]``.

Wire layout (all integers big-endian)::

    "EventMesh" (9) | "0000" (4) | length (4) | headerLen (4) | header JSON (headerLen) | body (bodyLen)
    length = 13 + headerLen + bodyLen          the two length fields are not counted; frame = length + 8

The decoder mirrors the Java runtime's ``Codec.Decoder`` (a Netty ``LengthFieldBasedFrameDecoder``):

* the length field is read unsigned as soon as 17 bytes are there; ``length < 9`` or ``length + 8 > 4 MiB``
  is rejected at once, before the rest of the frame arrives;
* magic and version are checked once the whole frame is buffered, then a frame too short to hold the
  header length field (``length < 13``) is refused;
* ``headerLen <= 0`` (or a JSON ``null`` header) gives a frame without header, ``bodyLen <= 0`` no body;
* the header is read like Jackson reads ``Header``: unknown keys and ``command`` ignored, ``cmd`` by name
  or by ordinal, scalars coerced, trailing bytes after the JSON value ignored;
* bodies are kept or dropped by command like ``Codec.deserializeBody``: HELLO/RECOMMEND must be a
  ``UserAgent``, SUBSCRIBE/UNSUBSCRIBE a ``Subscription``, REDIRECT a ``RedirectInfo`` (validated, bytes
  kept); message, ack, response and goodbye commands keep their bytes; every other command drops its body.

Any violation raises ``RemoteProtocolError`` and poisons the decoder: the Java runtime closes the
connection, and so must the caller. ``FrameDecoder.feed`` is strict and also refuses frames the Java
runtime accepts only to fail on them one step later (no header, or a header without ``cmd``);
``FrameDecoder.feed_java`` reports those as ``HeaderlessFrame`` instead, for conformance tooling.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar

import orjson

from runtime.errors import FrameTooLargeError, RemoteProtocolError
from runtime.protocol import jackson

__all__ = [
    "MAX_FRAME",
    "NULL_PROPERTIES",
    "PREFIX",
    "Command",
    "FrameDecoder",
    "Header",
    "HeaderlessFrame",
    "Package",
    "RedirectInfo",
    "Subscription",
    "SubscriptionItem",
    "SubscriptionMode",
    "SubscriptionType",
    "UserAgent",
    "constant_properties",
    "encode",
    "encode_fields",
    "header_json",
]

MAX_FRAME: Final = 4 * 1024 * 1024
PREFIX: Final = b"EventMesh0000"
_PREFIX_VIEW: Final = memoryview(PREFIX)  # compared with the frame's view without copying it
_LENGTH_FIELD_END: Final = 17
_HEADER_START: Final = 21
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_LENGTHS = struct.Struct(">ii")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_FLAT_JSON = frozenset({str, int, bool, type(None)})  # JSON values that orjson and the general path read alike
_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")


class Command(enum.Enum):
    """Every EventMesh TCP command: the member name is the wire name, the value its Java ordinal."""

    HEARTBEAT_REQUEST = 0
    HEARTBEAT_RESPONSE = 1
    HELLO_REQUEST = 2
    HELLO_RESPONSE = 3
    CLIENT_GOODBYE_REQUEST = 4
    CLIENT_GOODBYE_RESPONSE = 5
    SERVER_GOODBYE_REQUEST = 6
    SERVER_GOODBYE_RESPONSE = 7
    SUBSCRIBE_REQUEST = 8
    SUBSCRIBE_RESPONSE = 9
    UNSUBSCRIBE_REQUEST = 10
    UNSUBSCRIBE_RESPONSE = 11
    LISTEN_REQUEST = 12
    LISTEN_RESPONSE = 13
    REQUEST_TO_SERVER = 14
    REQUEST_TO_CLIENT = 15
    REQUEST_TO_CLIENT_ACK = 16
    RESPONSE_TO_SERVER = 17
    RESPONSE_TO_CLIENT = 18
    RESPONSE_TO_CLIENT_ACK = 19
    ASYNC_MESSAGE_TO_SERVER = 20
    ASYNC_MESSAGE_TO_SERVER_ACK = 21
    ASYNC_MESSAGE_TO_CLIENT = 22
    ASYNC_MESSAGE_TO_CLIENT_ACK = 23
    BROADCAST_MESSAGE_TO_SERVER = 24
    BROADCAST_MESSAGE_TO_SERVER_ACK = 25
    BROADCAST_MESSAGE_TO_CLIENT = 26
    BROADCAST_MESSAGE_TO_CLIENT_ACK = 27
    SYS_LOG_TO_LOGSERVER = 28
    TRACE_LOG_TO_LOGSERVER = 29
    REDIRECT_TO_CLIENT = 30
    REGISTER_REQUEST = 31
    REGISTER_RESPONSE = 32
    UNREGISTER_REQUEST = 33
    UNREGISTER_RESPONSE = 34
    RECOMMEND_REQUEST = 35
    RECOMMEND_RESPONSE = 36


class SubscriptionMode(enum.Enum):
    """How a group shares a topic: one session per event (CLUSTERING) or every session (BROADCASTING)."""

    CLUSTERING = 0
    BROADCASTING = 1
    UNRECOGNIZED = 2


class SubscriptionType(enum.Enum):
    """Push style: SYNC pushes as REQUEST_TO_CLIENT (request-reply), ASYNC as ASYNC_MESSAGE_TO_CLIENT."""

    SYNC = 0
    ASYNC = 1
    UNRECOGNIZED = 2


_COMMANDS: Mapping[str, Command] = Command.__members__
NULL_PROPERTIES: Mapping[str, Any] = MappingProxyType({})
"""The (empty) properties of a received header whose JSON said ``"properties": null``; Java keeps null there."""
_USER_AGENT_COMMANDS = frozenset({Command.HELLO_REQUEST, Command.RECOMMEND_REQUEST})
_SUBSCRIPTION_COMMANDS = frozenset({Command.SUBSCRIBE_REQUEST, Command.UNSUBSCRIBE_REQUEST})
# Commands whose body the Java decoder keeps as a raw string for the protocol plugin.
_TEXT_BODY_COMMANDS = frozenset(
    {
        Command.REQUEST_TO_SERVER,
        Command.RESPONSE_TO_SERVER,
        Command.ASYNC_MESSAGE_TO_SERVER,
        Command.BROADCAST_MESSAGE_TO_SERVER,
        Command.REQUEST_TO_CLIENT,
        Command.RESPONSE_TO_CLIENT,
        Command.ASYNC_MESSAGE_TO_CLIENT,
        Command.BROADCAST_MESSAGE_TO_CLIENT,
        Command.REQUEST_TO_CLIENT_ACK,
        Command.RESPONSE_TO_CLIENT_ACK,
        Command.ASYNC_MESSAGE_TO_CLIENT_ACK,
        Command.BROADCAST_MESSAGE_TO_CLIENT_ACK,
        Command.HELLO_RESPONSE,
        Command.RECOMMEND_RESPONSE,
        Command.SUBSCRIBE_RESPONSE,
        Command.LISTEN_RESPONSE,
        Command.UNSUBSCRIBE_RESPONSE,
        Command.HEARTBEAT_RESPONSE,
        Command.ASYNC_MESSAGE_TO_SERVER_ACK,
        Command.BROADCAST_MESSAGE_TO_SERVER_ACK,
        Command.CLIENT_GOODBYE_REQUEST,
        Command.CLIENT_GOODBYE_RESPONSE,
        Command.SERVER_GOODBYE_REQUEST,
        Command.SERVER_GOODBYE_RESPONSE,
    }
)

_TEXT_BODY_ORDINALS = frozenset(command.value for command in _TEXT_BODY_COMMANDS)  # an int hashes in C, a member in Python


# ---------------------------------------------------------------------------------------------------------
# Reading JSON the way Jackson's ObjectMapper (EventMesh JsonUtils defaults) does.
# ---------------------------------------------------------------------------------------------------------


class _JsonInvalid(ValueError):
    """A JSON value Jackson would refuse; the message says why."""


def _reject_constant(name: str) -> Any:
    raise _JsonInvalid(f"non-standard JSON token {name}")


_LENIENT_JSON = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_JAVA_BLANK = "".join(map(chr, range(33)))  # what Java's String.trim() removes
_JAVA_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _parse_json(raw: bytes | bytearray | memoryview, *, from_bytes: bool = False) -> Any:
    """Parse the first JSON value and ignore what follows it, as Jackson does by default.

    Java reads bodies from a ``String`` (invalid UTF-8 already replaced) but the header from the bytes,
    where invalid UTF-8 inside the value is an error and a leading byte order mark is skipped.
    """
    if not jackson.has_long_digits(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if from_bytes:
        text = bytes(raw).decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    else:
        text = bytes(raw).decode("utf-8", "replace")
    start = _JSON_WHITESPACE.match(text)
    begin = start.end() if start else 0
    try:
        value, end = _LENIENT_JSON.raw_decode(text, begin)
    except json.JSONDecodeError as exc:
        raise _JsonInvalid(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    except RecursionError as exc:
        raise _JsonInvalid("JSON nested too deeply") from exc
    if from_bytes and _ESCAPED_BYTE.search(text, begin, end):
        raise _JsonInvalid("invalid UTF-8")
    return value


def _as_string(value: Any, name: str) -> str | None:
    """Jackson's String coercion: scalars become their text, containers are refused."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return jackson.dumps(value).decode()
    raise _JsonInvalid(f"'{name}' must be a string, got {type(value).__name__}")


def _as_int(value: Any, name: str) -> int:
    """Jackson's primitive int coercion: null is 0, floats truncate, numeric strings parse, range checked."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _JsonInvalid(f"'{name}' must be an int, got a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _JsonInvalid(f"'{name}' must be an int, got {value}")
        value = int(value)
    elif isinstance(value, str):
        text = value.strip(_JAVA_BLANK)
        if not text or text == "null":
            return 0
        if not _JAVA_INT_TEXT.fullmatch(text):
            raise _JsonInvalid(f"'{name}' must be an int, got {value!r}")
        value = int(text)
    elif not isinstance(value, int):
        raise _JsonInvalid(f"'{name}' must be an int, got {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise _JsonInvalid(f"'{name}' is out of the int range: {value}")
    return int(value)


def _as_enum(value: Any, enum_type: type[_E], name: str) -> _E | None:
    """Jackson's enum reading: exact (case-sensitive) name, or the ordinal as a number or a digit string."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip(_JAVA_BLANK)
        member = enum_type.__members__.get(value) or enum_type.__members__.get(text)
        if member is not None:
            return member
        if not (text[:1].isdigit() and text.isascii() and text.isdigit()):
            # Empty and blank strings are refused too: Jackson's default coercion for enums is to fail.
            raise _JsonInvalid(f"'{name}' has an unknown {enum_type.__name__} value {value!r}")
        value = int(text)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return enum_type(value)
        except ValueError as exc:
            raise _JsonInvalid(f"'{name}' ordinal {value} is not a {enum_type.__name__}") from exc
    raise _JsonInvalid(f"'{name}' must be a {enum_type.__name__} name, got {type(value).__name__}")


def _as_object(value: Any, what: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise _JsonInvalid(f"{what} must be a JSON object, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A frame header. ``properties`` are written in the mapping's own order (see ``java_hashmap_order``)."""

    command: Command
    code: int = 0
    desc: str | None = None
    seq: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The header JSON exactly as Java writes it: cmd, code, desc?, seq?, properties, command."""
        return header_json(self.command, self.code, self.desc, self.seq, self.properties)


def header_json(command: Command, code: int, desc: str | None, seq: str | None, properties: Mapping[str, Any]) -> bytes:
    """``Header(command, code, desc, seq, properties).to_json()`` without building the Header (hot paths).

    Only ``seq`` differs between the headers of one kind, so the rest comes from templates: the
    start per (command, code, desc), the properties when they are a ``constant_properties`` mapping.
    """
    start = _HEADER_STARTS.get((command._value_, code, desc)) if type(code) is int else None
    if start is None:
        start = _header_start(command, code, desc)
    if seq is None:
        seq_json = b""
    elif seq.isascii() and seq.isdigit():  # every seq we write: digits need no escaping
        seq_json = b',"seq":"' + seq.encode() + b'"'
    else:
        seq_json = b',"seq":' + jackson.dumps_str(seq)
    if not properties:
        properties_json = b',"properties":{}'
    else:
        constant = _CONSTANT_PROPERTIES.get(id(properties))
        if constant is not None and constant[0] is properties:
            properties_json = constant[1]
        else:
            properties_json = b',"properties":' + jackson.dumps(properties)
    return b"".join((start, seq_json, properties_json, _HEADER_ENDS[command._value_]))


# Templates of Header.to_json: the JSON before the seq, keyed by (command ordinal, code, desc), and after the properties.
_HEADER_STARTS: dict[tuple[int, int, str | None], bytes] = {}
_HEADER_STARTS_LIMIT = 512  # descs of refusals carry free text: keep the cache bounded
_HEADER_ENDS: Final = {command.value: b',"command":"' + command.name.encode() + b'"}' for command in Command}
# Properties mappings made by constant_properties, by id, with the mapping itself (so the id stays its own) and its JSON.
_CONSTANT_PROPERTIES: dict[int, tuple[Mapping[str, Any], bytes]] = {}


def _header_start(command: Command, code: int, desc: str | None) -> bytes:
    start = b'{"cmd":"' + command.name.encode() + b'","code":' + str(code).encode()
    if desc is not None:
        start += b',"desc":' + jackson.dumps_str(desc)
    if type(code) is int and len(_HEADER_STARTS) < _HEADER_STARTS_LIMIT:
        _HEADER_STARTS[(command.value, code, desc)] = start
    return start


def constant_properties(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``values`` for the headers sent again and again: its JSON is written once.

    Make these at import time (module constants): each one is kept for the life of the process.
    """
    frozen = MappingProxyType(dict(values))
    _CONSTANT_PROPERTIES[id(frozen)] = (frozen, b',"properties":' + (jackson.dumps(frozen) if frozen else b"{}"))
    return frozen


@dataclass(frozen=True, slots=True)
class UserAgent:
    """The HELLO body. Field order is Java's; ``None`` fields are left out of the JSON."""

    env: str | None = None
    subsystem: str | None = None
    path: str | None = None
    pid: int = 0
    host: str | None = None
    port: int = 0
    version: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    idc: str | None = None
    group: str | None = None
    purpose: str | None = None
    unack: int = 0

    def json_fields(self) -> dict[str, Any]:
        return {name: value for name in _USER_AGENT_FIELDS if (value := getattr(self, name)) is not None}

    def __repr__(self) -> str:
        shown = {name: value for name, value in self.json_fields().items() if name not in ("password", "token")}
        secrets = [f"{name}='***'" for name in ("password", "token") if getattr(self, name) is not None]
        return "UserAgent(" + ", ".join([*(f"{name}={value!r}" for name, value in shown.items()), *secrets]) + ")"

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> UserAgent:
        fields: dict[str, Any] = {
            name: _as_int(value.get(name), name) if name in _USER_AGENT_INTS else _as_string(value.get(name), name)
            for name in _USER_AGENT_FIELDS
        }
        return cls(**fields)


_USER_AGENT_FIELDS = (
    "env",
    "subsystem",
    "path",
    "pid",
    "host",
    "port",
    "version",
    "username",
    "password",
    "token",
    "idc",
    "group",
    "purpose",
    "unack",
)
_USER_AGENT_INTS = frozenset({"pid", "port", "unack"})


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    """One subscribed topic."""

    topic: str
    mode: SubscriptionMode = SubscriptionMode.CLUSTERING
    type: SubscriptionType = SubscriptionType.ASYNC

    def json_fields(self) -> dict[str, Any]:
        return {"topic": self.topic, "mode": self.mode.name, "type": self.type.name}


@dataclass(frozen=True, slots=True)
class Subscription:
    """The SUBSCRIBE body: ``{"topicList":[...]}``."""

    topic_list: tuple[SubscriptionItem, ...] = ()

    def json_fields(self) -> dict[str, Any]:
        return {"topicList": [item.json_fields() for item in self.topic_list]}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Subscription:
        items = _subscription_view(value).get("topicList") or []
        topic_list = []
        for index, item in enumerate(items):
            if item is None or item.get("topic") is None:
                raise _JsonInvalid(f"topicList[{index}] has no topic")
            topic_list.append(
                SubscriptionItem(
                    topic=item["topic"],
                    mode=SubscriptionMode[item.get("mode", "CLUSTERING")],
                    type=SubscriptionType[item.get("type", "ASYNC")],
                )
            )
        return cls(tuple(topic_list))


@dataclass(frozen=True, slots=True)
class RedirectInfo:
    """The REDIRECT_TO_CLIENT body: where the client should reconnect."""

    ip: str
    port: int

    def json_fields(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RedirectInfo:
        view = _redirect_view(value)
        if view.get("ip") is None:
            raise _JsonInvalid("redirect has no ip")
        return cls(ip=view["ip"], port=view["port"])


def _user_agent_view(value: Mapping[str, Any]) -> dict[str, Any]:
    return UserAgent.from_json(value).json_fields()


def _subscription_item_view(value: Any, index: int) -> dict[str, Any] | None:
    item = _as_object(value, f"topicList[{index}]")
    if item is None:
        return None
    fields = {
        "topic": _as_string(item.get("topic"), "topic"),
        "mode": _as_enum(item.get("mode"), SubscriptionMode, "mode"),
        "type": _as_enum(item.get("type"), SubscriptionType, "type"),
    }
    return {name: getattr(member, "name", member) for name, member in fields.items() if member is not None}


def _subscription_view(value: Mapping[str, Any]) -> dict[str, Any]:
    items = value.get("topicList")
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _JsonInvalid(f"topicList must be a JSON array, got {type(items).__name__}")
    return {"topicList": [_subscription_item_view(item, index) for index, item in enumerate(items)]}


def _redirect_view(value: Mapping[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"ip": _as_string(value.get("ip"), "ip"), "port": _as_int(value.get("port"), "port")}
    return {name: item for name, item in view.items() if item is not None}


# The Jackson bean view (non-null fields, Java order) of each typed body, keyed by the class Java reads.
_TYPED_BODIES: dict[Command, tuple[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    **dict.fromkeys(_USER_AGENT_COMMANDS, ("UserAgent", _user_agent_view)),
    **dict.fromkeys(_SUBSCRIPTION_COMMANDS, ("Subscription", _subscription_view)),
    Command.REDIRECT_TO_CLIENT: ("RedirectInfo", _redirect_view),
}


@dataclass(frozen=True, slots=True)
class Package:
    """A header and the exact body bytes on the wire (``None`` when there is no body)."""

    header: Header
    body: bytes | None = None

    @classmethod
    def with_json(cls, header: Header, value: Any) -> Package:
        """A package whose body is ``value`` written like Jackson (a ``str`` becomes a quoted JSON string)."""
        return cls(header, jackson.dumps(value))

    def text(self) -> str | None:
        """The body as text, the way Java builds its String (invalid UTF-8 replaced)."""
        return None if self.body is None else self.body.decode("utf-8", "replace")

    def user_agent(self) -> UserAgent | None:
        return self._typed(UserAgent.from_json)

    def subscription(self) -> Subscription | None:
        return self._typed(Subscription.from_json)

    def redirect_info(self) -> RedirectInfo | None:
        return self._typed(RedirectInfo.from_json)

    def _typed(self, build: Callable[[Mapping[str, Any]], _T]) -> _T | None:
        if self.body is None:
            return None
        try:
            value = _as_object(_parse_json(self.body), "the body")
            return None if value is None else build(value)
        except (_JsonInvalid, KeyError) as exc:
            raise RemoteProtocolError(f"{self.header.command.name} body is invalid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class HeaderlessFrame:
    """A frame Java's decoder delivers although it cannot be dispatched: no header, or a header without cmd.

    ``header`` is Jackson's view of the header (``cmd`` None) or None when there was none at all.
    """

    header: Mapping[str, Any] | None


def encode(package: Package) -> bytes:
    """The frame bytes of ``package``; ``FrameTooLargeError`` when it exceeds the 4 MiB limit like Java."""
    header = package.header
    return encode_fields(header.command, header.seq, header.properties, package.body, code=header.code, desc=header.desc)


def encode_fields(
    command: Command,
    seq: str | None,
    properties: Mapping[str, Any],
    body: bytes | None,
    *,
    code: int = 0,
    desc: str | None = None,
) -> bytes:
    """``encode(Package(Header(command, code, desc, seq, properties), body))`` without building the two values,
    for the frames sent once per event (publishes, acks, pushes)."""
    header = header_json(command, code, desc, seq, properties)
    body = body or b""
    length = 13 + len(header) + len(body)
    if length > MAX_FRAME:
        raise FrameTooLargeError(f"{command.name} frame of {length} bytes exceeds the {MAX_FRAME}-byte limit; send smaller data")
    return b"".join((PREFIX, _LENGTHS.pack(length, len(header)), header, body))


def encode_raw(header_json: bytes, body: bytes) -> bytes:
    """A frame from already serialized header JSON and body bytes (conformance tooling)."""
    length = 13 + len(header_json) + len(body)
    if length > MAX_FRAME:
        raise FrameTooLargeError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    return b"".join((PREFIX, _LENGTHS.pack(length, len(header_json)), header_json, body))


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


# Headers met before in exactly the form header_json writes, by their bytes up to the opening quote of the seq:
# (the bytes after the seq digits, command, code, desc, properties). Such a header, with any digits as seq, is
# read without parsing: its bytes are header_json's for those values, so parsing would give those values.
# None marks a start whose header was not in that form (checked once). Bounded: descs carry free text.
_SEQ_OPENING = b'"seq":"'
_HEADER_SHAPES: dict[bytes, tuple[bytes, Command, int, str | None, dict[str, Any]] | None] = {}
_HEADER_SHAPES_LIMIT = 1024


def _read_header(raw: memoryview) -> tuple[Header | None, dict[str, Any] | None]:
    """Jackson's reading of ``Header``: (header, None), or (None, view) when cmd is missing or null."""
    data = bytes(raw)
    opening = data.find(_SEQ_OPENING)
    start = data[: opening + 7] if opening > 0 else None
    if start is not None:
        digits_start = opening + 7
        shape = _HEADER_SHAPES.get(start)
        if shape is not None:
            digits_end = data.find(b'"', digits_start)
            seq_digits = data[digits_start:digits_end]
            if digits_end > digits_start and seq_digits.isdigit() and data[digits_end:] == shape[0]:
                return Header(shape[1], shape[2], shape[3], seq_digits.decode(), dict(shape[4])), None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = None
    # Fast path for the headers every Java or Python peer writes; anything unusual takes the general one.
    # orjson reads an integer beyond 64 bits as a float: the fast path takes no float anywhere it reads, so
    # such a header goes the general way, which reads it exactly (digits inside strings read the same in both).
    if type(value) is dict:
        name, code, desc, seq = value.get("cmd"), value.get("code", 0), value.get("desc"), value.get("seq")
        properties = value.get("properties")
        if (
            type(name) is str
            and (command := _COMMANDS.get(name)) is not None
            and type(code) is int
            and _INT_MIN <= code <= _INT_MAX
            and (desc is None or type(desc) is str)
            and (seq is None or type(seq) is str)
            and (
                (type(properties) is dict and (not properties or all(type(item) in _FLAT_JSON for item in properties.values())))
                or (properties is None and "properties" not in value)
            )
        ):
            header = Header(command, code, desc, seq, {} if properties is None else properties)
            if start is not None and seq is not None and properties is not None and _new_shape(start, seq):
                _HEADER_SHAPES[start] = _shape_of(data, header, len(start))
            return header, None
    try:
        value = _as_object(_parse_json(data, from_bytes=True), "the header")
        if value is None:
            return None, None
        command = _as_enum(value.get("cmd"), Command, "cmd")
        code = _as_int(value.get("code"), "code")
        desc = _as_string(value.get("desc"), "desc")
        seq = _as_string(value.get("seq"), "seq")
        properties = _as_object(value.get("properties", {}), "'properties'")
    except _JsonInvalid as exc:
        raise RemoteProtocolError(f"frame header is invalid: {exc}") from exc
    if command is None:
        return None, {"cmd": None, "code": code, "desc": desc, "seq": seq, "properties": properties}
    return Header(command, code, desc, seq, NULL_PROPERTIES if properties is None else properties), None


def _new_shape(start: bytes, seq: str) -> bool:
    """Whether a header with these first bytes and this seq is worth checking for its shape."""
    return start not in _HEADER_SHAPES and len(_HEADER_SHAPES) < _HEADER_SHAPES_LIMIT and seq.isascii() and seq.isdigit()


def _shape_of(data: bytes, header: Header, digits_start: int) -> tuple[bytes, Command, int, str | None, dict[str, Any]] | None:
    """The shape of header bytes ``data`` read as ``header`` (a digit seq), or None when header_json writes them otherwise."""
    if header.to_json() != data:
        return None
    assert header.seq is not None
    return data[digits_start + len(header.seq) :], header.command, header.code, header.desc, dict(header.properties)


def _check_body(command: Command, body: bytes) -> bytes | None:
    """Validate the body the way Java's ``deserializeBody`` would; the bytes kept, or None when dropped."""
    if command._value_ in _TEXT_BODY_ORDINALS:
        return body
    typed = _TYPED_BODIES.get(command)
    if typed is None:
        return None
    java_type, view = typed
    try:
        value = _as_object(_parse_json(body), f"a {java_type} body")
        if value is None:
            return None
        view(value)
    except _JsonInvalid as exc:
        raise RemoteProtocolError(f"{command.name} body is not a valid {java_type}: {exc}") from exc
    return body


def java_header_view(header: Header) -> dict[str, Any]:
    """The header as Java's decoder holds it (cmd, code, desc, seq, properties), for conformance tooling."""
    properties = None if header.properties is NULL_PROPERTIES else dict(header.properties)
    return {"cmd": header.command.name, "code": header.code, "desc": header.desc, "seq": header.seq, "properties": properties}


def java_body_view(package: Package) -> tuple[str | None, Any]:
    """What Java's decoder turns the body into: (Java class name, value), for conformance tooling."""
    if package.body is None:
        return None, None
    typed = _TYPED_BODIES.get(package.header.command)
    if typed is None:
        return "String", package.text()
    java_type, view = typed
    value = _as_object(_parse_json(package.body), java_type)
    return java_type, None if value is None else view(value)


class FrameDecoder:
    """Incremental frame decoder: feed it whatever the socket gave, get back the complete packages.

    Holds at most one incomplete frame (under ``MAX_FRAME`` bytes) between calls; ``buffered`` says how
    many bytes. A length prefix announcing an oversized frame is refused as soon as it arrives.
    """

    __slots__ = ("_buffer", "_error", "_stranded")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None
        self._stranded = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not delivered as packages (after an error: those from the bad frame on)."""
        return len(self._buffer) + self._stranded

    def feed(self, data: bytes | bytearray | memoryview) -> list[Package]:
        """Packages completed by ``data``. Raises ``RemoteProtocolError`` on any malformed or headerless frame."""
        frames, error = self.feed_java(data)
        if error is not None:
            raise error
        packages: list[Package] = []
        for frame in frames:
            if isinstance(frame, HeaderlessFrame):
                self._error = RemoteProtocolError(
                    "frame has no header or no cmd; the Java runtime ends such a session with SERVER_GOODBYE_REQUEST"
                )
                raise self._error
            packages.append(frame)
        return packages

    def feed_java(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[Package | HeaderlessFrame], RemoteProtocolError | None]:
        """Everything Java's decoder would deliver for ``data``, then the error it stopped on (if any)."""
        if self._error is not None:
            raise RemoteProtocolError(f"decoder is unusable after an earlier error ({self._error}); close the connection")
        buffer = self._buffer
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data).cast("B")
        frames: list[Package | HeaderlessFrame] = []
        position = 0
        end = len(view)
        try:
            while end - position >= _LENGTH_FIELD_END:
                (length,) = _UINT32.unpack_from(view, position + 13)
                frame_size = length + 8
                if frame_size < _LENGTH_FIELD_END:
                    raise RemoteProtocolError(f"frame length field {length} is below the minimum of 9")
                if frame_size > MAX_FRAME:
                    raise RemoteProtocolError(f"frame of {frame_size} bytes exceeds the {MAX_FRAME}-byte limit")
                if end - position < frame_size:
                    break
                frames.append(self._decode_frame(view[position : position + frame_size], length))
                position += frame_size
        except RemoteProtocolError as exc:
            self._error = exc
            self._stranded = end - position
            view.release()
            self._buffer = bytearray()
            return frames, exc
        remainder = bytes(view[position:]) if position < end else b""
        view.release()
        if buffer:
            del buffer[:position]
        else:
            buffer += remainder
        return frames, None

    @staticmethod
    def _decode_frame(frame: memoryview, length: int) -> Package | HeaderlessFrame:
        if frame[:13] != _PREFIX_VIEW:
            flag = bytes(frame[:9]).decode("latin-1")
            version = bytes(frame[9:13]).decode("latin-1")
            raise RemoteProtocolError(f"invalid magic flag or version: flag={flag!r} version={version!r}")
        if length < _HEADER_START - 8:
            raise RemoteProtocolError(f"frame length {length} leaves no room for the header length field (minimum 13)")
        (header_length,) = _INT32.unpack_from(frame, _LENGTH_FIELD_END)
        body_length = length - 13 - header_length
        if header_length <= 0:
            return HeaderlessFrame(None)
        if header_length > length - 13:
            raise RemoteProtocolError(f"header length {header_length} exceeds the {length - 13} bytes left in the frame")
        body_start = _HEADER_START + header_length
        header, headerless = _read_header(frame[_HEADER_START:body_start])
        if header is None:
            if headerless is not None and body_length > 0:
                raise RemoteProtocolError("frame header has no cmd, so its body cannot be decoded")
            return HeaderlessFrame(headerless)
        if body_length <= 0:
            return Package(header)
        return Package(header, _check_body(header.command, bytes(frame[body_start:])))
