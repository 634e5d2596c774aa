"""Transforms on the pipeline: events/s with a filter and a route on the source and a map on the sink, against
the same pipeline without transforms, both measured in the same run.

The pipeline of ``bench/pipeline.py`` (three processes: the embedded mesh, a source worker emitting
1 KiB JSON records as fast as it is polled, a sink worker that only counts), with records that carry
a ``tenant`` extension. With transforms, the source keeps every record whose type is not
``heartbeat`` (none is: the filter costs its test, it drops nothing) and routes each to
``<topic>.<tenant>`` (the topic the plain run publishes to directly), and the sink maps each
event's data with jq (``{n, payload, kind: "bench"}``). The rate is events delivered to the sink
per second from the source's first poll to the sink's last record; each run also gives the CPU
time of the three processes per event over the same span (from /proc: Linux), which other work
on a shared machine moves far less than the rate, and the chains' own cost per event (and that of
one step of each kind), measured in this process on the same records.
The last line is ``ratio: <events/s with transforms / events/s without>``, the median of the runs' ratios, each
run measuring both back to back (target >= 0.85).
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

from pipeline import EVENTS, PARTITION, PAYLOAD, NoopSource, run_worker, undelivered  # noqa: E402
from protocol import cpu_seconds, free_port, spawn, stop  # noqa: E402
from workers import worker_config  # noqa: E402

from runtime import ConnectorRecord  # noqa: E402
from runtime.transforms import EventView, Routing, TransformChain, compile_transforms  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TENANT = "acme"
SOURCE_STEPS: list[dict[str, Any]] = [
    {"name": "drop-heartbeats", "filter": 'type != "heartbeat"'},
    {"name": "by-tenant", "route": 'subject + "." + extensions.tenant'},
]
SINK_STEPS: list[dict[str, Any]] = [{"name": "reshape", "map": '{n, payload, kind: "bench"}'}]
EVENTMESH_PATTERN = {"type": [{"prefix": "tenant"}], "data": {"n": [{"numeric": [">=", 0]}]}}
EVENTMESH_TEMPLATE = {"transformerType": "template", "value": {"n": "$.data.n"}, "template": '{"n": ${n}}'}
ONE_STEP: dict[str, dict[str, Any]] = {
    "filter, CEL on attributes": {"filter": 'type != "heartbeat"'},
    "filter, CEL on data": {"filter": "data.n >= 0"},
    "route, CEL on an extension": {"route": 'subject + "." + extensions.tenant'},
    "set an extension, CEL on data": {"set": {"seen": "data.n"}},
    "remove an extension": {"remove": ["tenant"]},
    "map, jq selecting and assembling": {"map": '{n, payload, kind: "bench"}'},
    "map, any other jq": {"map": "{n, size: (.payload | length)}"},
    "mask, hmac of one field": {"mask": {"fields": ["payload"], "secret": "bench"}},
    "filter, EventMesh pattern": {"filter": {"eventmesh": EVENTMESH_PATTERN}},
    "map, EventMesh template": {"map": {"eventmesh": EVENTMESH_TEMPLATE}},
    "map, EventMesh original": {"map": {"eventmesh": {"transformerType": "original"}}},
}


class TenantSource(NoopSource):
    """The pipeline's no-op source, each record of tenant ``acme``."""

    name = "tenant-source"

    async def poll(self) -> Sequence[ConnectorRecord]:
        return [
            ConnectorRecord(data=record.data, partition=PARTITION, offset=record.offset, extensions={"tenant": TENANT})
            for record in await super().poll()
        ]


