"""The transforms: chain on real workers through the embedded mesh, and as `meshconnect check` and `transform` run it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import SourceSettings, WorkerConfig
from runtime.errors import ConfigError, DataError
from runtime.mesh import EmbeddedMesh
from runtime.observability import mask_secrets
from runtime.record import ConnectorRecord, derive_event_id
from runtime.transforms import EventView, Routing, compile_transforms
from tests.runtime import connectors
from tests.runtime.connectors import CounterSource, ListSink
from tests.runtime.test_commands import mesh_port, meshconnect, write_config  # noqa: F401 - mesh_port is a fixture
from tests.runtime.test_dead_letters import offset_reaches
from tests.runtime.test_worker import collect, eventually, sink_config, source_config

SOURCE_STEPS: list[dict[str, Any]] = [
    {"name": "drop-threes", "filter": "data.n % 3 != 0"},
    {"name": "by-parity", "route": 'data.n == 25 ? "elsewhere" : "numbers." + (data.n % 2 == 0 ? "even" : "odd")'},
    {"set": {"type": '"counter.number"', "parity": "data.n % 2 == 0"}},
]


@pytest.fixture(autouse=True)
def _fresh_sink_state() -> None:
    connectors.RECEIVED.clear()
    connectors.PUTS.clear()


def step_count(metric: str, connector: str, name: str, step: str) -> float:
    labels = {"connector": connector, "name": name, "step": step}
    return REGISTRY.get_sample_value(f"meshconnect_transform_{metric}_total", labels) or 0.0


async def test_a_source_drops_routes_and_sets_and_its_offsets_pass_the_dropped_records(tmp_path: Path) -> None:
    before = {
        metric: step_count(metric, "counter-source", "counter", "0 'drop-threes' (filter)") for metric in ("events", "dropped")
    }
    failed_before = step_count("failed", "counter-source", "counter", "1 'by-parity' (route)")
    async with EmbeddedMesh(port=0) as mesh:
        config = source_config(mesh, tmp_path, limit=31, partitions=1).model_copy(
            update={
                "transforms": SOURCE_STEPS,
                "source": SourceSettings(
                    topic="numbers", allowed_topics=["numbers.*"], checkpoint_every=5, checkpoint_interval=0.2
                ),
            }
        )
        even: list[CloudEvent] = []
        odd: list[CloudEvent] = []
        letters: list[CloudEvent] = []
        readers = [
            asyncio.create_task(collect(mesh, "numbers.even", 10, even)),
            asyncio.create_task(collect(mesh, "numbers.odd", 9, odd)),
            asyncio.create_task(collect(mesh, "counter-dlq", 1, letters)),
        ]
        stop = asyncio.Event()
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        # 30 is the last number and a multiple of 3: dropped, its offset commits all the same.
        await offset_reaches(tmp_path, {"n": 30}, within=20)
        await asyncio.wait_for(asyncio.gather(*readers), 20)
        stop.set()
        assert await source == 0
        assert mesh.topic_depth("numbers") == 0
    kept = [n for n in range(31) if n % 3 and n != 25]
    assert [event.get_data()["n"] for event in even] == [n for n in kept if n % 2 == 0]  # type: ignore[index]
    assert [event.get_data()["n"] for event in odd] == [n for n in kept if n % 2]  # type: ignore[index]
    for event in even + odd:
        n = event.get_data()["n"]  # type: ignore[index]
        assert event.get_id() == derive_event_id("counter", {"p": 0}, {"n": n})  # ids still derive from positions
        assert event.get_type() == "counter.number"
        assert event.get_extension("parity") == (n % 2 == 0)
    [letter] = letters
    assert letter.get_data()["offset"] == {"n": 25}  # type: ignore[index]
    assert letter.get_extension("dlqreason").startswith("transform step 1 'by-parity' (route) failed: ")
    assert "'elsewhere', which is not allowed here" in letter.get_extension("dlqreason")
    assert step_count("events", "counter-source", "counter", "0 'drop-threes' (filter)") - before["events"] == 31
    assert step_count("dropped", "counter-source", "counter", "0 'drop-threes' (filter)") - before["dropped"] == 11
    assert step_count("failed", "counter-source", "counter", "1 'by-parity' (route)") - failed_before == 1


async def test_a_sink_acknowledges_what_it_drops_maps_what_it_keeps_and_dead_letters_a_failing_step() -> None:
    steps = [
        {"filter": 'type != "heartbeat"'},
        {"name": "flatten", "map": ".after + {op}"},
        {"set": {"tenant": 'has(extensions.tenant) ? extensions.tenant : "none"'}},
        {"remove": ["trace"]},
    ]
    async with EmbeddedMesh(port=0) as mesh:
        config = sink_config(mesh).model_copy(update={"transforms": steps})
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        events = [
            ("h1", "heartbeat", {}, {}),
            ("o1", "order", {"op": "c", "after": {"id": 1, "total": 5}}, {"tenant": "acme", "trace": "t1"}),
            ("o2", "order", "not an envelope", {}),
            ("h2", "heartbeat", {}, {}),
            ("o3", "order", {"op": "u", "after": {"id": 3, "total": 7}}, {}),
        ]
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            for event_id, kind, data, extensions in events:
                attributes = {"id": event_id, "source": "/shop", "type": kind, "subject": "numbers", "specversion": "1.0"}
                await producer.publish(CloudEvent({**attributes, **extensions}, data))
        letters: list[CloudEvent] = []
        await asyncio.wait_for(collect(mesh, "lister-dlq", 1, letters), 20)
        await eventually(lambda: len(connectors.RECEIVED) == 2, what="the two orders written")
        await eventually(lambda: mesh.unacked("lister", "numbers") == 0, what="every pushed event acknowledged")
        stop.set()
        assert await sink == 0
    assert [(record.id, record.data, dict(record.extensions)) for record in connectors.RECEIVED] == [
        ("o1", {"id": 1, "total": 5, "op": "c"}, {"tenant": "acme"}),
        ("o3", {"id": 3, "total": 7, "op": "u"}, {"tenant": "none"}),
    ]
    [letter] = letters
    assert letter.get_id() == "o2"
    assert letter.get_data() == "not an envelope"  # the event as it arrived
    reason = letter.get_extension("dlqreason")
    assert reason.startswith("transform step 1 'flatten' (map) failed: jq '.after + {op}': ")
    assert "Cannot index string" in reason


def source_chain(steps: list[dict[str, Any]]) -> Any:
    routing = Routing(side="source", permits=lambda topic: topic.startswith("orders"), allowed="orders*")
    return compile_transforms(steps, view=EventView("orders", "/orders", "orders.record", "orders"), routing=routing)


@pytest.mark.parametrize(
    ("steps", "key", "problem"),
    [
        (
            [{"filter": 'tpye == "x"'}],
            "transforms.0.filter",
            "'tpye', which is not a field of an event:\n    tpye == \"x\"\n    ^",
        ),
        ([{"filter": "type == "}], "transforms.0.filter", "CEL syntax error in 'type == '"),
        ([{"filter": 'upper(type) == "X"'}], "transforms.0.filter", "calls 'upper', which CEL's standard library does not have"),
        ([{"name": "flat", "map": ".a |"}], "transforms.0.map (step 'flat')", "jq cannot compile '.a |'"),
        ([{"set": {"id": "data.order"}}], "transforms.0.set.id", "'id' is the event's identity"),
        ([{"set": {"subject": '"x"'}}], "transforms.0.set.subject", "'subject' is the event's topic"),
        ([{"filter": "true", "map": "."}], "transforms.0", "exactly one of filter, route, set, remove, map, mask"),
        ([{"filter": {"sql": "x"}}], "transforms.0.filter", "['sql'] names no language of this step"),
        ([{"mask": {"fields": ["email"]}}], "transforms.0.mask", "method 'hmac' needs 'secret'"),
        ([{"filter": "true"}, {"remove": ["id"]}], "transforms.1.remove", "'id' cannot be removed"),
    ],
)
def test_a_step_that_cannot_compile_names_its_key_and_points_at_the_fault(
    steps: list[dict[str, Any]], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        source_chain(steps)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_comprehension_variables_are_no_unknown_fields_and_a_missing_field_fails_only_its_event() -> None:
    chain = source_chain([{"filter": "data.items.exists(item, item > 1)"}])
    assert chain.apply(ConnectorRecord(data={"items": [0, 2]})) is not None
    assert chain.apply(ConnectorRecord(data={"items": [0]})) is None
    with pytest.raises(DataError, match=r"transform step 0 \(filter\) failed: .*the event has no 'items'"):
        chain.apply(ConnectorRecord(data={}))
    with pytest.raises(DataError, match=r"gave 'yes', not true or false"):
        source_chain([{"filter": '"yes"'}]).apply(ConnectorRecord(data={}))


def test_a_source_step_sees_the_attributes_the_worker_fills_in() -> None:
    chain = source_chain([{"set": {"seen": 'type + " " + source + " " + subject + " " + id'}}])
    record = ConnectorRecord(data={}, partition={"p": 0}, offset={"n": 1})
    result = chain.apply(record)
    expected_id = derive_event_id("orders", {"p": 0}, {"n": 1})
    assert result.extensions["seen"] == f"orders.record /orders orders {expected_id}"
    assert (result.id, result.source, result.type, result.subject) == (None, None, None, None)  # still filled in by the worker


def test_mask_hashes_with_the_key_so_equal_values_stay_equal_and_redacts_in_lists() -> None:
    chain = source_chain(
        [
            {"mask": {"fields": ["customer.email", "missing.field"], "secret": "k1"}},
            {"mask": {"fields": ["items.*.card"], "method": "redact"}},
        ]
    )
    data = {"customer": {"email": "ann@example.com", "name": "Ann"}, "items": [{"card": "4111", "n": 1}, {"n": 2}]}
    first = chain.apply(ConnectorRecord(data=data))
    again = chain.apply(ConnectorRecord(data={**data, "customer": {"email": "ann@example.com"}}))
    assert first.data["customer"]["email"] == again.data["customer"]["email"] != "ann@example.com"
    assert len(first.data["customer"]["email"]) == 64
    assert first.data["items"] == [{"card": "REDACTED", "n": 1}, {"n": 2}]
    assert data["customer"]["email"] == "ann@example.com"  # the polled record's data is left as it was
    other_key = source_chain([{"mask": {"fields": ["customer.email"], "secret": "k2"}}]).apply(ConnectorRecord(data=data))
    assert other_key.data["customer"]["email"] != first.data["customer"]["email"]
    with pytest.raises(DataError, match="mask needs JSON object or array data"):
        chain.apply(ConnectorRecord(data=b"\x00", datacontenttype="application/octet-stream"))
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    for value in (deep, "ann \udcff"):  # input must not end the worker: each is a data error of its event
        with pytest.raises(DataError, match="a value cannot be hashed"):
            chain.apply(ConnectorRecord(data={"customer": {"email": value}}))


def test_check_fails_on_a_bad_step_with_its_index_and_the_expression(tmp_path: Path) -> None:
    config = {
        "name": "files",
        "connector": "file-sink",
        "sink": {"topics": ["t"]},
        "config": {"directory": str(tmp_path)},
        "transforms": [{"filter": "true"}, {"name": "typo", "filter": 'tpye == "x"'}],
    }
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert "transforms.1.filter (step 'typo')" in result.stderr and "did you mean 'type'?" in result.stderr
    config["transforms"] = [{"route": '"orders"'}]
    result = meshconnect("check", "file-sink", "--config", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert "file-sink has no target a route step could choose" in result.stderr


def test_check_connect_shows_a_record_before_and_after_the_transforms(tmp_path: Path, mesh_port: int) -> None:  # noqa: F811
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"kind": "heartbeat"}\n{"kind": "order", "email": "ann@example.com"}\n')
    config = {
        "name": "tail",
        "connector": "file-source",
        "mesh": {"address": f"127.0.0.1:{mesh_port}"},
        "source": {"topic": "lines"},
        "registry": {"kind": "file", "path": str(tmp_path / "state")},
        "config": {"paths": [str(lines)], "format": "json"},
        "transforms": [{"filter": 'data.kind != "heartbeat"'}, {"mask": {"fields": ["email"], "method": "redact"}}],
    }
    result = meshconnect("check", "file-source", "--config", str(write_config(tmp_path, config)), "--connect")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "record 1: dropped by a filter (its offset would commit)" in out
    assert "record 2 as polled: " in out and "ann@example.com" in out.split("record 2 as polled: ")[1].splitlines()[0]
    after = out.split("record 2 after the transforms: ")[1].splitlines()[0]
    assert orjson.loads(after)["data"] == {"kind": "order", "email": "REDACTED"}


def test_transform_runs_the_chain_on_json_lines(tmp_path: Path) -> None:
    config = {
        "name": "orders",
        "connector": "http-source",
        "source": {"topic": "orders", "allowed_topics": ["orders.*"]},
        "transforms": [
            {"filter": 'type != "heartbeat"'},
            {"route": '"orders." + extensions.tenant'},
            {"map": "{id: .after.id}"},
        ],
    }
    events = [
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "heartbeat"},
        {"specversion": "1.0", "id": "2", "source": "/s", "type": "order", "tenant": "acme", "data": {"after": {"id": 7}}},
        {"specversion": "1.0", "id": "3", "source": "/s", "type": "order", "data": {"after": {"id": 8}}},
    ]
    stdin = "".join(orjson.dumps(event).decode() + "\n" for event in events) + "not json\n"
    result = meshconnect("transform", "--config", str(write_config(tmp_path, config)), stdin=stdin)
    assert result.returncode == 1, result.stderr
    [line] = result.stdout.splitlines()
    out = orjson.loads(line)
    assert (out["id"], out["subject"], out["data"]) == ("2", "orders.acme", {"id": 7})
    assert "line 1 (id 1): dropped by a filter" in result.stderr
    assert "line 3 (id 3): would be dead-lettered: transform step 1 (route) failed" in result.stderr
    assert "line 4: not a CloudEvent" in result.stderr
    assert "4 in, 1 out, 1 dropped, 2 failed" in result.stderr


def test_set_and_remove_change_attributes_and_extensions_and_json_bytes_are_read_as_json() -> None:
    chain = source_chain(
        [
            {"set": {"time": 'timestamp("2026-01-02T03:04:05Z")', "dataschema": "null", "tenant": "data.customer.tenant"}},
            {"remove": ["trace"]},
            {"map": "{id: .order}"},
        ]
    )
    record = ConnectorRecord(
        data=b'{"order": 7, "customer": {"tenant": "acme"}}',
        datacontenttype="application/json",
        dataschema="file:///orders.json",
        extensions={"trace": "t1"},
    )
    result = chain.apply(record)
    assert result.timestamp.isoformat() == "2026-01-02T03:04:05+00:00"
    assert (result.dataschema, dict(result.extensions), result.data) == (None, {"tenant": "acme"}, {"id": 7})
    with pytest.raises(DataError, match="an extension is a string, int or bool"):
        source_chain([{"set": {"ratio": "1.5"}}]).apply(ConnectorRecord(data={}))
    with pytest.raises(DataError, match="is not valid JSON"):
        chain.apply(ConnectorRecord(data=b"{", datacontenttype="application/json"))


async def test_a_worker_with_a_bad_step_does_not_start(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        config = sink_config(mesh).model_copy(update={"transforms": [{"map": ".a |"}]})
        assert await serve(ListSink, config, install_signals=False) == 2
        steps = [{"route": '"other"'}, {"set": {"source": '"x"'}}]
        config = source_config(mesh, tmp_path).model_copy(update={"transforms": steps})
        assert await serve(CounterSource, config, install_signals=False) == 2


def test_a_mask_secret_given_as_text_never_reaches_a_log_line() -> None:
    config = WorkerConfig.model_validate(
        {"name": "n", "connector": "list-sink", "transforms": [{"mask": {"fields": ["email"], "secret": "pepper-1234"}}]}
    )
    logged = mask_secrets(None, "info", {"event": "starting", "config": config.model_dump()})
    assert "pepper-1234" not in str(logged)
    assert logged["config"]["transforms"][0]["mask"]["fields"] == ["email"]


def test_results_kept_per_attribute_values_tell_true_from_1_and_never_keep_an_error() -> None:
    chain = source_chain([{"filter": "extensions.flag == true"}])
    assert chain.apply(ConnectorRecord(data={}, extensions={"flag": 1})) is None
    assert chain.apply(ConnectorRecord(data={}, extensions={"flag": True})) is not None
    assert chain.apply(ConnectorRecord(data={}, extensions={"flag": 1})) is None
    for _ in range(2):
        with pytest.raises(DataError, match="the event has no 'flag'"):
            chain.apply(ConnectorRecord(data={}, extensions={}))


@pytest.mark.parametrize(
    ("expression", "extensions", "labels"),
    [
        # Read only as members: kept per those members' values, whatever else the extensions hold.
        ("extensions.tenant", [{"tenant": "a"}, {"tenant": "a", "x": 1}, {"tenant": "b"}], ["a", "a", "b"]),
        ('has(extensions.flag) ? "flagged" : "plain"', [{"tenant": "a"}, {"flag": True}], ["plain", "flagged"]),
        # Read as a whole map too: kept per the whole map.
        (
            'extensions.tenant + "/" + string(size(extensions))',
            [{"tenant": "a"}, {"tenant": "a", "x": 1}, {"tenant": "a"}],
            ["a/1", "a/2", "a/1"],
        ),
        ('extensions.exists(name, name == "x") ? "x" : "-"', [{"tenant": "a"}, {"tenant": "a", "x": 1}], ["-", "x"]),
    ],
)
def test_results_kept_per_extension_values_see_every_extension_the_expression_reads(
    expression: str, extensions: list[dict[str, Any]], labels: list[str]
) -> None:
    chain = source_chain([{"set": {"label": expression}}])
    got = [chain.apply(ConnectorRecord(data={}, extensions=members)).extensions["label"] for members in extensions]
    assert got == labels
