"""Transforms on the pipeline: events/s with a filter and a route on the source and a map on the sink, against
the same pipeline without transforms, both measured in the same run.

The pipeline of ``bench/pipeline.py`` (three processes: the embedded mesh, a source worker emitting
1 KiB JSON records as fast as it is polled, a sink worker that only counts), with records that carry
a ``tenant`` extension. With transforms, the source keeps every record whose type is not
``heartbeat`` (none is: the filter costs its test, it drops nothing) and routes each to
``<topic>.<tenant>`` (the topic the plain run publishes to directly), and the sink maps each
event's data with jq (``{n, payload, kind: "bench"}``). The rate is events delivered to the sink
per second from the source's first poll to the sink's last record; each line also gives the
chain's own cost per event, measured in this process on the same records.
The last line is ``ratio: <events/s with transforms / events/s without>`` (target >= 0.85).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from pipeline import EVENTS, PARTITION, PAYLOAD, NoopSource, run_worker, undelivered, worker_config  # noqa: E402
from protocol import free_port, spawn, stop  # noqa: E402

from runtime import ConnectorRecord  # noqa: E402
from runtime.transforms import EventView, Routing, compile_transforms  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TENANT = "acme"
SOURCE_STEPS: list[dict[str, Any]] = [
    {"name": "drop-heartbeats", "filter": 'type != "heartbeat"'},
    {"name": "by-tenant", "route": 'subject + "." + extensions.tenant'},
]
SINK_STEPS: list[dict[str, Any]] = [{"name": "reshape", "map": '{n, payload, kind: "bench"}'}]


class TenantSource(NoopSource):
    """The pipeline's no-op source, each record of tenant ``acme``."""

    name = "tenant-source"

    async def poll(self) -> Sequence[ConnectorRecord]:
        return [
            ConnectorRecord(data=record.data, partition=PARTITION, offset=record.offset, extensions={"tenant": TENANT})
            for record in await super().poll()
        ]


def pipeline_rate(run: int, transforms: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="meshconnect-bench-transforms-") as directory:
        state = Path(directory)
        processes = {}
        mesh_port = free_port()
        mesh_log = state / "mesh.stderr"
        command = ["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"]
        processes["mesh"] = (spawn(command, mesh_port, mesh_log), mesh_log)
        mesh = f"127.0.0.1:{mesh_port}"
        topic = f"bench-{run}-{'transforms' if transforms else 'plain'}-{os.getpid()}"
        sink_report, source_report = state / "sink.json", state / "source.json"
        sink_config = worker_config(
            "bench-sink",
            "noop-sink",
            mesh,
            state,
            sink={"topics": [f"{topic}.{TENANT}"], "batch_size": 500, "linger_ms": 5},
            config={"expect": EVENTS, "report": str(sink_report)},
            transforms=SINK_STEPS if transforms else [],
        )
        source = {"topic": topic, "allowed_topics": [f"{topic}.*"]} if transforms else {"topic": f"{topic}.{TENANT}"}
        source_config = worker_config(
            "bench-source",
            "tenant-source",
            mesh,
            state,
            source={**source, "checkpoint_every": 1000},
            config={"limit": EVENTS, "report": str(source_report)},
            transforms=SOURCE_STEPS if transforms else [],
        )
        try:
            processes["sink"] = run_worker("pipeline:NoopSink", sink_config)
            time.sleep(1.0)  # the sink subscribes first, so the rate is not a replay of a backlog
            processes["source"] = run_worker("transforms:TenantSource", source_config)
            deadline = time.monotonic() + 300
            while not sink_report.exists():
                dead = [name for name, (process, _) in processes.items() if process.poll() is not None]
                if dead:
                    raise undelivered(processes, f"{' and '.join(dead)} exited early")
                if time.monotonic() > deadline:
                    raise undelivered(processes, "not all of them within 300 s")
                time.sleep(0.05)
            first = json.loads(source_report.read_text())["first_poll"]
            last = json.loads(sink_report.read_text())["last"]
            return EVENTS / (last - first)
        finally:
            for process, _ in reversed(processes.values()):
                stop(process)


def chain_cost() -> tuple[float, float]:
    """Microseconds per event of the source's chain and of the sink's, on the bench's records."""
    allowed = "bench.*"
    view = EventView("bench-source", "/meshconnect/bench-source", "tenant-source.record", "bench")
    source = compile_transforms(
        SOURCE_STEPS, view=view, routing=Routing("source", permits=lambda topic: topic.startswith("bench."), allowed=allowed)
    )
    sink = compile_transforms(SINK_STEPS, view=EventView(), routing=Routing("sink", connector="noop-sink"))
    assert source is not None and sink is not None
    records = [
        ConnectorRecord(data={"n": n, "payload": PAYLOAD}, partition=PARTITION, offset={"n": n}, extensions={"tenant": TENANT})
        for n in range(5000)
    ]
    costs = []
    for chain in (source, sink):
        started = time.perf_counter()
        for record in records:
            chain.apply(record)
        costs.append((time.perf_counter() - started) / len(records) * 1e6)
    return costs[0], costs[1]


def main() -> None:
    print(f"events: {EVENTS} of about 1 KiB; runs: {RUNS}")
    source_cost, sink_cost = chain_cost()
    print(f"chain cost per event: source (filter + route) {source_cost:.1f} us, sink (map) {sink_cost:.1f} us")
    plain_rates, transformed_rates = [], []
    for run in range(RUNS):
        plain_rates.append(pipeline_rate(run, transforms=False))
        transformed_rates.append(pipeline_rate(run, transforms=True))
        plain, transformed = plain_rates[-1], transformed_rates[-1]
        print(f"    run {run + 1}: without transforms {plain:,.0f} events/s, with {transformed:,.0f} events/s")
    plain, transformed = statistics.median(plain_rates), statistics.median(transformed_rates)
    print(f"without transforms: {plain:,.0f} events/s (median)")
    print(f"with a filter and a route on the source and a map on the sink: {transformed:,.0f} events/s (median)")
    print(f"ratio: {transformed / plain:.3f}")


if __name__ == "__main__":
    main()
