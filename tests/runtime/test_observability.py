"""The admin endpoint answers from the status board; metrics carry the documented names."""

from __future__ import annotations

import asyncio
import io
import platform
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import aiohttp
import pytest
import structlog
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from runtime.app import serve
from runtime.client import MeshClient, user_agent_for
from runtime.config import AdminSettings, LogSettings
from runtime.connector import SinkContext, SourceContext
from runtime.errors import ConfigError
from runtime.mesh import EmbeddedMesh
from runtime.observability import AdminServer, ConnectorMetrics, StatusBoard, configure_logging
from tests.runtime import connectors
from tests.runtime.connectors import CounterSource, ListSink
from tests.runtime.test_worker import eventually, received_numbers, sink_config, source_config


async def test_admin_endpoint_reflects_the_board() -> None:
    board = StatusBoard(connector="test-sink", name="obs-1", side="sink", metrics=ConnectorMetrics("test-sink", "obs-1"))
    server = AdminServer(AdminSettings(host="127.0.0.1", port=0), board)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert "mesh session is down" in (await response.json())["not_ready_because"]
            board.set_mesh(True)
            board.set_state("running")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            board.set_dependency("database unreachable")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
            board.metrics.records_out.inc(3)
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            assert 'meshconnect_records_out_total{connector="test-sink",name="obs-1"} 3.0' in text
            assert 'meshconnect_ready{connector="test-sink",name="obs-1"} 0.0' in text
            async with http.get(f"{base}/status") as response:
                status = await response.json()
            assert status["connector"] == "test-sink"
            assert status["state"] == "running"
            assert status["dependency_error"] == "database unreachable"
    finally:
        await server.stop()


async def test_an_admin_token_guards_metrics_and_status_but_not_the_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TEST_ADMIN_TOKEN", "admin-secret-31")
    settings = AdminSettings.model_validate({"host": "127.0.0.1", "port": 0, "token": {"env": "MC_TEST_ADMIN_TOKEN"}})
    board = StatusBoard(connector="test-sink", name="obs-2", side="sink", metrics=ConnectorMetrics("test-sink", "obs-2"))
    server = AdminServer(settings, board)
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    try:
        await server.start()
        structlog.get_logger().info("starting", admin=settings.model_dump())
        base = f"http://127.0.0.1:{server.port}"
        answers: dict[tuple[str, str], int] = {}
        bodies = []
        async with aiohttp.ClientSession() as http:
            for header in (
                "",
                "Bearer admin-secret-3",
                "Basic admin-secret-31",
                "admin-secret-31",
                "bearer admin-secret-31",
                "Bearer admin-secret-31",
            ):
                for path in ("/metrics", "/status", "/healthz", "/readyz"):
                    headers = {"Authorization": header} if header else {}
                    async with http.get(f"{base}{path}", headers=headers) as response:
                        answers[header, path] = response.status
                        bodies.append(await response.text())
    finally:
        await server.stop()
        structlog.reset_defaults()
    for header in ("", "Bearer admin-secret-3", "Basic admin-secret-31", "admin-secret-31"):
        assert answers[header, "/metrics"] == answers[header, "/status"] == 401, header
    for header in ("Bearer admin-secret-31", "bearer admin-secret-31"):
        assert answers[header, "/metrics"] == answers[header, "/status"] == 200, header
    for header in ("", "Bearer admin-secret-31"):
        assert answers[header, "/healthz"] == 200
        assert answers[header, "/readyz"] == 503  # open, and not ready: no mesh session on this board
    assert "admin-secret-31" not in out.getvalue()
    assert not any("admin-secret-31" in body for body in bodies)


def test_a_connector_counts_into_the_runtime_registry_through_its_context() -> None:
    sink = SinkContext("context-metrics-sink", connector_type="mysql-sink")
    source = SourceContext("context-metrics-source", {}, connector_type="mysql-source")
    sink.counter("meshconnect_tombstones_purged_total").inc(3)
    sink.counter("meshconnect_tombstones_purged_total").inc()
    source.gauge("meshconnect_snapshot_rows_done", table="shop.orders").set(7)
    # The labels of every meshconnect metric (README): connector (the type) and name (the instance).
    sink_labels = {"connector": "mysql-sink", "name": "context-metrics-sink"}
    assert REGISTRY.get_sample_value("meshconnect_tombstones_purged_total", sink_labels) == 4
    labels = {"connector": "mysql-source", "name": "context-metrics-source", "table": "shop.orders"}
    assert REGISTRY.get_sample_value("meshconnect_snapshot_rows_done", labels) == 7
    with pytest.raises(ConfigError, match="meshconnect_rows_invented_total"):
        sink.counter("meshconnect_rows_invented_total")


