"""http-source and http-sink against real HTTP servers and clients (aiohttp), driven directly."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import ssl
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from runtime.config import ConnectorConfig
from runtime.connector import SinkContext, SourceContext
from runtime.errors import RetriableError
from runtime.record import ConnectorRecord
from runtime.testing import SinkHarness, SourceHarness, run_sink_conformance, run_source_conformance
from services.http_sink.connector import HttpSink, HttpSinkConfig
from services.http_source.connector import HttpSource, HttpSourceConfig
from tests.servers import free_port, require_binary


def _config(**overrides: Any) -> HttpSourceConfig:
    return HttpSourceConfig.model_validate({"host": "127.0.0.1", "port": 0, "path": "/events", **overrides})


async def _started(config: ConnectorConfig) -> HttpSource:
    source = HttpSource(config)  # type: ignore[arg-type]
    await source.start(SourceContext(connector_name="test", committed_offsets={}))
    return source


class _Pump:
    """Stands in for the worker: polls, and commits what it polled (unless paused)."""

    def __init__(self, source: HttpSource) -> None:
        self.source = source
        self.seen: list[ConnectorRecord] = []
        self.committing = asyncio.Event()
        self.committing.set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            records = await self.source.poll()
            self.seen.extend(records)
            await self.committing.wait()
            if records:
                await self.source.commit(records)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def source() -> AsyncIterator[HttpSource]:
    source = await _started(_config())
    yield source
    await source.stop()


@pytest.fixture
async def pump(source: HttpSource) -> AsyncIterator[_Pump]:
    pump = _Pump(source)
    yield pump
    await pump.close()


def _url(source: HttpSource) -> str:
    return f"http://127.0.0.1:{source.port}/events"


async def _post(source: HttpSource, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(_url(source), data=io.BytesIO(body), headers=headers, timeout=aiohttp.ClientTimeout(total=20)) as response,
    ):
        return response.status, orjson.loads(await response.read()), dict(response.headers)


BINARY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/tests",
    "ce-type": "com.example.created",
    "ce-subject": "orders",
    "ce-traceparent": "00-abc",
    "content-type": "application/json",
}


async def test_binary_mode_event_becomes_a_record_and_200_only_after_commit(source: HttpSource, pump: _Pump) -> None:
    status, body, _ = await _post(source, b'{"n": 1}', BINARY_HEADERS)
    assert (status, body) == (200, {"accepted": 1})
    [record] = pump.seen
    assert (record.id, record.source, record.type, record.subject) == ("evt-1", "/tests", "com.example.created", "orders")
    assert record.data == {"n": 1}
    assert record.extensions == {"traceparent": "00-abc"}
    assert record.partition == {"path": "/events"}


async def test_response_is_held_until_commit(source: HttpSource, pump: _Pump) -> None:
    pump.committing.clear()
    request = asyncio.create_task(_post(source, b'{"n": 1}', BINARY_HEADERS))
    await asyncio.sleep(0.5)
    assert pump.seen and not request.done()
    pump.committing.set()
    status, _, _ = await asyncio.wait_for(request, 10)
    assert status == 200


async def test_structured_and_text_and_binary_data(source: HttpSource, pump: _Pump) -> None:
    event = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/s",
        "type": "t",
        "subject": "orders",
        "time": "2026-01-02T03:04:05Z",
        "datacontenttype": "text/plain",
        "data": "hello",
    }
    status, _, _ = await _post(source, orjson.dumps(event), {"content-type": "application/cloudevents+json"})
    assert status == 200
    binary = {**event, "id": "s-2", "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}
    del binary["data"]
    status, _, _ = await _post(source, orjson.dumps(binary), {"content-type": "application/cloudevents+json"})
    assert status == 200
    text, raw = pump.seen
    assert text.data == "hello" and text.timestamp.year == 2026
    assert raw.data == b"\x00\x01\x02"


async def test_batch_mode_answers_once_every_event_is_committed(source: HttpSource, pump: _Pump) -> None:
    events = [{"specversion": "1.0", "id": f"b-{i}", "source": "/b", "type": "t", "data": {"i": i}} for i in range(5)]
    status, body, _ = await _post(source, orjson.dumps(events), {"content-type": "application/cloudevents-batch+json"})
    assert (status, body) == (200, {"accepted": 5})
    assert [record.id for record in pump.seen] == [f"b-{i}" for i in range(5)]
    assert len({orjson.dumps(record.offset) for record in pump.seen}) == 5


async def test_plain_json_webhook_with_github_headers(source: HttpSource, pump: _Pump) -> None:
    headers = {"content-type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-42"}
    status, _, _ = await _post(source, b'{"ref": "main"}', headers)
    assert status == 200
    [record] = pump.seen
    assert (record.id, record.type, record.data) == ("d-42", "com.github.push", {"ref": "main"})


@pytest.mark.parametrize(
    ("settings", "headers", "body", "expected"),
    [
        ({}, {"Idempotency-Key": "k-1", "X-Request-Id": "r-1"}, b'{"a": 1}', "k-1"),
        ({}, {"X-Shopify-Webhook-Id": "s-1"}, b'{"a": 1}', "s-1"),
        ({"id_field": "id"}, {"X-Request-Id": "r-1"}, b'{"id": "evt_1", "object": "event"}', "evt_1"),
        ({"id_field": "data.object.id"}, {}, b'{"data": {"object": {"id": 42}}}', "42"),
        ({"id_field": "id"}, {"X-Request-Id": "r-1"}, b'{"no_id": true}', "r-1"),
        ({"id_headers": ["X-Delivery"]}, {"X-Delivery": "d-7", "Idempotency-Key": "k-1"}, b"{}", "d-7"),
    ],
)
async def test_a_webhook_takes_the_senders_id_so_a_retried_delivery_is_the_same_event(
    settings: dict[str, Any], headers: dict[str, str], body: bytes, expected: str
) -> None:
    source = await _started(_config(**settings))
    pump = _Pump(source)
    try:
        for _ in range(2):  # the sender retries the same delivery
            status, _, _ = await _post(source, body, {"content-type": "application/json", **headers})
            assert status == 200
    finally:
        await pump.close()
        await source.stop()
    assert [record.id for record in pump.seen] == [expected, expected]


async def test_a_webhook_without_an_id_of_its_sender_gets_a_new_one_per_request(source: HttpSource, pump: _Pump) -> None:
    for _ in range(2):
        assert (await _post(source, b'{"a": 1}', {"content-type": "application/json"}))[0] == 200
    first, second = [record.id for record in pump.seen]
    assert first and second and first != second


@pytest.mark.parametrize(
    "case",
    [
        (b"hello", {"content-type": "text/plain"}, 415, "unsupported content type"),
        (b"{not json", {"content-type": "application/json"}, 400, "invalid JSON"),
        (b"{not json", {**BINARY_HEADERS}, 400, "invalid JSON"),
        (b'{"id": "x", "source": "/s"}', {"content-type": "application/cloudevents+json"}, 400, "type"),
        (b"[1]", {"content-type": "application/cloudevents+json"}, 400, "JSON object"),
        (b"{}", {"content-type": "application/cloudevents-batch+json"}, 400, "JSON array"),
        (b"{}", {k: v for k, v in BINARY_HEADERS.items() if k != "ce-source"}, 400, "ce-source"),
        (b"{}", {**BINARY_HEADERS, "ce-Bad_Name": "x"}, 400, "bad_name"),
        (b"x" * 2_000_000, {"content-type": "application/json"}, 413, "larger than"),
    ],
)
async def test_malformed_requests_get_a_4xx_with_the_reason(
    source: HttpSource, pump: _Pump, case: tuple[bytes, dict[str, str], int, str]
) -> None:
    body, headers, status, reason = case
    got_status, got_body, _ = await _post(source, body, headers)
    assert got_status == status
    assert reason in got_body["error"]
    assert pump.seen == []


async def test_full_queue_answers_503_with_retry_after() -> None:
    source = await _started(_config(queue_size=2, retry_after=7))
    try:  # nobody polls: the first request's two events fill the queue
        batch = [{"specversion": "1.0", "id": f"q-{i}", "source": "/q", "type": "t"} for i in range(2)]
        held = asyncio.create_task(_post(source, orjson.dumps(batch), {"content-type": "application/cloudevents-batch+json"}))
        await asyncio.sleep(0.3)
        status, body, headers = await _post(source, b"{}", {"content-type": "application/json"})
        assert status == 503 and headers["Retry-After"] == "7" and "retry" in body["error"]
        records = await source.poll()
        await source.commit(records)
        assert (await held)[0] == 200
    finally:
        await source.stop()


async def test_uncommitted_request_times_out_with_503() -> None:
    source = await _started(_config(response_timeout=0.3))
    try:
        status, _, headers = await _post(source, b"{}", {"content-type": "application/json"})
        assert status == 503 and "Retry-After" in headers
    finally:
        await source.stop()


async def test_hmac_signature_and_token_are_checked() -> None:
    source = await _started(_config(hmac_secret="s3cret", token="tok"))
    pump = _Pump(source)
    try:
        body = b'{"a": 1}'
        signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        good = {"content-type": "application/json", "Authorization": "Bearer tok", "X-Hub-Signature-256": signature}
        assert (await _post(source, body, good))[0] == 200
        assert (await _post(source, body, {**good, "X-Hub-Signature-256": "sha256=00"}))[0] == 401
        assert (await _post(source, body, {**good, "Authorization": "Bearer nope"}))[0] == 401
        assert (await _post(source, b'{"a": 2}', good))[0] == 401  # signature of another body
        assert len(pump.seen) == 1
    finally:
        await pump.close()
        await source.stop()


async def test_stop_answers_waiting_requests_with_503() -> None:
    source = await _started(_config())
    request = asyncio.create_task(_post(source, b"{}", {"content-type": "application/json"}))
    await asyncio.sleep(0.3)
    await source.stop()
    status, _, _ = await asyncio.wait_for(request, 10)
    assert status == 503


async def test_poll_returns_empty_within_about_a_second(source: HttpSource) -> None:
    records: Sequence[ConnectorRecord] = await asyncio.wait_for(source.poll(), 3)
    assert records == []


# -- http-sink ------------------------------------------------------------------------------


class _Endpoint:
    """A real HTTP server that records what it is sent and answers with scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> _Endpoint:
        app = web.Application()
        app.router.add_post("/in", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        status, headers = self.script.pop(0) if self.script else (204, {})
        return web.Response(status=status, headers=headers, text="nope" if status >= 400 else "")


async def _http_sink(**config: Any) -> HttpSink:
    sink = HttpSink(HttpSinkConfig.model_validate(config))
    await sink.start(SinkContext(connector_name="test"))
    return sink


def _sink_record(n: int, **overrides: Any) -> ConnectorRecord:
    fields: dict[str, Any] = {
        "data": {"n": n, "text": "ünïcode"},
        "id": f"e-{n}",
        "source": "/tests/sink",
        "type": "com.example.t",
        "subject": "orders",
        "extensions": {"traceparent": "00-1 2", "hops": 3, "urgent": True},
        **overrides,
    }
    return ConnectorRecord(**fields)


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_sink_posts_cloudevents_that_the_http_source_reads_back(source: HttpSource, pump: _Pump, mode: str) -> None:
    sink = await _http_sink(urls=[_url(source)], mode=mode)
    records = [_sink_record(1), _sink_record(2, data="plain", datacontenttype="text/plain"), _sink_record(3, data=b"\x00\x01")]
    try:
        assert await sink.put(records) == []
    finally:
        await sink.stop()
    received = {record.id: record for record in pump.seen}
    for sent in records:
        got = received[sent.id]
        assert (got.data, got.source, got.type, got.subject) == (sent.data, sent.source, sent.type, sent.subject)
        assert (
            got.extensions == {"traceparent": "00-1 2", "hops": 3, "urgent": True}
            if mode == "structured"
            else {
                "traceparent": "00-1 2",
                "hops": "3",
                "urgent": "true",
            }
        )
        assert got.timestamp == sent.timestamp


async def test_sink_retries_on_5xx_and_429_honouring_retry_after_then_delivers() -> None:
    async with _Endpoint() as endpoint:
        sink = await _http_sink(urls=[endpoint.url])
        try:
            endpoint.script = [(503, {"Retry-After": "7"})]
            with pytest.raises(RetriableError) as info:
                await sink.put([_sink_record(1)])
            assert info.value.retry_after == 7
            endpoint.script = [(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
            with pytest.raises(RetriableError) as info:
                await sink.put([_sink_record(1)])
            assert info.value.retry_after == 0
            assert await sink.put([_sink_record(1)]) == []
        finally:
            await sink.stop()
        assert [headers["ce-id"] for headers, _ in endpoint.requests] == ["e-1", "e-1", "e-1"]


async def test_sink_rejects_on_other_4xx_and_delivers_the_rest() -> None:
    async with _Endpoint() as endpoint:
        sink = await _http_sink(urls=[endpoint.url], concurrency=1)
        try:
            endpoint.script = [(204, {}), (400, {}), (204, {})]
            rejections = await sink.put([_sink_record(1), _sink_record(2), _sink_record(3)])
        finally:
            await sink.stop()
        assert [(r.record.id, "400" in r.reason and "nope" in r.reason) for r in rejections] == [("e-2", True)]


async def test_sink_connection_refused_is_retriable_and_broadcast_reaches_every_url() -> None:
    async with _Endpoint() as first, _Endpoint() as second:
        dead = f"http://127.0.0.1:{free_port()}/in"
        sink = await _http_sink(urls=[first.url, dead], timeout=2)
        try:
            with pytest.raises(RetriableError, match="failed"):
                await sink.put([_sink_record(1)])
        finally:
            await sink.stop()
        sink = await _http_sink(urls=[first.url, second.url], token="t0ken")
        try:
            await sink.put([_sink_record(2)])
        finally:
            await sink.stop()
        assert second.requests[0][0]["authorization"] == "Bearer t0ken"
        assert [h["ce-id"] for h, _ in first.requests] == ["e-1", "e-2"]


async def test_sink_round_robin_spreads_events() -> None:
    async with _Endpoint() as first, _Endpoint() as second:
        sink = await _http_sink(urls=[first.url, second.url], delivery="round_robin")
        try:
            await sink.put([_sink_record(n) for n in range(4)])
        finally:
            await sink.stop()
        assert len(first.requests) == len(second.requests) == 2


def test_sink_config_refuses_a_non_http_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HttpSinkConfig.model_validate({"urls": ["ftp://x"]})


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_http_source_conformance(tmp_path: Path) -> None:
    port = free_port()

    async def produce(start: int, count: int) -> None:
        events = [
            {"specversion": "1.0", "id": f"item-{n}", "source": "/conformance", "type": "t", "data": {"n": n}}
            for n in range(start, start + count)
        ]
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the worker may still be starting: retry as a webhook sender would
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/events",
                        data=orjson.dumps(events),
                        headers={"content-type": "application/cloudevents-batch+json"},
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the http source never accepted the batch")

    await run_source_conformance(
        SourceHarness(
            connector=HttpSource,
            config=lambda: {"host": "127.0.0.1", "port": port, "path": "/events"},
            produce=produce,
            number_of=lambda event: int(event.get_data()["n"]),  # type: ignore[index]
        ),
        workdir=tmp_path,
        checks=("open_close", "batches", "redelivery", "mesh_drop"),  # a killed endpoint cannot take requests
    )


async def test_http_sink_conformance(tmp_path: Path) -> None:
    async with _Endpoint() as endpoint:

        async def read() -> list[str]:
            return [headers["ce-id"] for headers, _ in endpoint.requests]

        await run_sink_conformance(
            SinkHarness(connector=HttpSink, config=lambda: {"urls": [endpoint.url]}, read=read, idempotent=False),
            workdir=tmp_path,
        )


async def test_sink_posts_over_tls_trusting_the_given_ca(tmp_path: Path) -> None:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    received: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(request.headers["ce-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/in", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/in"
    try:
        sink = await _http_sink(urls=[url], ca_file=str(cert))
        try:
            assert await sink.put([_sink_record(1)]) == []
        finally:
            await sink.stop()
        untrusting = await _http_sink(urls=[url], timeout=3)
        try:
            with pytest.raises(RetriableError, match=r"(?i)certificate"):
                await untrusting.put([_sink_record(2)])
        finally:
            await untrusting.stop()
    finally:
        await runner.cleanup()
    assert received == ["e-1"]
