"""publish_nowait: what start_publish does when it would not wait, and False when it would; waiters that are
not futures; events published already encoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.client import MeshClient, user_agent_for
from runtime.errors import MeshRejectedError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.events import EncodedEvent, body_to_event, event_to_body
from tests.client.fakes import make_event


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    server = EmbeddedMesh(port=0, max_topic_events=3)
    await server.start()
    yield server
    await server.stop()


def publisher(mesh: EmbeddedMesh, window: int) -> MeshClient:
    return MeshClient(mesh.address, user_agent_for("producers", "pub"), max_in_flight=window, request_timeout=5.0)


def future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


class Recorder:
    """A waiter that is not a future: it records what it is told, when it is told."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []

    def done(self) -> bool:
        return bool(self.outcomes)

    def set_result(self, result: Any, /) -> None:
        self.outcomes.append(("acked", result))

    def set_exception(self, exception: BaseException, /) -> None:
        self.outcomes.append(("failed", exception))


async def test_nowait_publishes_are_acked_like_awaited_ones_until_the_window_is_full(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, window=2) as client:
        first, second, third = future(), future(), future()
        assert client.publish_nowait(make_event(1, topic="fast"), first)
        assert client.publish_nowait(make_event(2, topic="fast"), second)
        assert not client.publish_nowait(make_event(3, topic="fast"), third)  # the window is full: nothing sent
        assert client.in_flight == 2
        async with asyncio.timeout(5):
            await asyncio.gather(first, second)
        assert client.in_flight == 0
        assert not third.done()
        awaited = await client.start_publish(make_event(3, topic="fast"))
        async with asyncio.timeout(5):
            await awaited
    assert mesh.topic_depth("fast") == 3  # each once: the third went out through start_publish


async def test_nowait_publish_fails_like_start_publish_when_the_mesh_refuses(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, window=10) as client:
        acks = [future() for _ in range(4)]
        assert all(client.publish_nowait(make_event(n, topic="full"), ack) for n, ack in enumerate(acks))
        async with asyncio.timeout(5):
            results = await asyncio.gather(*acks, return_exceptions=True)
        assert results[:3] == [None, None, None]
        assert isinstance(results[3], MeshRejectedError)  # the topic holds 3 events
        assert client.in_flight == 0


async def test_a_waiter_that_is_not_a_future_is_told_each_answer_once(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, window=10) as client:
        recorders = [Recorder() for _ in range(4)]
        for n, recorder in enumerate(recorders[:3]):
            assert client.publish_nowait(make_event(n, topic="full"), recorder)
        await client.publish_when_room(make_event(3, topic="full"), recorders[3])
        await client.publish(make_event(4, topic="after"))  # answered after the four: they are all answered now
        assert client.in_flight == 0
    assert [recorder.outcomes for recorder in recorders[:3]] == [[("acked", None)]] * 3
    [(verdict, error)] = recorders[3].outcomes
    assert verdict == "failed" and isinstance(error, MeshRejectedError)


async def test_an_encoded_event_reaches_subscribers_as_the_event_it_encodes(mesh: EmbeddedMesh) -> None:
    event = make_event(7, topic="encoded")
    subscriber = MeshClient(mesh.address, user_agent_for("readers", "sub"))
    async with publisher(mesh, window=2) as client, subscriber:
        await subscriber.subscribe("encoded")
        await subscriber.listen()
        await client.publish(EncodedEvent(event_to_body(event)))
        async with asyncio.timeout(5):
            pushed = await anext(aiter(subscriber.pushed()))
        assert pushed.body == event_to_body(event)
        assert body_to_event(pushed.body).get_attributes() == event.get_attributes()
        await pushed.ack()


async def test_nowait_publish_sends_nothing_before_start_or_after_close(mesh: EmbeddedMesh) -> None:
    client = publisher(mesh, window=2)
    assert not client.publish_nowait(make_event(1, topic="idle"), future())
    async with client:
        pass
    assert not client.publish_nowait(make_event(2, topic="idle"), future())
    assert client.in_flight == 0
    assert mesh.topic_depth("idle") == 0
