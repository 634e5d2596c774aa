"""A sink's real worker against the embedded mesh, for tests that watch it from outside: publish, dead letters, /readyz."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from cloudevents.core.v1.event import CloudEvent

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import WorkerConfig
from runtime.connector import Sink
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import SubscriptionMode, SubscriptionType

DEAD_LETTER_TOPIC = "orders-sink-dlq"


@contextlib.asynccontextmanager
async def sink_worker(
    connector: type[Sink[Any]],
    mesh: EmbeddedMesh,
    admin_port: int,
    *,
    transforms: list[dict[str, Any]] | None = None,
    **config: Any,
) -> AsyncIterator[asyncio.Task[int]]:
    """The worker of ``connector`` on topic ``orders`` (dead letters to ``DEAD_LETTER_TOPIC``), with ``transforms``
    if given, stopped on the way out."""
    settings = WorkerConfig.model_validate(
        {
            "name": "orders-sink",
            "connector": connector.name,
            "mesh": {"address": f"127.0.0.1:{mesh.port}"},
            "sink": {"topics": ["orders"], "batch_size": 8, "linger_ms": 20, "retry_initial": 0.05, "retry_max": 0.5},
            "admin": {"host": "127.0.0.1", "port": admin_port},
            "config": config,
            "transforms": transforms or [],
        }
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(connector, settings, stop=stop, install_signals=False))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


async def publish(mesh: EmbeddedMesh, *items: tuple[str, Any]) -> None:
    """Publish each (event id, JSON data) to ``orders``."""
    async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
        for event_id, data in items:
            attributes = {"id": event_id, "source": "/shop", "type": "order.v1", "subject": "orders", "specversion": "1.0"}
            await producer.publish(CloudEvent(attributes, data))


async def gather_events(mesh: EmbeddedMesh, topic: str, into: list[CloudEvent]) -> None:
    """Append every event pushed on ``topic`` to ``into`` (acked), until cancelled: run it as a task."""
    async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for(f"{topic}-reader", "sub"), request_timeout=5) as client:
        await client.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await client.listen()
        async for pushed in client.pushed():
            into.append(pushed.event)
            await pushed.ack()


@contextlib.asynccontextmanager
async def gathered(mesh: EmbeddedMesh, *topics: str) -> AsyncIterator[dict[str, list[CloudEvent]]]:
    """The events pushed on each of ``topics`` while inside, by topic (see :func:`gather_events`)."""
    received: dict[str, list[CloudEvent]] = {topic: [] for topic in topics}
    readers = [asyncio.create_task(gather_events(mesh, topic, received[topic])) for topic in topics]
    try:
        yield received
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def dead_letters(mesh: EmbeddedMesh, count: int, within: float = 30.0) -> dict[str, CloudEvent]:
    """The first ``count`` dead letters, by event id."""
    letters: dict[str, CloudEvent] = {}
    async with asyncio.timeout(within), MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("dlq-reader", "sub")) as client:
        await client.subscribe(DEAD_LETTER_TOPIC, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await client.listen()
        async for pushed in client.pushed():
            letters[pushed.event.get_id()] = pushed.event
            await pushed.ack()
            if len(letters) >= count:
                break
    return letters


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    """Wait for ``condition`` (polled), or fail saying ``what`` did not happen."""
    try:
        async with asyncio.timeout(within):
            while not await condition():  # noqa: ASYNC110 - polling a server and an HTTP endpoint
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


def readiness(http: aiohttp.ClientSession, admin_port: int) -> Callable[[int, str], Awaitable[bool]]:
    """A check that /readyz answers ``status`` with ``reason`` in its body (never the word ``Secret``)."""

    async def answers(status: int, reason: str = "") -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as ready:
                body = await ready.text()
                assert "Secret" not in body, body
                return ready.status == status and reason in body
        return False

    return answers
