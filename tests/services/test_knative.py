"""knative-sink against a fake Knative Broker ingress that takes binary-mode CloudEvents as Knative does.

The fake answers ``POST /<namespace>/<broker>`` like Knative's broker ingress: 202 Accepted for a valid
binary-mode event (``ce-specversion`` 1.0, ``ce-id``, ``ce-source``, ``ce-type``), 400 for an invalid
one, 404 for a broker it does not have; scripted faults stand for a broker that is not ready.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from runtime.connector import SinkContext
from runtime.errors import ConfigError, RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, run_sink_conformance
from runtime.validation import validate_model
from services.http.knative.connector import KnativeSink, KnativeSinkConfig
from tests.services.fake_http import DROP, Canned, FakeHttpServer

REFUSED_TYPE = "com.example.refused"


class BrokerIngress:
    """Knative's broker ingress, as far as a sender sees it."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.server = FakeHttpServer([("POST", "/{namespace}/{broker}", self._handle)])

    def url(self, broker: str = "default") -> str:
        return f"{self.server.url}/orders/{broker}"

    async def _handle(self, request: web.Request) -> web.Response:
        if (request.match_info["namespace"], request.match_info["broker"]) != ("orders", "default"):
            return web.Response(status=404, text="broker not found")
        headers = {name.lower(): value for name, value in request.headers.items()}
        if headers.get("content-type", "").startswith("application/cloudevents"):
            return web.Response(status=415, text="this fake expects binary content mode")
        if headers.get("ce-specversion") != "1.0" or not all(headers.get(f"ce-{name}") for name in ("id", "source", "type")):
            return web.Response(status=400, text="not a valid CloudEvent")
        if headers["ce-type"] == REFUSED_TYPE:
            return web.Response(status=400, text="event type not allowed")
        self.events.append((headers, await request.read()))
        return web.Response(status=202)

    def ids(self) -> list[str]:
        return [headers["ce-id"] for headers, _ in self.events]


@pytest.fixture
async def broker() -> AsyncIterator[BrokerIngress]:
    broker = BrokerIngress()
    async with broker.server:
        yield broker


async def _sink(**config: Any) -> KnativeSink:
    sink = KnativeSink(validate_model(KnativeSinkConfig, {"timeout": 5, **config}))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _record(n: int, **fields: Any) -> ConnectorRecord:
    values: dict[str, Any] = {
        "data": {"n": n},
        "id": f"e-{n}",
        "source": "/tests/knative",
        "type": "com.example.order",
        "subject": "orders",
        "datacontenttype": "application/json",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "extensions": {"traceparent": "00-abc-01"},
        **fields,
    }
    return ConnectorRecord(**values)


async def test_events_arrive_in_binary_content_mode(broker: BrokerIngress) -> None:
    sink = await _sink(url=broker.url(), headers={"X-Tenant": "t1"})
    try:
        assert await sink.put([_record(1), _record(2, data="plain text", datacontenttype="text/plain")]) == []
    finally:
        await sink.stop()
    (first, body), (second, text) = sorted(broker.events, key=lambda event: event[0]["ce-id"])
    assert {
        name: first[name] for name in ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject", "ce-traceparent")
    } == {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/tests/knative",
        "ce-type": "com.example.order",
        "ce-subject": "orders",
        "ce-traceparent": "00-abc-01",
    }
    assert first["ce-time"] == "2026-01-02T03:04:05Z" and first["x-tenant"] == "t1"
    assert first["content-type"] == "application/json" and orjson.loads(body) == {"n": 1}
    assert second["content-type"].startswith("text/plain") and text == b"plain text"


async def test_a_broker_not_ready_is_retried_honouring_retry_after_and_nothing_is_lost(broker: BrokerIngress) -> None:
    sink = await _sink(url=broker.url(), concurrency=1)
    records = [_record(n) for n in range(3)]
    try:
        broker.server.faults = [Canned(503, headers={"Retry-After": "4"})]
        with pytest.raises(RetriableError) as info:
            await sink.put(records)
        assert info.value.retry_after == 4
        broker.server.faults = [Canned(429, headers={"Retry-After": "1"}), DROP]
        with pytest.raises(RetriableError):
            await sink.put(records)
        assert await sink.put(records) == []
    finally:
        await sink.stop()
    assert set(broker.ids()) == {"e-0", "e-1", "e-2"}


async def test_other_4xx_rejects_the_event_and_delivers_the_rest(broker: BrokerIngress) -> None:
    sink = await _sink(url=broker.url())
    try:
        rejections = await sink.put([_record(1), _record(2, type=REFUSED_TYPE), _record(3)])
    finally:
        await sink.stop()
    assert [(r.record.id, "400" in r.reason and "not allowed" in r.reason) for r in rejections] == [("e-2", True)]
    assert sorted(broker.ids()) == ["e-1", "e-3"]
    sink = await _sink(url=broker.url("missing"))
    try:
        rejections = await sink.put([_record(4)])
    finally:
        await sink.stop()
    assert [("404" in r.reason) for r in rejections] == [True]


async def test_an_unreachable_service_is_retriable() -> None:
    broker = BrokerIngress()  # never started: connection refused
    sink = await _sink(url=broker.url(), connect_timeout=1)
    try:
        with pytest.raises(RetriableError, match="failed"):
            await sink.put([_record(1)])
    finally:
        await sink.stop()


def test_the_java_service_address_without_a_scheme_is_accepted() -> None:
    config = validate_model(KnativeSinkConfig, {"url": "event-display.default.svc.cluster.local"})
    assert config.url == "http://event-display.default.svc.cluster.local"
    with pytest.raises(ConfigError, match=r"config\.url"):
        validate_model(KnativeSinkConfig, {"url": " "}, prefix="config")


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_knative_sink_conformance(broker: BrokerIngress, tmp_path: Path) -> None:
    async def read() -> list[str]:
        return broker.ids()

    await run_sink_conformance(
        SinkHarness(
            connector=KnativeSink,
            config=lambda: {"url": broker.url(), "timeout": 5},
            read=read,
            kill_system=broker.server.stop,
            restart_system=broker.server.start,
            idempotent=False,  # a broker forwards each delivery; its subscribers deduplicate on ce-source + ce-id
        ),
        workdir=tmp_path,
    )
