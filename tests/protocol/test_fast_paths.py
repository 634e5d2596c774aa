"""The codec has one path each way; what makes them fast are memos, held here equal to the path itself.

Writing: ``encode`` -> ``encode_fields`` -> ``header_json`` -> ``frame_bytes``. ``header_json`` writes the
parts of a header that do not vary from templates (the start per command, code and desc; the properties
made by ``constant_properties``); the tests below hold its bytes equal to the general Jackson writer's,
member by member, over generated headers, so the writer keeps no second, slower path beside it.

Reading: the header is read as Jackson reads it (``jackson.parse``, then the ``as_*`` coercions, each of
which returns at once for the exact JSON type). In front of it, a header met before in exactly
``header_json``'s form is recognised by its bytes and read without parsing. For any digit seq that gives
what the reading gives, and a header that only starts like a known one is read (both tested below). An
orjson-only shortcut that sat between the two is gone: the memo answers the headers it took (those every
peer writes) from their second frame on, and their first frame costs the reading a microsecond more.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.protocol import jackson
from runtime.protocol.events import ack_frame, event_to_body, publish_frame
from runtime.protocol.frames import Command, FrameDecoder, Header, Package, constant_properties, encode, encode_fields
from tests.protocol.test_events import events

_flat_values = st.one_of(st.text(max_size=12), st.integers(-(2**63), 2**64 - 1), st.booleans(), st.none())
_odd_values = st.one_of(
    st.integers(2**64, 2**90),
    st.integers(-(2**90), -(2**63) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(2**64, 2**70), max_size=2),
)
_properties = st.dictionaries(st.text(max_size=10), _flat_values | _odd_values, max_size=5)
_texts = st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=20)
_headers = st.builds(
    Header,
    command=st.sampled_from(list(Command)),
    code=st.integers(-(2**31), 2**31 - 1),
    desc=st.none() | _texts | st.just("success"),
    seq=st.none() | st.text(alphabet="0123456789", min_size=1, max_size=25) | _texts,
    properties=_properties,
)


def general_header_json(header: Header) -> bytes:
    """The header written member by member by the general Jackson writer (no template, no cache)."""
    document: dict[str, Any] = {"cmd": header.command.name, "code": header.code}
    if header.desc is not None:
        document["desc"] = header.desc
    if header.seq is not None:
        document["seq"] = header.seq
    document["properties"] = dict(header.properties)
    document["command"] = header.command.name
    return jackson.dumps(document)  # a nested map: never the flat orjson shortcut


@settings(max_examples=400, deadline=None)
@given(_headers)
def test_header_templates_write_the_bytes_of_the_general_writer(header: Header) -> None:
    expected = general_header_json(header)
    assert header.to_json() == expected
    assert header.to_json() == expected  # the second time from the cached start
    constant = Header(header.command, header.code, header.desc, header.seq, constant_properties(header.properties))
    assert constant.to_json() == expected


def test_publish_and_ack_headers_match_the_java_sdk_shape() -> None:
    properties = constant_properties({"protocolversion": "1.0", "protocoldesc": "tcp", "protocoltype": "cloudevents"})
    assert Header(Command.ASYNC_MESSAGE_TO_SERVER, seq="0000000042", properties=properties).to_json() == (
        b'{"cmd":"ASYNC_MESSAGE_TO_SERVER","code":0,"seq":"0000000042",'
        b'"properties":{"protocolversion":"1.0","protocoldesc":"tcp","protocoltype":"cloudevents"},'
        b'"command":"ASYNC_MESSAGE_TO_SERVER"}'
    )
    assert Header(Command.ASYNC_MESSAGE_TO_SERVER_ACK, desc="success", seq="0000000042").to_json() == (
        b'{"cmd":"ASYNC_MESSAGE_TO_SERVER_ACK","code":0,"desc":"success","seq":"0000000042",'
        b'"properties":{},"command":"ASYNC_MESSAGE_TO_SERVER_ACK"}'
    )


def test_a_boolean_code_does_not_take_the_template_of_its_integer() -> None:
    Header(Command.HEARTBEAT_RESPONSE, code=1).to_json()  # caches the start for code 1
    assert b'"code":true' not in Header(Command.HEARTBEAT_RESPONSE, code=1).to_json()
    assert Header(Command.HEARTBEAT_RESPONSE, code=True).to_json() == general_header_json(
        Header(Command.HEARTBEAT_RESPONSE, code=True)
    ).replace(b'"code":true', b'"code":True')  # what str(True) always gave: not JSON, but unchanged


def test_constant_properties_are_a_read_only_copy() -> None:
    source = {"protocoltype": "cloudevents"}
    frozen = constant_properties(source)
    source["protocoltype"] = "changed"
    assert frozen == {"protocoltype": "cloudevents"}
    with pytest.raises(TypeError):
        frozen["protocoltype"] = "changed"  # type: ignore[index]


@settings(max_examples=400, deadline=None)
@given(_headers)
def test_decoded_header_equals_the_encoded_one(header: Header) -> None:
    decoded = FrameDecoder().feed(encode(Package(header)))[0].header
    assert decoded == header
    for name, value in header.properties.items():
        assert type(decoded.properties[name]) is type(value)  # integers beyond 64 bits stay exact integers


@pytest.mark.parametrize(
    ("properties_json", "expected"),
    [
        (b'{"n":123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n":-18446744073709551617}', {"n": -18446744073709551617}),
        (b'{"n":18446744073709551615}', {"n": 18446744073709551615}),
        (b'{"n":{"m":[99999999999999999999]}}', {"n": {"m": [99999999999999999999]}}),
        (b'{"n":"12345678901234567890123"}', {"n": "12345678901234567890123"}),
        (b'{"n":1.5,"m":2}', {"n": 1.5, "m": 2}),
    ],
)
def test_long_integers_in_properties_are_read_exactly(properties_json: bytes, expected: dict[str, Any]) -> None:
    header_json = b'{"cmd":"HEARTBEAT_REQUEST","seq":"123456789012345678901","properties":' + properties_json + b"}"
    frame = b"EventMesh0000" + (13 + len(header_json)).to_bytes(4, "big") + len(header_json).to_bytes(4, "big") + header_json
    header = FrameDecoder().feed(frame)[0].header
    assert header.properties == expected
    assert repr(header.properties) == repr(expected)
    assert header.seq == "123456789012345678901"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=8) | st.text(alphabet="0123456789", max_size=25).map(str.encode), max_size=8).map(b"".join))
def test_long_digit_check_agrees_with_the_regex(raw: bytes) -> None:
    expected = jackson.LONG_DIGITS.search(raw) is not None
    assert jackson.has_long_digits(raw) is expected
    assert jackson.has_long_digits(memoryview(raw)) is expected
    assert jackson.has_long_digits(bytearray(raw)) is expected


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    return isinstance(value, list) and any(_has_float(item) for item in value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(events().filter(lambda event: not _has_float(event.get_data())))
def test_event_body_is_what_the_general_jackson_writer_writes(event: CloudEvent) -> None:
    body = event_to_body(event)
    document = json.loads(body)  # keeps the member order and integers beyond 64 bits
    assert jackson.dumps([document])[1:-1] == body  # inside a list: member by member, no orjson shortcut
    assert event_to_body(event) == body  # the cached extension order gives the same bytes again


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(0)), timezone(timedelta(hours=-3, minutes=-30))])))
def test_event_time_is_written_as_rfc3339_whichever_path_writes_it(moment: datetime) -> None:
    expected = moment.isoformat().replace("+00:00", "Z")
    for subject in ("plain", "\U0001f389 beyond the BMP: the general writer"):
        event = CloudEvent({"id": "1", "source": "/s", "type": "t", "subject": subject, "time": moment}, {"n": 1})
        assert json.loads(event_to_body(event))["time"] == expected


@settings(max_examples=300, deadline=None)
@given(_headers, st.none() | st.binary(max_size=64))
def test_frames_from_fields_are_the_general_writers_header_and_the_body(header: Header, body: bytes | None) -> None:
    header_bytes = general_header_json(header)
    expected = b"EventMesh0000" + struct.pack(">ii", 13 + len(header_bytes) + len(body or b""), len(header_bytes))
    expected += header_bytes + (body or b"")
    fields = encode_fields(header.command, header.seq, header.properties, body, code=header.code, desc=header.desc)
    assert fields == expected
    assert encode(Package(header, body)) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events(),
    st.sampled_from([Command.ASYNC_MESSAGE_TO_SERVER, Command.BROADCAST_MESSAGE_TO_SERVER, Command.REQUEST_TO_SERVER]),
    st.none() | st.text(alphabet="0123456789", min_size=10, max_size=10),
)
def test_publish_frame_is_the_publish_header_and_the_event_body(event: CloudEvent, command: Command, seq: str | None) -> None:
    properties = {"protocolversion": event.get_specversion(), "protocoldesc": "tcp", "protocoltype": "cloudevents"}
    expected = Package(Header(command, seq=seq, properties=properties), event_to_body(event))
    assert publish_frame(event, command, seq) == encode(expected)


@pytest.mark.parametrize(
    "command",
    [
        Command.ASYNC_MESSAGE_TO_CLIENT,
        Command.BROADCAST_MESSAGE_TO_CLIENT,
        Command.REQUEST_TO_CLIENT,
        Command.RESPONSE_TO_CLIENT,
    ],
)
def test_ack_frame_is_the_encoded_ack_header(command: Command) -> None:
    push = Package(Header(command, seq="42", properties={"protocoltype": "cloudevents"}), b"{}")
    ack = Package(Header(Command[f"{command.name}_ACK"], seq="42"))
    assert ack_frame(push) == encode(ack)
    assert FrameDecoder().feed(ack_frame(push))[0] == ack


_digit_seqs = st.text(alphabet="0123456789", min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(_headers, _digit_seqs, _digit_seqs)
def test_a_header_shape_met_before_reads_any_digit_seq_like_the_parser(header: Header, first: str, second: str) -> None:
    decoder = FrameDecoder()
    for seq in (first, second, first):  # the first read may remember the shape, the later ones may use it
        expected = Header(header.command, header.code, header.desc, seq, header.properties)
        decoded = decoder.feed(encode(Package(expected)))[0].header
        assert decoded == expected
        assert list(decoded.properties.items()) == list(expected.properties.items())
        assert decoded.properties is not expected.properties


@pytest.mark.parametrize(
    "tail",
    [
        b',"properties":{"a":"b"},"command":"ASYNC_MESSAGE_TO_SERVER_ACK"}',  # other properties after the seq
        b',"properties":{},"command":"ASYNC_MESSAGE_TO_SERVER_ACK"}  ',  # trailing blanks
        b',"properties":{},"command":"ASYNC_MESSAGE_TO_SERVER_ACK","seq":"7"}',  # a second seq: the last one counts
        b',"properties":{},"command":"ASYNC_MESSAGE_TO_SERVER_ACK"} trailing junk',  # Jackson ignores what follows
    ],
)
def test_headers_that_only_start_like_a_known_shape_are_parsed(tail: bytes) -> None:
    start = b'{"cmd":"ASYNC_MESSAGE_TO_SERVER_ACK","code":0,"desc":"success","seq":"'
    decoder = FrameDecoder()
    decoder.feed(encode(Package(Header(Command.ASYNC_MESSAGE_TO_SERVER_ACK, desc="success", seq="1"))))  # the shape
    header_json = start + b'42"' + tail
    frame = b"EventMesh0000" + struct.pack(">ii", 13 + len(header_json), len(header_json)) + header_json
    decoded = decoder.feed(frame)[0].header
    document = json.JSONDecoder().raw_decode(header_json.decode())[0]
    assert decoded == Header(Command.ASYNC_MESSAGE_TO_SERVER_ACK, 0, "success", document["seq"], document["properties"])
