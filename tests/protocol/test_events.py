"""The lossless CloudEvent mapping: exact cases, the Java vectors, and hypothesis round trips."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.cloudevents import body_to_record, cloudevent_to_record
from runtime.errors import DataError, LocalProtocolError
from runtime.protocol import events as event_codec
from runtime.protocol import jackson
from runtime.protocol.events import (
    TRANSPORT_EXTENSIONS,
    ack_frame,
    body_to_attributes,
    body_to_event,
    body_to_event_and_transport,
    event_to_body,
    publish_frame,
    push_package,
)
from runtime.protocol.frames import Command, FrameDecoder, Header, Package, encode
from runtime.record import ConnectorRecord
from tests.protocol.vectors import VALID

_VECTORS = {vector["name"]: vector for vector in VALID}
_CONTEXT = ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")
# What the Java runtime stamps on an event between publish and push (values as in the vectors).
_SERVER_EXTENSIONS = {
    "protocoltype": "cloudevents",
    "protocolversion": "1.0",
    "protocoldesc": "tcp",
    "reqc2eventmeshtimestamp": "1700000000000",
    "reqeventmesh2mqtimestamp": "1700000000005",
    "reqsendeventmeship": "127.0.0.1",
    "reqeventmesh2ctimestamp": "1700000000010",
    "rsp0sys": "5017",
    "rsp0group": "EventmeshTestGroup",
    "rsp0idc": "FT",
    "rsp0ip": "localhost",
}


def make_event(data: Any = None, **attributes: Any) -> CloudEvent:
    base: dict[str, Any] = {
        "id": "e-1",
        "source": "/src",
        "type": "t",
        "subject": "topic",
        "time": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    }
    return CloudEvent({**base, **attributes}, data)


def java_rerender(body: bytes) -> bytes:
    """The body as the Java runtime pushes it: parsed, stamped with its extensions, written by JsonFormat."""
    document = json.loads(body)  # Jackson keeps integers beyond 64 bits exact (BigInteger)
    data = document.pop("data")
    extensions = {name: value for name, value in document.items() if name not in _CONTEXT}
    extensions.update(_SERVER_EXTENSIONS)
    ordered = {name: document[name] for name in _CONTEXT if name in document}
    ordered.update({name: extensions[name] for name in jackson.java_hashmap_order(extensions)})
    ordered["data"] = data
    return jackson.dumps(ordered)


def assert_same_event(got: CloudEvent, expected: CloudEvent) -> None:
    assert got.get_attributes() == expected.get_attributes()
    time = expected.get_time()
    if time is not None:
        assert got.get_time().isoformat() == time.isoformat()  # type: ignore[union-attr]
    assert type(got.get_data()) is type(expected.get_data())
    assert got.get_data() == expected.get_data()


@pytest.mark.parametrize(
    ("data", "content_type", "encoding", "wire_data"),
    [
        ({"a": [1, 2.5, None, True]}, "application/json", "json", {"a": [1, 2.5, None, True]}),
        ("just text", "text/plain", "text", "just text"),
        ("<a>x</a>", "application/xml", "text", "<a>x</a>"),
        ('"a json string"', "application/json", "json", '"a json string"'),
        (b"\x00\xffbinary", "application/octet-stream", "base64", base64.b64encode(b"\x00\xffbinary").decode()),
        (None, None, "none", ""),
        ("no content type", None, "text", "no content type"),
        ([1, 2], None, "json", [1, 2]),
        ({"big": 2**70 + 1, "emoji": "\U0001f389"}, "application/json", "json", {"big": 2**70 + 1, "emoji": "\U0001f389"}),
    ],
)
def test_wire_form_is_cloudevents_json_with_the_original_in_extensions(
    data: Any, content_type: str | None, encoding: str, wire_data: Any
) -> None:
    attributes = {} if content_type is None else {"datacontenttype": content_type}
    event = make_event(data, **attributes)
    wire = json.loads(event_to_body(event))
    assert wire["datacontenttype"] == "application/cloudevents+json"
    assert wire["meshdataenc"] == encoding
    assert wire.get("meshcontenttype") == content_type
    assert wire["data"] == wire_data
    assert_same_event(body_to_event(event_to_body(event)), event)


def test_body_is_in_java_jsonformat_order() -> None:
    event = make_event({"k": "v"}, datacontenttype="application/json", dataschema="http://s", ttl="30000", z1="a", flag=True, n=5)
    body = event_to_body(event)
    assert list(orjson.loads(body)) == [
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
        *jackson.java_hashmap_order(["ttl", "z1", "flag", "n", "meshcontenttype", "meshdataenc"]),
        "data",
    ]
    assert b'"time":"2024-05-06T07:08:09Z"' in body


def test_publish_frame_matches_the_java_sdk_vector() -> None:
    vector = _VECTORS["async_message_to_server_cloudevent"]
    event = body_to_event(vector["body_text"].encode())
    assert event.get_extension("ttl") == "30000"
    package = FrameDecoder().feed(publish_frame(event, Command.ASYNC_MESSAGE_TO_SERVER, "0000000013"))[0]
    assert package.header.to_json().decode() == vector["header_json_text"]
    # A Java-published event (no meshdataenc) keeps its content type and JSON data.
    assert event.get_datacontenttype() == "application/cloudevents+json"
    assert event.get_data() == {"content": "testAsyncMessage"}


def test_push_from_java_runtime_strips_transport_extensions() -> None:
    vector = _VECTORS["async_message_to_client_cloudevent"]
    event, transport = body_to_event_and_transport(vector["body_text"].encode())
    assert set(transport) == set(_SERVER_EXTENSIONS)
    assert set(transport) <= TRANSPORT_EXTENSIONS
    assert not set(event.get_attributes()) & TRANSPORT_EXTENSIONS
    assert event.get_subject() == "TEST-TOPIC-TCP-ASYNC"
    assert event.get_time() is None  # published without time, and kept so


def test_ack_frame_echoes_the_seq_with_the_ack_command() -> None:
    push = FrameDecoder().feed(bytes.fromhex(_VECTORS["async_message_to_client_cloudevent"]["frame_hex"]))[0]
    assert ack_frame(push) == encode(Package(Header(Command.ASYNC_MESSAGE_TO_CLIENT_ACK, seq="0000000100")))
    for pushed, acked in [
        (Command.BROADCAST_MESSAGE_TO_CLIENT, Command.BROADCAST_MESSAGE_TO_CLIENT_ACK),
        (Command.REQUEST_TO_CLIENT, Command.REQUEST_TO_CLIENT_ACK),
        (Command.RESPONSE_TO_CLIENT, Command.RESPONSE_TO_CLIENT_ACK),
    ]:
        assert ack_frame(Package(Header(pushed, seq="7"))) == encode(Package(Header(acked, seq="7")))
    with pytest.raises(LocalProtocolError):
        ack_frame(Package(Header(Command.HELLO_RESPONSE, seq="7")))


def test_push_package_carries_only_protocoltype() -> None:
    event = make_event("x")
    package = push_package(event, Command.ASYNC_MESSAGE_TO_CLIENT, "42")
    assert package.header.to_json() == (
        b'{"cmd":"ASYNC_MESSAGE_TO_CLIENT","code":0,"seq":"42","properties":{"protocoltype":"cloudevents"},"command":"ASYNC_MESSAGE_TO_CLIENT"}'
    )
    decoded = FrameDecoder().feed(encode(package))[0]
    assert_same_event(body_to_event(decoded.body or b""), event)


@pytest.mark.parametrize(
    "extensions",
    [
        {"meshdataenc": "x"},
        {"meshcontenttype": "x"},
        {"protocoltype": "x"},
        {"reqc2eventmeshtimestamp": "1"},
        {"big": 2**31},
        {"obj": [1]},
    ],
)
def test_events_that_cannot_travel_are_data_errors(extensions: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        event_to_body(make_event("x", **extensions))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"specversion":"1.0","id":"1","source":"/","type":"t","data":NaN}',
        b'{"specversion":"1.0","id":"1","source":"/","type":"t","meshdataenc":"base64","data":"***"}',
        b'{"specversion":"1.0","id":"1","source":"/","type":"t","meshdataenc":"rot13","data":"x"}',
        b'{"specversion":"1.0","id":"1","source":"/","type":"t","time":"yesterday","data":1}',
        b'{"specversion":"1.0","source":"/","type":"t","data":1,"id":5}',
    ],
)
def test_bodies_that_are_not_events_are_data_errors(body: bytes) -> None:
    with pytest.raises(DataError):
        body_to_event(body)


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------

_reserved = {"meshdataenc", "meshcontenttype", "data", *TRANSPORT_EXTENSIONS, *_CONTEXT}
_names = st.from_regex(r"\A[a-z0-9]{1,12}\Z").filter(lambda name: name not in _reserved)
_ext_values = st.one_of(st.text(), st.booleans(), st.integers(-(2**31), 2**31 - 1))
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63, 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_json_types = st.sampled_from(["application/json", "application/cloudevents+json", "text/json", "application/vnd.x+json; v=1"])
_other_types = st.sampled_from(["text/plain", "application/xml", "text/csv; charset=utf-8", "application/octet-stream"])
_data_and_type = st.one_of(
    st.tuples(st.none(), st.none() | _other_types | _json_types),
    st.tuples(st.binary(max_size=64), st.none() | _other_types | _json_types),
    st.tuples(st.text(max_size=64), st.none() | _other_types),
    st.tuples(_json, _json_types),
    st.tuples(_json.filter(lambda value: not isinstance(value, str) and value is not None), st.none()),
)
_times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]))


@st.composite
def events(draw: st.DrawFn) -> CloudEvent:
    data, content_type = draw(_data_and_type)
    attributes: dict[str, Any] = {
        "id": draw(st.text(min_size=1)),
        "source": draw(st.text(min_size=1)),
        "type": draw(st.text(min_size=1)),
    }
    attributes["time"] = draw(_times)
    for name in ("subject", "dataschema"):
        value = draw(st.none() | st.text(min_size=1))
        if value is not None:
            attributes[name] = value
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    attributes.update(draw(st.dictionaries(_names, _ext_values, max_size=6)))
    event = CloudEvent(attributes, data)
    if draw(st.booleans()):
        event.get_attributes().pop("time")
    return event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_event_body_event_round_trip_is_lossless(event: CloudEvent) -> None:
    assert_same_event(body_to_event(event_to_body(event)), event)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.text(alphabet="0123456789", min_size=1, max_size=10))
def test_event_survives_the_java_runtime_rerendering_it_on_push(event: CloudEvent, seq: str) -> None:
    published = FrameDecoder().feed(publish_frame(event, Command.ASYNC_MESSAGE_TO_SERVER, seq))[0]
    pushed_body = java_rerender(published.body or b"")
    restored, transport = body_to_event_and_transport(pushed_body)
    assert_same_event(restored, event)
    assert transport == _SERVER_EXTENSIONS


@settings(max_examples=300, deadline=None)
@given(_json)
def test_jackson_writer_output_is_json_of_the_same_value(value: Any) -> None:
    assert json.loads(jackson.dumps(value)) == value


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def _record_by_sdk(body: bytes) -> ConnectorRecord:
    return cloudevent_to_record(body_to_event(body))


def assert_same_record(fast: ConnectorRecord, slow: ConnectorRecord, document: dict[str, Any]) -> None:
    # Where the body gives no time or no id, both paths make one up (now, a random UUID): those may differ.
    ignored = {"timestamp"} if "time" not in document else set()
    if "id" not in document:
        ignored.add("id")
    fields = ("data", "timestamp", "id", "source", "type", "subject", "datacontenttype", "dataschema", "extensions")
    for name in fields:
        if name not in ignored:
            assert getattr(fast, name) == getattr(slow, name), name
    assert type(fast.data) is type(slow.data)
    assert fast.timestamp.tzinfo is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_body_to_record_gives_the_record_of_the_sdk_event(event: CloudEvent) -> None:
    body = event_to_body(event)
    assert_same_record(body_to_record(body, now=_now, new_id=_new_id), _record_by_sdk(body), orjson.loads(body))


_any_value = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.lists(st.integers(), max_size=2)
)
_attribute_values = st.sampled_from(["", "x", "a/b", "1.0", "0.3"]) | _any_value
_time_values = (
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T05:30:00+05:30", "yesterday", ""]) | _any_value
)
_extension_names = st.sampled_from(["ext", "a" * 64, "a" * 65, "Upper", "new\n", "with-dash", "data_base64x", "meshdataenc"])


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message body with a few of its members removed or given odd values (or an odd extension added)."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "subject": "orders",
        "datacontenttype": "application/cloudevents+json",
        "dataschema": "https://example.com/schema",
        "time": "2026-01-01T00:00:00Z",
        "ext": "x",
        "meshdataenc": "json",
        "meshcontenttype": "application/json",
        "data": {"n": 1},
    }
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*document, "newext"]) | _extension_names)
        if name in document and draw(st.booleans()):
            del document[name]
        elif name == "time":
            document[name] = draw(_time_values)
        elif name == "meshdataenc":
            document[name] = draw(st.sampled_from(["json", "text", "base64", "none", "zip"]) | _any_value)
        else:
            document[name] = draw(_attribute_values | st.just(base64.b64encode(b"bytes").decode()))
    return document


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_body_to_record_refuses_exactly_what_the_sdk_path_refuses(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()  # integers beyond 64 bits too
    try:
        slow = _record_by_sdk(body)
    except DataError:
        with pytest.raises(DataError):
            body_to_record(body, now=_now, new_id=_new_id)
        return
    assert_same_record(body_to_record(body, now=_now, new_id=_new_id), slow, document)


def test_body_to_record_takes_a_missing_time_and_id_from_the_caller_not_a_clock() -> None:
    supplied = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    body = orjson.dumps({"specversion": "1.0", "source": "/s", "type": "t", "data": {"n": 1}})
    record = body_to_record(body, now=lambda: supplied, new_id=lambda: "supplied-id")
    assert (record.timestamp, record.id) == (supplied, "supplied-id")


def test_body_to_record_asks_for_no_time_or_id_the_body_has() -> None:
    def unwanted() -> Any:
        raise AssertionError("called although the body has its time and id")

    body = orjson.dumps({"specversion": "1.0", "id": "7", "source": "/s", "type": "t", "time": "2026-01-01T00:00:00Z"})
    record = body_to_record(body, now=unwanted, new_id=unwanted)
    assert (record.timestamp, record.id) == (datetime(2026, 1, 1, tzinfo=UTC), "7")


def test_base64_data_beyond_ascii_is_a_data_error_not_a_crash() -> None:
    body = orjson.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "meshdataenc": "base64", "data": "\x80"})
    with pytest.raises(DataError, match="base64"):
        body_to_event(body)
    with pytest.raises(DataError, match="base64"):
        body_to_record(body, now=_now, new_id=_new_id)


@st.composite
def plain_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A message body without extensions of its own (what the typed reader takes), some members odd or missing,
    some of the runtime's transport stamps added, its data in each wire encoding."""
    encoding = draw(st.sampled_from(["json", "text", "base64", "none", None]))
    data: Any = {
        "json": draw(_any_value | st.dictionaries(st.text(max_size=3), _any_value, max_size=3)),
        "text": draw(st.text(max_size=8)),
        "base64": base64.b64encode(draw(st.binary(max_size=8))).decode(),
        "none": "",
        None: draw(_any_value),
    }[encoding]
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "subject": "orders",
        "datacontenttype": "application/cloudevents+json",
        "dataschema": "https://example.com/schema",
        "time": "2026-01-01T00:00:00Z",
        "meshcontenttype": draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream"])),
        "data": data,
    }
    if encoding is not None:
        document["meshdataenc"] = encoding
    if draw(st.booleans()):
        document.update(draw(st.dictionaries(st.sampled_from(sorted(TRANSPORT_EXTENSIONS)), st.text(max_size=4), max_size=3)))
    if encoding is None and draw(st.booleans()):
        document["data_base64"] = draw(st.sampled_from([base64.b64encode(b"\x00\xff").decode(), "not base64!", 7]))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(document)))
        if draw(st.booleans()):
            del document[name]
        elif name == "time":
            document[name] = draw(_time_values)
        else:
            document[name] = draw(_attribute_values)
    return document