def pipeline_rate(run: int, transforms: bool) -> tuple[float, dict[str, float]]:
    """Events/s, and CPU microseconds per event of each of the three processes from the first poll to the last record."""
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
            registry=state / "registry",
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
            registry=state / "registry",
            source={**source, "checkpoint_every": 1000},
            config={"limit": EVENTS, "report": str(source_report)},
            transforms=SOURCE_STEPS if transforms else [],
        )
        try:
            processes["sink"] = run_worker("pipeline:NoopSink", sink_config)
            time.sleep(1.0)  # the sink subscribes first, so the rate is not a replay of a backlog
            processes["source"] = run_worker("transforms:TenantSource", source_config)
            deadline = time.monotonic() + 300
            while not source_report.exists() and time.monotonic() < deadline:
                time.sleep(0.002)
            pids = {name: process.pid for name, (process, _) in processes.items()}
            cpu_at_first_poll = {name: cpu_seconds(pid) for name, pid in pids.items()}
            while not sink_report.exists():
                dead = [name for name, (process, _) in processes.items() if process.poll() is not None]
                if dead:
                    raise undelivered(processes, f"{' and '.join(dead)} exited early")
                if time.monotonic() > deadline:
                    raise undelivered(processes, "not all of them within 300 s")
                time.sleep(0.05)
            cpu = {name: (cpu_seconds(pid) - cpu_at_first_poll[name]) / EVENTS * 1e6 for name, pid in pids.items()}
            first = json.loads(source_report.read_text())["first_poll"]
            last = json.loads(sink_report.read_text())["last"]
            return EVENTS / (last - first), cpu
        finally:
            for process, _ in reversed(processes.values()):
                stop(process)


def source_chain(steps: list[dict[str, Any]]) -> TransformChain:
    view = EventView("bench-source", "/meshconnect/bench-source", "tenant-source.record", "bench")
    routing = Routing("source", permits=lambda topic: topic.startswith("bench."), allowed="bench.*")
    chain = compile_transforms(steps, view=view, routing=routing)
    assert chain is not None
    return chain


def cost(chain: TransformChain) -> float:
    """Microseconds per event of ``chain`` on the bench's records, the best of three passes."""
    records = [
        ConnectorRecord(data={"n": n, "payload": PAYLOAD}, partition=PARTITION, offset={"n": n}, extensions={"tenant": TENANT})
        for n in range(5000)
    ]
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for record in records:
            chain.apply(record)
        passes.append((time.perf_counter() - started) / len(records) * 1e6)
    return min(passes)


def chain_cost() -> tuple[float, float]:
    """Microseconds per event of the source's chain and of the sink's, on the bench's records."""
    sink = compile_transforms(SINK_STEPS, view=EventView(), routing=Routing("sink", connector="noop-sink"))
    assert sink is not None
    return cost(source_chain(SOURCE_STEPS)), cost(sink)


def main() -> None:
    print(f"events: {EVENTS} of about 1 KiB; runs: {RUNS}")
    source_cost, sink_cost = chain_cost()
    print(f"chain cost per event: source (filter + route) {source_cost:.1f} us, sink (map) {sink_cost:.1f} us")
    for label, step in ONE_STEP.items():
        print(f"    one step: {label}: {cost(source_chain([step])):.1f} us")
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    by_process: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for run in range(RUNS):
        for transforms in (False, True):
            rate, cpu_per_event = pipeline_rate(run, transforms)
            rates[transforms].append(rate)
            cpu[transforms].append(sum(cpu_per_event.values()))
            by_process[transforms].append(cpu_per_event)
        print(
            f"    run {run + 1}: without transforms {rates[False][-1]:,.0f} events/s ({cpu[False][-1]:.0f} us CPU an event),"
            f" with {rates[True][-1]:,.0f} events/s ({cpu[True][-1]:.0f} us CPU an event)"
        )
    for name in by_process[False][0]:
        without_cpu = statistics.median(run[name] for run in by_process[False])
        with_cpu = statistics.median(run[name] for run in by_process[True])
        print(f"CPU an event in the {name} process (median): without transforms {without_cpu:.1f} us, with {with_cpu:.1f} us")
    # Each run measures both back to back, under the same load of the machine: ratios are medians of the runs' ratios.
    rate_ratio = statistics.median(with_steps / without for with_steps, without in zip(rates[True], rates[False], strict=True))
    cpu_ratio = statistics.median(without / with_steps for with_steps, without in zip(cpu[True], cpu[False], strict=True))
    print(f"without transforms: {statistics.median(rates[False]):,.0f} events/s (median)")
    transformed = statistics.median(rates[True])
    print(f"with a filter and a route on the source and a map on the sink: {transformed:,.0f} events/s (median)")
    print(f"events/s with transforms / without: {rate_ratio:.3f} (a machine shared with other work moves it run to run)")
    print(f"CPU an event without transforms / with, the three processes together: {cpu_ratio:.3f}")
    print(f"ratio: {rate_ratio:.3f}")


if __name__ == "__main__":
    main()
