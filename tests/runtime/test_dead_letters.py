"""Dead letters that must get through: events the mesh refuses for what they are never wedge a pipeline."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import AdminSettings
from runtime.mesh import EmbeddedMesh
from runtime.protocol.events import publish_frame
from runtime.protocol.frames import MAX_FRAME, Command
from runtime.record import partition_key
from runtime.registry.file import FileRegistry
from runtime.worker.deadletter import PREVIEW_BYTES
from tests.client.fakes import FakeMesh
from tests.runtime import connectors
from tests.runtime.connectors import CounterSource, ListSink
from tests.runtime.test_worker import collect, eventually, sink_config, source_config
from tests.servers import free_port

# The Java runtime's default eventMesh.server.maxEventSize.
JAVA_MAX_EVENT_SIZE = 1000


def dropped(connector: str, name: str) -> float:
    labels = {"connector": connector, "name": name}
    return REGISTRY.get_sample_value("meshconnect_dead_letters_dropped_total", labels) or 0.0


async def committed(state: Path, partition: dict[str, Any]) -> Any:
    return (await FileRegistry(state).load_offsets("counter")).get(partition_key(partition))


async def offset_reaches(state: Path, offset: dict[str, Any], within: float) -> None:
    """Wait until partition 0's committed offset is ``offset``."""
    async with asyncio.timeout(within):
        while await committed(state, {"p": 0}) != offset:  # noqa: ASYNC110 - the registry has no event for it
            await asyncio.sleep(0.05)


async def test_an_event_over_the_mesh_size_limit_is_dead_lettered_cut_and_the_offsets_move_on(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0, max_event_size=JAVA_MAX_EVENT_SIZE) as mesh:
        letters: list[CloudEvent] = []
        reader = asyncio.create_task(collect(mesh, "counter-dlq", 3, letters))
        admin_port = free_port()
        config = source_config(mesh, tmp_path, limit=30, partitions=1, big_every=10).model_copy(
            update={"admin": AdminSettings(host="127.0.0.1", port=admin_port)}
        )
        stop = asyncio.Event()
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        await offset_reaches(tmp_path, {"n": 29}, within=20)
        await asyncio.wait_for(reader, 20)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
            ready = response.status
        stop.set()
        assert await source == 0
        assert mesh.topic_depth("numbers") == 27
    assert ready == 200
    assert len(letters) == 3
    for n in (9, 19, 29):
        original = orjson.dumps({"p": 0, "n": n, "pad": "x" * 5000})
        letter = next(e for e in letters if e.get_extension("dlqdatasha256") == hashlib.sha256(original).hexdigest())
        assert letter.get_extension("dlqdatasize") == len(original)
        assert letter.get_extension("dlqtopic") == "numbers"
        assert letter.get_extension("dlqattempts") == 1  # refused for its size: never sent again as it was
        assert "max_event_size" in str(letter.get_extension("dlqreason"))
        assert letter.get_data() == original[:PREVIEW_BYTES].decode()
        assert letter.get_type() == "counter-source.record"


async def test_a_record_whose_smallest_dead_letter_is_refused_is_counted_and_skipped(tmp_path: Path) -> None:
    before = dropped("counter-source", "counter")
    # A mesh that takes no data at all: not even a dead letter without its data gets through.
    async with EmbeddedMesh(port=0, max_event_size=1) as mesh:
        stop = asyncio.Event()
        config = source_config(mesh, tmp_path, limit=5, partitions=1)
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        await offset_reaches(tmp_path, {"n": 4}, within=20)
        stop.set()
        assert await source == 0
        assert mesh.topic_depth("counter-dlq") == 0
    assert dropped("counter-source", "counter") - before == 5


async def test_a_topic_no_group_subscribes_yet_is_waited_for_never_dead_lettered(tmp_path: Path) -> None:
    """The Java runtime's standalone store refuses publishes to a topic no group subscribes (yet): the
    events wait for a subscriber, as for an unreachable mesh; none goes to the dead-letter topic."""
    refusal = "org.apache.eventmesh.api.exception.StorageRuntimeException: Send message error, topic: numbers"
    mesh = FakeMesh(publish_refusals=[refusal] * 6)
    await mesh.start()
    try:
        stop = asyncio.Event()
        config = source_config(mesh, tmp_path, limit=3, partitions=1)  # type: ignore[arg-type]
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        await offset_reaches(tmp_path, {"n": 2}, within=30)
        stop.set()
        assert await source == 0
    finally:
        await mesh.stop()
    assert mesh.publish_refusals == [], "every refusal was met"
    topics = {orjson.loads(package.body or b"{}").get("subject") for package in mesh.commands(Command.ASYNC_MESSAGE_TO_SERVER)}
    assert topics == {"numbers"}, "nothing went to the dead-letter topic"


