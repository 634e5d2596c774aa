"""mysql-sink throughput: events/s pushed by the embedded mesh and written to MariaDB, against two baselines.

A throwaway MariaDB and the embedded mesh (its own process) start first. For each mode (``events``
table and ``mapped`` columns) the topic is filled with EVENTS CloudEvents, then the mysql-sink
worker (its own process, as in production: pushes, batching, one transaction per batch, acks after
commit) starts and drains it. The rate counts rows from the first to the last one landing in the
table, so start-up is not in it. A COUNT(*) sees the first rows land; then the server's
``Handler_write`` counter (the throwaway server serves only this bench) is sampled every 20 ms
until it grew by every row, and COUNT(*) again confirms the last commit. COUNT(*) scans the table:
sampled all along, it cost the server about 6 us of CPU per event on these two cores, which the
baselines do not pay.

Baselines, measured in the same run, straight into an identical table over one connection with a
commit per batch of the sink's size: ``raw`` is aiomysql ``executemany`` (the driver binding each
row), ``literal`` is the multi-row upsert the sink itself sends, its rows built by
:mod:`services.mysql.literals` (what the sink could reach with no decoding, batching or acks at all).
Over the same window the CPU of each process (sink worker, mesh, MariaDB) is read from
``/proc/<pid>/stat`` and printed in microseconds per event.

Options: ``--taskset`` pins the sink worker alone on CPU 1 and the mesh, MariaDB and this script on
CPU 0 (figures that do not depend on the scheduler's placement); ``--sweep`` runs mapped mode at batch
sizes 250, 500, 1000, 2000 and 5000 (push window derived from each), over 20 batches of 5000 at
least, and says whether every size is within 20% of the best. The last line is
``ratio: <mapped mode's events/s / its raw baseline's rows/s>`` (the median over the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from cloudevents.core.v1.event import CloudEvent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import free_port, spawn, stop  # noqa: E402
from workers import SinkRun, cpu_of, cpu_table, peak_rss_mib, start_sink_worker  # noqa: E402

from runtime import SinkContext, cloudevent_to_record  # noqa: E402
from services.mysql.literals import literals_for  # noqa: E402
from services.mysql.sink.connector import MysqlSink, MysqlSinkConfig  # noqa: E402
from tests.servers import MariaDBServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "40000"))
BATCH = 500
SWEEP_BATCHES = (250, 500, 1000, 2000, 5000)
SWEEP_EVENTS_PER_BATCH = 20
SINK_CPU, OTHER_CPU = 1, 0  # --taskset: the sink worker alone on one core, everything else on the other
NOTE = "n" * 300
FIELDS = {"id": "id", "customer.name": "customer", "amount.total": "total", "status": "status", "note": "note"}
MAPPED_DDL = "(id BIGINT PRIMARY KEY, customer VARCHAR(40), total DOUBLE, status VARCHAR(10), note TEXT)"
MAPPED_COLUMNS = ("id", "customer", "total", "status", "note")
EVENT_COLUMNS = ("source", "id", "type", "subject", "time", "datacontenttype", "dataschema", "data", "extensions")
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


class Setup:
    """The servers every measurement uses, and where the sink worker's configs go."""

    def __init__(self, server: MariaDBServer, mesh: subprocess.Popen[bytes], mesh_port: int, state: Path, pinned: bool) -> None:
        self.server = server
        self.mesh = mesh
        self.mesh_port = mesh_port
        self.state = state
        self.pinned = pinned


