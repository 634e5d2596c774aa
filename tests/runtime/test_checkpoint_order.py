"""Checkpoints never run ahead of the mesh's acks, whatever order the acks come back in."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from runtime.app import serve
from runtime.config import WorkerConfig
from runtime.mesh import EmbeddedMesh
from runtime.observability import RECORDS_IN
from runtime.protocol.events import body_to_event
from runtime.protocol.frames import Command, FrameDecoder, Package, encode
from runtime.record import derive_event_id, partition_key
from runtime.registry import Lease
from runtime.registry.file import FileRegistry
from tests.runtime.connectors import CounterSource


class ReorderingProxy:
    """Between client and mesh: holds the mesh's publish acks and lets them through shuffled, late."""

    def __init__(self, mesh_port: int) -> None:
        self.mesh_port = mesh_port
        self.acked_ids: set[str] = set()
        self.reordered = 0
        self.frozen = False
        """Hold every ack for ever: a mesh that stopped answering."""
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        mesh_reader, mesh_writer = await asyncio.open_connection("127.0.0.1", self.mesh_port)
        ids_by_seq: dict[str, str] = {}
        held: list[Package] = []
        for coroutine in (
            self._upstream(client_reader, mesh_writer, ids_by_seq),
            self._downstream(mesh_reader, client_writer, held),
            self._release(client_writer, held, ids_by_seq),
        ):
            task = asyncio.create_task(coroutine)
            self.tasks.add(task)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ids_by_seq: dict[str, str]) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for package in decoder.feed(data):
                if package.header.command is Command.ASYNC_MESSAGE_TO_SERVER and package.body is not None:
                    ids_by_seq[str(package.header.seq)] = body_to_event(package.body).get_id()
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: list[Package]) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for package in decoder.feed(data):
                if package.header.command is Command.ASYNC_MESSAGE_TO_SERVER_ACK:
                    held.append(package)
                else:
                    writer.write(encode(package))
            await writer.drain()
        writer.close()

    async def _release(self, writer: asyncio.StreamWriter, held: list[Package], ids_by_seq: dict[str, str]) -> None:
        """Every tick, let a random half of the held acks through, shuffled; the rest wait for later ticks."""
        while True:
            await asyncio.sleep(0.01)
            released = [package for package in held if random.random() < 0.5 and not self.frozen]
            if not released:
                continue
            self.reordered += sum(1 for a, b in zip(held, released, strict=False) if a is not b)
            held[:] = [package for package in held if package not in released]
            random.shuffle(released)
            for package in released:
                event_id = ids_by_seq.get(str(package.header.seq))
                if event_id is not None:
                    self.acked_ids.add(event_id)
                writer.write(encode(package))
            with contextlib.suppress(ConnectionError):
                await writer.drain()


class CheckingRegistry(FileRegistry):
    """A file registry that checks, at every commit, that the mesh acked every record up to the offset."""

    def __init__(self, path: Path, proxy: ReorderingProxy) -> None:
        super().__init__(path)
        self.proxy = proxy
        self.commits = 0
        self.violations: list[str] = []

    async def commit_offsets(self, connector: str, offsets: Mapping[str, Mapping[str, Any]], lease: Lease) -> None:
        for key, offset in offsets.items():
            partition = orjson.loads(key)
            for n in range(int(offset["n"]) + 1):
                if derive_event_id(connector, partition, {"n": n}) not in self.proxy.acked_ids:
                    self.violations.append(f"{key} committed at {offset['n']} before record {n} was acked")
                    break
        self.commits += 1
        await super().commit_offsets(connector, offsets, lease)


async def test_offsets_are_checkpointed_only_behind_a_contiguous_acked_prefix(tmp_path: Path, monkeypatch: Any) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        proxy = ReorderingProxy(mesh.port)
        proxy_port = await proxy.start()
        registry = CheckingRegistry(tmp_path, proxy)
        monkeypatch.setattr("runtime.app.open_registry", lambda _settings: registry)
        config = WorkerConfig.model_validate(
            {
                "name": "counter",
                "connector": "counter-source",
                "mesh": {"address": f"127.0.0.1:{proxy_port}", "max_in_flight": 64},
                "source": {"topic": "numbers", "checkpoint_every": 7, "checkpoint_interval": 0.05},
                "registry": {"kind": "file", "path": str(tmp_path)},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"limit": 600, "partitions": 3, "batch": 25},
            }
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        async with asyncio.timeout(30):
            while mesh.topic_depth("numbers") < 1800:  # noqa: ASYNC110 - the mesh offers no event for it
                await asyncio.sleep(0.05)
        stop.set()
        assert await worker == 0
        await proxy.stop()
    assert proxy.reordered > 100, "the proxy must really reorder acks for this test to mean anything"
    assert registry.commits > 10
    assert registry.violations == []
    offsets = await FileRegistry(tmp_path).load_offsets("counter")
    assert offsets == {partition_key({"p": p}): {"n": 599} for p in range(3)}


async def test_a_mesh_that_stops_acking_pauses_polling_instead_of_growing_memory(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        proxy = ReorderingProxy(mesh.port)
        proxy.frozen = True
        proxy_port = await proxy.start()
        config = WorkerConfig.model_validate(
            {
                "name": "counter",
                "connector": "counter-source",
                "mesh": {"address": f"127.0.0.1:{proxy_port}", "max_in_flight": 50, "request_timeout": 30},
                "source": {"topic": "numbers", "poll_queue": 40},
                "registry": {"kind": "file", "path": str(tmp_path)},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"limit": 100_000, "partitions": 1, "batch": 10},
            }
        )
        polled_before = RECORDS_IN.labels(connector="counter-source", name="counter")._value.get()
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False, shutdown_timeout=2))
        await asyncio.sleep(2.0)
        polled = RECORDS_IN.labels(connector="counter-source", name="counter")._value.get()
        # window + queue + the batch in the poller's hand, far from the 100 000 the source could give
        assert 50 <= polled - polled_before <= 50 + 40 + 10 + 10
        stop.set()
        assert await worker == 0
        await proxy.stop()
