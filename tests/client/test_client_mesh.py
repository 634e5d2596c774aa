"""The client against the embedded mesh: pub/sub, clustering, broadcast, acks, redelivery, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from runtime.client import ClientState, MeshClient, PushedEvent, user_agent_for
from runtime.errors import HelloRefusedError, MeshRejectedError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import Command, SubscriptionMode, SubscriptionType
from tests.client.fakes import make_event

FAST = {"request_timeout": 5.0, "backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    server = EmbeddedMesh(port=0, redelivery_timeout=1.0)
    await server.start()
    yield server
    await server.stop()


def publisher(mesh: EmbeddedMesh, group: str = "producers", **options: float) -> MeshClient:
    return MeshClient(mesh.address, user_agent_for(group, "pub"), **{**FAST, **options})  # type: ignore[arg-type]


def subscriber(mesh: EmbeddedMesh, group: str, **options: float) -> MeshClient:
    return MeshClient(mesh.address, user_agent_for(group, "sub"), **{**FAST, **options})  # type: ignore[arg-type]


async def collect(
    client: MeshClient,
    count: int,
    *,
    ack: bool = True,
    seconds: float = 10.0,
    on_event: Callable[[PushedEvent], Awaitable[None]] | None = None,
) -> list[PushedEvent]:
    """The first ``count`` pushes (acked if ``ack``); fails if they do not arrive within ``seconds``."""
    received: list[PushedEvent] = []
    async with asyncio.timeout(seconds):
        async for pushed in client.pushed():
            received.append(pushed)
            if on_event is not None:
                await on_event(pushed)
            if ack:
                await pushed.ack()
            if len(received) == count:
                break
    return received


async def drain(client: MeshClient, seconds: float) -> list[PushedEvent]:
    """Whatever is pushed (and acked) during ``seconds``."""
    received: list[PushedEvent] = []
    with pytest.raises(TimeoutError):
        await collect(client, 10**9, seconds=seconds, on_event=lambda p: _append(received, p))
    return received


async def _append(received: list[PushedEvent], pushed: PushedEvent) -> None:
    received.append(pushed)


def numbers(pushes: list[PushedEvent]) -> list[int]:
    return [pushed.event.get_data()["n"] for pushed in pushes]  # type: ignore[index]


async def test_publish_subscribe_roundtrip_keeps_the_event(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks") as sub:
        assert pub.connected and pub.state is ClientState.CONNECTED
        await sub.subscribe("orders")
        await sub.listen()
        sent = make_event(1)
        await pub.publish(sent)
        (pushed,) = await collect(sub, 1)
        assert pushed.command is Command.ASYNC_MESSAGE_TO_CLIENT
        assert pushed.event.get_id() == sent.get_id()
        assert pushed.event.get_subject() == "orders"
        assert pushed.event.get_data() == sent.get_data()


async def test_pipelined_publishes_are_all_acked_and_delivered(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, max_in_flight=50) as pub, subscriber(mesh, "sinks") as sub:
        await sub.subscribe("orders")
        await sub.listen()
        waiters = [await pub.start_publish(make_event(n)) for n in range(500)]
        assert pub.in_flight <= 50
        await asyncio.gather(*waiters)
        assert pub.in_flight == 0
        assert sorted(numbers(await collect(sub, 500))) == list(range(500))


async def test_clustering_shares_events_and_each_is_delivered_once(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks") as first, subscriber(mesh, "sinks") as second:
        for client in (first, second):
            await client.subscribe("orders", SubscriptionMode.CLUSTERING)
            await client.listen()
        await asyncio.gather(*[await pub.start_publish(make_event(n)) for n in range(200)])
        got_first, got_second = await asyncio.gather(drain(first, 1.5), drain(second, 1.5))
        assert got_first and got_second, "both sessions of the group get a share"
        assert sorted(numbers(got_first) + numbers(got_second)) == list(range(200))


async def test_broadcast_reaches_every_session(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "watchers") as first, subscriber(mesh, "watchers") as second:
        for client in (first, second):
            await client.subscribe("alerts", SubscriptionMode.BROADCASTING)
            await client.listen()
        for n in range(20):
            await pub.broadcast(make_event(n, topic="alerts"))
        got_first, got_second = await asyncio.gather(collect(first, 20), collect(second, 20))
        assert sorted(numbers(got_first)) == sorted(numbers(got_second)) == list(range(20))
        assert {pushed.command for pushed in got_first} == {Command.BROADCAST_MESSAGE_TO_CLIENT}


async def test_an_unacked_event_is_redelivered_after_the_timeout(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks") as sub:
        await sub.subscribe("orders")
        await sub.listen()
        await pub.publish(make_event(7))
        (first,) = await collect(sub, 1, ack=False)
        (again,) = await collect(sub, 1, seconds=5.0)  # redelivery_timeout is 1 s
        assert again.event.get_id() == first.event.get_id()
        assert await drain(sub, 1.5) == [], "acked: not redelivered any more"


async def test_closing_with_unacked_events_redelivers_them_to_the_other_session(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks", heartbeat_interval=30) as survivor:
        quitter = subscriber(mesh, "sinks")
        await quitter.start()
        await quitter.subscribe("orders")
        await quitter.listen()
        await pub.publish(make_event(1))
        (held,) = await collect(quitter, 1, ack=False)
        await survivor.subscribe("orders")
        await survivor.listen()
        await quitter.aclose()
        (redelivered,) = await collect(survivor, 1, seconds=5.0)
        assert redelivered.event.get_id() == held.event.get_id()
        with pytest.raises(StopAsyncIteration):
            await anext(aiter(quitter.pushed()))


async def test_an_ack_after_the_connection_dropped_is_not_sent_and_the_event_comes_back(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks") as sub:
        await sub.subscribe("orders")
        await sub.listen()
        await pub.publish(make_event(3))
        (pushed,) = await collect(sub, 1, ack=False)
        sub._conn.abort()  # type: ignore[union-attr]  # the network drops the connection
        assert await sub.state_changed(timeout=5) is ClientState.RECONNECTING
        await pushed.ack()  # too late: its connection is gone
        await sub.wait_connected(timeout=5)
        (again,) = await collect(sub, 1, seconds=5.0)
        assert again.event.get_id() == pushed.event.get_id()


async def test_a_client_that_stops_heartbeating_is_expired_and_reconnects() -> None:
    server = EmbeddedMesh(port=0, session_timeout=1.0)
    await server.start()
    try:
        async with (
            subscriber(server, "sinks", heartbeat_interval=3600) as silent,
            subscriber(server, "sinks", heartbeat_interval=0.2) as beating,
        ):
            changes: list[ClientState] = []
            beating.add_state_listener(changes.append)
            assert await silent.state_changed(timeout=5) is ClientState.RECONNECTING, "expired by the mesh"
            await silent.wait_connected(timeout=5)
            await asyncio.sleep(1.0)
            assert changes == [], "a client that heartbeats keeps its session"
    finally:
        await server.stop()


async def test_a_refused_hello_shows_the_servers_reason() -> None:
    server = EmbeddedMesh(port=0, users={"alice": "right"})
    await server.start()
    try:
        wrong = MeshClient(server.address, user_agent_for("g", "pub", username="alice", password="wrong"), **FAST)  # type: ignore[arg-type]
        with pytest.raises(HelloRefusedError) as refused:
            await wrong.start()
        assert refused.value.code == 1
        assert refused.value.desc and "alice" in refused.value.desc
        assert wrong.state is ClientState.CLOSED
        good = MeshClient(server.address, user_agent_for("g", "pub", username="alice", password="right"), **FAST)  # type: ignore[arg-type]
        async with good:
            assert good.connected
    finally:
        await server.stop()


async def test_a_rejected_publish_raises_with_the_mesh_reason(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub:
        bad = make_event(1)
        bad._attributes.pop("subject")  # no topic: the mesh refuses it
        with pytest.raises(MeshRejectedError) as rejected:
            await pub.publish(bad)
        assert rejected.value.desc
        await pub.publish(make_event(2))  # the connection is still fine


async def test_request_reply(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, "askers") as asker, subscriber(mesh, "answerers") as answerer:
        await answerer.subscribe("questions", SubscriptionMode.CLUSTERING, SubscriptionType.SYNC)
        await answerer.listen()

        async def answer() -> None:
            (question,) = await collect(answerer, 1, ack=False)
            assert question.command is Command.REQUEST_TO_CLIENT
            await question.reply(make_event(question.event.get_data()["n"] * 10, topic="questions"))  # type: ignore[index]
            await question.ack()

        responder = asyncio.create_task(answer())
        response = await asker.request(make_event(4, topic="questions"), 5.0)
        await responder
        assert response.get_data() == {"n": 40}


async def test_unsubscribe_stops_pushes(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh) as pub, subscriber(mesh, "sinks") as sub:
        await sub.subscribe("orders")
        await sub.listen()
        await pub.publish(make_event(1))
        await collect(sub, 1)
        await sub.unsubscribe()
        await pub.publish(make_event(2))
        assert await drain(sub, 0.8) == []


async def test_a_full_push_buffer_stops_reading_the_socket() -> None:
    server = EmbeddedMesh(port=0, max_unacked_per_session=5000)
    await server.start()
    try:
        async with publisher(server, max_in_flight=500) as pub, subscriber(server, "sinks", push_buffer=10) as sub:
            await sub.subscribe("orders")
            await sub.listen()
            await asyncio.gather(*[await pub.start_publish(make_event(n, size=1000)) for n in range(1500)])
            await asyncio.sleep(0.5)
            # Reading stopped once 10 waited: at most one more read chunk (256 KiB, ~200 frames) came in.
            assert sub._inbox.reading_paused
            assert 10 <= sub.pushes_waiting <= 10 + 256 * 1024 // 1000
            assert server.unacked("sinks", "orders") > sub.pushes_waiting, "the rest waits in the socket and the mesh"
            assert sorted(numbers(await collect(sub, 1500))) == list(range(1500))
            assert not sub._inbox.reading_paused
    finally:
        await server.stop()
