"""mysql-sink throughput: events/s pushed by the embedded mesh and written to MariaDB, against raw aiomysql.

A throwaway MariaDB and the embedded mesh (its own process) start first. For each mode (``events``
table and ``mapped`` columns) the topic is filled with EVENTS CloudEvents, then the mysql-sink
worker (its own process, as in production: pushes, batching, one transaction per batch, acks after
commit) starts and drains it. The rate counts rows from the first to the last one landing in the
table, so start-up is not in it. A COUNT(*) sees the first rows land; then the server's
``Handler_write`` counter (the throwaway server serves only this bench) is sampled every 20 ms
until it grew by every row, and COUNT(*) again confirms the last commit. COUNT(*) scans the table:
sampled all along, it cost the server about 6 us of CPU per event on these two cores, which the
baseline does not pay.

Baseline, measured in the same run: aiomysql inserting the same rows with the same batch size
(``executemany`` + commit per batch, one connection) straight into an identical table.
The last line is ``ratio: <slowest mode's events/s / its baseline's rows/s>`` (target >= 0.7).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomysql
import orjson
import pymysql
import yaml
from cloudevents.core.v1.event import CloudEvent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import free_port, spawn, stop  # noqa: E402

from runtime import SinkContext, cloudevent_to_record  # noqa: E402
from runtime.client import MeshClient, user_agent_for  # noqa: E402
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig  # noqa: E402
from tests.servers import MariaDBServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "40000"))
BATCH = 500
NOTE = "n" * 300
FIELDS = {"id": "id", "customer.name": "customer", "amount.total": "total", "status": "status", "note": "note"}
MAPPED_DDL = "(id BIGINT PRIMARY KEY, customer VARCHAR(40), total DOUBLE, status VARCHAR(10), note TEXT)"
EVENTS_DDL = """(
  `source` VARCHAR(255) NOT NULL, `id` VARCHAR(255) NOT NULL, `type` VARCHAR(255) NOT NULL, `subject` VARCHAR(255) NULL,
  `time` DATETIME(6) NULL, `datacontenttype` VARCHAR(255) NULL, `dataschema` VARCHAR(1024) NULL, `data` JSON NULL,
  `extensions` JSON NULL, PRIMARY KEY (`source`, `id`)) DEFAULT CHARSET=utf8mb4"""
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def data_of(n: int) -> dict[str, Any]:
    return {"id": n, "customer": {"name": f"customer {n % 977}"}, "amount": {"total": n * 0.25}, "status": "new", "note": NOTE}


def event_of(n: int, topic: str) -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": f"order-{n}",
        "source": "/bench/orders",
        "type": "order.created",
        "subject": topic,
        "time": WHEN,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data_of(n))


def raw_row(mode: str, n: int) -> tuple[Any, ...]:
    data = data_of(n)
    if mode == "mapped":
        return (n, data["customer"]["name"], data["amount"]["total"], data["status"], data["note"])
    return (
        "/bench/orders",
        f"order-{n}",
        "order.created",
        "orders",
        WHEN.replace(tzinfo=None),
        "application/json",
        None,
        orjson.dumps(data).decode(),
        None,
    )


async def fill_topic(port: int, topic: str) -> None:
    async with MeshClient(f"127.0.0.1:{port}", user_agent_for("bench-producer", "pub"), request_timeout=30) as client:
        waiters = [await client.start_publish(event_of(n, topic)) for n in range(EVENTS)]
        await asyncio.gather(*waiters)


async def count(conn: Any, table: str) -> int:
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"SELECT COUNT(*) FROM {table}")
            (rows,) = await cursor.fetchone()
    except pymysql.err.ProgrammingError:  # the sink has not created the table yet
        return 0
    finally:
        await conn.commit()
    return int(rows)


async def rows_written(conn: Any) -> int:
    """The server's count of rows written by any statement (committed or not, temporary tables too): a cheap probe."""
    async with conn.cursor() as cursor:
        await cursor.execute("SHOW GLOBAL STATUS LIKE 'Handler_write'")
        (_, value) = await cursor.fetchone()
    return int(value)