def _decoded_or_refusal(read: Any, body: bytes) -> Any:
    try:
        return read(body, lambda: "made-up")
    except DataError:
        return DataError


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain_bodies() | bodies())
def test_the_typed_reader_gives_what_the_general_reader_gives(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()  # integers beyond 64 bits too
    typed = _decoded_or_refusal(event_codec._read_plain_body, body)
    if typed is not None:  # None: a body the typed reader leaves to the general one
        general = _decoded_or_refusal(event_codec._read_any_body, body)
        assert typed == general
        if typed is not DataError:
            assert [type(value) for value in typed[0].values()] == [type(general[0][name]) for name in typed[0]]
            assert type(typed[1]) is type(general[1])


def test_the_typed_reader_takes_what_sources_publish_and_what_the_runtime_pushes() -> None:
    event = make_event(b"\x00\x01", datacontenttype="application/octet-stream")
    published = event_to_body(event)
    pushed = orjson.dumps({**orjson.loads(published), **_SERVER_EXTENSIONS})
    for body in (published, pushed, event_to_body(make_event({"n": 1})), event_to_body(make_event("text"))):
        assert event_codec._read_plain_body(body, _new_id) is not None, body
    attributes, data, transport = event_codec._read_plain_body(pushed, _new_id) or ({}, None, {})
    assert (data, attributes["datacontenttype"], transport) == (b"\x00\x01", "application/octet-stream", _SERVER_EXTENSIONS)
    # An extension of the event's own takes the general reader, which keeps it.
    with_extension = event_to_body(make_event({"n": 1}, pgtable="public.orders"))
    assert event_codec._read_plain_body(with_extension, _new_id) is None
    assert body_to_record(with_extension, now=_now, new_id=_new_id).extensions == {"pgtable": "public.orders"}


def test_a_pushed_body_nested_deeper_than_the_typed_reader_goes_is_read_or_refused_as_data() -> None:
    event = CloudEvent({"id": "1", "source": "/s", "type": "t", "subject": "orders"}, {"n": 1})
    body = event_to_body(event)

    def nested(depth: int) -> bytes:
        return body.replace(b'{"n":1}', b"[" * depth + b"]" * depth)

    # Past the typed reader's depth the general one decides: it reads up to 1024 levels, and refuses deeper as data
    # (the sink dead-letters it), where a RecursionError escaped the sink worker's decoding of the push.
    _, data = body_to_attributes(nested(1010), new_id=lambda: "x")
    assert isinstance(data, list)
    with pytest.raises(DataError, match="not JSON"):
        body_to_attributes(nested(1100), new_id=lambda: "x")
