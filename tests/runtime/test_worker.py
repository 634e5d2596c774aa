"""Source and sink workers through the embedded mesh: delivery, checkpoints, retries, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import AdminSettings, RegistrySettings, WorkerConfig
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import Command, FrameDecoder, Header, Package, SubscriptionMode, SubscriptionType, encode
from runtime.record import JsonValue, partition_key
from runtime.registry.file import FileRegistry
from runtime.worker.source import group_of
from tests.runtime import connectors
from tests.runtime.connectors import CounterSource, GroupedCounterSource, ListSink
from tests.servers import free_port


@pytest.fixture(autouse=True)
def _fresh_sink_state() -> None:
    connectors.RECEIVED.clear()
    connectors.PUTS.clear()
    connectors.HELD_PUTS.clear()


def source_config(mesh: EmbeddedMesh, state: Path, **config: Any) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "name": "counter",
            "connector": "counter-source",
            "mesh": {"address": f"127.0.0.1:{mesh.port}"},
            "source": {"topic": "numbers", "checkpoint_every": 20, "checkpoint_interval": 0.2},
            "registry": {"kind": "file", "path": str(state), "lease_ttl": 2},
            "admin": {"host": "127.0.0.1", "port": 0},
            "config": config,
        }
    )


def sink_config(mesh: EmbeddedMesh, **sink: Any) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "name": "lister",
            "connector": "list-sink",
            "mesh": {"address": f"127.0.0.1:{mesh.port}"},
            "sink": {"topics": ["numbers"], "batch_size": 32, "linger_ms": 20, "retry_initial": 0.02, "retry_max": 0.1, **sink},
            "admin": {"host": "127.0.0.1", "port": 0},
        }
    )


async def eventually(condition: Callable[[], bool], within: float = 20.0, what: str = "condition") -> None:
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - the condition is plain state, not an event
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what}: not within {within}s")


def numbered(n: int) -> CloudEvent:
    """Event ``n`` of partition 0 on the topic the test sinks read."""
    return CloudEvent({"id": f"e{n}", "source": "/t", "type": "t", "subject": "numbers"}, {"p": 0, "n": n})


def received_numbers() -> set[tuple[int, int]]:
    return {(r.data["p"], r.data["n"]) for r in connectors.RECEIVED if isinstance(r.data, dict)}


async def test_source_to_sink_delivers_everything_and_checkpoints_the_last_offsets(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=100), stop=stop_source, install_signals=False)
        )
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        await eventually(lambda: len(received_numbers()) == 200)
        stop_source.set()
        stop_sink.set()
        assert await source == 0
        assert await sink == 0
    offsets = await FileRegistry(tmp_path).load_offsets("counter")
    assert offsets == {partition_key({"p": 0}): {"n": 99}, partition_key({"p": 1}): {"n": 99}}
    first = next(r for r in connectors.RECEIVED if r.data == {"p": 0, "n": 0})
    assert first.subject == "numbers"
    assert first.source == "/meshconnect/counter"


async def test_source_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        registry = FileRegistry(tmp_path)
        coordinatorless = {partition_key({"p": 0}): {"n": 49}, partition_key({"p": 1}): {"n": 89}}
        await registry.set_offsets("counter", coordinatorless, replace=True, force=True)
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=100), stop=stop_source, install_signals=False)
        )
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        await eventually(lambda: len(received_numbers()) == 60)
        await asyncio.sleep(0.3)
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)
    assert received_numbers() == {(0, n) for n in range(50, 100)} | {(1, n) for n in range(90, 100)}


async def test_sink_retries_retriable_errors_then_writes_without_dead_letters(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        config = sink_config(mesh).model_copy(update={"config": {"fail_first": 3}})
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop_sink, install_signals=False))
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=20, partitions=1), stop=stop_source, install_signals=False)
        )
        await eventually(lambda: len(received_numbers()) == 20)
        assert len(connectors.PUTS) > 3
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)
        assert mesh.topic_depth("lister-dlq") == 0


async def collect(mesh: EmbeddedMesh, topic: str, count: int, into: list[Any]) -> None:
    async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("dlq-reader", "sub")) as client:
        await client.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await client.listen()
        async for pushed in client.pushed():
            into.append(pushed.event)
            await pushed.ack()
            if len(into) >= count:
                return


async def test_rejections_and_poison_records_go_to_the_dead_letter_topic(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh, max_attempts=2), stop=stop_sink, install_signals=False))
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            for n, data in enumerate([{"ok": 1}, {"reject": 1}, {"bad": 1}, {"ok": 2}]):
                attributes = {"id": f"e{n}", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
                await producer.publish(CloudEvent(attributes, data))
        letters: list[Any] = []
        await asyncio.wait_for(collect(mesh, "lister-dlq", 2, letters), 20)
        stop_sink.set()
        assert await sink == 0
    by_id = {event.get_id(): event for event in letters}
    assert set(by_id) == {"e1", "e2"}
    assert by_id["e1"].get_extension("dlqreason") == "rejected by the test"
    assert by_id["e2"].get_extension("dlqreason") == "a record in the batch is bad"
    assert by_id["e2"].get_extension("dlqattempts") == 2
    assert by_id["e1"].get_extension("dlqtopic") == "numbers"
    assert by_id["e1"].get_extension("dlqconnector") == "list-sink"
    assert by_id["e1"].get_data() == {"reject": 1}
    assert sorted(r.data["ok"] for r in connectors.RECEIVED) == [1, 2]


async def test_sink_is_not_ready_while_its_target_is_down(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        admin_port = free_port()
        config = sink_config(mesh, retry_max=0.05).model_copy(
            update={"config": {"fail_first": 40}, "admin": AdminSettings(host="127.0.0.1", port=admin_port)}
        )
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        statuses: list[int] = []
        async with aiohttp.ClientSession() as http:

            async def readiness() -> int:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                        return response.status
                return 0

            async with asyncio.timeout(20):
                while await readiness() != 200:  # noqa: ASYNC110 - polling an HTTP endpoint
                    await asyncio.sleep(0.02)
            async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
                attributes = {"id": "r1", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
                await producer.publish(CloudEvent(attributes, {"p": 0, "n": 0}))
            async with asyncio.timeout(20):
                while not connectors.RECEIVED:
                    statuses.append(await readiness())
                    await asyncio.sleep(0.02)
            after = await readiness()
        stop.set()
        assert await sink == 0
    assert 503 in statuses, "the sink must say not ready while put keeps failing"
    assert after == 200
    assert len(connectors.PUTS) > 40


async def test_source_checkpoints_to_redis_too(tmp_path: Path, redis_server: Any) -> None:
    from runtime.registry.redis import RedisRegistry

    prefix = f"worker-test-{tmp_path.name}"
    async with EmbeddedMesh(port=0) as mesh:
        config = source_config(mesh, tmp_path, limit=50).model_copy(
            update={"registry": RegistrySettings.model_validate({"kind": "redis", "url": redis_server.url, "prefix": prefix})}
        )
        stop = asyncio.Event()
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        async with asyncio.timeout(20):
            while mesh.topic_depth("numbers") < 100:  # noqa: ASYNC110 - the mesh offers no event for it
                await asyncio.sleep(0.02)
        stop.set()
        assert await source == 0
    registry = RedisRegistry(redis_server.url, prefix=prefix)
    try:
        assert await registry.load_offsets("counter") == {partition_key({"p": 0}): {"n": 49}, partition_key({"p": 1}): {"n": 49}}
    finally:
        await registry.close()


async def test_sink_reports_its_membership_to_a_configured_registry(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        config = sink_config(mesh).model_copy(update={"registry": RegistrySettings(kind="file", path=str(tmp_path))})
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        registry = FileRegistry(tmp_path)
        async with asyncio.timeout(10):
            while not (members := await registry.members("lister")):  # noqa: ASYNC110 - the store has no events
                await asyncio.sleep(0.05)
        assert [info["side"] for info in members.values()] == ["sink"]
        stop.set()
        assert await sink == 0
        assert await registry.members("lister") == {}


async def publish_body(port: int, body: bytes) -> Package:
    """Publish ``body`` as it is (no event mapping), as any EventMesh client could; returns the mesh's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder()

    async def answer() -> Package:
        while True:
            packages = decoder.feed(await asyncio.wait_for(reader.read(65536), 10))
            if packages:
                return packages[0]

    try:
        hello = Package.with_json(Header(Command.HELLO_REQUEST, seq="1"), user_agent_for("raw-producer", "pub"))
        writer.write(encode(hello))
        assert (await answer()).header.code == 0
        properties = {"protocolversion": "1.0", "protocoldesc": "tcp", "protocoltype": "cloudevents"}
        writer.write(encode(Package(Header(Command.ASYNC_MESSAGE_TO_SERVER, seq="2", properties=properties), body)))
        return await answer()
    finally:
        writer.close()