def start_worker(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.mysql.sink", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sink_rate(server: MariaDBServer, mesh_port: int, mode: str, run: int, state: Path) -> tuple[float, float]:
    database = f"bench_{mode}_{run}"
    table = "orders" if mode == "mapped" else "cloudevents"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    if mode == "mapped":
        server.sql(f"CREATE TABLE {table} {MAPPED_DDL}", database)
    topic = f"orders-{mode}-{run}"
    await fill_topic(mesh_port, topic)
    config = {
        "name": f"bench-{mode}-{run}",
        "connector": "mysql-sink",
        "mesh": {"address": f"127.0.0.1:{mesh_port}", "max_in_flight": 1000},
        "sink": {"topics": [topic], "batch_size": BATCH, "linger_ms": 20},
        # Any free port: nothing here calls the endpoint, and a port picked in advance with free_port()
        # may be taken by another process before the worker binds it (the worker then exits with 2).
        "admin": {"host": "127.0.0.1", "port": 0},
        "log": {"format": "json", "level": "warning"},
        "config": {"port": server.port, "database": database, "mode": mode, "table": table}
        | ({"fields": FIELDS} if mode == "mapped" else {}),
    }
    path = state / f"{mode}-{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=database)
    before = await rows_written(conn)
    worker = start_worker(path)
    try:
        deadline = time.monotonic() + 300
        first_at, first_rows = 0.0, 0
        while True:
            # COUNT(*) while the table is near empty, and once every row was written (is the last one committed?).
            rows = await count(conn, table) if not first_at or await rows_written(conn) - before >= EVENTS else 0
            now = time.perf_counter()
            if rows and not first_at:
                first_at, first_rows = now, rows
            if rows >= EVENTS:
                return (EVENTS - first_rows) / (now - first_at), peak_rss_mib(worker.pid)
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the sink wrote {rows} of {EVENTS} rows")
            await asyncio.sleep(0.02)
    finally:
        conn.close()
        stop(worker)


async def raw_rate(server: MariaDBServer, mode: str, run: int) -> float:
    database = f"raw_{mode}_{run}"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    if mode == "mapped":
        server.sql(f"CREATE TABLE orders {MAPPED_DDL}", database)
        statement = "INSERT INTO orders (id, customer, total, status, note) VALUES (%s, %s, %s, %s, %s)"
    else:
        server.sql(f"CREATE TABLE cloudevents {EVENTS_DDL}", database)
        statement = (
            "INSERT INTO cloudevents (source, id, type, subject, time, datacontenttype, dataschema, data, extensions)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
    rows = [raw_row(mode, n) for n in range(EVENTS)]
    conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=database, charset="utf8mb4")
    try:
        started = time.perf_counter()
        async with conn.cursor() as cursor:
            for offset in range(0, EVENTS, BATCH):
                await cursor.executemany(statement, rows[offset : offset + BATCH])
                await conn.commit()
        return EVENTS / (time.perf_counter() - started)
    finally:
        conn.close()


async def put_only_rate(server: MariaDBServer, mode: str, run: int) -> float:
    """The connector alone: MysqlSink.put() in batches in this process, no worker, no mesh (where the time goes)."""
    database = f"put_{mode}_{run}"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    table = "orders" if mode == "mapped" else "cloudevents"
    if mode == "mapped":
        server.sql(f"CREATE TABLE orders {MAPPED_DDL}", database)
    config = {"port": server.port, "database": database, "mode": mode, "table": table} | (
        {"fields": FIELDS} if mode == "mapped" else {}
    )
    sink = MysqlSink(MysqlSinkConfig.model_validate(config))
    await sink.start(SinkContext("bench-put-only"))
    records = [cloudevent_to_record(event_of(n, "orders")) for n in range(EVENTS)]
    try:
        started = time.perf_counter()
        for offset in range(0, EVENTS, BATCH):
            await sink.put(records[offset : offset + BATCH])
        return EVENTS / (time.perf_counter() - started)
    finally:
        await sink.stop()


async def main() -> None:
    server = MariaDBServer.running()
    mesh_port = free_port()
    mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"], mesh_port)
    ratios: dict[str, list[float]] = {"events": [], "mapped": []}
    rss: list[float] = []
    print(f"events: {EVENTS} per mode, batch {BATCH}, runs: {RUNS}")
    try:
        with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory:
            for run in range(RUNS):
                for mode in ("events", "mapped"):
                    sink, peak = await sink_rate(server, mesh_port, mode, run, Path(directory))
                    raw = await raw_rate(server, mode, run)
                    alone = await put_only_rate(server, mode, run)
                    rss.append(peak)
                    ratios[mode].append(sink / raw)
                    print(
                        f"    run {run + 1} {mode:>6}: mysql-sink {sink:,.0f} events/s, raw aiomysql {raw:,.0f} rows/s,"
                        f" ratio {sink / raw:.2f}, sink peak RSS {peak:.0f} MiB"
                    )
                    print(f"{'':18}MysqlSink.put() alone (no worker, no mesh): {alone:,.0f} events/s ({alone / raw:.2f} of raw)")
    finally:
        stop(mesh)
        server.stop()
    medians = {mode: statistics.median(values) for mode, values in ratios.items()}
    for mode, value in medians.items():
        print(f"{mode} mode: median ratio {value:.3f}")
    print(f"sink worker peak RSS: {max(rss):.0f} MiB")
    print(f"ratio: {min(medians.values()):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
