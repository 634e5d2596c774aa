"""postgres-sink throughput: events/s pushed by the embedded mesh and written to PostgreSQL, against two baselines.

A throwaway PostgreSQL and the embedded mesh (its own process) start first. For each mode (``events``
table, ``mapped`` columns, ``cdc`` change envelopes of the same rows) the topic is filled with
EVENTS CloudEvents, then the postgres-sink worker (its own process, as in production: pushes,
batching, one transaction per batch, acks after commit) starts and drains it. The rate counts rows
from the first to the last one landing in the table, so start-up is not in it: a COUNT(*) every
20 ms (it scans the table, so keep EVENTS small; the baselines do not pay it) sees the first and
the last commit.

Baselines, measured in the same run, straight into an identical table over one connection with a
transaction per batch of the sink's size: ``raw`` is what a user would write, asyncpg
``executemany`` of ``INSERT ... ON CONFLICT`` (``DO UPDATE`` for mapped and cdc, ``DO NOTHING`` for
events; the driver binds each row, the server runs the statement once per row); ``copy`` is the
fastest raw path, asyncpg ``copy_records_to_table`` (binary COPY) into a temporary table and one
``INSERT ... SELECT ... ON CONFLICT`` per batch; ``bound`` is the sink's own statement, binding the
whole batch at once (mapped and cdc: one JSON array through ``jsonb_populate_recordset``; events:
one array per column through ``unnest``). Each is printed with the CPU of this process and of
PostgreSQL per row, to weigh the sink's statement against COPY. ``put()``
alone is PostgresSink.put() in this process (no worker, no mesh): where the connector's own time
goes. Over the sink's window the CPU of each process (sink worker, mesh, PostgreSQL: the postmaster
and its backends) is read from ``/proc/<pid>/stat`` and printed in microseconds per event.

``--profile DIR`` records the sink worker with py-spy (``--format raw``, collapsed stacks, one file
per mode) while it drains. ``--modes`` picks the modes. The last line is ``ratio: <mapped mode's
events/s / its raw baseline's rows/s>`` (the median over the runs). Sizes: BENCH_EVENTS (default
20000), BENCH_RUNS (default 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from cloudevents.core.v1.event import CloudEvent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from protocol import cpu_seconds, free_port, spawn, stop  # noqa: E402
from workers import SinkRun, cpu_of, cpu_table, start_sink_worker  # noqa: E402

from runtime import SinkContext, cloudevent_to_record  # noqa: E402
from services.postgres.sink.connector import PostgresSink, PostgresSinkConfig  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "2"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "20000"))
BATCH = 500
MODES = ("events", "mapped", "cdc")
NOTE = "n" * 300
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ORDERS_DDL = "(id bigint PRIMARY KEY, customer text, total float8, status text, note text)"
ORDER_COLUMNS = ("id", "customer", "total", "status", "note")
EVENTS_DDL = """(
    source text NOT NULL, id text NOT NULL, type text NOT NULL, subject text, time timestamptz NOT NULL,
    datacontenttype text, data jsonb, data_bytes bytea, extensions jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (source, id))"""
EVENT_COLUMNS = ("source", "id", "type", "subject", "time", "datacontenttype", "data", "data_bytes", "extensions")


def row_of(n: int) -> dict[str, Any]:
    return {"id": n, "customer": f"customer {n % 977}", "total": n * 0.25, "status": "new", "note": NOTE}


def data_of(mode: str, n: int) -> dict[str, Any]:
    if mode == "cdc":
        source = {"lsn": 1000 + n, "n": 0, "schema": "public", "table": "orders", "snapshot": False}
        return {"op": "c", "before": None, "after": row_of(n), "key": ["id"], "source": source}
    return row_of(n)


def event_of(mode: str, n: int, topic: str) -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": f"order-{n}",
        "source": "/bench/orders",
        "type": "order.created",
        "subject": topic,
        "time": WHEN,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data_of(mode, n))


def raw_row(mode: str, n: int) -> tuple[Any, ...]:
    if mode != "events":
        return tuple(row_of(n).values())
    data = orjson.dumps(data_of(mode, n)).decode()
    return ("/bench/orders", f"order-{n}", "order.created", "orders", WHEN, "application/json", data, None, "{}")


def target_of(mode: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
    """Table, its columns, its key and its DDL."""
    if mode == "events":
        return "cloudevents", EVENT_COLUMNS, ("source", "id"), EVENTS_DDL
    return "orders", ORDER_COLUMNS, ("id",), ORDERS_DDL


def on_conflict(mode: str) -> str:
    _, columns, key, _ = target_of(mode)
    if mode == "events":
        return f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns if column not in key)
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


async def fresh_schema(connection: asyncpg.Connection, name: str, mode: str, create: bool = True) -> str:
    """A new schema holding the mode's target table (unless the sink creates it): its qualified name."""
    table, _, _, ddl = target_of(mode)
    await connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")
    if create:
        await connection.execute(f"CREATE TABLE {name}.{table} {ddl}")
    return f"{name}.{table}"


async def count(connection: asyncpg.Connection, table: str) -> int:
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    except asyncpg.UndefinedTableError:  # the sink has not created it yet
        return 0