async def test_a_push_that_is_not_an_event_goes_to_the_dead_letter_topic_with_its_bytes(tmp_path: Path) -> None:
    # A valid CloudEvent to any EventMesh runtime, but its data cannot be restored by the event mapping.
    body = (
        b'{"specversion":"1.0","id":"odd-1","source":"/elsewhere","type":"t","subject":"numbers",'
        b'"datacontenttype":"application/cloudevents+json","meshdataenc":"base64","data":"%%% not base64 %%%"}'
    )
    async with EmbeddedMesh(port=0) as mesh:
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        assert (await publish_body(mesh.port, body)).header.code == 0
        letters: list[Any] = []
        await asyncio.wait_for(collect(mesh, "lister-dlq", 1, letters), 20)
        stop_sink.set()
        assert await sink == 0
    [letter] = letters
    assert letter.get_type() == "meshconnect.undecodable"
    assert letter.get_data() == body
    assert letter.get_extension("dlqreason").startswith("the mesh pushed a body that is not an event")
    assert connectors.RECEIVED == []


async def test_a_connection_lost_while_subscribing_is_retried_not_fatal(tmp_path: Path) -> None:
    cuts = 0

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        nonlocal cuts
        try:
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE_REQUEST" in data and cuts == 0:
                    cuts += 1  # the first subscribe never reaches the mesh: the connection drops under it
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with EmbeddedMesh(port=0) as mesh:

        async def proxy(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            mesh_reader, mesh_writer = await asyncio.open_connection("127.0.0.1", mesh.port)
            await asyncio.gather(relay(client_reader, mesh_writer, True), relay(mesh_reader, client_writer, False))

        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        proxy_port = server.sockets[0].getsockname()[1]
        config = sink_config(mesh).model_copy(
            update={"mesh": sink_config(mesh).mesh.model_copy(update={"address": f"127.0.0.1:{proxy_port}"})}
        )
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop_sink, install_signals=False))
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            attributes = {"id": "after-cut", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
            await producer.publish(CloudEvent(attributes, {"ok": 1}))
        await eventually(lambda: len(connectors.RECEIVED) == 1)
        assert not sink.done(), "the sink worker gave up on a retriable error"
        stop_sink.set()
        assert await sink == 0
        server.close()
    assert cuts == 1


async def test_a_sink_fills_batches_larger_than_the_client_push_buffer(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0, max_unacked_per_session=4000) as mesh:
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=1500, batch=500), stop=stop_source, install_signals=False)
        )
        await eventually(lambda: mesh.topic_depth("numbers") == 3000)  # a backlog, so the batches are full ones
        sink = asyncio.create_task(
            serve(ListSink, sink_config(mesh, batch_size=1500, linger_ms=2000), stop=stop_sink, install_signals=False)
        )
        await eventually(lambda: len(received_numbers()) == 3000)
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)
    assert connectors.PUTS == [1500, 1500]


