"""Publish-with-ack throughput: meshconnect's client against Apache EventMesh's Java SDK client.

Both publish ``BENCH_EVENTS`` events of about 1 KiB (800 bytes of JSON padding) to a fresh embedded
mesh process, one after the other in each run, the clock running from the first publish to the
last ack. meshconnect's client keeps a window of ``WINDOW`` publishes in flight from one task; the
Java SDK (``eventmesh-sdk-java`` 1.10.0-release, with its per-frame DEBUG logging turned down to
WARN) can only publish one event at a time per calling thread, so it runs ``JAVA_THREADS`` threads
on one client, its best here. The JVM's start is not timed. Each side runs ``RUNS`` times; medians
are printed.

The last line is ``ratio: <meshconnect events/s / Java SDK events/s>`` (target >= 1.0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from protocol import free_port, one_kib_event, publish_through_client, spawn, stop  # noqa: E402

from runtime.app import freeze_startup_heap  # noqa: E402
from tests.interop.sdk import build_peer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
JAVA_THREADS = int(os.environ.get("BENCH_JAVA_THREADS", "16"))


def java_rate(classpath: str, port: int, topic: str) -> float:
    """Events/s of the Java SDK publishing ``EVENTS`` events from ``JAVA_THREADS`` threads."""
    command = ["java", "-cp", classpath, "meshconnect.interop.SdkPeer", "flood", "--port", str(port)]
    command += ["--topic", topic, "--count", str(EVENTS), "--threads", str(JAVA_THREADS), "--size", "800"]
    output = subprocess.run(command, capture_output=True, check=True, timeout=600).stdout
    (rate,) = [line for line in map(json.loads, output.splitlines()) if line["kind"] == "rate"]
    if rate["failed"]:
        raise RuntimeError(f"the Java SDK saw {rate['failed']} publishes fail")
    return float(rate["events"]) / float(rate["seconds"])


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    classpath = build_peer(Path(tempfile.mkdtemp(prefix="meshconnect-bench-java-")))
    events = [one_kib_event(n) for n in range(EVENTS)]
    ours: list[float] = []
    theirs: list[float] = []
    for run in range(RUNS):
        port = free_port()
        mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(port), "--log-level", "error"], port)
        try:
            freeze_startup_heap()
            ours.append(asyncio.run(publish_through_client(port, events)))
            theirs.append(java_rate(classpath, port, f"java-{run}"))
        finally:
            stop(mesh)
        print(f"    run {run + 1}: meshconnect {ours[-1]:,.0f}/s, Java SDK ({JAVA_THREADS} threads) {theirs[-1]:,.0f}/s")
    client, java = statistics.median(ours), statistics.median(theirs)
    print(f"publish with ack to the embedded mesh, {EVENTS} x 1 KiB: meshconnect {client:,.0f} events/s")
    print(f"    Java SDK client, {JAVA_THREADS} threads: {java:,.0f} events/s (the baseline)")
    print(f"ratio: {client / java:.3f}")


if __name__ == "__main__":
    main()
