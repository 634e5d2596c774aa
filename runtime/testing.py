"""The conformance suite every connector's tests run: the same promises, checked the same way.

A connector's test describes how to reach its external system in a small *harness*; the suite runs
the real worker (as its own process, as in production) against an :class:`~runtime.mesh.EmbeddedMesh`
and checks, in order:

``open_close``
    the worker starts, becomes ready (``/readyz``) and exits 0 on SIGTERM within the bound;
``batches``
    a few batches' worth of events all arrive (sink: downstream; source: in the mesh);
``redelivery``
    sink: the same events delivered again leave one copy each downstream (idempotent sinks);
    source: a restarted worker re-publishes only with the same event ids (so sinks can dedupe);
``kill``
    the worker is killed (SIGKILL) in the middle of a stream and restarted: nothing is lost;
``mesh_drop``
    the mesh goes away and comes back on the same port (its data dir kept): nothing is lost;
``system_restart``
    (with ``kill_system``/``restart_system``) the external system goes down mid-stream and comes
    back: nothing is lost and nothing is dead-lettered (infrastructure errors are retried).

A sink's test::

    from runtime.testing import SinkHarness, run_sink_conformance

    async def test_conformance(redis_server, tmp_path):
        async def read() -> list[str]:          # the CloudEvent ids stored downstream, duplicates included
            return [entry["id"] for entry in await read_stream(redis_server.url, "out")]

        await run_sink_conformance(
            SinkHarness(
                connector=RedisSink,
                config=lambda: {"url": redis_server.url, "stream": "out"},
                read=read,
                kill_system=redis_server.kill, restart_system=redis_server.restart,
            ),
            workdir=tmp_path,
        )

A source's test gives ``produce(start, count)`` (write upstream items numbered start..start+count-1)
and ``number_of(event)`` (the item number a published event carries)::

    await run_source_conformance(
        SourceHarness(connector=FileSource, config=lambda: {"paths": [str(tmp_path / "in.log")]},
                      produce=append_lines, number_of=lambda event: int(event.get_data().split()[1])),
        workdir=tmp_path,
    )

``checks=`` runs a subset (e.g. without ``redelivery`` for a sink that only appends). The worker
runs from ``python -m runtime.testing module:Class config.yaml``, so the connector class must be
importable by its module path. Every wait is bounded by ``within`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cloudevents.core.v1.event import CloudEvent

from runtime.client import MeshClient, user_agent_for
from runtime.connector import Sink, Source
from runtime.errors import RetriableError
from runtime.mesh import EmbeddedMesh
from runtime.protocol.frames import SubscriptionMode, SubscriptionType
from runtime.record import ConnectorRecord

__all__ = [
    "SINK_CHECKS",
    "SOURCE_CHECKS",
    "SinkHarness",
    "SourceHarness",
    "WorkerProcess",
    "conformance_event",
    "poll_until",
    "run_sink_conformance",
    "run_source_conformance",
]


async def poll_until(source: Source[Any], count: int, within: float = 10.0) -> list[ConnectorRecord]:
    """Poll a started source directly (no worker) until ``count`` records came or ``within`` seconds passed.

    A retriable error is waited out and polled again, as the worker would; the records are returned
    (fewer than ``count`` when time ran out, so ``== []`` asserts that nothing arrives).
    """
    records: list[ConnectorRecord] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(records) < count and loop.time() < deadline:
        try:
            records.extend(await source.poll())
        except RetriableError:
            await asyncio.sleep(0.1)
    return records


SINK_CHECKS = ("open_close", "batches", "redelivery", "kill", "mesh_drop", "system_restart")
SOURCE_CHECKS = ("open_close", "batches", "redelivery", "kill", "mesh_drop", "system_restart")
_TOPIC = "conformance"


def conformance_event(n: int, topic: str) -> CloudEvent:
    """The n-th test event: id ``conformance-<n>``, JSON data ``{"n": n, "text": ...}``."""
    attributes = {
        "specversion": "1.0",
        "id": f"conformance-{n}",
        "source": "/meshconnect/conformance",
        "type": "meshconnect.conformance",
        "subject": topic,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, {"n": n, "text": f"event number {n}"})


@dataclass(frozen=True)
class SinkHarness:
    """How the suite reaches a sink's external system."""

    connector: type[Sink[Any]]
    config: Callable[[], Mapping[str, Any]]
    """The connector's ``config:`` block."""
    read: Callable[[], Awaitable[Sequence[str]]]
    """The CloudEvent ids of every record stored downstream, duplicates included."""
    kill_system: Callable[[], Any] | None = None
    restart_system: Callable[[], Any] | None = None
    event_for: Callable[[int, str], CloudEvent] = conformance_event
    """The n-th event to publish to the topic (override when the sink needs a data shape)."""
    idempotent: bool = True
    """False for append-only targets: the redelivery check then only asks that nothing is lost."""
    events: int = 120
    sink_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceHarness:
    """How the suite feeds a source's external system."""

    connector: type[Source[Any]]
    config: Callable[[], Mapping[str, Any]]
    produce: Callable[[int, int], Awaitable[None]]
    """Write upstream items ``start .. start+count-1``."""
    number_of: Callable[[CloudEvent], int]
    """The item number a published event carries."""
    kill_system: Callable[[], Any] | None = None
    restart_system: Callable[[], Any] | None = None
    events: int = 120
    source_settings: Mapping[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """A connector worker in its own process (``python -m runtime.testing``), as production runs it."""

    def __init__(self, connector: type[Source[Any]] | type[Sink[Any]], config: Mapping[str, Any], workdir: Path) -> None:
        self.connector = connector
        self.admin_port = int(config["admin"]["port"])
        self.config_path = workdir / f"{config['name']}.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.log_path = workdir / f"{config['name']}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, within: float) -> None:
        target = f"{self.connector.__module__}:{self.connector.__qualname__}"
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.testing", target, str(self.config_path), stdout=log, stderr=log
            )
        await self.wait_ready(within)

    async def wait_ready(self, within: float) -> None:
        """Until ``/readyz`` says ready and ``/status`` says running (a standby replica is ready, not yet at work)."""
        base = f"http://127.0.0.1:{self.admin_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise AssertionError(f"{self.connector.name} exited with {self.process.returncode}: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{base}/readyz") as ready, http.get(f"{base}/status") as status:
                        if ready.status == 200 and (await status.json())["state"] == "running":
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.connector.name} not running within {within}s: {self.log_tail()}")

    async def terminate(self, within: float) -> int:
        """SIGTERM and wait (bounded): the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"{self.connector.name} did not stop within {within}s of SIGTERM: {self.log_tail()}") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class _Mesh:
    """An embedded mesh with a data dir, so it can be dropped and brought back on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.mesh: EmbeddedMesh | None = None

    async def start(self) -> None:
        self.mesh = EmbeddedMesh(port=self.port, data_dir=self.data_dir, redelivery_timeout=3.0)
        await self.mesh.start()

    async def stop(self) -> None:
        if self.mesh is not None:
            await self.mesh.stop()
            self.mesh = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _worker_config(
    name: str,
    connector: type[Source[Any]] | type[Sink[Any]],
    mesh: _Mesh,
    workdir: Path,
    block: Mapping[str, Any],
    **sections: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "connector": connector.name,
        "mesh": {"address": mesh.address, "request_timeout": 5},
        "registry": {"kind": "file", "path": str(workdir / "registry"), "lease_ttl": 2},
        "admin": {"host": "127.0.0.1", "port": _free_port()},
        "log": {"format": "json"},
        "config": dict(block),
        **sections,
    }


