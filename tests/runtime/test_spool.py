"""sink.spool: events acked once on disk, written from there, replayed after a crash, bounded in bytes."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import WorkerConfig, load_config
from runtime.errors import ConfigError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.events import event_to_body
from runtime.testing import WorkerProcess
from runtime.worker.spool import Spool
from tests.runtime import connectors
from tests.runtime.connectors import GatedFileSink, ListSink, written_ids
from tests.runtime.test_worker import eventually
from tests.servers import free_port


@pytest.fixture(autouse=True)
def _fresh_sink_state() -> None:
    connectors.RECEIVED.clear()
    connectors.PUTS.clear()


def event(n: int, pad: int = 0) -> CloudEvent:
    attributes = {"id": f"e{n}", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
    return CloudEvent(attributes, {"n": n, "pad": "x" * pad})


def spooling_config(
    mesh: EmbeddedMesh, tmp_path: Path, *, connector: str, max_bytes: int | None = None, **config: Any
) -> dict[str, Any]:
    spool: dict[str, Any] = {"path": str(tmp_path / "spool")}
    if max_bytes is not None:
        spool["max_bytes"] = max_bytes
    return {
        "name": "spooler",
        "connector": connector,
        "mesh": {"address": f"127.0.0.1:{mesh.port}"},
        "sink": {
            "topics": ["numbers"],
            "batch_size": 5,
            "linger_ms": 20,
            "retry_initial": 0.02,
            "retry_max": 0.1,
            "spool": spool,
        },
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "config": config,
    }


async def publish(mesh: EmbeddedMesh, events: list[CloudEvent]) -> None:
    async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
        for each in events:
            await producer.publish(each)


async def metric(admin_port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") and 'name="spooler"' in line
    )


async def readyz(admin_port: int) -> tuple[int, list[str]]:
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
            return response.status, (await response.json())["not_ready_because"]
    return 0, []


def segments(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.seg"))


# -- config ---------------------------------------------------------------------------------------


def test_a_spool_needs_a_path_and_a_sane_bound(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("name: a\nconnector: x-sink\nsink: {spool: {max_bytes: 1048576}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.key == "sink.spool.path"
    assert "durable storage" in caught.value.fix
    config.write_text("name: a\nconnector: x-sink\nsink: {spool: {path: /var/spool/x, max_bytes: 10}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.key == "sink.spool.max_bytes"
    config.write_text("name: a\nconnector: x-sink\nsink: {spool: {path: /var/spool/x}}\n")
    spool = load_config(config).sink.spool
    assert spool is not None and (spool.max_bytes, spool.fsync) == (256 * 1024 * 1024, "before_ack")


# -- the spool on its own --------------------------------------------------------------------------


async def test_a_torn_or_corrupt_last_record_is_cut_off_and_appending_goes_on_after_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    await spool.append([b"one", b"two"])
    spool.close()
    [segment] = segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("ab") as file:  # a crash mid-write: a header promising 100 bytes, 10 of them written
        file.write(struct.pack(">II", 100, 0) + b"0123456789")

    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    assert segment.stat().st_size == whole
    assert [entry.body for entry in await spool.read(10)] == [b"one", b"two"]
    await spool.append([b"three"])
    assert [entry.body for entry in await spool.read(10)] == [b"three"]
    spool.close()
    with segment.open("ab") as file:  # the whole record arrived, but not as written: its crc does not match
        file.write(struct.pack(">II", 4, zlib.crc32(b"four") ^ 1) + b"four")

    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    assert [entry.body for entry in await spool.read(10)] == [b"one", b"two", b"three"]
    spool.close()


async def test_done_survives_a_reopen_and_finished_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 8192, segment_bytes=4096)
    spool.open()
    for n in range(6):
        await spool.append([bytes([n]) * 1000])
    assert len(segments(tmp_path)) > 1
    entries = await spool.read(4)
    await spool.done(entries[-1].end)
    spool.close()

    spool = Spool(tmp_path, 8192, segment_bytes=4096)
    spool.open()
    assert [entry.body[0] for entry in await spool.read(10)] == [4, 5]
    assert spool.pending_bytes == 2 * (1000 + 8)
    assert len(segments(tmp_path)) == 2  # the first one, all done, is gone
    with pytest.raises(ConfigError, match=r"sink\.spool\.path"):  # a second worker on the same spool
        Spool(tmp_path, 8192).open()
    spool.close()


# -- the sink worker with a spool --------------------------------------------------------------------


async def test_events_acked_but_not_written_when_the_sink_is_killed_are_written_after_restart(tmp_path: Path) -> None:
    """On a mesh that does not redeliver an acked push, only the spool still has these events."""
    gate, target = tmp_path / "gate", tmp_path / "target.jsonl"
    gate.touch()
    async with EmbeddedMesh(port=0) as mesh:
        config = spooling_config(mesh, tmp_path, connector="gated-file-sink", target=str(target), gate=str(gate))
        worker = WorkerProcess(GatedFileSink, config, tmp_path)
        try:
            await worker.start(30)
            await publish(mesh, [event(n) for n in range(23)])
            # Acked to the mesh while put() still hangs: the spool holds them, the mesh is done with them.
            await eventually(lambda: mesh.unacked("spooler", "numbers") == 0 and mesh.topic_depth("numbers") == 0, within=15)
            assert written_ids(target) == []
            await worker.kill()

            gate.unlink()
            restarted = WorkerProcess(GatedFileSink, config, tmp_path)
            try:
                await restarted.start(30)
                await eventually(lambda: len(written_ids(target)) >= 23)
                async with asyncio.timeout(10):  # the last batch is marked done in the spool just after its write
                    while await metric(config["admin"]["port"], "meshconnect_spool_replayed_total") != 23:  # noqa: ASYNC110 - polling an HTTP endpoint
                        await asyncio.sleep(0.05)
                assert await restarted.terminate(30) == 0
            finally:
                await restarted.kill()
        finally:
            await worker.kill()
    assert sorted(written_ids(target)) == sorted(f"e{n}" for n in range(23))


async def test_the_replay_writes_the_whole_records_and_ignores_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.open()
    await spool.append([event_to_body(event(0)), event_to_body(event(1))])
    spool.close()
    torn = event_to_body(event(2))
    with segments(tmp_path / "spool")[0].open("ab") as file:
        file.write(struct.pack(">II", len(torn), zlib.crc32(torn)) + torn[: len(torn) // 2])
    async with EmbeddedMesh(port=0) as mesh:
        config = WorkerConfig.model_validate(spooling_config(mesh, tmp_path, connector="list-sink"))
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, config, stop=stop, install_signals=False))
        await eventually(lambda: len(connectors.RECEIVED) == 2)
        await publish(mesh, [event(3)])  # once replayed, the sink subscribes and takes new pushes through the spool
        await eventually(lambda: len(connectors.RECEIVED) == 3)
        stop.set()
        assert await sink == 0
    assert [record.id for record in connectors.RECEIVED] == ["e0", "e1", "e3"]


async def test_a_full_spool_holds_pushes_back_and_says_not_ready_until_the_target_catches_up(tmp_path: Path) -> None:
    gate, target = tmp_path / "gate", tmp_path / "target.jsonl"
    gate.touch()
    async with EmbeddedMesh(port=0) as mesh:
        config = WorkerConfig.model_validate(
            spooling_config(mesh, tmp_path, connector="gated-file-sink", max_bytes=8192, target=str(target), gate=str(gate))
        )
        stop = asyncio.Event()
        sink = asyncio.create_task(serve(GatedFileSink, config, stop=stop, install_signals=False))
        await eventually(lambda: mesh.session_count == 2)
        await publish(mesh, [event(n, pad=400) for n in range(40)])  # ~20 KB of events for an 8 KiB spool
        reasons: list[str] = []

        async def held_back() -> bool:
            status, why = await readyz(config.admin.port)
            reasons[:] = why
            return status == 503 and any("spool is full" in reason for reason in why)

        async with asyncio.timeout(15):
            while not await held_back():  # noqa: ASYNC110 - polling an HTTP endpoint
                await asyncio.sleep(0.05)
        assert 0 < mesh.unacked("spooler", "numbers") < 40, "the sink must ack what it spooled and no more"
        assert sum(path.stat().st_size for path in segments(tmp_path / "spool")) <= 8192
        assert written_ids(target) == []

        gate.unlink()
        await eventually(lambda: len(written_ids(target)) == 40)
        async with asyncio.timeout(15):
            while (await readyz(config.admin.port))[0] != 200:  # noqa: ASYNC110 - polling an HTTP endpoint
                await asyncio.sleep(0.05)
        assert mesh.unacked("spooler", "numbers") == 0
        stop.set()
        assert await sink == 0
    assert sorted(written_ids(target)) == sorted(f"e{n}" for n in range(40))
