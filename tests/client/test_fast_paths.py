"""start_publish_nowait: what start_publish does when it would not wait, and None when it would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from runtime.client import MeshClient, user_agent_for
from runtime.errors import MeshRejectedError
from runtime.mesh import EmbeddedMesh
from tests.client.fakes import make_event


@pytest.fixture
async def mesh() -> AsyncIterator[EmbeddedMesh]:
    server = EmbeddedMesh(port=0, max_topic_events=3)
    await server.start()
    yield server
    await server.stop()


def publisher(mesh: EmbeddedMesh, window: int) -> MeshClient:
    return MeshClient(mesh.address, user_agent_for("producers", "pub"), max_in_flight=window, request_timeout=5.0)


async def test_nowait_publishes_are_acked_like_awaited_ones_until_the_window_is_full(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, window=2) as client:
        first = client.start_publish_nowait(make_event(1, topic="fast"))
        second = client.start_publish_nowait(make_event(2, topic="fast"))
        assert first is not None and second is not None
        assert client.start_publish_nowait(make_event(3, topic="fast")) is None  # the window is full: nothing sent
        assert client.in_flight == 2
        async with asyncio.timeout(5):
            await asyncio.gather(first, second)
        assert client.in_flight == 0
        awaited = await client.start_publish(make_event(3, topic="fast"))
        async with asyncio.timeout(5):
            await awaited
    assert mesh.topic_depth("fast") == 3  # each once: the third went out through start_publish


async def test_nowait_publish_fails_like_start_publish_when_the_mesh_refuses(mesh: EmbeddedMesh) -> None:
    async with publisher(mesh, window=10) as client:
        acks = [client.start_publish_nowait(make_event(n, topic="full")) for n in range(4)]
        assert all(ack is not None for ack in acks)
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(ack for ack in acks if ack is not None), return_exceptions=True)
        assert results[:3] == [None, None, None]
        assert isinstance(results[3], MeshRejectedError)  # the topic holds 3 events
        assert client.in_flight == 0


async def test_nowait_publish_sends_nothing_before_start_or_after_close(mesh: EmbeddedMesh) -> None:
    client = publisher(mesh, window=2)
    assert client.start_publish_nowait(make_event(1, topic="idle")) is None
    async with client:
        pass
    assert client.start_publish_nowait(make_event(2, topic="idle")) is None
    assert client.in_flight == 0
    assert mesh.topic_depth("idle") == 0
