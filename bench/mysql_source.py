"""mysql-source throughput: change events/s from the binlog to the mesh for a bulk insert of ROWS rows.

A throwaway MariaDB (binlog ROW, full row metadata), the embedded mesh and the mysql-source worker
(each its own process) start; a consumer in this process subscribes to the table's topic and acks
every event. Then ROWS rows are inserted (transactions of 10,000 rows). The rate counts change
events from the first to the last one the consumer receives: binlog read and decode, envelope,
CloudEvent, publish with ack, offset checkpoints, push to the consumer.

Baseline, measured in the same run: python-mysql-replication alone reading the same row events
from the same binlog position (non-blocking, in this process, no mesh). The CPU microseconds per
event of the source worker and the mesh (from /proc/<pid>/stat, first to last event) are printed too.
The last line is ``ratio: <mysql-source events/s / bare binlog rows/s>``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import cpu_seconds, free_port, spawn, stop  # noqa: E402
from pymysqlreplication import BinLogStreamReader  # noqa: E402
from pymysqlreplication.row_event import WriteRowsEvent  # noqa: E402
from workers import peak_rss_mib, start_worker, worker_config  # noqa: E402

from runtime import SourceContext  # noqa: E402
from runtime.client import MeshClient, user_agent_for  # noqa: E402
from runtime.protocol.frames import SubscriptionMode, SubscriptionType  # noqa: E402
from services.mysql.source.connector import MysqlSource, MysqlSourceConfig  # noqa: E402
from tests.servers import MariaDBServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
CHUNK = 10_000


def master_position(server: MariaDBServer) -> tuple[str, int]:
    file, pos = server.sql("SHOW MASTER STATUS").split("\t")[:2]
    return file, int(pos)


def bulk_insert(server: MariaDBServer, database: str) -> None:
    for start in range(1, ROWS + 1, CHUNK):
        end = min(start + CHUNK - 1, ROWS)
        server.sql(
            f"INSERT INTO t (id, name, qty, note) SELECT seq, CONCAT('row ', seq), seq % 100, REPEAT('x', 100)"
            f" FROM seq_{start}_to_{end}",
            database,
        )


async def source_rate(
    server: MariaDBServer, mesh: subprocess.Popen[bytes], mesh_port: int, run: int, state: Path, *, cpu_us: dict[str, list[float]]
) -> tuple[float, float, tuple[str, int]]:
    """Change events/s, the worker's peak RSS and the binlog position before the insert; ``cpu_us`` gets the
    CPU microseconds per event of the source worker and the mesh between the first and the last event."""
    database = f"bench_{run}"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    server.sql("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), qty INT, note VARCHAR(200))", database)
    topic = f"{database}.t"
    path = worker_config(
        f"bench-source-{run}",
        "mysql-source",
        f"127.0.0.1:{mesh_port}",
        state,
        registry=state / "registry",
        source={"checkpoint_every": 1000},
        config={"port": server.port, "include_databases": [database], "snapshot_mode": "never", "replica_id": 63000 + run},
    )
    received = 0
    first = last = 0.0
    done = asyncio.Event()
    async with MeshClient(f"127.0.0.1:{mesh_port}", user_agent_for(f"bench-reader-{run}", "sub"), request_timeout=30) as client:
        await client.subscribe(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC)
        await client.listen()

        started: dict[str, float] = {}

        def cpu_now() -> dict[str, float]:
            return {"source worker": cpu_seconds(worker.pid), "mesh": cpu_seconds(mesh.pid)}

        async def consume() -> None:
            nonlocal received, first, last
            async for pushed in client.pushed():
                await pushed.ack()
                received += 1
                if received == 1:
                    first = time.perf_counter()
                    started.update(cpu_now())
                if received >= ROWS:
                    last = time.perf_counter()
                    for name, seconds in cpu_now().items():
                        cpu_us.setdefault(name, []).append((seconds - started[name]) * 1e6 / (ROWS - 1))
                    done.set()

        consumer = asyncio.create_task(consume())
        worker = start_worker("services.mysql.source", path)
        try:
            await asyncio.sleep(2.0)  # the worker connects and starts streaming from the current position
            position = await asyncio.to_thread(master_position, server)
            await asyncio.to_thread(bulk_insert, server, database)
            try:
                await asyncio.wait_for(done.wait(), 600)
            except TimeoutError:
                raise RuntimeError(f"only {received} of {ROWS} change events arrived") from None
            return (ROWS - 1) / (last - first), peak_rss_mib(worker.pid), position
        finally:
            stop(worker)
            consumer.cancel()


async def poll_only_rate(server: MariaDBServer, run: int) -> float:
    """The connector alone: MysqlSource.poll() in this process, no worker, no mesh (where the time goes)."""
    database = f"poll_{run}"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    server.sql("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), qty INT, note VARCHAR(200))", database)
    config = {"port": server.port, "include_databases": [database], "snapshot_mode": "never", "replica_id": 65000 + run}
    source = MysqlSource(MysqlSourceConfig.model_validate(config))
    await source.start(SourceContext("bench-poll-only", {}))
    try:
        await asyncio.to_thread(bulk_insert, server, database)
        received, first = 0, 0.0
        while received < ROWS:
            records = await source.poll()
            if records and not first:
                first = time.perf_counter()
            received += len(records)
        return ROWS / (time.perf_counter() - first)
    finally:
        await source.stop()


def bare_binlog_rate(server: MariaDBServer, position: tuple[str, int]) -> float:
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root", "passwd": ""},
        server_id=64000,
        resume_stream=True,
        blocking=False,
        log_file=position[0],
        log_pos=position[1],
        only_events=[WriteRowsEvent],
        enable_logging=False,
    )
    rows = 0
    started = time.perf_counter()
    try:
        for event in stream:
            rows += len(event.rows)
            if rows >= ROWS:
                break
    finally:
        stream.close()
    return rows / (time.perf_counter() - started)


async def main() -> None:
    server = MariaDBServer.running()
    server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
    mesh_port = free_port()
    mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"], mesh_port)
    ratios: list[float] = []
    rss: list[float] = []
    cpu_us: dict[str, list[float]] = {}
    print(f"rows: {ROWS} inserted in transactions of {CHUNK}; runs: {RUNS}")
    try:
        with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory:
            for run in range(RUNS):
                rate, peak, position = await source_rate(server, mesh, mesh_port, run, Path(directory), cpu_us=cpu_us)
                bare = await asyncio.to_thread(bare_binlog_rate, server, position)
                alone = await poll_only_rate(server, run)
                ratios.append(rate / bare)
                rss.append(peak)
                print(
                    f"    run {run + 1}: mysql-source -> mesh {rate:,.0f} events/s, bare binlog read {bare:,.0f} rows/s,"
                    f" ratio {rate / bare:.2f}, source peak RSS {peak:.0f} MiB"
                )
                print(f"           MysqlSource.poll() alone (no worker, no mesh): {alone:,.0f} events/s")
                print("           CPU us/event: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in cpu_us.items()))
    finally:
        stop(mesh)
        server.stop()
    print(f"source worker peak RSS: {max(rss):.0f} MiB")
    print("CPU us/event (median): " + ", ".join(f"{name} {statistics.median(values):.1f}" for name, values in cpu_us.items()))
    print(f"ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