async def sink_rate(setup: Setup, mode: str, run: int, batch: int) -> SinkRun:
    server = setup.server
    database = f"bench_{mode}_{run}_{batch}"
    table = "orders" if mode == "mapped" else "cloudevents"
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    if mode == "mapped":
        server.sql(f"CREATE TABLE {table} {MAPPED_DDL}", database)
    topic = f"orders-{mode}-{run}-{batch}"
    conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=database)
    before = await rows_written(conn)
    worker = await start_sink_worker(
        "services.mysql.sink",
        f"bench-{mode}-{run}-{batch}",
        setup.mesh_port,
        setup.state,
        events=(event_of(n, topic) for n in range(EVENTS)),
        sink={"topics": [topic], "batch_size": batch, "linger_ms": 20},
        config={"port": server.port, "database": database, "mode": mode, "table": table}
        | ({"fields": FIELDS} if mode == "mapped" else {}),
        cpu=SINK_CPU if setup.pinned else None,
    )
    assert server.proc is not None
    pids = {"sink worker": worker.pid, "mesh": setup.mesh.pid, "mariadb": server.proc.pid}
    try:
        deadline = time.monotonic() + 300
        first_at, first_rows, first_cpu = 0.0, 0, {}
        while True:
            # COUNT(*) while the table is near empty, and once every row was written (is the last one committed?).
            rows = await count(conn, table) if not first_at or await rows_written(conn) - before >= EVENTS else 0
            now = time.perf_counter()
            if rows and not first_at:
                first_at, first_rows, first_cpu = now, rows, cpu_of(pids)
            if rows >= EVENTS:
                events = EVENTS - first_rows
                spent = {name: (seconds - first_cpu[name]) * 1e6 / events for name, seconds in cpu_of(pids).items()}
                return SinkRun(events / (now - first_at), spent, peak_rss_mib(worker.pid))
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the sink wrote {rows} of {EVENTS} rows")
            await asyncio.sleep(0.02)
    finally:
        conn.close()
        stop(worker)


def create_target(server: MariaDBServer, database: str, mode: str) -> None:
    server.sql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database}")
    server.sql(f"CREATE TABLE orders {MAPPED_DDL}" if mode == "mapped" else f"CREATE TABLE cloudevents {EVENTS_DDL}", database)


async def raw_rate(server: MariaDBServer, mode: str, run: int, batch: int) -> float:
    """aiomysql ``executemany`` of the rows, a commit per batch: the driver binds each row."""
    database = f"raw_{mode}_{run}"
    create_target(server, database, mode)
    table, columns = ("orders", MAPPED_COLUMNS) if mode == "mapped" else ("cloudevents", EVENT_COLUMNS)
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    rows = [raw_row(mode, n) for n in range(EVENTS)]
    conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=database, charset="utf8mb4")
    try:
        started = time.perf_counter()
        async with conn.cursor() as cursor:
            for offset in range(0, EVENTS, batch):
                await cursor.executemany(statement, rows[offset : offset + batch])
                await conn.commit()
        return EVENTS / (time.perf_counter() - started)
    finally:
        conn.close()


async def literal_rate(server: MariaDBServer, mode: str, run: int, batch: int) -> float:
    """The sink's own statement with none of its work before it: one multi-row upsert per batch, its rows
    built by the fast literal builder, a commit per batch."""
    database = f"literal_{mode}_{run}"
    create_target(server, database, mode)
    table, columns, key = (
        ("orders", MAPPED_COLUMNS, ("id",)) if mode == "mapped" else ("cloudevents", EVENT_COLUMNS, ("source", "id"))
    )
    head = f"INSERT INTO {table} ({','.join(columns)}) VALUES "
    tail = " ON DUPLICATE KEY UPDATE " + ",".join(f"{c}=VALUES({c})" for c in columns if c not in key)
    rows = [raw_row(mode, n) for n in range(EVENTS)]
    conn = await aiomysql.connect(host="127.0.0.1", port=server.port, user="root", db=database, charset="utf8mb4")
    try:
        started = time.perf_counter()
        async with conn.cursor() as cursor:
            for offset in range(0, EVENTS, batch):
                literals = literals_for(conn)
                await cursor.execute(head + ",".join([literals.row(row) for row in rows[offset : offset + batch]]) + tail)
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


