"""Publish-with-ack throughput: meshconnect's client against Apache EventMesh's Java SDK client.

Both publish ``BENCH_EVENTS`` events of about 1 KiB (800 bytes of JSON padding) to a fresh embedded
mesh process, one after the other in each run, the clock running from the first publish to the
last ack. meshconnect's client keeps a window of ``WINDOW`` publishes in flight from one task; the
Java SDK (``eventmesh-sdk-java`` 1.10.0-release, with its per-frame DEBUG logging turned down to
WARN) can only publish one event at a time per calling thread, so it runs ``JAVA_THREADS`` threads
on one client, its best here. The JVM's start is not timed. Each side runs ``RUNS`` times; medians
are printed. ``--mesh HOST:PORT`` measures both against that running mesh (a real EventMesh runtime)
instead, on a topic per run and side.

The last line is ``ratio: <meshconnect events/s / Java SDK events/s>`` (target >= 1.0).
"""

from __future__ import annotations

import argparse
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

from protocol import free_port, on_topic, one_kib_event, publish_through_client, spawn, stop  # noqa: E402

from runtime.app import freeze_startup_heap  # noqa: E402
from tests.interop.sdk import build_peer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
JAVA_THREADS = int(os.environ.get("BENCH_JAVA_THREADS", "16"))


def java_rate(classpath: str, host: str, port: int, topic: str) -> float:
    """Events/s of the Java SDK publishing ``EVENTS`` events from ``JAVA_THREADS`` threads."""
    command = ["java", "-cp", classpath, "meshconnect.interop.SdkPeer", "flood", "--host", host, "--port", str(port)]
    command += ["--topic", topic, "--count", str(EVENTS), "--threads", str(JAVA_THREADS), "--size", "800"]
    output = subprocess.run(command, capture_output=True, check=True, timeout=600).stdout
    (rate,) = [line for line in map(json.loads, output.splitlines()) if line["kind"] == "rate"]
    if rate["failed"]:
        raise RuntimeError(f"the Java SDK saw {rate['failed']} publishes fail")
    return float(rate["events"]) / float(rate["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", metavar="HOST:PORT", help="measure against this running mesh instead of the embedded one")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    classpath = build_peer(Path(tempfile.mkdtemp(prefix="meshconnect-bench-java-")))
    ours: list[float] = []
    theirs: list[float] = []
    for run in range(RUNS):
        # A topic per run and side: the real runtime's standalone store refuses a topic used before.
        events = [on_topic(one_kib_event(n), f"bench-py-{run}-{os.getpid()}") for n in range(EVENTS)]
        mesh = None
        if args.mesh:
            host, port = args.mesh.rsplit(":", 1)
        else:
            host, port = "127.0.0.1", str(free_port())
            mesh = spawn(["-m", "runtime.commands.mesh", "--port", port, "--log-level", "error"], int(port))
        try:
            freeze_startup_heap()
            ours.append(asyncio.run(publish_through_client(int(port), events, host)))
            theirs.append(java_rate(classpath, host, int(port), f"bench-java-{run}-{os.getpid()}"))
        finally:
            if mesh is not None:
                stop(mesh)
        print(f"    run {run + 1}: meshconnect {ours[-1]:,.0f}/s, Java SDK ({JAVA_THREADS} threads) {theirs[-1]:,.0f}/s")
    client, java = statistics.median(ours), statistics.median(theirs)
    print(f"publish with ack to {args.mesh or 'the embedded mesh'}, {EVENTS} x 1 KiB: meshconnect {client:,.0f} events/s")
    print(f"    Java SDK client, {JAVA_THREADS} threads: {java:,.0f} events/s (the baseline)")
    print(f"ratio: {client / java:.3f}")


if __name__ == "__main__":
    main()
