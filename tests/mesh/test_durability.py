"""With a data dir the mesh keeps accepted events, cursors and acks through a restart and a kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import Command
from tests.mesh.process import MeshProcess
from tests.mesh.wire import Peer, event_body, numbers


@pytest.fixture
def mesh_process(tmp_path: Path) -> Iterator[MeshProcess]:
    process = MeshProcess(tmp_path, tmp_path / "data")
    process.start()
    yield process
    process.ensure_stopped()


async def drain(peer: Peer, quiet: float = 0.5) -> list[int]:
    """Every push until the mesh is quiet for ``quiet`` seconds, acked."""
    got = []
    while True:
        try:
            push = await peer.push(within=quiet)
        except TimeoutError:
            return got
        peer.ack(push)
        got.extend(numbers([push]))


async def test_kill_9_keeps_acked_publishes_and_acks(mesh_process: MeshProcess) -> None:
    pub = await Peer.hello(mesh_process.port, purpose="pub")
    await pub.publish_ok("orders", 20)
    await pub.publish_ok("audit", 5)  # no group subscribed it yet
    sub = await Peer.hello(mesh_process.port, group="sink")
    await sub.subscribe("orders")
    pushes = await sub.take(20, ack=False)
    for push in [*pushes[:10], pushes[15]]:
        sub.ack(push)
    # Every answer is written after the loop turn's commit: once this one is here, the acks are on disk.
    assert (await sub.call(Command.HEARTBEAT_REQUEST)).header.code == 0

    mesh_process.kill()
    await sub.closed_within()
    await pub.closed_within()
    mesh_process.start()

    sub = await Peer.hello(mesh_process.port, group="sink")
    await sub.subscribe("orders")
    assert await drain(sub) == [*range(10, 15), *range(16, 20)]
    audit = await Peer.hello(mesh_process.port, group="auditor")
    await audit.subscribe("audit")
    assert await drain(audit) == list(range(5))
    for peer in (sub, audit):
        await peer.close()
    assert mesh_process.terminate() == 0


async def test_kill_9_in_the_middle_of_a_stream_loses_no_acked_event(mesh_process: MeshProcess) -> None:
    sub = await Peer.hello(mesh_process.port, group="sink")
    await sub.subscribe("stream", listen=False)
    pub = await Peer.hello(mesh_process.port, purpose="pub")
    acked: set[int] = set()
    enough_acked = asyncio.Event()
    seq_to_number: dict[str, int] = {}

    async def publish_forever() -> None:
        n = 0
        while True:
            for _ in range(50):
                package = pub.publish_package(orjson.dumps(_event("stream", n)))
                seq_to_number[package.header.seq or ""] = n
                pub.send(package)
                n += 1
            await pub.writer.drain()
            await asyncio.sleep(0)

    async def collect_acks() -> None:
        while True:
            answer = await pub.receive(within=10)
            if answer.header.code == 0:
                acked.add(seq_to_number[answer.header.seq or ""])
                if len(acked) >= 500:
                    enough_acked.set()

    tasks = [asyncio.create_task(publish_forever()), asyncio.create_task(collect_acks())]
    await asyncio.wait_for(enough_acked.wait(), 30)
    mesh_process.kill()
    done, _ = await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED, timeout=10)
    assert len(done) == 2
    for task in tasks:
        assert isinstance(task.exception(), ConnectionError | OSError)
    pub.writer.close()
    await sub.closed_within()

    mesh_process.start()
    sub = await Peer.hello(mesh_process.port, group="sink")
    await sub.subscribe("stream")
    received = await drain(sub)
    assert acked <= set(received)
    assert len(received) == len(set(received))  # nothing was delivered before the kill: no duplicates either
    await sub.close()


def _event(topic: str, n: int) -> dict[str, object]:
    return {"specversion": "1.0", "id": f"e-{n}", "source": "/t", "type": "t", "subject": topic, "data": {"n": n}}


async def test_restart_continues_after_everything_was_acked_and_trimmed(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0, data_dir=tmp_path) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 5)
        assert numbers(await sub.take(5)) == list(range(5))
        await sub.call(Command.HEARTBEAT_REQUEST)
        assert mesh.topic_depth("t") == 0
        await sub.close()
        await pub.close()
    async with EmbeddedMesh(port=0, data_dir=tmp_path) as mesh:
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 2, start=5)
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        assert numbers(await sub.take(2)) == [5, 6]
        await sub.nothing_within(0.2)
        await sub.close()
        await pub.close()


async def test_graceful_stop_keeps_unacked_pushes_for_the_next_start(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0, data_dir=tmp_path) as mesh:
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 4)
        pushes = await sub.take(4, ack=False)
        sub.ack(pushes[1])
        await sub.call(Command.HEARTBEAT_REQUEST)
    await sub.closed_within()
    await pub.closed_within()
    async with EmbeddedMesh(port=0, data_dir=tmp_path) as mesh:
        assert mesh.unacked("group", "t") == 3
        sub = await Peer.hello(mesh.port)
        await sub.subscribe("t")
        assert numbers(await sub.take(3)) == [0, 2, 3]
        await sub.close()


async def test_a_failing_store_cuts_every_session_off_without_acking(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0, data_dir=tmp_path) as mesh:
        pub = await Peer.hello(mesh.port, purpose="pub")
        await pub.publish_ok("t", 1)
        assert mesh._store is not None
        mesh._store._db.close()  # the file is gone from under the mesh: the next commit fails
        pub.send(pub.publish_package(event_body("t")))
        assert await pub.closed_within() == []
        assert mesh.failed
        await asyncio.wait_for(mesh.wait_failed(), 1)
