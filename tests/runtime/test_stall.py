"""A pipeline holding work it cannot commit says so: /readyz 503 and meshconnect_ready 0 after admin.stall_timeout."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
from cloudevents.core.v1.event import CloudEvent

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import AdminSettings
from runtime.errors import MeshRejectedError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import partition_key
from runtime.registry.file import FileRegistry
from tests.runtime.connectors import CounterSource, ListSink
from tests.runtime.test_worker import sink_config, source_config
from tests.servers import free_port

READY_GAUGE = 'meshconnect_ready{connector="counter-source",name="counter"}'


async def test_a_source_whose_events_the_mesh_keeps_refusing_shows_not_ready_until_it_commits_again(
    tmp_path: Path,
) -> None:
    # Topics that hold two events while a group that does not listen keeps them: every later publish is refused for now.
    async with EmbeddedMesh(port=0, max_topic_events=2) as mesh:
        blocker = MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("blocker", "sub"))
        await blocker.start()
        for topic in ("numbers", "counter-dlq"):
            await blocker.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        admin_port = free_port()
        config = source_config(mesh, tmp_path, limit=8, partitions=1).model_copy(
            update={"admin": AdminSettings(host="127.0.0.1", port=admin_port, stall_timeout=0.5)}
        )
        stop = asyncio.Event()
        source = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        base = f"http://127.0.0.1:{admin_port}"
        async with aiohttp.ClientSession() as http:

            async def readiness() -> tuple[int, list[str], str]:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/readyz") as ready, http.get(f"{base}/metrics") as metrics:
                        body = await ready.json()
                        gauge = next(line for line in (await metrics.text()).splitlines() if line.startswith(READY_GAUGE))
                        return ready.status, body["not_ready_because"], gauge.split()[-1]
                return 0, [], ""

            async def until(wanted: int) -> tuple[int, list[str], str]:
                while (answer := await readiness())[0] != wanted:  # noqa: ASYNC110 - polling an HTTP endpoint
                    await asyncio.sleep(0.05)
                return answer

            stalled = await asyncio.wait_for(until(503), 20)
            # The group listens and takes everything: the refused events go through, the offsets commit.
            await blocker.listen()

            async def drain() -> None:
                async for pushed in blocker.pushed():
                    await pushed.ack()

            draining = asyncio.create_task(drain())
            offsets: list[Any] = [None]
            registry = FileRegistry(tmp_path)
            async with asyncio.timeout(30):
                while offsets[-1] != {"n": 7}:
                    offsets.append((await registry.load_offsets("counter")).get(partition_key({"p": 0})))
                    await asyncio.sleep(0.05)
            recovered = await asyncio.wait_for(until(200), 20)
        stop.set()
        assert await source == 0
        draining.cancel()
        await blocker.aclose()
    assert any("nothing committed" in reason for reason in stalled[1]), stalled
    assert stalled[2] == "0.0"
    assert recovered[2] == "1.0"


async def test_a_sink_stuck_on_a_dead_letter_the_mesh_cannot_take_yet_shows_not_ready_until_it_acks() -> None:
    async with EmbeddedMesh(port=0, max_topic_events=2) as mesh:
        blocker = MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("blocker", "sub"))
        await blocker.start()
        await blocker.subscribe("lister-dlq", SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        admin_port = free_port()
        config = sink_config(mesh, batch_size=1).model_copy(
            update={"admin": AdminSettings(host="127.0.0.1", port=admin_port, stall_timeout=0.5)}
        )
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        async with aiohttp.ClientSession() as http:

            async def until(wanted: int) -> list[str]:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                            if response.status == wanted:
                                reasons: list[str] = (await response.json())["not_ready_because"]
                                return reasons
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(until(200), 20)
            async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
                for n in range(3):  # three rejected events; the dead-letter topic holds two
                    attributes = {"id": f"r{n}", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
                    async with asyncio.timeout(20):
                        while True:
                            try:
                                await producer.publish(CloudEvent(attributes, {"reject": n}))
                                break
                            except MeshRejectedError:  # "numbers" is full until the sink acked what it holds
                                await asyncio.sleep(0.05)
            stalled = await asyncio.wait_for(until(503), 20)
            await blocker.listen()

            async def drain() -> None:
                async for pushed in blocker.pushed():
                    await pushed.ack()

            draining = asyncio.create_task(drain())
            await asyncio.wait_for(until(200), 20)
        stop.set()
        assert await sink == 0
        draining.cancel()
        await blocker.aclose()
    assert any("nothing committed" in reason for reason in stalled), stalled