async def _eventually(condition: Callable[[], Awaitable[bool]], within: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what()}")


@contextlib.asynccontextmanager
async def _publisher(mesh: _Mesh) -> AsyncIterator[MeshClient]:
    async with MeshClient(mesh.address, user_agent_for("conformance-producer", "pub"), request_timeout=5) as client:
        yield client


async def _check_open_close(worker: WorkerProcess, within: float) -> float:
    """Start the worker until ready, SIGTERM it, expect exit 0; returns the seconds it took."""
    started = time.monotonic()
    await worker.start(within)
    code = await worker.terminate(within)
    assert code == 0, f"{worker.connector.name} exited {code} on SIGTERM: {worker.log_tail()}"
    return time.monotonic() - started


async def run_sink_conformance(
    harness: SinkHarness, *, workdir: Path, checks: Sequence[str] = SINK_CHECKS, within: float = 30.0
) -> dict[str, float]:
    """Run the sink checks (see the module docstring); returns the seconds each took. Raises AssertionError."""
    unknown = set(checks) - set(SINK_CHECKS)
    assert not unknown, f"unknown checks {sorted(unknown)}; known: {SINK_CHECKS}"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    mesh = _Mesh(workdir / "mesh")
    await mesh.start()
    timings: dict[str, float] = {}
    sink_settings = {"topics": [_TOPIC], "batch_size": 16, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 1.0}
    sink_settings.update(harness.sink_settings)
    config = _worker_config(
        f"conformance-{harness.connector.name}", harness.connector, mesh, workdir, harness.config(), sink=sink_settings
    )
    published = 0

    async def publish(count: int, *, first: int | None = None) -> list[str]:
        nonlocal published
        start = published if first is None else first
        async with _publisher(mesh) as client:
            for n in range(start, start + count):
                await client.publish(harness.event_for(n, _TOPIC))
        if first is None:
            published += count
        return [f"conformance-{n}" for n in range(start, start + count)]

    async def all_downstream() -> bool:
        stored = set(await harness.read())
        return all(f"conformance-{n}" in stored for n in range(published))

    def missing() -> str:
        return f"{published} events published, some never reached {harness.connector.name}; worker log:\n{worker.log_tail()}"

    worker = WorkerProcess(harness.connector, config, workdir)
    try:
        if "open_close" in checks:
            timings["open_close"] = await _check_open_close(worker, within)
        await worker.start(within)
        if "batches" in checks:
            started = time.monotonic()
            await publish(harness.events)
            await _eventually(all_downstream, within, missing)
            if harness.idempotent:
                stored = list(await harness.read())
                assert len(stored) == len(set(stored)), f"duplicates downstream: {len(stored) - len(set(stored))}"
            timings["batches"] = time.monotonic() - started
        if "redelivery" in checks:
            started = time.monotonic()
            await publish(published or harness.events, first=0)
            published = max(published, harness.events)
            await _eventually(lambda: _consumed(mesh, config["name"]), within, lambda: "the redelivered events were not consumed")
            await _eventually(all_downstream, within, missing)
            if harness.idempotent:
                stored = list(await harness.read())
                assert len(stored) == len(set(stored)), f"redelivered events were stored twice: {len(stored) - len(set(stored))}"
            timings["redelivery"] = time.monotonic() - started
        if "kill" in checks:
            started = time.monotonic()
            feeding = asyncio.create_task(publish(harness.events))
            await asyncio.sleep(0.2)
            await worker.kill()
            await feeding
            await worker.start(within)
            await _eventually(all_downstream, within, missing)
            timings["kill"] = time.monotonic() - started
        if "mesh_drop" in checks:
            started = time.monotonic()
            await publish(harness.events // 2)
            await mesh.stop()
            await asyncio.sleep(0.5)
            await mesh.start()
            await publish(harness.events // 2)
            await _eventually(all_downstream, within, missing)
            timings["mesh_drop"] = time.monotonic() - started
        if "system_restart" in checks and harness.kill_system is not None and harness.restart_system is not None:
            started = time.monotonic()
            await _maybe_await(harness.kill_system())
            await publish(harness.events // 2)
            await asyncio.sleep(1.0)
            await _maybe_await(harness.restart_system())
            await publish(harness.events // 2)
            await _eventually(all_downstream, within * 2, missing)
            assert mesh.mesh is not None
            dead = mesh.mesh.topic_depth(f"{config['name']}-dlq")
            assert dead == 0, f"{dead} events dead-lettered while the external system was down (must be retried)"
            timings["system_restart"] = time.monotonic() - started
        code = await worker.terminate(within)
        assert code == 0, f"{harness.connector.name} exited {code} on SIGTERM: {worker.log_tail()}"
    finally:
        await worker.kill()
        await mesh.stop()
    return timings


async def _consumed(mesh: _Mesh, group: str) -> bool:
    assert mesh.mesh is not None
    return mesh.mesh.unacked(group, _TOPIC) == 0 and mesh.mesh.topic_depth(_TOPIC) == 0


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        await value


class _Collector:
    """Reads everything a source publishes to the topic, in its own consumer group."""

    def __init__(self, mesh: _Mesh, number_of: Callable[[CloudEvent], int]) -> None:
        self.mesh = mesh
        self.number_of = number_of
        self.ids_by_number: dict[int, set[str]] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def raise_if_failed(self) -> None:
        if self.task is not None and self.task.done() and not self.task.cancelled() and self.task.exception() is not None:
            raise AssertionError(f"the suite's reader of the topic failed: {self.task.exception()!r}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        client = MeshClient(self.mesh.address, user_agent_for("conformance-reader", "sub"), request_timeout=5)
        async with client:
            await client.subscribe(_TOPIC, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
            await client.listen()
            async for pushed in client.pushed():
                self.ids_by_number.setdefault(self.number_of(pushed.event), set()).add(pushed.event.get_id())
                await pushed.ack()


async def run_source_conformance(
    harness: SourceHarness, *, workdir: Path, checks: Sequence[str] = SOURCE_CHECKS, within: float = 30.0
) -> dict[str, float]:
    """Run the source checks (see the module docstring); returns the seconds each took. Raises AssertionError."""
    unknown = set(checks) - set(SOURCE_CHECKS)
    assert not unknown, f"unknown checks {sorted(unknown)}; known: {SOURCE_CHECKS}"
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    mesh = _Mesh(workdir / "mesh")
    await mesh.start()
    timings: dict[str, float] = {}
    source_settings = {"topic": _TOPIC, "checkpoint_every": 10, "checkpoint_interval": 0.2}
    source_settings.update(harness.source_settings)
    config = _worker_config(
        f"conformance-{harness.connector.name}", harness.connector, mesh, workdir, harness.config(), source=source_settings
    )
    produced = 0
    collector = _Collector(mesh, harness.number_of)

    async def produce(count: int) -> None:
        nonlocal produced
        await harness.produce(produced, count)
        produced += count

    async def all_published() -> bool:
        collector.raise_if_failed()
        return all(n in collector.ids_by_number for n in range(produced))

    def missing() -> str:
        lost = [n for n in range(produced) if n not in collector.ids_by_number]
        return f"{len(lost)} of {produced} items never reached the mesh (first: {lost[:5]}); worker log:\n{worker.log_tail()}"

    worker = WorkerProcess(harness.connector, config, workdir)
    try:
        collector.start()
        if "open_close" in checks:
            timings["open_close"] = await _check_open_close(worker, within)
        await worker.start(within)
        if "batches" in checks:
            started = time.monotonic()
            await produce(harness.events)
            await _eventually(all_published, within, missing)
            timings["batches"] = time.monotonic() - started
        if "redelivery" in checks:
            started = time.monotonic()
            code = await worker.terminate(within)
            assert code == 0, f"{harness.connector.name} exited {code} on SIGTERM: {worker.log_tail()}"
            await worker.start(within)
            await produce(harness.events // 4)
            await _eventually(all_published, within, missing)
            timings["redelivery"] = time.monotonic() - started
        if "kill" in checks:
            started = time.monotonic()
            await produce(harness.events)
            await asyncio.sleep(0.3)
            await worker.kill()
            await produce(harness.events // 4)
            await worker.start(within)
            await _eventually(all_published, within, missing)
            timings["kill"] = time.monotonic() - started
        if "mesh_drop" in checks:
            started = time.monotonic()
            await produce(harness.events // 2)
            await asyncio.sleep(0.2)
            await collector.stop()
            await mesh.stop()
            await asyncio.sleep(0.5)
            await mesh.start()
            collector.start()
            await produce(harness.events // 2)
            await _eventually(all_published, within, missing)
            timings["mesh_drop"] = time.monotonic() - started
        if "system_restart" in checks and harness.kill_system is not None and harness.restart_system is not None:
            started = time.monotonic()
            await _maybe_await(harness.kill_system())
            await asyncio.sleep(1.0)
            await _maybe_await(harness.restart_system())
            await produce(harness.events // 2)
            await _eventually(all_published, within * 2, missing)
            timings["system_restart"] = time.monotonic() - started
        code = await worker.terminate(within)
        assert code == 0, f"{harness.connector.name} exited {code} on SIGTERM: {worker.log_tail()}"
        unstable = {n: ids for n, ids in collector.ids_by_number.items() if len(ids) > 1}
        assert not unstable, (
            f"items published again under a new event id (sinks cannot dedupe them): {dict(list(unstable.items())[:3])}"
        )
    finally:
        await worker.kill()
        await collector.stop()
        await mesh.stop()
    return timings


def _main(argv: Sequence[str]) -> int:
    """``python -m runtime.testing module:Class config.yaml``: run a connector class by its import path."""
    from runtime.app import run_connector

    module_name, _, qualname = argv[0].partition(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return run_connector(argv[1], connector_class=cls)


if __name__ == "__main__":
    from runtime.app import exit_process

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    exit_process(_main(sys.argv[1:]))
