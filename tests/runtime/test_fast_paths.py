"""The worker's fast paths give what the general paths give."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.cloudevents import is_json_content_type
from runtime.record import derive_event_id, partition_key

_NAMESPACE = uuid.UUID("6f7e2c1a-3b8d-5e0f-9a41-0c2d7b6e5f13")
_positions = st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10) | st.none(), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20), _positions, _positions)
def test_event_id_is_the_uuid5_of_connector_partition_and_offset(
    connector: str, partition: dict[str, object], offset: dict[str, object]
) -> None:
    name = "\x00".join((connector, partition_key(partition), partition_key(offset)))
    assert derive_event_id(connector, partition, offset) == str(uuid.uuid5(_NAMESPACE, name))


def test_event_ids_stay_what_earlier_versions_derived() -> None:
    assert derive_event_id("bench-source", {"bench": 0}, {"n": 1}) == "e8a2a8db-99f2-59a2-a232-2f19fd4133fa"


def test_json_content_type_answers_stay_the_same_when_remembered() -> None:
    for _ in range(2):  # the second round from the cache
        assert is_json_content_type("application/json")
        assert is_json_content_type("application/vnd.x+json; v=1")
        assert not is_json_content_type("text/plain")
        assert not is_json_content_type(None)
