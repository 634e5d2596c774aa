"""SIGTERM drains a worker process: it exits 0 with every published record checkpointed; lease loss stops writing."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from runtime.app import serve
from runtime.config import WorkerConfig
from runtime.errors import FencedError
from runtime.mesh import EmbeddedMesh
from runtime.record import partition_key
from runtime.registry import Lease
from runtime.registry.file import FileRegistry
from tests.runtime.connectors import CounterSource
from tests.servers import free_port


async def test_sigterm_drains_checkpoints_and_exits_zero(tmp_path: Path) -> None:
    async with EmbeddedMesh(port=0) as mesh:
        config = {
            "name": "counter",
            "connector": "counter-source",
            "mesh": {"address": f"127.0.0.1:{mesh.port}"},
            "source": {"topic": "numbers", "checkpoint_every": 100_000, "checkpoint_interval": 60},
            "registry": {"kind": "file", "path": str(tmp_path / "state")},
            "admin": {"host": "127.0.0.1", "port": free_port()},
            "config": {"limit": 10**9, "partitions": 2, "batch": 50},
        }
        path = tmp_path / "counter.yaml"
        path.write_text(yaml.safe_dump(config))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.testing", "tests.runtime.connectors:CounterSource", str(path)
        )
        async with asyncio.timeout(30):
            while mesh.topic_depth("numbers") < 2000:  # noqa: ASYNC110 - the mesh offers no event for it
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        published = mesh.topic_depth("numbers")
    offsets = await FileRegistry(tmp_path / "state").load_offsets("counter")
    # The interval and count never triggered: only the drain's final checkpoint wrote these, and it
    # covers exactly what reached the mesh (two partitions counting from 0, no gaps, no extras).
    assert set(offsets) == {partition_key({"p": 0}), partition_key({"p": 1})}
    assert sum(int(offset["n"]) + 1 for offset in offsets.values()) == published


class FlakyLeaseRegistry(FileRegistry):
    """Refuses lease renewals (and acquisitions) while ``fenced`` is set, as if another replica took over."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fenced = False
        self.commit_times: list[float] = []

    async def renew(self, lease: Lease, ttl: float) -> None:
        if self.fenced:
            raise FencedError("lease taken over (test)")
        await super().renew(lease, ttl)

    async def try_acquire(self, connector: str, group: str, holder: str, ttl: float) -> Lease | None:
        if self.fenced:
            return None
        return await super().try_acquire(connector, group, holder, ttl)

    async def commit_offsets(self, connector: str, offsets: Mapping[str, Mapping[str, Any]], lease: Lease) -> None:
        self.commit_times.append(time.monotonic())
        await super().commit_offsets(connector, offsets, lease)


async def test_lease_loss_stops_publishing_and_regaining_resumes_from_the_checkpoint(tmp_path: Path, monkeypatch: Any) -> None:
    registry = FlakyLeaseRegistry(tmp_path)
    monkeypatch.setattr("runtime.app.open_registry", lambda _settings: registry)
    async with EmbeddedMesh(port=0) as mesh:
        config = WorkerConfig.model_validate(
            {
                "name": "counter",
                "connector": "counter-source",
                "mesh": {"address": f"127.0.0.1:{mesh.port}"},
                "source": {"topic": "numbers", "checkpoint_every": 20, "checkpoint_interval": 0.05},
                "registry": {"kind": "file", "path": str(tmp_path), "lease_ttl": 1.5},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"limit": 10**9, "partitions": 1, "batch": 5},
            }
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(serve(CounterSource, config, stop=stop, install_signals=False))
        async with asyncio.timeout(20):
            while mesh.topic_depth("numbers") < 200:  # noqa: ASYNC110 - the mesh offers no event for it
                await asyncio.sleep(0.02)
        registry.fenced = True
        fenced_at = time.monotonic()
        await asyncio.sleep(2.5)  # past the TTL: the lease is lost whatever the timing of the renewals
        depth_when_standing_by = mesh.topic_depth("numbers")
        await asyncio.sleep(0.5)
        assert mesh.topic_depth("numbers") == depth_when_standing_by, "a replica without the lease kept publishing"
        # The last renewal was at most one TTL before: past that deadline not a single commit may happen.
        assert [t for t in registry.commit_times if t > fenced_at + config.registry.lease_ttl] == []
        committed = (await registry.load_offsets("counter"))[partition_key({"p": 0})]["n"]
        registry.fenced = False
        async with asyncio.timeout(20):
            while mesh.topic_depth("numbers") < depth_when_standing_by + 100:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.02)
        stop.set()
        assert await worker == 0
    assert int((await registry.load_offsets("counter"))[partition_key({"p": 0})]["n"]) > int(committed)
