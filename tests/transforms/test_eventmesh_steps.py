"""EventMesh filter patterns and transformers as transform steps: on a sink worker through the embedded mesh,
in `meshconnect check` and `transform`, and the structured event and content types they give."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.errors import ConfigError, DataError
from runtime.mesh import EmbeddedMesh
from runtime.record import ConnectorRecord, derive_event_id
from runtime.transforms import EventView, Routing, compile_transforms
from tests.runtime import connectors
from tests.runtime.connectors import ListSink
from tests.runtime.test_commands import meshconnect, write_config
from tests.runtime.test_worker import eventually, sink_config

GREETING = {
    "transformerType": "template",
    "value": {"name": "$.data.name", "kind": "$.type", "tenant": "$.tenant"},
    "template": '{"greeting": "hello ${name}", "kind": "${kind}", "tenant": "${tenant}", "region": "${region:-eu}"}',
}


@pytest.fixture(autouse=True)
def _fresh_sink_state() -> None:
    connectors.RECEIVED.clear()
    connectors.PUTS.clear()


def sink_chain(steps: list[dict[str, Any]]) -> Any:
    return compile_transforms(steps, view=EventView(), routing=Routing("sink", connector="list-sink"))


async def test_a_sink_drops_by_an_eventmesh_pattern_and_writes_what_a_template_made_of_the_event() -> None:
    steps = [
        {
            "name": "orders",
            "filter": {"eventmesh": {"type": [{"prefix": "order."}], "data": {"total": [{"numeric": [">", 10]}]}}},
        },
        {"name": "greet", "map": {"eventmesh": GREETING}},
    ]
    async with EmbeddedMesh(port=0) as mesh:
        config = sink_config(mesh).model_copy(update={"transforms": steps})
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        events = [
            ("o1", "order.created", {"name": "Ann", "total": 12}, {"tenant": "acme"}),
            ("h1", "heartbeat", {"name": "-", "total": 99}, {}),
            ("o2", "order.created", {"name": "Bob", "total": 3}, {}),
            ("o3", "order.paid", {"name": 'Cy "${kind}"', "total": 50}, {}),
        ]
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            for event_id, kind, data, extensions in events:
                attributes = {"id": event_id, "source": "/shop", "type": kind, "subject": "numbers", "specversion": "1.0"}
                await producer.publish(CloudEvent({**attributes, **extensions}, data))
        await eventually(lambda: len(connectors.RECEIVED) == 2, what="the two large orders written")
        await eventually(lambda: mesh.unacked("lister", "numbers") == 0, what="every pushed event acknowledged")
        stop.set()
        assert await sink == 0
    ann, cy = connectors.RECEIVED
    assert (ann.id, ann.data, ann.datacontenttype) == (
        "o1",
        {"greeting": "hello Ann", "kind": "order.created", "tenant": "acme", "region": "eu"},
        "application/json",
    )
    # text read from the event is inserted as it is: its quotes break the JSON, and its ${kind} stays as written
    assert (cy.id, cy.datacontenttype) == ("o3", "text/plain")
    assert cy.data == '{"greeting": "hello Cy "${kind}"", "kind": "order.paid", "tenant": "null", "region": "eu"}'


def test_the_pattern_reads_the_structured_event_time_extensions_and_a_source_s_filled_in_attributes() -> None:
    view = EventView("orders", "/orders", "orders.record", "orders")
    routing = Routing("source", permits=lambda topic: True)
    pattern = {
        "time": [{"prefix": "2026-01-02T03:04:05"}],
        "source": ["/orders"],
        "subject": ["orders"],
        "id": [derive_event_id("orders", {"p": 0}, {"n": 1})],
        "datacontenttype": ["application/json"],
        "data": {"n": ["10"]},
    }
    chain = compile_transforms([{"filter": {"eventmesh": pattern}}], view=view, routing=routing)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = ConnectorRecord(data={"n": 10}, partition={"p": 0}, offset={"n": 1}, timestamp=moment)
    assert chain.apply(record) is record
    assert chain.apply(ConnectorRecord(data={"n": 11}, partition={"p": 0}, offset={"n": 1}, timestamp=moment)) is None
    original = compile_transforms([{"map": {"eventmesh": {"transformerType": "original"}}}], view=view, routing=routing)
    whole = original.apply(
        ConnectorRecord(data=b'{"n": 1}', datacontenttype="application/json", extensions={"tenant": "acme"}, timestamp=moment)
    )
    assert whole.data["tenant"] == "acme" and whole.data["data"] == {"n": 1} and whole.data["type"] == "orders.record"
    assert whole.data["time"].startswith("2026-01-02T03:04:05")
    binary = original.apply(ConnectorRecord(data=b"\x00\x01", timestamp=moment))
    assert binary.datacontenttype == "text/plain"  # binary data: the event's JSON is text
    assert orjson.loads(binary.data)["data_base64"] == "AAE="


def test_a_transformer_s_text_is_json_data_only_when_the_data_was_json_and_the_text_is_json() -> None:
    constant = sink_chain([{"map": {"eventmesh": {"transformerType": "constant", "value": '{"big": 123456789012345678901234}'}}}])
    from_json = constant.apply(ConnectorRecord(data={"a": 1}, datacontenttype="application/cloudevents+json"))
    assert from_json.data == {"big": 123456789012345678901234}  # exact: no float on the way
    assert from_json.datacontenttype == "application/cloudevents+json"  # a JSON type stays the one the event had
    from_text = constant.apply(ConnectorRecord(data="plain words", datacontenttype="text/plain"))
    assert (from_text.data, from_text.datacontenttype) == ('{"big": 123456789012345678901234}', "text/plain")
    words = sink_chain([{"map": {"eventmesh": {"transformerType": "constant", "value": "not json"}}}])
    result = words.apply(ConnectorRecord(data={"a": 1}, dataschema="https://schemas/a"))
    assert (result.data, result.datacontenttype, result.dataschema) == ("not json", "text/plain", None)


def test_an_event_the_rules_cannot_read_is_a_data_error_of_that_event() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    template = {"transformerType": "template", "value": {"a": "$.data.a"}, "template": "${a}"}
    for transformer in ({"transformerType": "original"}, template):
        chain = sink_chain([{"map": {"eventmesh": transformer}}])
        with pytest.raises(DataError, match=r"transform step 0 \(map\) failed: .*nests deeper than 256"):
            chain.apply(ConnectorRecord(data={"a": deep}))


@pytest.mark.parametrize(
    ("step", "key", "problem"),
    [
        (
            {"filter": {"eventmesh": {"data": {"num": [{"numeric": [">", "ten"]}]}}}},
            "transforms.0.filter.eventmesh.data.num[0].numeric[1]",
            "",
        ),
        (
            {"filter": {"eventmesh": '{"tenant": ["acme"]}'}},
            "transforms.0.filter.eventmesh.tenant",
            "not a CloudEvents attribute",
        ),
        (
            {"map": {"eventmesh": {"transformerType": "templat"}}},
            "transforms.0.map.eventmesh.transformerType",
            "not an EventMesh",
        ),
        ({"map": {"eventmesh": "original"}}, "transforms.0.map.eventmesh", "an EventMesh transformer is an object"),
    ],
)
def test_a_rule_eventmesh_could_not_apply_names_its_place(step: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sink_chain([step])
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_check_fails_on_a_bad_eventmesh_rule_pointing_at_the_condition(tmp_path: Path) -> None:
    config = {
        "name": "files",
        "connector": "file-sink",
        "sink": {"topics": ["t"]},
        "config": {"directory": str(tmp_path)},
        "transforms": [{"name": "big", "filter": {"eventmesh": {"data": {"num": [{"numeric": [">", 0, "~", 10]}]}}}}],
    }
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert "transforms.0.filter.eventmesh.data.num[0].numeric[2] (step 'big')" in result.stderr


def test_transform_runs_eventmesh_steps_on_json_lines(tmp_path: Path) -> None:
    config = {
        "name": "files",
        "connector": "file-sink",
        "sink": {"topics": ["t"]},
        "config": {"directory": str(tmp_path)},
        "transforms": [
            {"filter": {"eventmesh": {"type": [{"anything-but": "heartbeat"}]}}},
            {"map": {"eventmesh": {"transformerType": "template", "value": {"id": "$.data.after.id"}, "template": "${id}"}}},
        ],
    }
    events = [
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "heartbeat"},
        {"specversion": "1.0", "id": "2", "source": "/s", "type": "order", "data": {"after": {"id": 7}}},
    ]
    stdin = "".join(orjson.dumps(event).decode() + "\n" for event in events)
    result = meshconnect("transform", "--config", str(write_config(tmp_path, config)), stdin=stdin)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    out = orjson.loads(line)
    assert (out["id"], out["data"], out["datacontenttype"]) == ("2", 7, "application/json")
    assert "line 1 (id 1): dropped by a filter" in result.stderr
