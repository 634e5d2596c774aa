"""End to end: mysql-source -> embedded mesh -> mysql-sink (cdc) replicates three tables under load, the sink killed twice."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from runtime.mesh import EmbeddedMesh
from runtime.testing import WorkerProcess
from services.mysql.sink.connector import MysqlSink
from services.mysql.source.connector import MysqlSource
from tests.servers import MariaDBServer, free_port

TABLES = {
    "customers": "id",
    "orders": "id",
    "order_lines": "order_id, line_no",
}
CHANGES = 20_000


def worker_config(name: str, connector: str, mesh: EmbeddedMesh, workdir: Path, **sections: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connector": connector,
        "mesh": {"address": f"127.0.0.1:{mesh.port}", "request_timeout": 5},
        "registry": {"kind": "file", "path": str(workdir / "registry"), "lease_ttl": 2},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json", "level": "warning"},
        **sections,
    }


class Load:
    """Mixed inserts, updates and deletes on the three tables, counted in row changes."""

    def __init__(self, conn: Any, db: str) -> None:
        self.conn = conn
        self.db = db
        self.random = random.Random(7)
        self.customers: list[int] = []
        self.orders: list[int] = []
        self.next_customer = 1
        self.next_order = 1
        self.changes = 0

    async def seed(self) -> None:
        await self.transaction(200)

    async def transaction(self, size: int) -> None:
        """About ``size`` row changes in one transaction."""
        rnd = self.random
        async with self.conn.cursor() as cur:
            done = 0
            while done < size:
                choice = rnd.random()
                if choice < 0.35 or len(self.customers) < 20:
                    rows = [
                        (self.next_customer + i, f"customer {self.next_customer + i}", rnd.randint(0, 10_000) / 100)
                        for i in range(10)
                    ]
                    self.next_customer += 10
                    await cur.executemany(f"INSERT INTO {self.db}.customers (id, name, balance) VALUES (%s, %s, %s)", rows)
                    self.customers += [r[0] for r in rows]
                    done += 10
                elif choice < 0.55:
                    order = self.next_order
                    self.next_order += 1
                    customer = rnd.choice(self.customers)
                    await cur.execute(
                        f"INSERT INTO {self.db}.orders (id, customer_id, status, placed) VALUES (%s, %s, 'new', NOW(6))",
                        (order, customer),
                    )
                    lines = [(order, n, f"sku-{rnd.randint(1, 99)}", rnd.randint(1, 5)) for n in range(1, rnd.randint(2, 6))]
                    await cur.executemany(
                        f"INSERT INTO {self.db}.order_lines (order_id, line_no, sku, qty) VALUES (%s, %s, %s, %s)", lines
                    )
                    self.orders.append(order)
                    done += 1 + len(lines)
                elif choice < 0.8:
                    ids = rnd.sample(self.customers, min(5, len(self.customers)))
                    placeholders = ",".join(["%s"] * len(ids))
                    done += await cur.execute(
                        f"UPDATE {self.db}.customers SET balance = balance + 1.25 WHERE id IN ({placeholders})", ids
                    )
                    if self.orders:
                        order = rnd.choice(self.orders)
                        done += await cur.execute(
                            f"UPDATE {self.db}.orders SET status = 'paid' WHERE id = %s AND status = 'new'", (order,)
                        )
                        done += await cur.execute(f"UPDATE {self.db}.order_lines SET qty = qty + 1 WHERE order_id = %s", (order,))
                elif self.orders:
                    order = self.orders.pop(rnd.randrange(len(self.orders)))
                    done += await cur.execute(f"DELETE FROM {self.db}.order_lines WHERE order_id = %s", (order,))
                    done += await cur.execute(f"DELETE FROM {self.db}.orders WHERE id = %s", (order,))
                    customer = self.customers.pop(rnd.randrange(len(self.customers)))
                    done += await cur.execute(f"DELETE FROM {self.db}.customers WHERE id = %s", (customer,))
            self.changes += done
        await self.conn.commit()


async def table_rows(conn: Any, db: str, table: str) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT * FROM {db}.{table} ORDER BY {TABLES[table]}")
        return list(await cur.fetchall())


@pytest.mark.slow
async def test_source_mesh_sink_replicates_three_tables_while_the_sink_is_killed(
    mariadb_server: MariaDBServer, tmp_path: Path
) -> None:
    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
    src, dst = "e2e_src", "e2e_dst"
    mariadb_server.sql(
        f"DROP DATABASE IF EXISTS {src}; DROP DATABASE IF EXISTS {dst}; CREATE DATABASE {src}; CREATE DATABASE {dst};"
        f"CREATE TABLE {src}.customers (id INT PRIMARY KEY, name VARCHAR(40), balance DECIMAL(12,2));"
        f"CREATE TABLE {src}.orders (id INT PRIMARY KEY, customer_id INT, status VARCHAR(10), placed DATETIME(6));"
        f"CREATE TABLE {src}.order_lines (order_id INT, line_no INT, sku VARCHAR(10), qty INT, PRIMARY KEY (order_id, line_no))"
    )
    conn = await aiomysql.connect(host="127.0.0.1", port=mariadb_server.port, user="root", autocommit=False)
    mesh = EmbeddedMesh(port=free_port(), data_dir=tmp_path / "mesh", redelivery_timeout=3.0)
    await mesh.start()
    topics = [f"{src}.{table}" for table in TABLES]
    source = WorkerProcess(
        MysqlSource,
        worker_config(
            "replication-source",
            "mysql-source",
            mesh,
            tmp_path,
            source={"checkpoint_every": 500, "checkpoint_interval": 0.2},
            config={"port": mariadb_server.port, "include_databases": [src], "replica_id": 62001, "heartbeat_interval": 1},
        ),
        tmp_path,
    )
    sink = WorkerProcess(
        MysqlSink,
        worker_config(
            "replication-sink",
            "mysql-sink",
            mesh,
            tmp_path,
            sink={"topics": topics, "batch_size": 500, "linger_ms": 20, "retry_initial": 0.1, "retry_max": 1.0},
            config={"port": mariadb_server.port, "database": dst, "mode": "cdc"},
        ),
        tmp_path,
    )
    load = Load(conn, src)
    try:
        await load.seed()  # rows that arrive through the snapshot
        await sink.start(30)
        await source.start(30)
        kills = {CHANGES // 3, 2 * CHANGES // 3}
        while load.changes < CHANGES:
            before = load.changes
            await load.transaction(250)
            if any(before < mark <= load.changes for mark in kills):
                await sink.kill()
                await load.transaction(500)  # written while the sink is down
                await sink.start(30)
        deadline = time.monotonic() + 90
        while True:
            for c in (conn,):
                await c.commit()  # a fresh snapshot for the comparison reads
            source_rows = {t: await table_rows(conn, src, t) for t in TABLES}
            target_rows = {t: await table_rows(conn, dst, t) for t in TABLES}
            if source_rows == target_rows:
                break
            assert time.monotonic() < deadline, {t: (len(source_rows[t]), len(target_rows[t])) for t in TABLES} | {
                "sink log": sink.log_tail(5),
                "source log": source.log_tail(5),
            }
            await asyncio.sleep(0.5)
        assert load.changes >= CHANGES and all(source_rows[t] for t in TABLES)
        assert mesh.topic_depth("replication-sink-dlq") == 0
        assert await sink.terminate(30) == 0
        assert await source.terminate(30) == 0
    finally:
        await sink.kill()
        await source.kill()
        await mesh.stop()
        conn.close()