@pytest.mark.parametrize(
    ("broken", "reasons"),
    [
        # A lone surrogate (what decoding bytes that are not UTF-8 with surrogateescape leaves) cannot be
        # written as JSON.
        ({"broken_text_every": 5}, None),
        # A record the source itself refused (``ConnectorRecord.refusal``).
        ({"refused_every": 5}, {"number 4 is refused by the source", "number 9 is refused by the source"}),
    ],
    ids=["text-not-unicode", "refused-by-source"],
)
async def test_a_record_that_cannot_be_an_event_is_dead_lettered_and_the_offsets_move_on(
    tmp_path: Path, broken: dict[str, int], reasons: set[str] | None
) -> None:
    """The record is dead-lettered with the reason, the pipeline goes on, nothing ends."""
    async with EmbeddedMesh(port=0) as mesh:
        letters: list[CloudEvent] = []
        reader = asyncio.create_task(collect(mesh, "counter-dlq", 2, letters))
        stop = asyncio.Event()
        config = source_config(mesh, tmp_path, limit=10, partitions=1, **broken)
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        await offset_reaches(tmp_path, {"n": 9}, within=20)
        await asyncio.wait_for(reader, 20)
        stop.set()
        assert await source == 0
        assert mesh.topic_depth("numbers") == 8
    assert sorted(letter.get_data()["offset"]["n"] for letter in letters) == [4, 9]  # type: ignore[index]
    found = {str(letter.get_extension("dlqreason")) for letter in letters}
    if reasons is None:
        assert all("Unicode" in reason for reason in found), found
    else:
        assert found == reasons


def event_with_frame_of(size: int, data_key: str, id_: str) -> CloudEvent:
    """An event on topic ``numbers`` whose publish frame is ``size`` bytes long."""
    attributes = {"id": id_, "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
    probe = CloudEvent(attributes, {data_key: ""})
    padding = size - len(publish_frame(probe, seq="0000000001"))
    return CloudEvent(attributes, {data_key: "x" * padding})


async def test_a_sink_dead_letter_too_large_for_a_frame_goes_out_cut_and_the_sink_goes_on() -> None:
    # The pushed event fits a frame; its dead letter, a few extensions larger, does not.
    huge = event_with_frame_of(MAX_FRAME - 32, "reject", "huge")
    assert len(publish_frame(huge, seq="0000000001")) == MAX_FRAME - 32
    async with EmbeddedMesh(port=0) as mesh:
        letters: list[CloudEvent] = []
        reader = asyncio.create_task(collect(mesh, "lister-dlq", 1, letters))
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh, batch_size=1), stop=stop, install_signals=False))
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            await producer.publish(huge)
            attributes = {"id": "after", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
            await producer.publish(CloudEvent(attributes, {"ok": 1}))
        await asyncio.wait_for(reader, 20)
        await eventually(lambda: any(record.id == "after" for record in connectors.RECEIVED))
        stop.set()
        assert await sink == 0
    [letter] = letters
    original = orjson.dumps(huge.get_data())
    assert letter.get_id() == "huge"
    assert letter.get_extension("dlqreason").startswith("rejected by the test; data cut to fit")
    assert letter.get_extension("dlqdatasize") == len(original)
    assert letter.get_extension("dlqdatasha256") == hashlib.sha256(original).hexdigest()
    assert letter.get_data() == original[:PREVIEW_BYTES].decode()


async def test_a_record_too_large_for_a_frame_is_dead_lettered_cut_and_the_source_goes_on(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        letters: list[CloudEvent] = []
        reader = asyncio.create_task(collect(mesh, "counter-dlq", 1, letters))
        config = source_config(mesh, tmp_path, limit=6, partitions=1, big_every=3, big_size=MAX_FRAME)
        stop = asyncio.Event()
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        await offset_reaches(tmp_path, {"n": 5}, within=20)
        await asyncio.wait_for(reader, 20)
        stop.set()
        assert await source == 0
    letter = letters[0]
    assert letter.get_extension("dlqattempts") == 1
    assert "frame" in str(letter.get_extension("dlqreason"))
    assert letter.get_extension("dlqdatasize") == len(orjson.dumps({"p": 0, "n": 2, "pad": "x" * MAX_FRAME}))
