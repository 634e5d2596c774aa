"""What the benches that run connector workers as processes share: their config, starting them, filling a mesh
topic for a sink worker to drain, and reading what a drain cost (CPU per event, peak memory)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cloudevents.core.v1.event import CloudEvent
from protocol import cpu_seconds

from runtime.client import MeshClient, user_agent_for

ROOT = Path(__file__).resolve().parent.parent

WINDOW = 1000
"""The workers' ``mesh.max_in_flight``."""


def worker_config(name: str, connector: str, mesh: str, state: Path, *, registry: Path | None = None, **sections: object) -> Path:
    """Write the config of worker ``name`` running ``connector`` against ``mesh`` (HOST:PORT) to ``state``; ``registry``:
    a file registry there (else the default). ``sections`` are added, or replace the defaults (``admin``, say)."""
    config = {
        "name": name,
        "connector": connector,
        "mesh": {"address": mesh, "max_in_flight": WINDOW},
        **({"registry": {"kind": "file", "path": str(registry)}} if registry is not None else {}),
        # Any free port: nothing here calls the endpoint, and a port picked in advance with free_port()
        # may be taken by another process before the worker binds it (the worker then exits with 2).
        "admin": {"host": "127.0.0.1", "port": 0},
        "log": {"format": "json", "level": "warning"},
        **sections,
    }
    path = state / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_worker(package: str, config: Path, *, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """``python -m package --config config``, its output dropped; ``cpu``: pinned there (taskset)."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen(
        [*pin, sys.executable, "-m", package, "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def fill_topic(port: int, events: Iterable[CloudEvent]) -> None:
    """Publish ``events`` through the mesh on ``port`` (each on the topic its subject names), every ack awaited."""
    async with MeshClient(f"127.0.0.1:{port}", user_agent_for("bench-producer", "pub"), request_timeout=30) as client:
        waiters = [await client.start_publish(event) for event in events]
        await asyncio.gather(*waiters)


async def start_sink_worker(
    package: str,
    name: str,
    mesh_port: int,
    state: Path,
    *,
    events: Iterable[CloudEvent],
    sink: Mapping[str, object],
    config: Mapping[str, object],
    cpu: int | None = None,
) -> subprocess.Popen[bytes]:
    """Fill the topic of ``events`` first, then start the sink worker ``name`` (``python -m package``) that drains it,
    so that what it measures is the drain alone."""
    await fill_topic(mesh_port, events)
    connector = package.removeprefix("services.").replace(".", "-")  # services.mysql.sink runs mysql-sink
    path = worker_config(name, connector, f"127.0.0.1:{mesh_port}", state, sink=sink, config=config)
    return start_worker(package, path, cpu=cpu)


def cpu_of(pids: Mapping[str, int], readers: Mapping[str, Callable[[int], float]] | None = None) -> dict[str, float]:
    """CPU seconds so far of each named process; ``readers`` reads some of them otherwise (a server and its children)."""
    chosen = readers or {}
    return {name: chosen.get(name, cpu_seconds)(pid) for name, pid in pids.items()}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True, slots=True)
class SinkRun:
    """What one drain by a sink worker measured."""

    rate: float
    cpu_us: dict[str, float]  # process -> CPU microseconds per event, over the measured window
    peak_rss: float = float("nan")  # the sink worker's, MiB, where measured


def cpu_table(runs: list[SinkRun]) -> str:
    """Each process's median CPU microseconds per event over ``runs``."""
    names = list(runs[0].cpu_us)
    medians = {name: statistics.median(run.cpu_us[name] for run in runs) for name in names}
    return ", ".join(f"{name} {value:.1f}" for name, value in medians.items())
