"""Transforms on real connectors: http-source filtering and routing webhooks, mysql-sink writing a flattened,
masked Debezium-like envelope into routed tables."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
from typing import Any

import aiohttp
import pytest
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import WorkerConfig
from runtime.mesh import EmbeddedMesh
from services.http.source.connector import HttpSource
from services.mysql.sink.connector import MysqlSink
from tests.runtime.test_worker import collect
from tests.servers import MariaDBServer, free_port
from tests.services.workers import dead_letters, sink_worker, until

_databases = itertools.count()


async def _post(port: int, headers: dict[str, str], body: bytes = b'{"n": 1}') -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/events", data=body, headers=headers) as response,
    ):
        return response.status


def _headers(event_id: str, kind: str, **extensions: str) -> dict[str, str]:
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/hooks", "ce-type": kind}
    return {**headers, **{f"ce-{name}": value for name, value in extensions.items()}, "content-type": "application/json"}


async def test_http_source_answers_a_dropped_event_200_and_routes_the_others_by_tenant() -> None:
    port = free_port()
    async with EmbeddedMesh(port=0) as mesh:
        config = WorkerConfig.model_validate(
            {
                "name": "hooks",
                "connector": "http-source",
                "mesh": {"address": f"127.0.0.1:{mesh.port}"},
                "source": {"topic": "webhooks", "allowed_topics": ["tenant.*"]},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"host": "127.0.0.1", "port": port, "path": "/events"},
                "transforms": [
                    {"name": "drop-heartbeats", "filter": 'type != "heartbeat"'},
                    {"name": "by-tenant", "route": 'has(extensions.tenant) ? "tenant." + extensions.tenant : "webhooks"'},
                ],
            }
        )
        acme: list[CloudEvent] = []
        plain: list[CloudEvent] = []
        readers = [
            asyncio.create_task(collect(mesh, "tenant.acme", 2, acme)),
            asyncio.create_task(collect(mesh, "webhooks", 1, plain)),
        ]
        stop = asyncio.Event()
        source = asyncio.create_task(serve(HttpSource, config, stop=stop, install_signals=False))

        async def listening() -> bool:
            try:
                return await _post(port, _headers("hb-0", "heartbeat")) == 200
            except aiohttp.ClientConnectionError:
                return False

        await until(listening, "http-source answers")
        statuses = [
            await _post(port, _headers("a-1", "order.created", tenant="acme"), b'{"n": 1}'),
            await _post(port, _headers("hb-1", "heartbeat", tenant="acme")),
            await _post(port, _headers("p-1", "order.created"), b'{"n": 2}'),
            await _post(port, _headers("a-2", "order.paid", tenant="acme"), b'{"n": 3}'),
        ]
        await asyncio.wait_for(asyncio.gather(*readers), 20)
        stop.set()
        assert await source == 0
    assert statuses == [200, 200, 200, 200]  # a dropped event is done once committed, as a published one
    dropped = REGISTRY.get_sample_value(
        "meshconnect_transform_dropped_total",
        {"connector": "http-source", "name": "hooks", "step": "0 'drop-heartbeats' (filter)"},
    )
    assert dropped == 2  # hb-0 (answered while waiting for the endpoint) and hb-1: published nowhere
    assert [(event.get_id(), event.get_data()) for event in acme] == [("a-1", {"n": 1}), ("a-2", {"n": 3})]
    assert [(event.get_id(), event.get_subject()) for event in plain] == [("p-1", "webhooks")]


async def test_http_source_drops_the_events_an_eventmesh_pattern_refuses() -> None:
    port = free_port()
    pattern = {"type": [{"anything-but": {"prefix": "heartbeat"}}], "data": {"n": [{"numeric": [">", 1]}]}}
    async with EmbeddedMesh(port=0) as mesh:
        config = WorkerConfig.model_validate(
            {
                "name": "hooks-em",
                "connector": "http-source",
                "mesh": {"address": f"127.0.0.1:{mesh.port}"},
                "source": {"topic": "webhooks"},
                "admin": {"host": "127.0.0.1", "port": 0},
                "config": {"host": "127.0.0.1", "port": port, "path": "/events"},
                "transforms": [{"name": "eventmesh-rule", "filter": {"eventmesh": pattern}}],
            }
        )
        kept: list[CloudEvent] = []
        reader = asyncio.create_task(collect(mesh, "webhooks", 2, kept))
        stop = asyncio.Event()
        source = asyncio.create_task(serve(HttpSource, config, stop=stop, install_signals=False))

        async def listening() -> bool:
            try:
                return await _post(port, _headers("hb-0", "heartbeat.ping")) == 200
            except aiohttp.ClientConnectionError:
                return False

        await until(listening, "http-source answers")
        statuses = [
            await _post(port, _headers("o-1", "order.created"), b'{"n": 1}'),
            await _post(port, _headers("o-2", "order.created"), b'{"n": 2}'),
            await _post(port, _headers("hb-1", "heartbeat.ping"), b'{"n": 5}'),
            await _post(port, _headers("o-3", "order.paid"), b'{"n": "many"}'),
            await _post(port, _headers("o-4", "order.paid"), b'{"n": 30}'),
        ]
        await asyncio.wait_for(reader, 20)
        stop.set()
        assert await source == 0
    assert statuses == [200] * 5
    assert [(event.get_id(), event.get_data()) for event in kept] == [("o-2", {"n": 2}), ("o-4", {"n": 30})]
    dropped = REGISTRY.get_sample_value(
        "meshconnect_transform_dropped_total",
        {"connector": "http-source", "name": "hooks-em", "step": "0 'eventmesh-rule' (filter)"},
    )
    assert dropped == 4  # hb-0, o-1, hb-1 and o-3 (numeric never matches a non-number)


@pytest.fixture
def database(mariadb_server: MariaDBServer) -> str:
    name = f"transforms_{next(_databases)}"
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")
    for table in ("orders", "orders_eu"):
        mariadb_server.sql(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, email CHAR(64), total DECIMAL(10,2))", name)
    return name


async def test_mysql_sink_writes_a_flattened_masked_envelope_into_the_routed_table(
    mariadb_server: MariaDBServer, database: str
) -> None:
    steps = [
        {"filter": 'type != "heartbeat"'},
        {"name": "flatten", "map": '(if .op == "d" then .before else .after end) + {deleted: (.op == "d")}'},
        {"name": "pii", "mask": {"fields": ["email"], "secret": "pepper"}},
        {"name": "by-region", "route": 'has(extensions.region) ? "orders_" + extensions.region : "orders"'},
    ]

    def envelope(op: str, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "op": op,
            "source": {"db": "shop", "table": "orders"},
            "before": row if op == "d" else None,
            "after": row if op != "d" else None,
        }

    ann = {"id": 1, "email": "ann@example.com", "total": 10.5}
    bob = {"id": 2, "email": "bob@example.com", "total": 3}
    events = [
        ("e1", "mysql.change", envelope("c", ann), {}),
        ("e2", "heartbeat", {"ts": 1}, {}),
        ("e3", "mysql.change", envelope("c", bob), {"region": "eu"}),
        ("e4", "mysql.change", "not an envelope", {}),
        ("e5", "mysql.change", envelope("c", {**bob, "id": 3}), {}),
        ("e6", "mysql.change", envelope("d", {**bob, "id": 3}), {}),
        ("e7", "mysql.change", envelope("c", ann), {"region": "us; DROP TABLE orders"}),
    ]
    async with (
        EmbeddedMesh(port=0) as mesh,
        sink_worker(
            MysqlSink,
            mesh,
            free_port(),
            transforms=steps,
            port=mariadb_server.port,
            database=database,
            mode="mapped",
            table="orders",
            delete_field="deleted",
            delete_values=[True],
        ),
    ):
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            for event_id, kind, data, extensions in events:
                attributes = {"id": event_id, "source": "/shop", "type": kind, "subject": "orders", "specversion": "1.0"}
                await producer.publish(CloudEvent({**attributes, **extensions}, data))
        letters = await dead_letters(mesh, 2)

        async def all_acknowledged() -> bool:
            return mesh.unacked("orders-sink", "orders") == 0

        await until(all_acknowledged, "every event acknowledged, the heartbeat too")
    hashed = {name: hmac.new(b"pepper", f"{name}@example.com".encode(), hashlib.sha256).hexdigest() for name in ("ann", "bob")}
    assert mariadb_server.sql("SELECT id, email, total FROM orders ORDER BY id", database).splitlines() == [
        f"1\t{hashed['ann']}\t10.50"
    ]
    assert mariadb_server.sql("SELECT id, email, total FROM orders_eu", database).splitlines() == [f"2\t{hashed['bob']}\t3.00"]
    assert set(letters) == {"e4", "e7"}
    assert letters["e4"].get_extension("dlqreason").startswith("transform step 1 'flatten' (map) failed: jq ")
    assert letters["e7"].get_extension("dlqreason") == (
        "table 'orders_us; DROP TABLE orders' is not a plain identifier (letters, digits, _ or $, at most 64 characters)"
    )
