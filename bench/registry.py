"""Checkpoint cost: fenced 16-partition offset commits against plain pipelined SETs of the same keys.

A throwaway ``redis-server`` on loopback serves both sides, in the same run:

* **fenced**: ``RedisRegistry.commit_offsets`` of a 16-partition offset map under a lease, one
  commit awaited at a time, as the source worker checkpoints: one Lua script that checks the
  lease token and the commit version of every partition before writing it;
* **baseline**: the same 16 keys and JSON values written by a pipelined ``SET`` x16 (no
  transaction, no fencing), one pipeline awaited at a time.

A second pair, a primary and its replica started by the bench, measures the cost of
replica-acknowledged commits (``registry.min_replicas: 1``: the script, then ``WAIT 1``) against
plain fenced commits on the same primary (a Sentinel is not needed for that: it only finds the
primary). A third, on a Redis Cluster of three primaries with a replica each
(``redis+cluster://``), does the same through the cluster client (``WAIT`` on the slot's primary).

Both are counted in 16-partition writes per second. The checkpoint overhead on the pipeline is
one fenced commit's time divided by the time 1000 events take through the pipeline (the worker
checkpoints once per 1000 events by default), the pipeline rate taken from ``bench/pipeline.py``
(run here once, ``BENCH_RUNS=1``), or from ``BENCH_PIPELINE_RATE`` (events/s) if set.
Replica acknowledgement is reported the same way: what one checkpoint per 1000 events costs, plain
and acknowledged, as a share of the pipeline's time for those events, and the difference (target:
under 5%), with ``ratio`` lines (acknowledged ÷ plain commits/s). The last line is
``ratio: <fenced commits/s / pipelined SET/s>`` (target >= 0.5; overhead <= 5%).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from runtime.record import partition_key  # noqa: E402
from runtime.registry.file import FileRegistry  # noqa: E402
from runtime.registry.redis import RedisRegistry  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
COMMITS = int(os.environ.get("BENCH_COMMITS", "3000"))
PARTITIONS = 16
CHECKPOINT_EVERY = 1000


def offsets(step: int) -> dict[str, dict[str, object]]:
    return {
        partition_key({"table": "orders", "shard": p}): {"file": "binlog.000042", "pos": step * 1000 + p}
        for p in range(PARTITIONS)
    }


async def fenced_rate(url: str, prefix: str, min_replicas: int = 0) -> float:
    registry = RedisRegistry(url, prefix=prefix, min_replicas=min_replicas)
    try:
        lease = await registry.try_acquire("bench", "default", "bench-replica", 600)
        assert lease is not None
        maps = [offsets(step) for step in range(COMMITS)]
        await registry.commit_offsets("bench", maps[0], lease)  # loads the script
        started = time.perf_counter()
        for offset_map in maps:
            await registry.commit_offsets("bench", offset_map, lease)
        return COMMITS / (time.perf_counter() - started)
    finally:
        await registry.close()


async def pipelined_set_rate(url: str, prefix: str) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        maps = [[(f"{prefix}:{key}", orjson.dumps(value)) for key, value in offsets(step).items()] for step in range(COMMITS)]
        started = time.perf_counter()
        for pairs in maps:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in pairs:
                    pipe.set(key, value)
                await pipe.execute()
        return COMMITS / (time.perf_counter() - started)
    finally:
        await client.aclose()


async def file_rate(directory: Path) -> float:
    registry = FileRegistry(directory)
    lease = await registry.try_acquire("bench", "default", "bench-replica", 600)
    assert lease is not None
    count = max(1, COMMITS // 10)
    started = time.perf_counter()
    for step in range(count):
        await registry.commit_offsets("bench", offsets(step), lease)
    return count / (time.perf_counter() - started)


def pipeline_events_per_second() -> tuple[float, str]:
    if "BENCH_PIPELINE_RATE" in os.environ:
        return float(os.environ["BENCH_PIPELINE_RATE"]), "BENCH_PIPELINE_RATE"
    result = subprocess.run(
        [sys.executable, str(BENCH / "pipeline.py")],
        env={**os.environ, "BENCH_RUNS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    match = re.search(r"source -> embedded mesh -> sink.*?: ([\d,]+) events/s", result.stdout)
    if match is None:
        raise RuntimeError(f"bench/pipeline.py printed no pipeline rate:\n{result.stdout}{result.stderr}")
    return float(match.group(1).replace(",", "")), "bench/pipeline.py (1 run)"


def start_redis(directory: Path, replica_of: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def wait_for_sync(replica_port: int) -> None:
    client = aioredis.Redis(port=replica_port, decode_responses=True)
    try:
        deadline = time.monotonic() + 30
        while (await client.info("replication")).get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise SystemExit("the replica did not sync with its primary within 30 s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def replicated_rates(temp: Path) -> tuple[float, float]:
    """Median fenced commits/s on a primary with one replica: plain, and acknowledged by the replica."""
    (temp / "primary").mkdir()
    (temp / "replica").mkdir()
    primary, primary_port = start_redis(temp / "primary")
    replica, replica_port = start_redis(temp / "replica", replica_of=primary_port)
    url = f"redis://127.0.0.1:{primary_port}/0"
    plain, acknowledged = [], []
    try:
        asyncio.run(wait_for_sync(replica_port))
        for run in range(RUNS):
            plain.append(asyncio.run(fenced_rate(url, f"plain{run}")))
            acknowledged.append(asyncio.run(fenced_rate(url, f"acked{run}", min_replicas=1)))
            print(f"    run {run + 1}: with a replica, plain {plain[-1]:,.0f} commits/s, WAIT 1 {acknowledged[-1]:,.0f}/s")
    finally:
        for proc in (replica, primary):
            proc.terminate()
            proc.wait(10)
    return statistics.median(plain), statistics.median(acknowledged)


def cluster_rates() -> tuple[float, float]:
    """Median fenced commits/s through ``redis+cluster://``: plain, and acknowledged by the slot's replica."""
    from tests.servers import RedisClusterSetup

    cluster = RedisClusterSetup()
    plain, acknowledged = [], []
    try:
        for run in range(RUNS):
            plain.append(asyncio.run(fenced_rate(cluster.url, f"cplain{run}")))
            acknowledged.append(asyncio.run(fenced_rate(cluster.url, f"cacked{run}", min_replicas=1)))
            print(f"    run {run + 1}: Redis Cluster, plain {plain[-1]:,.0f} commits/s, WAIT 1 {acknowledged[-1]:,.0f}/s")
    finally:
        cluster.stop()
    return statistics.median(plain), statistics.median(acknowledged)