async def test_a_commit_slower_than_the_lease_ttl_does_not_stop_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = FileRegistry.commit_offsets
    stalls = 0
    stall_over = asyncio.Event()

    async def stalling_commit(self: FileRegistry, *args: Any, **kwargs: Any) -> None:
        nonlocal stalls
        if stalls == 0:
            stalls += 1
            try:
                await asyncio.sleep(3)  # longer than the lease TTL of source_config (2 s): a stalled disk or store
                await commit(self, *args, **kwargs)
            finally:
                stall_over.set()
            return
        await commit(self, *args, **kwargs)

    monkeypatch.setattr(FileRegistry, "commit_offsets", stalling_commit)
    async with EmbeddedMesh(port=0) as mesh:
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=100), stop=stop_source, install_signals=False)
        )
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        await asyncio.wait_for(stall_over.wait(), 30)
        await eventually(lambda: len(received_numbers()) == 200)
        assert not source.done(), f"the source worker exited with {source.result()} after a slow registry commit"
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)


@pytest.mark.parametrize("store_delays", [{}, {"renew": 0.2, "release": 0.5}], ids=["prompt-store", "slow-store"])
async def test_a_joining_replica_takes_its_share_of_groups_and_no_event_is_delivered_twice(
    tmp_path: Path, redis_server: Any, monkeypatch: pytest.MonkeyPatch, store_delays: dict[str, float]
) -> None:
    from runtime.registry.redis import RedisRegistry

    groups, limit = [f"g{index}" for index in range(4)], 600
    # A slow store spreads one round's hand-over decisions out in time: a group may be given away
    # while the worker is releasing another, and its next session starts without it.
    for method, delay in store_delays.items():
        monkeypatch.setattr(RedisRegistry, method, _delayed(getattr(RedisRegistry, method), delay))

    def replica(mesh: EmbeddedMesh) -> WorkerConfig:
        return WorkerConfig.model_validate(
            {
                "name": "grouped",
                "connector": "grouped-counter-source",
                "mesh": {"address": f"127.0.0.1:{mesh.port}"},
                "source": {"topic": "numbers", "checkpoint_every": 20, "checkpoint_interval": 0.2},
                "registry": {"kind": "redis", "url": redis_server.url, "prefix": f"join-{tmp_path.name}", "lease_ttl": 2},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"groups": len(groups), "limit": limit},
            }
        )

    def delivered() -> Counter[tuple[str, int]]:
        return Counter((r.data["g"], r.data["n"]) for r in connectors.RECEIVED if isinstance(r.data, dict))

    registry = RedisRegistry(redis_server.url, prefix=f"join-{tmp_path.name}")
    stops = [asyncio.Event() for _ in range(3)]
    async with EmbeddedMesh(port=0) as mesh:
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stops[0], install_signals=False))
        first = asyncio.create_task(serve(GroupedCounterSource, replica(mesh), stop=stops[1], install_signals=False))
        second = None
        try:
            await eventually(lambda: {group for group, _ in delivered()} == set(groups), what="the first replica publishes")
            second = asyncio.create_task(serve(GroupedCounterSource, replica(mesh), stop=stops[2], install_signals=False))
            holders: Counter[str] = Counter()
            deadline = time.monotonic() + 20
            while len(holders) < 2:
                assert time.monotonic() < deadline, f"the second replica gets groups: {holders}"
                holders = Counter(lease.holder for lease in await registry.leases("grouped") if lease.holder)
                await asyncio.sleep(0.05)
            assert len(delivered()) < limit * len(groups), "the groups moved while the stream ran"
            await eventually(lambda: len(delivered()) == limit * len(groups), 30, "every event is delivered")
            twice = {number: times for number, times in delivered().items() if times > 1}
            assert twice == {}, f"{len(twice)} events delivered more than once"
            holders = Counter(lease.holder for lease in await registry.leases("grouped") if lease.holder)
            assert sorted(holders.values()) == [2, 2], "the groups are spread evenly"
        finally:
            for stop in stops:
                stop.set()
            assert await first == 0 and await sink == 0
            assert second is None or await second == 0
    await registry.close()
    assert set(delivered()) == {(group, n) for group in groups for n in range(limit)}
    assert max(delivered().values()) == 1