async def test_metrics_carry_the_build_info() -> None:
    board = StatusBoard(connector="test-sink", name="obs-3", side="sink", metrics=ConnectorMetrics("test-sink", "obs-3"))
    server = AdminServer(AdminSettings(host="127.0.0.1", port=0), board)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
            text = await response.text()
    finally:
        await server.stop()
    expected = f'meshconnect_build_info{{python="{platform.python_version()}",version="{version("meshconnect")}"}} 1.0'
    assert expected in text.splitlines()


async def test_a_source_times_each_polled_batch_until_the_mesh_acknowledged_all_of_it(tmp_path: Path) -> None:
    """meshconnect_batch_latency_seconds for a source: one observation per poll that returned records."""
    labels = {"connector": "counter-source", "name": "counter"}

    def batches_timed() -> float:
        return REGISTRY.get_sample_value("meshconnect_batch_latency_seconds_count", labels) or 0.0

    connectors.RECEIVED.clear()
    before = batches_timed()
    async with EmbeddedMesh(port=0) as mesh:
        stop_source, stop_sink = asyncio.Event(), asyncio.Event()
        # 2 partitions x 10 numbers a poll, 50 numbers each: 5 polls return records, later ones none.
        source = asyncio.create_task(
            serve(CounterSource, source_config(mesh, tmp_path, limit=50), stop=stop_source, install_signals=False)
        )
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        await eventually(lambda: len(received_numbers()) == 100, what="all numbers delivered")
        await eventually(lambda: batches_timed() - before == 5, what="five batches timed")
        stop_source.set()
        stop_sink.set()
        assert (await source, await sink) == (0, 0)
    assert batches_timed() - before == 5
    assert (REGISTRY.get_sample_value("meshconnect_batch_latency_seconds_sum", labels) or 0.0) > 0


async def test_a_sink_records_how_old_events_are_when_it_writes_them() -> None:
    """meshconnect_event_age_at_write_seconds: now minus the event's time, once per written batch."""
    labels = {"connector": "list-sink", "name": "lister"}

    def ages() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("meshconnect_event_age_at_write_seconds_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("meshconnect_event_age_at_write_seconds_sum", labels) or 0.0

    connectors.RECEIVED.clear()
    count_before, sum_before = ages()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with EmbeddedMesh(port=0) as mesh:
        stop_sink = asyncio.Event()
        sink = asyncio.create_task(serve(ListSink, sink_config(mesh), stop=stop_sink, install_signals=False))
        async with MeshClient(f"127.0.0.1:{mesh.port}", user_agent_for("producer", "pub")) as producer:
            attributes = {"id": "old-1", "source": "/test", "type": "t", "subject": "numbers", "specversion": "1.0"}
            await producer.publish(CloudEvent({**attributes, "time": an_hour_ago}, {"ok": 1}))
        await eventually(lambda: ages()[0] == count_before + 1, what="one batch written")
        stop_sink.set()
        assert await sink == 0
    assert [record.data for record in connectors.RECEIVED] == [{"ok": 1}]
    assert 3590 < ages()[1] - sum_before < 3700


def test_a_logged_exception_shows_no_local_variables_in_console_format() -> None:
    def connect(password: str) -> None:
        dsn = f"mysql://app:{password}@db/orders"
        raise ConnectionError(f"cannot reach {dsn.rsplit('@', 1)[1]}")

    secret = "-".join(("hunter2", "in", "a", "local"))  # not in the source lines a traceback quotes
    out = io.StringIO()
    configure_logging(LogSettings(format="console"), stream=out)
    try:
        connect(secret)
    except ConnectionError:
        structlog.get_logger().exception("connect failed")
    finally:
        structlog.reset_defaults()
    logged = out.getvalue()
    assert "cannot reach db/orders" in logged  # the traceback is there
    assert "hunter2-in-a-local" not in logged  # its frames' local variables are not
