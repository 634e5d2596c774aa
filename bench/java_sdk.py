"""Publish-with-ack throughput: meshconnect's client against Apache EventMesh's Java SDK client.

Both publish ``BENCH_EVENTS`` events of about 1 KiB (800 bytes of JSON padding) to a fresh embedded
mesh process, one after the other in each run, the clock running from the first publish to the
last ack. meshconnect's client keeps a window of ``BENCH_WINDOW`` (1000) publishes in flight from one task; the
Java SDK (``eventmesh-sdk-java`` 1.10.0-release, with its per-frame DEBUG logging turned down to
WARN) can only publish one event at a time per calling thread, so it runs ``JAVA_THREADS`` threads
on one client, its best here. The JVM's start is not timed. Each side runs ``RUNS`` times; medians
are printed. ``--mesh HOST:PORT`` measures both against that running mesh (a real EventMesh runtime)
instead, on a topic per run and side, with a subscriber process taking and acking every event (the
runtime's standalone store refuses publishes to a topic no group subscribes).

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
# EventMesh 1.11.0 answers some pipelined publishes with another publish's seq (see the README's
# compatibility section): against it, BENCH_WINDOW=1 BENCH_JAVA_THREADS=1 is the comparison that completes.
WINDOW = int(os.environ.get("BENCH_WINDOW", "1000"))

DRAIN = r"""
import asyncio, sys
from runtime.client import MeshClient, user_agent_for

async def main(address, topics):
    async with MeshClient(address, user_agent_for("bench-drain", "sub")) as client:
        for topic in topics:
            await client.subscribe(topic)
        await client.listen()
        print("ready", flush=True)
        async for pushed in client.pushed():
            await pushed.ack()

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def start_drain(address: str, topics: list[str]) -> subprocess.Popen[bytes]:
    """A subscriber process that acks every event of ``topics``, once it has subscribed them."""
    process = subprocess.Popen([sys.executable, "-c", DRAIN, address, *topics], cwd=ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    for line in process.stdout:  # its log lines come first
        if line.strip() == b"ready":
            return process
    raise RuntimeError(f"the subscriber for {topics} exited with {process.wait()}")


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
        py_topic, java_topic = f"bench-py-{run}-{os.getpid()}", f"bench-java-{run}-{os.getpid()}"
        events = [on_topic(one_kib_event(n), py_topic) for n in range(EVENTS)]
        processes = []
        if args.mesh:
            host, port = args.mesh.rsplit(":", 1)
            processes.append(start_drain(args.mesh, [py_topic, java_topic]))
        else:
            host, port = "127.0.0.1", str(free_port())
            processes.append(spawn(["-m", "runtime.commands.mesh", "--port", port, "--log-level", "error"], int(port)))
        try:
            freeze_startup_heap()
            ours.append(asyncio.run(publish_through_client(int(port), events, host, WINDOW)))
            theirs.append(java_rate(classpath, host, int(port), java_topic))
        finally:
            for process in processes:
                stop(process)
        print(f"    run {run + 1}: meshconnect (window {WINDOW}) {ours[-1]:,.0f}/s, ", end="")
        print(f"Java SDK ({JAVA_THREADS} threads) {theirs[-1]:,.0f}/s")
    client, java = statistics.median(ours), statistics.median(theirs)
    print(f"publish with ack to {args.mesh or 'the embedded mesh'}, {EVENTS} x 1 KiB: meshconnect {client:,.0f} events/s")
    print(f"    Java SDK client, {JAVA_THREADS} threads: {java:,.0f} events/s (the baseline)")
    print(f"ratio: {client / java:.3f}")


if __name__ == "__main__":
    main()