def _delayed(method: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await method(*args, **kwargs)

    return slow


class _ByPartitionNumber(CounterSource):
    """Groups its partitions by number, ignoring any "group" key."""

    def group_of(self, partition: Mapping[str, JsonValue]) -> str:
        return f"g{partition['p']}"


def test_a_record_goes_to_the_group_its_source_names() -> None:
    config = connectors.CounterConfig()
    default, custom = CounterSource(config), _ByPartitionNumber(config)
    groups = ("g0", "g1")
    assert group_of(default, groups, {"group": "g1", "p": 0}) == "g1"
    assert group_of(default, groups, {"p": 0}) == "default"
    assert group_of(custom, groups, {"group": "g0", "p": 1}) == "g1"
    assert group_of(custom, ("only",), {"p": 1}) == "only", "a single group takes every record"


async def test_the_mesh_keeps_to_the_push_window_a_session_asks(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            for n in range(30):
                await producer.publish(CloudEvent({"id": f"e{n}", "source": "/t", "type": "t", "subject": "numbers"}, {"n": n}))
        held: dict[str, int] = {}
        for asked in (5, 0):
            group = f"asked-{asked}"
            async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for(group, "sub", unack=asked)) as client:
                await client.subscribe("numbers", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
                await client.listen()
                # The answer to a request comes after every push the mesh wrote before it.
                await client.subscribe("numbers", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
                held[group] = len(client.take_pushes(1000))
    assert held == {"asked-5": 5, "asked-0": 30}  # asking none: the mesh's default window (1000)


async def test_a_batch_closes_once_the_pushes_held_fill_the_window_instead_of_lingering(tmp_path: Path) -> None:
    # The mesh lets 20 pushes be in flight to a session; batches of 50 could never fill.
    async with EmbeddedMesh(port=0, max_unacked_per_session=20) as mesh:
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=60, batch=20), stop=stop_source, install_signals=False)
        )
        await eventually(lambda: mesh.topic_depth("numbers") == 120)
        sink = asyncio.create_task(
            serve(
                ListSink,
                sink_config(mesh, batch_size=50, push_window=20, linger_ms=600_000),
                stop=stop_sink,
                install_signals=False,
            )
        )
        await eventually(lambda: len(received_numbers()) == 120, what="every event written long before the linger time")
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)
    assert max(connectors.PUTS) <= 20
    assert sum(connectors.PUTS) == 120