def pin(pid: int, cpu: int) -> None:
    """Keep process ``pid`` (all its threads) on ``cpu``."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL)


async def compare_modes(setup: Setup) -> float:
    """Both modes at the default batch size against both baselines; the median mapped-mode ratio to raw."""
    ratios: dict[tuple[str, str], list[float]] = {}
    runs: dict[str, list[SinkRun]] = {"events": [], "mapped": []}
    for run in range(RUNS):
        for mode in ("events", "mapped"):
            sink = await sink_rate(setup, mode, run, BATCH)
            raw = await raw_rate(setup.server, mode, run, BATCH)
            literal = await literal_rate(setup.server, mode, run, BATCH)
            alone = await put_only_rate(setup.server, mode, run)
            runs[mode].append(sink)
            ratios.setdefault((mode, "raw"), []).append(sink.rate / raw)
            ratios.setdefault((mode, "literal"), []).append(sink.rate / literal)
            print(
                f"    run {run + 1} {mode:>6}: mysql-sink {sink.rate:,.0f} events/s; raw executemany {raw:,.0f} rows/s"
                f" (ratio {sink.rate / raw:.2f}); literal upsert {literal:,.0f} rows/s (ratio {sink.rate / literal:.2f});"
                f" sink peak RSS {sink.peak_rss:.0f} MiB"
            )
            print(f"{'':18}MysqlSink.put() alone (no worker, no mesh): {alone:,.0f} events/s ({alone / raw:.2f} of raw)")
            print(f"{'':18}CPU us/event: " + ", ".join(f"{name} {value:.1f}" for name, value in sink.cpu_us.items()))
    for mode in ("events", "mapped"):
        print(
            f"{mode} mode: median ratio {statistics.median(ratios[mode, 'raw']):.3f} to raw executemany,"
            f" {statistics.median(ratios[mode, 'literal']):.3f} to the literal upsert;"
            f" CPU us/event (median) {cpu_table(runs[mode])}"
        )
    print(f"sink worker peak RSS: {max(run.peak_rss for mode_runs in runs.values() for run in mode_runs):.0f} MiB")
    return statistics.median(ratios["mapped", "raw"])


async def sweep(setup: Setup) -> float:
    """Mapped mode at each batch size (push window derived); the median mapped-mode ratio to raw at BATCH."""
    rates: dict[int, list[float]] = {}
    raw_at_default: list[float] = []
    for run in range(RUNS):
        for batch in SWEEP_BATCHES:
            sink = await sink_rate(setup, "mapped", run, batch)
            rates.setdefault(batch, []).append(sink.rate)
            print(f"    run {run + 1} batch {batch:>5}: mysql-sink {sink.rate:,.0f} events/s")
        raw = await raw_rate(setup.server, "mapped", run, BATCH)
        raw_at_default.append(rates[BATCH][-1] / raw)
    medians = {batch: statistics.median(values) for batch, values in rates.items()}
    best = max(medians.values())
    for batch, rate in medians.items():
        print(f"batch {batch:>5}: median {rate:,.0f} events/s, {rate / best:.2f} of the best")
    worst = min(medians.values()) / best
    print(f"every batch size within 20% of the best: {'yes' if worst >= 0.8 else 'no'} (worst {worst:.2f})")
    return statistics.median(raw_at_default)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sweep", action="store_true", help="mapped mode at batch sizes " + ", ".join(map(str, SWEEP_BATCHES)))
    parser.add_argument(
        "--taskset", action="store_true", help=f"the sink worker alone on CPU {SINK_CPU}, the rest on CPU {OTHER_CPU}"
    )
    args = parser.parse_args()
    if args.sweep:
        # Twenty batches of the largest size at least: with 40,000 events a batch of 5000 makes eight, and the
        # first write, overlapped with nothing, weighs on its rate as it does on no other size's.
        global EVENTS  # noqa: PLW0603 - one setting of the script, read by every measurement
        EVENTS = max(EVENTS, SWEEP_EVENTS_PER_BATCH * max(SWEEP_BATCHES))
    if args.taskset:
        os.sched_setaffinity(0, {OTHER_CPU})  # this script, and MariaDB and the mesh started below inherit it
    server = MariaDBServer.running()
    mesh_port = free_port()
    mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"], mesh_port)
    if args.taskset:
        assert server.proc is not None
        for pid in (server.proc.pid, mesh.pid):
            pin(pid, OTHER_CPU)
    what = f"batch sizes {', '.join(map(str, SWEEP_BATCHES))}" if args.sweep else f"batch {BATCH}"
    print(f"events: {EVENTS} per mode, {what}, runs: {RUNS}, pinned: {'yes' if args.taskset else 'no'}")
    try:
        with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory:
            measure = sweep if args.sweep else compare_modes
            ratio = await measure(Setup(server, mesh, mesh_port, Path(directory), args.taskset))
    finally:
        stop(mesh)
        with contextlib.suppress(Exception):
            server.stop()
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