def report_acknowledged(where: str, plain: float, acknowledged: float, per_checkpoint_seconds: float) -> None:
    """The cost of replica acknowledgement at one checkpoint per CHECKPOINT_EVERY events, as a share of the pipeline's time."""
    plain_share, acknowledged_share = (1 / plain) / per_checkpoint_seconds, (1 / acknowledged) / per_checkpoint_seconds
    print(
        f"{where}: plain {plain:,.0f} commits/s ({1e6 / plain:,.0f} us), replica-acknowledged (min_replicas 1)"
        f" {acknowledged:,.0f} commits/s ({1e6 / acknowledged:,.0f} us)"
    )
    print(
        f"{where}: one checkpoint per {CHECKPOINT_EVERY} events costs {plain_share:.2%} of the pipeline's time plain,"
        f" {acknowledged_share:.2%} replica-acknowledged: {acknowledged_share - plain_share:+.2%} for the"
        f" acknowledgement (target < 5%)"
    )
    print(f"ratio {where} replica-acknowledged / plain commits/s: {acknowledged / plain:.3f}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as temp:
        proc, port = start_redis(Path(temp))
        url = f"redis://127.0.0.1:{port}/0"
        try:
            print(f"{PARTITIONS}-partition offset map, {COMMITS} writes per run, {RUNS} runs, redis-server on loopback")
            fenced, baseline, on_file = [], [], []
            for run in range(RUNS):
                fenced.append(asyncio.run(fenced_rate(url, f"bench{run}")))
                baseline.append(asyncio.run(pipelined_set_rate(url, f"bench{run}")))
                on_file.append(asyncio.run(file_rate(Path(temp) / f"state{run}")))
                print(f"    run {run + 1}: fenced {fenced[-1]:,.0f} commits/s, pipelined SET x{PARTITIONS} {baseline[-1]:,.0f}/s")
        finally:
            proc.terminate()
            proc.wait(10)
        fenced_median, baseline_median = statistics.median(fenced), statistics.median(baseline)
        plain_median, acknowledged_median = replicated_rates(Path(temp))
        cluster_plain, cluster_acknowledged = cluster_rates()
        pipeline_rate, pipeline_source = pipeline_events_per_second()
    commit_seconds = 1 / fenced_median
    per_checkpoint_seconds = CHECKPOINT_EVERY / pipeline_rate
    print(f"fenced commit (RedisRegistry, Lua): {fenced_median:,.0f} commits/s (median), {commit_seconds * 1e6:,.0f} us each")
    print(f"pipelined SET x{PARTITIONS} (baseline): {baseline_median:,.0f}/s (median)")
    print(f"file store (fsync + rename), for comparison: {statistics.median(on_file):,.0f} commits/s (median)")
    print(f"pipeline: {pipeline_rate:,.0f} events/s from {pipeline_source}", end="")
    print(f", so {per_checkpoint_seconds * 1e3:,.1f} ms per {CHECKPOINT_EVERY} events")
    print(
        f"checkpoint overhead at one per {CHECKPOINT_EVERY} events: {commit_seconds / per_checkpoint_seconds:.2%} (target <= 5%)"
    )
    report_acknowledged("primary + replica", plain_median, acknowledged_median, per_checkpoint_seconds)
    report_acknowledged("Redis Cluster", cluster_plain, cluster_acknowledged, per_checkpoint_seconds)
    print(f"ratio: {fenced_median / baseline_median:.3f}")


if __name__ == "__main__":
    main()
