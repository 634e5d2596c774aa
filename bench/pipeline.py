"""End-to-end pipeline: events/s from a source worker through the embedded mesh to a sink worker.

Three processes, as in production: the embedded mesh (``python -m runtime.commands.mesh``), a
source worker running a no-op source that emits 1 KiB JSON records as fast as it is polled, and
a sink worker running a no-op sink that only counts. Everything the runtime does is on the path:
record -> CloudEvent, publish window and acks, per-partition offset tracking and checkpoints to a
file registry, pushes, batching, acks after ``put``. The rate is events delivered to the sink per
second from the source's first poll to the sink's last record. Each process's stderr is kept in the
run's temp dir; when one exits early (or the run times out) the tail of each is printed. The CPU
microseconds per event of each process (from /proc/<pid>/stat, first poll to last record) are printed
as medians over the runs.

Baseline, measured in the same run: the raw asyncio publish-with-ack of ``bench/protocol.py``
(length-prefixed frames of the same size, an ack per frame, the same window), one way only.
``--mesh HOST:PORT`` also runs the same pipeline through that mesh (a real EventMesh runtime) in
each run, on a topic of its own, and prints its rate beside the embedded mesh's; the ratio stays
the embedded mesh's. ``--spool`` (or ``BENCH_SPOOL=1``) also runs the pipeline with the sink
spooling (``sink.spool``: each batch appended and fsynced before its ack, written from the spool)
in each run, and prints its rate beside the plain one with the cost; the spool lives in the run's
temp dir, or under ``--spool-dir`` (put it on the disk a deployment would use: the fsync is the cost).
The last line is ``ratio: <pipeline events/s / raw events/s>`` (target >= 0.4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import RAW_SERVER, cpu_seconds, free_port, one_kib_event, publish_raw, spawn, stop  # noqa: E402
from workers import WINDOW, worker_config  # noqa: E402

from runtime import ConnectorConfig, ConnectorRecord, Rejection, Sink, Source, SourceContext  # noqa: E402
from runtime.protocol.events import publish_frame  # noqa: E402
from runtime.protocol.frames import Command  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
PAYLOAD = "x" * 800
PARTITION = {"bench": 0}
STDERR_TAIL = 30


def write_report(path: Path, report: dict[str, float]) -> None:
    """Write ``report`` as JSON in one step: the bench reads the file as soon as it exists."""
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(report))
    temp.replace(path)


class NoopSourceConfig(ConnectorConfig):
    limit: int = Field(EVENTS, description="Records to emit in all.")
    batch: int = Field(500, description="Records per poll.")
    report: str = Field(description="File to write the time of the first poll to.")


class NoopSource(Source[NoopSourceConfig]):
    name = "noop-source"
    description = "Emits numbered 1 KiB JSON records as fast as it is polled."
    config_model = NoopSourceConfig

    async def start(self, context: SourceContext) -> None:
        last = context.offset({"bench": 0})
        self.next = 0 if last is None else int(last["n"]) + 1
        self.first_poll: float | None = None

    async def poll(self) -> Sequence[ConnectorRecord]:
        if self.first_poll is None:
            self.first_poll = time.time()
            await asyncio.to_thread(write_report, Path(self.config.report), {"first_poll": self.first_poll})
        end = min(self.next + self.config.batch, self.config.limit)
        if self.next >= end:
            await asyncio.sleep(0.1)
            return []
        records = [
            ConnectorRecord(data={"n": n, "payload": PAYLOAD}, partition=PARTITION, offset={"n": n})
            for n in range(self.next, end)
        ]
        self.next = end
        return records


class NoopSinkConfig(ConnectorConfig):
    expect: int = Field(EVENTS, description="Records after which the time is reported.")
    report: str = Field(description="File to write the count and the time of the last record to.")


class NoopSink(Sink[NoopSinkConfig]):
    name = "noop-sink"
    description = "Counts what it receives."
    config_model = NoopSinkConfig

    def __init__(self, config: NoopSinkConfig) -> None:
        super().__init__(config)
        self.count = 0

    async def put(self, records: Sequence[ConnectorRecord]) -> Sequence[Rejection]:
        self.count += len(records)
        if self.count >= self.config.expect:
            await asyncio.to_thread(write_report, Path(self.config.report), {"count": self.count, "last": time.time()})
        return []


def run_worker(target: str, config: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a worker; its stderr (logs, a traceback) goes to ``<config>.stderr`` beside its config."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)])}
    log = config.with_suffix(".stderr")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.testing", target, str(config)],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return process, log


def undelivered(processes: dict[str, tuple[subprocess.Popen[bytes], Path]], why: str) -> RuntimeError:
    """The error for a run that did not deliver every event, after printing the tail of each process's stderr.

    The temp dir holding the logs is gone once the run returns, so what explains the failure is printed now.
    """
    for name, (process, log) in processes.items():
        status = "running" if process.poll() is None else f"exited with code {process.returncode}"
        tail = log.read_text(errors="replace").splitlines()[-STDERR_TAIL:] if log.exists() else []
        said = f"the last {len(tail)} lines of its stderr" if tail else "nothing on stderr"
        print(f"--- {name} ({status}): {said}", file=sys.stderr)
        for line in tail:
            print(f"    {line}", file=sys.stderr)
    return RuntimeError(f"the pipeline did not deliver every event: {why}")


def pipeline_rate(
    run: int, external_mesh: str | None = None, spool_under: Path | None = None, cpu_us: dict[str, list[float]] | None = None
) -> float:
    """Events/s through a fresh embedded mesh, or through ``external_mesh`` (HOST:PORT) if given; with
    ``spool_under`` the sink spools there (``sink.spool``). ``cpu_us`` gets each process's CPU microseconds
    per event, from the source's first poll to the sink's last record."""
    with (
        tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory,
        tempfile.TemporaryDirectory(prefix="meshconnect-bench-spool-", dir=spool_under) as spool_directory,
    ):
        state = Path(directory)
        processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        if external_mesh is None:
            mesh_port = free_port()
            mesh_log = state / "mesh.stderr"
            command = ["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"]
            processes["mesh"] = (spawn(command, mesh_port, mesh_log), mesh_log)
        mesh = external_mesh or f"127.0.0.1:{mesh_port}"
        # A topic per run and mesh: the real runtime's standalone store cannot subscribe a topic again.
        topic = f"bench-{run}-{'external' if external_mesh else 'embedded'}-{os.getpid()}"
        sink_report, source_report = state / "sink.json", state / "source.json"
        sink_config = worker_config(
            "bench-sink",
            "noop-sink",
            mesh,
            state,
            registry=state / "registry",
            sink={"topics": [topic], "batch_size": 500, "linger_ms": 5}
            | ({"spool": {"path": spool_directory}} if spool_under is not None else {}),
            config={"expect": EVENTS, "report": str(sink_report)},
        )
        source_config = worker_config(
            "bench-source",
            "noop-source",
            mesh,
            state,
            registry=state / "registry",
            source={"topic": topic, "checkpoint_every": 1000},
            config={"limit": EVENTS, "report": str(source_report)},
        )
        try:
            processes["sink"] = run_worker("pipeline:NoopSink", sink_config)
            time.sleep(1.0)  # the sink subscribes first, so the rate is not a replay of a backlog
            processes["source"] = run_worker("pipeline:NoopSource", source_config)
            deadline = time.monotonic() + 300
            started: dict[str, float] = {}
            while not sink_report.exists():
                if not started and source_report.exists():
                    started = {name: cpu_seconds(process.pid) for name, (process, _) in processes.items()}
                dead = [name for name, (process, _) in processes.items() if process.poll() is not None]
                if dead:
                    raise undelivered(processes, f"{' and '.join(dead)} exited early")
                if time.monotonic() > deadline:
                    raise undelivered(processes, "not all of them within 300 s")
                time.sleep(0.05)
            first = json.loads(source_report.read_text())["first_poll"]
            last = json.loads(sink_report.read_text())["last"]
            if cpu_us is not None and started:
                for name, (process, _) in processes.items():
                    cpu_us.setdefault(name, []).append((cpu_seconds(process.pid) - started[name]) * 1e6 / EVENTS)
            return EVENTS / (last - first)
        finally:
            for process, _ in reversed(processes.values()):  # the workers, then the mesh
                stop(process)


def raw_rate() -> float:
    payloads = [publish_frame(one_kib_event(n), Command.ASYNC_MESSAGE_TO_SERVER, "0000000001") for n in range(EVENTS)]
    port = free_port()
    server = spawn(["-c", RAW_SERVER, str(port), "per-frame"], port)
    try:
        return asyncio.run(publish_raw(port, payloads, False))
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", metavar="HOST:PORT", help="also run the pipeline through this mesh (a real EventMesh)")
    parser.add_argument(
        "--spool",
        action="store_true",
        default=os.environ.get("BENCH_SPOOL", "") not in ("", "0"),
        help="also run the pipeline with the sink spooling (sink.spool); env BENCH_SPOOL=1",
    )
    parser.add_argument("--spool-dir", type=Path, help="where the spools go (default: the temp dir)")
    args = parser.parse_args()
    spool_under = (args.spool_dir or Path(tempfile.gettempdir())) if args.spool else None
    print(f"events: {EVENTS} of about 1 KiB; window {WINDOW}; runs: {RUNS}")
    pipeline_rates, raw_rates, external_rates, spooled_rates = [], [], [], []
    cpu_us: dict[str, list[float]] = {}
    for run in range(RUNS):
        pipeline_rates.append(pipeline_rate(run, cpu_us=cpu_us))
        raw_rates.append(raw_rate())
        line = f"    run {run + 1}: pipeline {pipeline_rates[-1]:,.0f} events/s, raw publish-with-ack {raw_rates[-1]:,.0f}/s"
        if args.mesh:
            external_rates.append(pipeline_rate(run, args.mesh))
            line += f", through {args.mesh} {external_rates[-1]:,.0f} events/s"
        if spool_under is not None:
            spooled_rates.append(pipeline_rate(run, spool_under=spool_under))
            line += f", with sink.spool {spooled_rates[-1]:,.0f} events/s"
        print(line)
    pipeline, raw = statistics.median(pipeline_rates), statistics.median(raw_rates)
    print(f"source -> embedded mesh -> sink (3 processes): {pipeline:,.0f} events/s (median)")
    cpu = ", ".join(f"{name} {statistics.median(values):.1f}" for name, values in cpu_us.items())
    print(f"CPU us/event (median, from the first poll to the last record): {cpu}")
    if external_rates:
        external = statistics.median(external_rates)
        share = external / pipeline
        print(f"source -> {args.mesh} -> sink: {external:,.0f} events/s (median), {share:.3f} of the embedded mesh's")
    if spooled_rates:
        spooled = statistics.median(spooled_rates)
        print(
            f"source -> embedded mesh -> sink with sink.spool in {spool_under}: {spooled:,.0f} events/s (median),"
            f" {spooled / pipeline:.3f} of the plain sink's rate"
        )
    print(f"raw asyncio publish with ack, one way (baseline): {raw:,.0f} events/s (median)")
    print(f"ratio: {pipeline / raw:.3f}")


if __name__ == "__main__":
    main()
