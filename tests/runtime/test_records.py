"""Records <-> CloudEvents, through the wire mapping too: bytes, text and JSON data come back exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.cloudevents import cloudevent_to_record, record_to_body, record_to_cloudevent
from runtime.errors import DataError
from runtime.protocol.events import body_to_event, event_to_body
from runtime.record import ConnectorRecord
from runtime.worker.offsets import OffsetTracker
from runtime.worker.retry import MAX_RETRY_AFTER, Backoff

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
extensions = st.dictionaries(
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True).filter(
        lambda name: name not in {"id", "source", "type", "subject", "time", "data"}
    ),
    st.text(max_size=20),
    max_size=3,
)


def round_trip(record: ConnectorRecord) -> ConnectorRecord:
    event = record_to_cloudevent(
        record, connector="test", default_source="/test", default_type="test.record", default_subject="t"
    )
    return cloudevent_to_record(body_to_event(event_to_body(event)))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), ext=extensions)
def test_bytes_come_back_as_the_same_bytes(data: bytes, ext: dict[str, str]) -> None:
    back = round_trip(ConnectorRecord(data=data, extensions=ext, partition={"p": 1}, offset={"o": 2}))
    assert back.data == data
    assert back.datacontenttype == "application/octet-stream"
    assert dict(back.extensions) == ext


@settings(max_examples=150, deadline=None)
@given(
    data=st.text(max_size=300), content_type=st.sampled_from([None, "text/plain", "text/csv; charset=utf-8", "application/xml"])
)
def test_text_comes_back_as_the_same_text(data: str, content_type: str | None) -> None:
    back = round_trip(ConnectorRecord(data=data, datacontenttype=content_type))
    assert back.data == data
    assert back.datacontenttype == (content_type or "text/plain")


@settings(max_examples=150, deadline=None)
@given(data=json_values)
def test_json_comes_back_as_the_same_value(data: object) -> None:
    back = round_trip(ConnectorRecord(data=data, datacontenttype="application/json"))
    assert back.data == data
    assert back.datacontenttype == "application/json"


def test_attributes_survive_and_ids_derive_from_positions() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    record = ConnectorRecord(data={"a": 1}, partition={"table": "t"}, offset={"pos": 9}, timestamp=moment, subject="orders")
    back = round_trip(record)
    again = round_trip(record)
    assert back.id == again.id
    assert (back.subject, back.source, back.type, back.timestamp) == ("orders", "/test", "test.record", moment)


def test_tracker_commits_only_a_contiguous_acked_prefix_per_partition() -> None:
    tracker = OffsetTracker()
    a = [tracker.submit(ConnectorRecord(data=n, partition={"p": "a"}, offset={"n": n}), "default") for n in range(4)]
    b = [tracker.submit(ConnectorRecord(data=n, partition={"p": "b"}, offset={"n": n}), "default") for n in range(2)]
    tracker.ack(a[2])
    tracker.ack(a[1])
    tracker.ack(b[1])
    assert tracker.checkpoint().empty
    tracker.ack(a[0])
    checkpoint = tracker.checkpoint()
    assert checkpoint.offsets == {"default": {'{"p":"a"}': {"n": 2}}}
    assert [r.offset["n"] for r in checkpoint.records] == [0, 1, 2]
    tracker.ack(a[3])
    tracker.written(checkpoint)
    later = tracker.checkpoint()
    assert later.offsets == {"default": {'{"p":"a"}': {"n": 3}}}
    assert [r.offset["n"] for r in later.records] == [3]
    assert tracker.in_flight == 1


def test_backoff_grows_with_jitter_caps_and_honours_retry_after() -> None:
    low, high = Backoff(0.1, 1.0, rng=lambda: 0.0), Backoff(0.1, 1.0, rng=lambda: 1.0)
    assert [round(low.next_delay(), 3) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(high.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff(0.1, 1.0).next_delay(retry_after=5.0) == 5.0
    assert Backoff(0.1, 1.0).next_delay(retry_after=1e12) == MAX_RETRY_AFTER  # another system's hint, bounded
    high.reset()
    assert high.next_delay() == 0.1


_odd_text = st.none() | st.sampled_from(["", "x", "/s", "application/json", "text/plain", "application/xml"]) | st.integers(0, 3)


@st.composite
def records(draw: st.DrawFn) -> ConnectorRecord:
    """Records a source might emit, valid or not: odd attribute values, data that fits its content type or not."""
    content_type = draw(
        st.none() | st.sampled_from(["application/json", "text/plain", "application/vnd.x+json", "application/octet-stream", ""])
    )
    data = draw(
        st.none() | st.binary(max_size=40) | st.sampled_from([b'{"a": 1}', b"not json"]) | st.text(max_size=40) | json_values
    )
    zone = draw(st.sampled_from([UTC, timezone(timedelta(hours=-3))]))
    return ConnectorRecord(
        data=data,
        partition={"p": draw(st.integers(0, 3))},
        offset={"o": draw(st.integers(0, 10**6))},
        timestamp=draw(st.datetimes(timezones=st.just(zone))),
        id=draw(_odd_text),  # type: ignore[arg-type]
        source=draw(_odd_text),  # type: ignore[arg-type]
        type=draw(_odd_text),  # type: ignore[arg-type]
        subject=draw(_odd_text),  # type: ignore[arg-type]
        datacontenttype=content_type,
        dataschema=draw(_odd_text),  # type: ignore[arg-type]
        extensions=draw(extensions),
    )


@settings(max_examples=500, deadline=None)
@given(record=records())
def test_record_to_body_writes_the_body_of_the_sdk_event(record: ConnectorRecord) -> None:
    defaults = {"connector": "test", "default_source": "/test", "default_type": "test.record", "default_subject": None}
    try:
        expected = event_to_body(record_to_cloudevent(record, **defaults))  # type: ignore[arg-type]
    except DataError:
        with pytest.raises(DataError):
            record_to_body(record, **defaults)  # type: ignore[arg-type]
        return
    assert record_to_body(record, **defaults).body == expected  # type: ignore[arg-type]


def test_a_record_is_frozen_and_a_changed_copy_is_checked_as_a_new_record() -> None:
    record = ConnectorRecord(data={"n": 1}, extensions={"ext": "x"})
    with pytest.raises(AttributeError):
        record.data = {"n": 2}  # type: ignore[misc]
    changed = record.replace(data=b"\x00", id="e-2")
    assert (changed.data, changed.id, changed.extensions, record.data) == (b"\x00", "e-2", {"ext": "x"}, {"n": 1})
    assert changed == msgspec.structs.replace(record, data=b"\x00", id="e-2")
    with pytest.raises(TypeError, match="has no field 'topic'"):
        record.replace(topic="t")
    with pytest.raises(DataError, match="extension name"):
        record.replace(extensions={"Not-Valid": "x"})
    with pytest.raises(DataError, match="timezone-aware"):
        record.replace(timestamp=datetime(2026, 1, 1))
