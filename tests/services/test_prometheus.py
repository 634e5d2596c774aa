"""prometheus-source against a fake of the Prometheus HTTP API (``/api/v1/query_range``).

The fake keeps samples per series and answers a range query as Prometheus documents it: evaluation
timestamps ``start + k*step`` up to ``end``; ``{"status": "success", "data": {"resultType": "matrix",
"result": [{"metric": {...}, "values": [[<unix seconds>, "<value>"], ...]}]}}``, series without a sample
in range left out; ``{"status": "error", "errorType": "bad_data", "error": ...}`` with 400 for bad
parameters (including more than 11,000 points per series) or an unparsable query.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runtime.connector import SourceContext
from runtime.errors import ConfigError, RetriableError
from runtime.record import ConnectorRecord, partition_key
from runtime.testing import SourceHarness, run_source_conformance
from runtime.validation import validate_model
from services.prometheus_source.connector import PrometheusSource, PrometheusSourceConfig
from tests.services.fake_http import DROP, Canned, FakeHttpServer

QUERY = 'rate(http_requests_total{job="api"}[5m])'
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on every step grid used here


class FakePrometheus:
    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.samples: dict[str, tuple[dict[str, str], dict[int, str]]] = {}
        self.queries: list[tuple[int, int, int]] = []
        self.server = FakeHttpServer([("GET", "/api/v1/query_range", self._query_range)])

    def add(self, metric: dict[str, str], t_ms: int, value: str) -> None:
        self.samples.setdefault(partition_key(metric), (metric, {}))[1][t_ms] = value

    async def _query_range(self, request: web.Request) -> web.Response:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized")
        try:
            query = request.query["query"]
            start, end, step = (round(float(request.query[name]) * 1000) for name in ("start", "end", "step"))
        except (KeyError, ValueError) as exc:
            return _error(f"invalid parameter: {exc}")
        if query.endswith("("):
            return _error('invalid parameter "query": 1:5: parse error: unclosed left parenthesis')
        if end < start or step <= 0:
            return _error("end timestamp must not be before start time, and step must be positive")
        if (end - start) // step + 1 > 11_000:
            return _error(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
            )
        self.queries.append((start, end, step))
        grid = range(start, end + 1, step)
        result = []
        for metric, values in self.samples.values():
            points = [[t / 1000, values[t]] for t in grid if t in values]
            if points:
                result.append({"metric": metric, "values": points})
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})


def _error(message: str) -> web.Response:
    return web.json_response({"status": "error", "errorType": "bad_data", "error": message}, status=400)


@pytest.fixture
async def prometheus() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    for k in range(12):  # two series, one sample a second; the second series starts later and has a NaN
        fake.add({"__name__": "up", "instance": "a:9100"}, T0_MS + k * 1000, str(k))
        if k >= 3:
            fake.add({"__name__": "up", "instance": "b:9100"}, T0_MS + k * 1000, "NaN" if k == 5 else f"{k}.5")
    async with fake.server:
        yield fake


def _config(prometheus: FakePrometheus, **overrides: Any) -> PrometheusSourceConfig:
    settings = {
        "url": prometheus.server.url,
        "query": QUERY,
        "step": 1,
        "interval": 1,
        "delay": 0,
        "start": T0_MS / 1000,
        "max_points": 5,
        "timeout": 5,
    }
    return validate_model(PrometheusSourceConfig, {**settings, **overrides})


async def _source(config: PrometheusSourceConfig, committed: dict[str, Any] | None = None) -> PrometheusSource:
    source = PrometheusSource(config)
    await source.start(SourceContext(connector_name="test", committed_offsets=committed or {}))
    return source


async def _drain(source: PrometheusSource, until_ms: int) -> list[ConnectorRecord]:
    """Poll until the source has read past ``until_ms`` (bounded)."""
    records: list[ConnectorRecord] = []
    deadline = time.monotonic() + 20
    while source._next_ms <= until_ms:
        assert time.monotonic() < deadline, "the source did not catch up"
        records.extend(await source.poll())
    return records


LAST_SAMPLE_MS = T0_MS + 11_000


async def test_each_sample_is_a_record_in_time_order_with_windows_that_neither_overlap_nor_gap(
    prometheus: FakePrometheus,
) -> None:
    source = await _source(_config(prometheus))
    try:
        records = await _drain(source, LAST_SAMPLE_MS)
    finally:
        await source.stop()
    assert len(records) == 12 + 9
    positions = [(record.offset["t"], record.offset["series"]) for record in records]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    first, nan = records[0], next(record for record in records if record.data["value"] == "NaN")
    assert first.data == {"metric": {"__name__": "up", "instance": "a:9100"}, "timestamp": T0_MS / 1000, "value": 0.0}
    assert first.timestamp.timestamp() * 1000 == T0_MS and first.partition == {"query": QUERY}
    assert nan.data["metric"]["instance"] == "b:9100" and nan.data["timestamp"] == (T0_MS + 5000) / 1000
    windows = prometheus.queries
    assert windows[0][0] == T0_MS and all((end - start) // step + 1 <= 5 for start, end, step in windows)
    assert all(later[0] == earlier[1] + 1000 for earlier, later in itertools.pairwise(windows))


async def test_a_restart_resumes_after_the_committed_sample_without_gap_or_duplicate(prometheus: FakePrometheus) -> None:
    config = _config(prometheus)
    source = await _source(config)
    try:
        everything = await _drain(source, LAST_SAMPLE_MS)
    finally:
        await source.stop()
    for cut in (0, 7, 8, len(everything) - 1):  # inside a window, at its end, and the last record
        committed = {partition_key(everything[cut].partition): dict(everything[cut].offset)}
        source = await _source(config, committed)
        try:
            resumed = await _drain(source, LAST_SAMPLE_MS)
        finally:
            await source.stop()
        assert [record.offset for record in resumed] == [record.offset for record in everything[cut + 1 :]]


async def test_an_unavailable_or_dropped_prometheus_is_retried_and_nothing_is_lost(prometheus: FakePrometheus) -> None:
    source = await _source(_config(prometheus))
    try:
        prometheus.server.faults = [
            Canned(503, {"status": "error", "errorType": "timeout", "error": "query timed out"}),
            DROP,
            DROP,
        ]
        with pytest.raises(RetriableError, match="timed out"):
            await source.poll()
        with pytest.raises(RetriableError, match="failed"):  # aiohttp tries a GET again once on a dropped keep-alive
            await source.poll()
        prometheus.server.faults = [
            Canned(
                200, {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "one"]]}]}}
            )
        ]
        with pytest.raises(RetriableError, match="malformed"):
            await source.poll()
        records = await _drain(source, LAST_SAMPLE_MS)
    finally:
        await source.stop()
    assert len(records) == 21 and records[0].offset["t"] == T0_MS


@pytest.mark.parametrize(
    ("overrides", "token", "key"),
    [({"query": "rate("}, None, "config.query"), ({"url": "{url}/prefix"}, None, "config.url"), ({}, "right", "config.token")],
)
async def test_a_bad_query_step_or_token_is_a_config_error(
    prometheus: FakePrometheus, overrides: dict[str, Any], token: str | None, key: str
) -> None:
    prometheus.token = token
    overrides = {name: value.format(url=prometheus.server.url) for name, value in overrides.items()}
    source = await _source(_config(prometheus, **overrides))
    try:
        with pytest.raises(ConfigError) as info:
            await source.poll()
    finally:
        await source.stop()
    assert info.value.key == key


async def test_the_token_is_sent_as_bearer(prometheus: FakePrometheus) -> None:
    prometheus.token = "right"
    source = await _source(_config(prometheus, token="right"))
    try:
        assert len(await source.poll()) > 0
    finally:
        await source.stop()
    assert "right" not in repr(source.config)


async def test_poll_returns_within_about_a_second_when_nothing_is_due(prometheus: FakePrometheus) -> None:
    source = await _source(_config(prometheus, start=None, interval=60))
    try:
        # Nothing is due for a minute: a poll that waited for it would hit this bound, one that
        # returns after about a second (the Source contract) does not, however busy the machine.
        assert await asyncio.wait_for(source.poll(), 15) == []
    finally:
        await source.stop()
    assert prometheus.queries == []


async def test_a_user_and_password_in_the_url_stay_out_of_errors() -> None:
    fake = FakePrometheus()  # never started: connection refused
    source = await _source(_config(fake, url=fake.server.url.replace("//", "//reader:pa55word@"), connect_timeout=1))
    try:
        with pytest.raises(RetriableError, match="failed") as info:
            await source.poll()
    finally:
        await source.stop()
    assert "pa55word" not in str(info.value) and f"127.0.0.1:{fake.server.port}" in str(info.value)


def test_config_refuses_a_non_http_url() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        validate_model(PrometheusSourceConfig, {"url": "prometheus:9090", "query": "up"}, prefix="config")


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_prometheus_source_conformance(tmp_path: Path) -> None:
    fake = FakePrometheus()
    step_ms = 100

    async def produce(start: int, count: int) -> None:
        # Each item is a series with one sample at the next evaluation timestamp still in the future:
        # the source (delay 0) has not read that far yet, as with a real scrape arriving in time.
        due = (time.time_ns() // 1_000_000 // step_ms + 1) * step_ms
        for n in range(start, start + count):
            fake.add({"__name__": "items", "n": str(n)}, due, str(n))

    def number_of(event: Any) -> int:
        return int(event.get_data()["metric"]["n"])

    async with fake.server:
        await run_source_conformance(
            SourceHarness(
                connector=PrometheusSource,
                config=lambda: {"url": fake.server.url, "query": "items", "step": step_ms / 1000, "interval": 0.1, "delay": 0},
                produce=produce,
                number_of=number_of,
                kill_system=fake.server.stop,
                restart_system=fake.server.start,
            ),
            workdir=tmp_path,
        )
