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
connection, and so must the caller. A frame the Java runtime decodes but cannot dispatch (no header, or a
header without ``cmd``) raises ``HeaderlessFrameError`` with Jackson's view of the header; it is consumed
and the decoder stays usable, as Java's does (its session ends with a goodbye: the embedded mesh sends
one). Either error carries the packages completed before it in the same call (``packages``).

One path each way. Writing: ``encode`` -> ``encode_fields`` -> ``header_json`` (templates of the parts
that do not vary) -> ``frame_bytes`` (the framing). Reading: ``feed`` -> the header as Jackson reads it
(``jackson.parse`` and the ``as_*`` coercions), before which a header met before in exactly
``header_json``'s form is recognised by its bytes (see ``_HEADER_SHAPES``). The typed bodies live in
``bodies``, Jackson's JSON rules in ``jackson``, views made only to compare with Java's in ``java``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeVar

import msgspec

from runtime.errors import FrameTooLargeError, HeaderlessFrameError, RemoteProtocolError
from runtime.protocol import jackson
from runtime.protocol.bodies import (
    RedirectInfo,
    Subscription,
    SubscriptionItem,
    SubscriptionMode,
    SubscriptionType,
    UserAgent,
    redirect_view,
    subscription_view,
    user_agent_view,
)

__all__ = [
    "MAX_FRAME",
    "NULL_PROPERTIES",
    "PREFIX",
    "Command",
    "FrameDecoder",
    "Header",
    "Package",
    "RedirectInfo",
    "Subscription",
    "SubscriptionItem",
    "SubscriptionMode",
    "SubscriptionType",
    "TYPED_BODIES",
    "UserAgent",
    "constant_properties",
    "encode",
    "encode_fields",
    "frame_bytes",
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
# Values
# ---------------------------------------------------------------------------------------------------------


class Header(msgspec.Struct, frozen=True, gc=False):
    """A frame header. ``properties`` are written in the mapping's own order (see ``java_hashmap_order``).

    A frozen msgspec Struct rather than a frozen dataclass: one is built per frame, in a fifth of the time."""

    command: Command
    code: int = 0
    desc: str | None = None
    seq: str | None = None
    properties: Mapping[str, Any] = msgspec.field(default_factory=dict)

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


# The class Java reads each typed body as, and the Jackson view of it (non-null fields, Java order).
TYPED_BODIES: Mapping[Command, tuple[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    **dict.fromkeys(_USER_AGENT_COMMANDS, ("UserAgent", user_agent_view)),
    **dict.fromkeys(_SUBSCRIPTION_COMMANDS, ("Subscription", subscription_view)),
    Command.REDIRECT_TO_CLIENT: ("RedirectInfo", redirect_view),
}


class Package(msgspec.Struct, frozen=True, gc=False):
    """A header and the exact body bytes on the wire (``None`` when there is no body); built per frame, as Header."""

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
            value = jackson.as_object(jackson.parse(self.body), "the body")
            return None if value is None else build(value)
        except (jackson.JsonInvalid, KeyError) as exc:
            raise RemoteProtocolError(f"{self.header.command.name} body is invalid: {exc}") from exc


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
    return frame_bytes(header_json(command, code, desc, seq, properties), body or b"", command.name)


def frame_bytes(header: bytes, body: bytes, what: str = "") -> bytes:
    """The framing step of ``encode``: header JSON and body bytes, written already, in one frame.

    ``what`` (the command) names the frame in the error. Outside ``encode_fields`` only the conformance
    views (``java.frame_as_written``) call it, for headers written as given.
    """
    length = 13 + len(header) + len(body)
    if length > MAX_FRAME:
        kind = f"{what} frame" if what else "frame"
        raise FrameTooLargeError(f"{kind} of {length} bytes exceeds the {MAX_FRAME}-byte limit; send smaller data")
    return b"".join((PREFIX, _LENGTHS.pack(length, len(header)), header, body))


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


# Headers met before in exactly the form header_json writes, by their bytes up to the opening quote of the seq:
# (the bytes after the seq digits, command, code, desc, properties). Such a header, with any digits as seq, is
# read without parsing: its bytes are header_json's for those values, and header_json's output reads back as
# the values it was written from, so parsing would give those values (tests/protocol/test_fast_paths.py holds
# the two equal). None marks a start whose header was not in that form (checked once). Bounded: descs carry
# free text. Only properties of immutable scalars are remembered, so that no two headers share a container.
_SEQ_OPENING = b'"seq":"'
_HEADER_SHAPES: dict[bytes, tuple[bytes, Command, int, str | None, dict[str, Any]] | None] = {}
_HEADER_SHAPES_LIMIT = 1024
_SCALARS = frozenset({str, int, float, bool, type(None)})


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
        value = jackson.as_object(jackson.parse(data, from_bytes=True), "the header")
        if value is None:
            return None, None
        command = jackson.as_enum(value.get("cmd"), Command, "cmd")
        code = jackson.as_int(value.get("code"), "code")
        desc = jackson.as_string(value.get("desc"), "desc")
        seq = jackson.as_string(value.get("seq"), "seq")
        properties = jackson.as_object(value.get("properties", {}), "'properties'")
    except jackson.JsonInvalid as exc:
        raise RemoteProtocolError(f"frame header is invalid: {exc}") from exc
    if command is None:
        return None, {"cmd": None, "code": code, "desc": desc, "seq": seq, "properties": properties}
    if properties is None:
        return Header(command, code, desc, seq, NULL_PROPERTIES), None
    header = Header(command, code, desc, seq, properties)
    if start is not None and seq is not None and _new_shape(start, seq, properties):
        _HEADER_SHAPES[start] = _shape_of(data, header, len(start))
    return header, None


def _new_shape(start: bytes, seq: str, properties: Mapping[str, Any]) -> bool:
    """Whether a header with these first bytes, this seq and these properties is worth checking for its shape."""
    return (
        start not in _HEADER_SHAPES
        and len(_HEADER_SHAPES) < _HEADER_SHAPES_LIMIT
        and seq.isascii()
        and seq.isdigit()
        and all(type(item) in _SCALARS for item in properties.values())
    )


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
    typed = TYPED_BODIES.get(command)
    if typed is None:
        return None
    java_type, view = typed
    try:
        value = jackson.as_object(jackson.parse(body), f"a {java_type} body")
        if value is None:
            return None
        view(value)
    except jackson.JsonInvalid as exc:
        raise RemoteProtocolError(f"{command.name} body is not a valid {java_type}: {exc}") from exc
    return body


_HEADERLESS = "frame has no header or no cmd; the Java runtime ends such a session with SERVER_GOODBYE_REQUEST"


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
        """Packages completed by ``data``.

        Raises ``HeaderlessFrameError`` at a frame without header or cmd (consumed; feed again to go on) and
        ``RemoteProtocolError`` on malformed bytes (the decoder is then unusable); both carry the packages
        completed before them in this call.
        """
        if self._error is not None:
            raise RemoteProtocolError(f"decoder is unusable after an earlier error ({self._error}); close the connection")
        buffer = self._buffer
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data).cast("B")
        packages: list[Package] = []
        headerless: HeaderlessFrameError | None = None
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
                try:
                    packages.append(self._decode_frame(view[position : position + frame_size], length))
                except HeaderlessFrameError as exc:
                    headerless = exc.with_traceback(None)  # its frames hold views of the buffer, resized below
                    position += frame_size
                    break
                position += frame_size
        except RemoteProtocolError as exc:
            self._error = exc
            self._stranded = end - position
            view.release()
            self._buffer = bytearray()
            exc.packages = tuple(packages)
            raise
        remainder = bytes(view[position:]) if position < end else b""
        view.release()
        if buffer:
            del buffer[:position]
        else:
            buffer += remainder
        if headerless is not None:
            headerless.packages = tuple(packages)
            raise headerless
        return packages

    @staticmethod
    def _decode_frame(frame: memoryview, length: int) -> Package:
        if frame[:13] != _PREFIX_VIEW:
            flag = bytes(frame[:9]).decode("latin-1")
            version = bytes(frame[9:13]).decode("latin-1")
            raise RemoteProtocolError(f"invalid magic flag or version: flag={flag!r} version={version!r}")
        if length < _HEADER_START - 8:
            raise RemoteProtocolError(f"frame length {length} leaves no room for the header length field (minimum 13)")
        (header_length,) = _INT32.unpack_from(frame, _LENGTH_FIELD_END)
        body_length = length - 13 - header_length
        if header_length <= 0:
            raise HeaderlessFrameError(_HEADERLESS, None)
        if header_length > length - 13:
            raise RemoteProtocolError(f"header length {header_length} exceeds the {length - 13} bytes left in the frame")
        body_start = _HEADER_START + header_length
        header, headerless = _read_header(frame[_HEADER_START:body_start])
        if header is None:
            if headerless is not None and body_length > 0:
                raise RemoteProtocolError("frame header has no cmd, so its body cannot be decoded")
            raise HeaderlessFrameError(_HEADERLESS, headerless)
        if body_length <= 0:
            return Package(header)
        return Package(header, _check_body(header.command, bytes(frame[body_start:])))
