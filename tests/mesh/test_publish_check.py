"""The mesh checks a publish on one of two paths: a typed decoder for bodies without extensions of their own (what
meshconnect's sources publish), which leaves the data unparsed, and the general reader for any other. Held equal
here over generated bodies and generated breakages: the same topic, or the same refusal with the same reason."""

from __future__ import annotations

from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.mesh.handlers import _parse_event, _Refused, _topic_of_publish
from runtime.protocol.events import event_to_body
from runtime.protocol.frames import Command, Header, Package
from tests.mesh.wire import PUBLISH_PROPERTIES
from tests.protocol.test_events import events

_members = st.sampled_from(["specversion", "id", "source", "type", "subject", "data", "data_base64", "time", "meshdataenc"])
_odd_values = st.one_of(
    st.none(), st.just(""), st.just(" \t"), st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(-5, 5), max_size=2)
)


def _verdict(check: Any, body: bytes | None, properties: dict[str, str], max_event_size: int | None = None) -> str:
    package = Package(Header(Command.ASYNC_MESSAGE_TO_SERVER, seq="1", properties=properties), body)
    try:
        return "topic " + str(check(package, max_event_size))
    except _Refused as refused:
        return "refused " + str(refused)


def _general(package: Package, max_event_size: int | None) -> Any:
    return _parse_event(package, max_event_size)["subject"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@st.composite
def _plain_documents(draw: st.DrawFn) -> dict[str, Any]:
    """What a meshconnect source publishes: no extension but the mapping's own (now and then one more)."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.text(min_size=1, max_size=8)),
        "source": draw(st.text(min_size=1, max_size=8)),
        "type": draw(st.text(min_size=1, max_size=8)),
        "datacontenttype": "application/cloudevents+json",
        "subject": draw(st.text(min_size=1, max_size=8) | st.sampled_from([" ", "\t\n"])),
        "time": "2026-01-02T03:04:05Z",
        "meshdataenc": "json",
        "data": draw(st.text() | _json),
    }
    if draw(st.booleans()):
        document["meshcontenttype"] = "application/json"
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.sampled_from(["trace", "Trace", "rsp0ip"]))] = "x"
    return document


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """A published event's body, often broken: a member dropped, set to an odd value, or bytes cut or replaced."""
    bodies = events().map(event_to_body)
    document = draw(_plain_documents() | bodies.map(orjson.loads))
    if document.get("subject") is None and draw(st.booleans()):
        document["subject"] = draw(st.text(min_size=1, max_size=8))
    for _ in range(draw(st.integers(0, 2))):
        member = draw(_members)
        if draw(st.booleans()):
            document.pop(member, None)
        else:
            document[member] = draw(_odd_values)
    body = orjson.dumps(document)
    breakage = draw(st.sampled_from(["none", "none", "cut", "byte", "data byte"]))
    data_at = body.find(b'"data":')
    text_at = body.find(b'"', data_at + len(b'"data":')) + 1 if data_at >= 0 else 0
    if breakage == "data byte" and text_at > 0:  # into a string of the data, which the typed check leaves unparsed
        body = body[:text_at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\"])) + body[text_at:]
    elif breakage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif breakage == "byte":
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.sampled_from([0xFF, 0xC3, 0x7B, 0x22, 0x5C]))]) + body[at + 1 :]
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies(), st.sampled_from([PUBLISH_PROPERTIES, {**PUBLISH_PROPERTIES, "Bad-Name": "x"}, {"protocoltype": "cloudevents"}]))
def test_the_typed_check_of_a_publish_gives_the_general_verdict(body: bytes, properties: dict[str, str]) -> None:
    assert _verdict(_topic_of_publish, body, properties) == _verdict(_general, body, properties)
    assert _verdict(_topic_of_publish, body, properties, 10) == _verdict(_general, body, properties, 10)


def test_a_number_beyond_a_double_in_plain_data_passes_as_the_java_reader_takes_it() -> None:
    # The one verdict the two checks differ on: orjson refuses 1e999 (it takes a long integer, as a float).
    event = CloudEvent({"id": "1", "source": "/s", "type": "t", "subject": "orders"}, {"n": 1})
    body = event_to_body(event).replace(b'{"n":1}', b'{"n":123456789012345678901234567890,"x":1e999}')
    assert _verdict(_topic_of_publish, body, PUBLISH_PROPERTIES) == "topic orders"


def test_data_nested_deeper_than_the_typed_decoder_goes_gets_the_general_verdict() -> None:
    event = CloudEvent({"id": "1", "source": "/s", "type": "t", "subject": "orders"}, {"n": 1})
    verdicts = {}
    for depth in (1010, 1100):  # orjson takes up to 1024 levels; msgspec gives up before 1010
        body = event_to_body(event).replace(b'{"n":1}', b"[" * depth + b"]" * depth)
        verdicts[depth] = _verdict(_topic_of_publish, body, PUBLISH_PROPERTIES)
        assert verdicts[depth] == _verdict(_general, body, PUBLISH_PROPERTIES)
    assert verdicts[1010] == "topic orders" and verdicts[1100].startswith("refused ")