async def test_a_batch_fills_on_past_the_linger_time_while_the_one_before_is_written(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        written = asyncio.Event()
        connectors.HELD_PUTS.append(written)
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(
            serve(ListSink, sink_config(mesh, batch_size=40, linger_ms=0), stop=stop_sink, install_signals=False)
        )
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            await producer.publish(numbered(0))
            await eventually(lambda: connectors.PUTS == [1], what="the first event written alone (no linger)")
            for n in range(1, 41):  # each acknowledged before the next: they reach the sink one push at a time
                await producer.publish(numbered(n))
            await eventually(lambda: mesh.unacked("lister", "numbers") == 41, what="every event pushed to the sink")
            await producer.publish(numbered(41))  # a round trip through the mesh: the sink has read the pushes before it
            written.set()
            await eventually(lambda: len(received_numbers()) == 42)
        stop_sink.set()
        assert await sink == 0
    # Closed at the linger time, the second batch would have split into batches of one or two while the first waited.
    assert connectors.PUTS[:2] == [1, 40]


async def test_the_next_batch_fills_only_once_put_took_the_one_before_so_each_fills_whole(tmp_path: Path) -> None:
    def pushed() -> int:  # offsets the mesh has pushed to the sink's group so far
        return sum(c.next_offset for c in mesh.broker.iter_consumers("numbers") if c.group == "lister")

    async with EmbeddedMesh(port=0) as mesh:
        first, second = asyncio.Event(), asyncio.Event()
        connectors.HELD_PUTS.extend([first, second])
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(
            serve(ListSink, sink_config(mesh, batch_size=10, linger_ms=0), stop=stop_sink, install_signals=False)
        )
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            await producer.publish(numbered(0))
            await eventually(lambda: connectors.PUTS == [1], what="the first event written alone")
            for n in range(1, 31):
                await producer.publish(numbered(n))
            # The push window (two batches, 20) is full: 1 in put, a batch of 10 ready, 9 more in the client.
            await eventually(lambda: pushed() == 20, what="a push window of events pushed")
            first.set()
            await eventually(lambda: connectors.PUTS == [1, 10], what="the second batch in put")
            await eventually(lambda: pushed() == 21, what="the first event's ack making room for one more push")
            await producer.publish(numbered(31))  # a round trip through the mesh: the sink has read that push before it
            second.set()
            await eventually(lambda: len(received_numbers()) == 32)
        stop_sink.set()
        assert await sink == 0
    # Filled two batches ahead, the third would have closed at 9, all the window left it while two batches waited.
    assert connectors.PUTS[:3] == [1, 10, 10]


async def test_a_stop_while_a_batch_fills_past_the_linger_time_leaves_that_batch_unacked_for_the_next_run(
    tmp_path: Path,
) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        written = asyncio.Event()
        connectors.HELD_PUTS.append(written)
        config = sink_config(mesh, batch_size=40, linger_ms=0)
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop_sink, install_signals=False))
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            await producer.publish(numbered(0))
            await eventually(lambda: connectors.PUTS == [1], what="the first event in put")
            for n in range(1, 11):  # pushed to the sink into a batch that fills on while put is held
                await producer.publish(numbered(n))
            stop_sink.set()
            written.set()  # the batch in put is finished (a drain); the one filling is neither written nor acked
            assert await sink == 0
            assert received_numbers() == {(0, 0)}
            assert mesh.unacked("lister", "numbers") == 10
            again = asyncio.Event()
            rerun = asyncio.create_task(serve(ListSink, config, stop=again, install_signals=False))
            await eventually(lambda: len(received_numbers()) == 11, what="the unacked batch delivered to the next run")
            again.set()
            assert await rerun == 0


def test_the_push_window_follows_the_batch_size_unless_set_and_a_window_that_cannot_fill_a_batch_is_named() -> None:
    settings = WorkerConfig.model_validate({"name": "s", "connector": "list-sink", "sink": {"batch_size": 700}}).sink
    assert (settings.effective_push_window, settings.flow_problem()) == (1400, None)
    small = settings.model_copy(update={"push_window": 1000})
    assert "twice sink.batch_size" in (small.flow_problem() or "")
    tiny = settings.model_copy(update={"push_window": 100})
    assert "a batch closes at 100 events" in (tiny.flow_problem() or "")