def postgres_cpu(postmaster: int) -> float:
    """CPU of the postmaster, of its backends gone (reaped: cutime, cstime) and of those alive."""
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for child in children:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(int(child))
    return total


class Setup:
    """The servers every measurement uses, and where configs and profiles go."""

    def __init__(
        self, server: PostgresServer, mesh: subprocess.Popen[bytes], mesh_port: int, state: Path, profile: Path | None
    ) -> None:
        self.server = server
        self.mesh = mesh
        self.mesh_port = mesh_port
        self.state = state
        self.profile = profile


class Window:
    """A baseline's timed loop: rows/s, and CPU us/row of this process and of PostgreSQL."""

    def __init__(self, postmaster: int) -> None:
        self._postmaster = postmaster
        self.rate = self.client_us = self.postgres_us = 0.0
        self._started = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._started = (time.perf_counter(), time.process_time(), postgres_cpu(self._postmaster))

    def stop(self) -> Window:
        wall, client, postgres = self._started
        self.rate = EVENTS / (time.perf_counter() - wall)
        self.client_us = (time.process_time() - client) * 1e6 / EVENTS
        self.postgres_us = (postgres_cpu(self._postmaster) - postgres) * 1e6 / EVENTS
        return self

    def __str__(self) -> str:
        return f"{self.rate:,.0f} rows/s (CPU us/row: client {self.client_us:.1f}, postgres {self.postgres_us:.1f})"


def sink_config(server: PostgresServer, mode: str, table: str) -> dict[str, Any]:
    return {"dsn": server.dsn, "mode": mode, "table": table} | ({} if mode == "events" else {"key": ["id"]})


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling process ``pid`` into collapsed stacks (one line per stack and its count)."""
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "250"]
    return subprocess.Popen([*spy, "-o", str(output), "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def sink_rate(setup: Setup, connection: asyncpg.Connection, mode: str, run: int) -> SinkRun:
    table = await fresh_schema(connection, f"bench_{mode}_{run}", mode, create=mode != "events")
    topic = f"orders-{mode}-{run}"
    worker = await start_sink_worker(
        "services.postgres.sink",
        f"bench-{mode}-{run}",
        setup.mesh_port,
        setup.state,
        events=(event_of(mode, n, topic) for n in range(EVENTS)),
        sink={"topics": [topic], "batch_size": BATCH, "linger_ms": 20},
        config=sink_config(setup.server, mode, table),
    )
    profiler = None if setup.profile is None else start_profiler(worker.pid, setup.profile / f"{mode}-{run}.txt")
    assert setup.server.proc is not None
    pids = {"sink worker": worker.pid, "mesh": setup.mesh.pid, "postgres": setup.server.proc.pid}
    readers = {"postgres": postgres_cpu}
    try:
        deadline = time.monotonic() + 300
        first_at, first_rows, first_cpu = 0.0, 0, {}
        while True:
            rows = await count(connection, table)
            now = time.perf_counter()
            if rows and not first_at:
                first_at, first_rows, first_cpu = now, rows, cpu_of(pids, readers)
            if rows >= EVENTS:
                events = max(1, EVENTS - first_rows)
                spent = {name: (seconds - first_cpu[name]) * 1e6 / events for name, seconds in cpu_of(pids, readers).items()}
                return SinkRun(events / (now - first_at), spent)
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the sink wrote {rows} of {EVENTS} rows")
            await asyncio.sleep(0.02)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        stop(worker)


async def raw_rate(connection: asyncpg.Connection, window: Window, mode: str, run: int) -> Window:
    """asyncpg ``executemany`` of ``INSERT ... ON CONFLICT``, a transaction per batch: the driver binds each row."""
    table = await fresh_schema(connection, f"raw_{mode}_{run}", mode)
    _, columns, _, _ = target_of(mode)
    values = ", ".join(f"${index}" for index in range(1, len(columns) + 1))
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) {on_conflict(mode)}"
    rows = [raw_row(mode, n) for n in range(EVENTS)]
    window.start()
    for offset in range(0, EVENTS, BATCH):
        async with connection.transaction():
            await connection.executemany(statement, rows[offset : offset + BATCH])
    return window.stop()


async def copy_rate(connection: asyncpg.Connection, window: Window, mode: str, run: int) -> Window:
    """Binary COPY of a batch into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT``; a transaction each."""
    table = await fresh_schema(connection, f"copy_{mode}_{run}", mode)
    _, columns, _, _ = target_of(mode)
    stage = f"stage_{mode}_{run}"
    await connection.execute(f"CREATE TEMPORARY TABLE {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
    listed = ", ".join(columns)
    upsert = f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {stage} {on_conflict(mode)}"
    rows = [raw_row(mode, n) for n in range(EVENTS)]
    window.start()
    for offset in range(0, EVENTS, BATCH):
        async with connection.transaction():
            await connection.copy_records_to_table(stage, records=rows[offset : offset + BATCH], columns=columns)
            await connection.execute(upsert)
    return window.stop()


async def bound_rate(connection: asyncpg.Connection, window: Window, mode: str, run: int) -> Window:
    """One statement binding the batch (a JSON array, or an array per column), a transaction per batch."""
    table = await fresh_schema(connection, f"bound_{mode}_{run}", mode)
    _, columns, _, _ = target_of(mode)
    listed = ", ".join(columns)
    if mode == "events":
        types = ("text", "text", "text", "text", "timestamptz", "text", "jsonb", "bytea", "jsonb")
        arrays = ", ".join(f"${index}::{kind}[]" for index, kind in enumerate(types, 1))
        statement = f"INSERT INTO {table} ({listed}) SELECT * FROM unnest({arrays}) {on_conflict(mode)}"
        rows = [raw_row(mode, n) for n in range(EVENTS)]
    else:
        source = f"jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
        statement = f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {source} {on_conflict(mode)}"
        objects = [row_of(n) for n in range(EVENTS)]
    window.start()  # the arguments are built in the window, as the sink builds them
    for offset in range(0, EVENTS, BATCH):
        if mode == "events":
            arguments = [list(column) for column in zip(*rows[offset : offset + BATCH], strict=True)]
        else:
            arguments = [orjson.dumps(objects[offset : offset + BATCH]).decode()]
        async with connection.transaction():
            await connection.execute(statement, *arguments)
    return window.stop()


async def put_only_rate(server: PostgresServer, connection: asyncpg.Connection, mode: str, run: int) -> float:
    """The connector alone: PostgresSink.put() in batches in this process, no worker, no mesh."""
    table = await fresh_schema(connection, f"put_{mode}_{run}", mode, create=mode != "events")
    sink = PostgresSink(PostgresSinkConfig.model_validate(sink_config(server, mode, table)))
    await sink.start(SinkContext("bench-put-only"))
    records = [cloudevent_to_record(event_of(mode, n, "orders")) for n in range(EVENTS)]
    try:
        started = time.perf_counter()
        for offset in range(0, EVENTS, BATCH):
            assert not await sink.put(records[offset : offset + BATCH])
        return EVENTS / (time.perf_counter() - started)
    finally:
        await sink.stop()


async def compare(setup: Setup, modes: Sequence[str]) -> float:
    """Each mode against both baselines; the median ratio of the mapped mode (else the first) to raw."""
    ratios: dict[tuple[str, str], list[float]] = {}
    runs: dict[str, list[SinkRun]] = {mode: [] for mode in modes}
    connection = await asyncpg.connect(setup.server.dsn)
    assert setup.server.proc is not None
    postmaster = setup.server.proc.pid
    try:
        for run in range(RUNS):
            for mode in modes:
                sink = await sink_rate(setup, connection, mode, run)
                raw = await raw_rate(connection, Window(postmaster), mode, run)
                copy = await copy_rate(connection, Window(postmaster), mode, run)
                bound = await bound_rate(connection, Window(postmaster), mode, run)
                alone = await put_only_rate(setup.server, connection, mode, run)
                runs[mode].append(sink)
                ratios.setdefault((mode, "raw"), []).append(sink.rate / raw.rate)
                ratios.setdefault((mode, "copy"), []).append(sink.rate / copy.rate)
                print(
                    f"    run {run + 1} {mode:>6}: postgres-sink {sink.rate:,.0f} events/s; ratio {sink.rate / raw.rate:.2f}"
                    f" to raw, {sink.rate / copy.rate:.2f} to copy"
                )
                print(f"{'':18}raw executemany: {raw}")
                print(f"{'':18}copy + upsert:   {copy}")
                print(f"{'':18}{'column arrays' if mode == 'events' else 'json array'}:{'':3}{bound}")
                print(
                    f"{'':18}PostgresSink.put() alone (no worker, no mesh): {alone:,.0f} events/s ({alone / raw.rate:.2f} of raw)"
                )
                print(f"{'':18}CPU us/event: " + ", ".join(f"{name} {value:.1f}" for name, value in sink.cpu_us.items()))
    finally:
        await connection.close()
    for mode in modes:
        print(
            f"{mode} mode: median ratio {statistics.median(ratios[mode, 'raw']):.3f} to raw executemany,"
            f" {statistics.median(ratios[mode, 'copy']):.3f} to copy + upsert; CPU us/event (median) {cpu_table(runs[mode])}"
        )
    return statistics.median(ratios["mapped" if "mapped" in modes else modes[0], "raw"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to measure")
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles of the sink worker (raw format)")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    server = PostgresServer.running()
    assert isinstance(server, PostgresServer)
    mesh_port = free_port()
    mesh = spawn(["-m", "runtime.commands.mesh", "--port", str(mesh_port), "--log-level", "error"], mesh_port)
    print(f"events: {EVENTS} per mode, batch {BATCH}, runs: {RUNS}, modes: {', '.join(args.modes)}")
    try:
        with tempfile.TemporaryDirectory(prefix="meshconnect-bench-") as directory:
            ratio = await compare(Setup(server, mesh, mesh_port, Path(directory), args.profile), args.modes)
    finally:
        stop(mesh)
        with contextlib.suppress(Exception):
            server.stop()
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
